"""A STAND-IN for `triton_python_backend_utils`, to run `triton_repo/*/1/model.py` in-process.

A stand-in because the real module exists only inside Triton's Python-backend stub process
(`triton_python_backend_stub` embeds it); it cannot be imported here. The real-server tests in
tests/serve/ run the same model.py files under a real tritonserver with the real module.

It has what the model.py files use, with the real module's behaviour where it matters
(python_backend `pb_tensor.cc`, `pb_stub.cc`; shared/reference/triton.md §9):
- `Tensor(name, array)`, `Tensor.from_dlpack(name, tensor)`; `as_numpy()` refuses BF16 (NumPy has no
  bf16) and `to_dlpack()` refuses strings, with the real messages.
- `InferenceRequest(model_name=, requested_output_names=, inputs=)`: an incoming request (with a
  recording `ResponseSender`) and a BLS request whose `exec()` / `exec(decoupled=True)` runs a model
  registered with `register_model`, one `execute` at a time per model as Triton does. Unlike the
  real one, `exec(decoupled=True)` hands its responses over once the callee's execute is done
  (same responses, same order; the real iterator yields each as it arrives).
- `async def execute` (python_backend >= 24.04, README "Async Execute"): `run_execute` does what the
  stub does (src/pb_stub.cc r24.10, `Stub::RunCoroutine`): the coroutine runs on one event loop in its
  own thread, in the background for a decoupled model, to completion otherwise. `async_exec(decoupled=)`
  returns an awaitable of what `exec` returns, run in the loop's default executor as the real one.
- `InferenceResponse`, `TritonError`, `get_input_tensor_by_name`, `get_output_tensor_by_name`,
  `TRITONSERVER_RESPONSE_COMPLETE_FINAL`.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from dataclasses import dataclass

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonModelException(Exception):
    """What the real module raises for a misuse (PythonBackendException in the stub)."""


class TritonError:
    def __init__(self, message: str):
        self._message = message

    def message(self) -> str:
        return self._message


class Tensor:
    """A named CPU tensor: a NumPy array, or a torch tensor when made with from_dlpack (bf16 needs it)."""

    def __init__(self, name: str, array: np.ndarray):
        if not name:
            raise TritonModelException("Tensor name cannot be an empty string.")
        if not isinstance(array, np.ndarray):
            raise TritonModelException(f"Tensor {name!r}: expected a numpy array, got {type(array).__name__}.")
        self._name = name
        self._array = np.ascontiguousarray(array)  # the real one copies a non-contiguous array too
        self._torch = None

    @classmethod
    def from_dlpack(cls, name: str, tensor) -> "Tensor":
        import torch

        if not name:
            raise TritonModelException("Tensor name cannot be an empty string.")
        if not (hasattr(tensor, "__dlpack__") and hasattr(tensor, "__dlpack_device__")):
            raise TritonModelException("Provided tensor is not supported. Tensor must be a DLPack capsule "
                                       "or have `__dlpack__` and `__dlpack_device__` attributes")
        if not tensor.is_contiguous():
            raise TritonModelException("DLPack tensor is not contiguous. Only contiguous DLPack tensors that "
                                       "are stored in C-Order are supported.")
        out = cls.__new__(cls)
        out._name, out._array = name, None
        out._torch = torch.from_dlpack(tensor)  # shares memory, keeps the dtype (bf16 too)
        return out

    def name(self) -> str:
        return self._name

    def is_cpu(self) -> bool:
        return True

    def as_numpy(self) -> np.ndarray:
        if self._torch is None:
            return self._array
        import torch

        if self._torch.dtype == torch.bfloat16:
            raise TritonModelException("Tensor dtype is BF16 and cannot be converted to NumPy. Use "
                                       "to_dlpack() and from_dlpack() instead.")
        return self._torch.numpy()

    def to_dlpack(self):
        import torch
        from torch.utils.dlpack import to_dlpack

        if self._torch is not None:
            return to_dlpack(self._torch)
        if self._array.dtype == object:
            raise TritonModelException("DLPack does not have support for string tensors.")
        return to_dlpack(torch.from_numpy(self._array))


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None):
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(request: "InferenceRequest", name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


class ResponseSender:
    """Records every `send(response, flags)` in order; refuses a send after the final flag, as the real one."""

    def __init__(self):
        self.sent: list[tuple[InferenceResponse | None, int]] = []
        self.cancelled = False
        self._final = threading.Event()
        self._lock = threading.Lock()

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        with self._lock:
            if self._final.is_set():
                raise TritonModelException("Unable to send response. Response sender has been closed.")
            self.sent.append((response, flags))
            if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                self._final.set()

    def is_cancelled(self) -> bool:
        return self.cancelled

    def wait_final(self, timeout: float = 300.0) -> list[tuple[InferenceResponse | None, int]]:
        """The sends once the final flag came (for models that answer from their own threads)."""
        if not self._final.wait(timeout):
            raise TimeoutError(f"no final response within {timeout} s; sent so far: {self.sent}")
        return self.sent


@dataclass
class _Served:
    model: object
    decoupled: bool
    lock: threading.Lock  # Triton runs one execute at a time per model instance


_MODELS: dict[str, _Served] = {}
EXEC_LOG: list[str] = []  # model names that BLS requests reached, in order


def register_model(name: str, model, *, decoupled: bool) -> None:
    """Make `model` (an initialized TritonPythonModel) reachable by BLS requests to `name`."""
    _MODELS[name] = _Served(model, decoupled, threading.Lock())


def unregister_model(name: str) -> None:
    _MODELS.pop(name, None)


class InferenceRequest:
    """An incoming request (inputs + response sender) or a BLS request to a registered model."""

    def __init__(self, *, model_name: str = "", requested_output_names: list[str] | None = None,
                 inputs: list[Tensor] | None = None, request_id: str = ""):
        self.model_name = model_name
        self._outputs = list(requested_output_names or [])
        self._inputs = list(inputs or [])
        self._request_id = request_id
        self._sender = ResponseSender()

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._outputs

    def request_id(self) -> str:
        return self._request_id

    def get_response_sender(self) -> ResponseSender:
        return self._sender

    def is_cancelled(self) -> bool:
        return self._sender.cancelled

    def exec(self, decoupled: bool = False):
        """One response (decoupled=False) or an iterator of responses (decoupled=True), as the real BLS."""
        EXEC_LOG.append(self.model_name)
        served = _MODELS.get(self.model_name)
        if served is None:
            response = InferenceResponse(error=TritonError(
                f"Request for unknown model: '{self.model_name}' is not found"))
            return iter([response]) if decoupled else response
        if served.decoupled and not decoupled:
            return InferenceResponse(error=TritonError(
                f"model '{self.model_name}' is decoupled: use exec(decoupled=True)"))
        incoming = InferenceRequest(model_name=self.model_name, requested_output_names=self._outputs,
                                    inputs=self._inputs, request_id=self._request_id)
        with served.lock:
            responses = _stub_execute(served, incoming)
        responses = [self._requested(r) for r in responses]
        return iter(responses) if decoupled else responses[0]

    def async_exec(self, decoupled: bool = False):
        """An awaitable of exec's result, exec run in the running loop's default executor (as the real one)."""
        return asyncio.get_running_loop().run_in_executor(None, lambda: self.exec(decoupled=decoupled))

    def _requested(self, response: InferenceResponse) -> InferenceResponse:
        if response.has_error() or not self._outputs:
            return response
        return InferenceResponse([t for t in response.output_tensors() if t.name() in self._outputs])


_LOOP: list = []  # the stub's one event loop for async execute, made on first use
_LOOP_LOCK = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    with _LOOP_LOCK:
        if not _LOOP:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="standin-stub-loop", daemon=True).start()
            _LOOP.append(loop)
        return _LOOP[0]


def run_execute(model, requests: list, *, decoupled: bool):
    """model.execute(requests) as the stub calls it: a coroutine (async def execute) runs on the stub's
    event loop, in the background when decoupled (None comes back at once), else to its result."""
    returned = model.execute(requests)
    if not inspect.iscoroutine(returned):
        return returned
    future = asyncio.run_coroutine_threadsafe(returned, _event_loop())
    if decoupled:
        return None
    return future.result()


def _stub_execute(served: _Served, request: InferenceRequest) -> list[InferenceResponse]:
    """The stub's side of one execute: an exception fails the request with its message; a decoupled
    model's sends are its responses (a bare final flag arrives as an empty response)."""
    try:
        returned = run_execute(served.model, [request], decoupled=served.decoupled)
    except Exception as exc:  # the stub turns any exception of execute into the request's error
        error = InferenceResponse(error=TritonError(f"Failed to process the request(s) for model "
                                                    f"'{request.model_name}', message: {type(exc).__name__}: {exc}"))
        sent = request.get_response_sender().sent if served.decoupled else []
        return [response or InferenceResponse() for response, _ in sent] + [error]
    if not served.decoupled:
        if returned is None or len(returned) != 1:
            return [InferenceResponse(error=TritonError(
                f"model '{request.model_name}' returned {returned!r} for one request; expected one response"))]
        return list(returned)
    sent = request.get_response_sender().wait_final()
    return [response or InferenceResponse() for response, _ in sent]
