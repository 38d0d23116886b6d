"""Small glue between Triton's `triton_python_backend_utils` and the handlers (used by model.py files).

`pb` is the `triton_python_backend_utils` module, passed in: it exists only inside the stub.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def model_setup(args: dict) -> tuple[dict, dict[str, str], Path]:
    """(model_config, string parameters, repository root) from initialize()'s args."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    root = Path(args["model_repository"]).resolve().parent  # args["model_repository"] is <repo>/<model>
    return config, params, root


def model_config(root: Path, model: str):
    """Another model's config (a Triton ModelConfig), read from `<root>/<model>/config.pbtxt`."""
    from nvlm_deploy.serve.template import parse_model_config

    path = root / model / "config.pbtxt"
    return parse_model_config(path.read_text(encoding="utf-8"), source=str(path))


def model_parameters(root: Path, model: str, config=None) -> dict[str, str]:
    """Another model's string parameters (of `config` when already read, else its config.pbtxt)."""
    config = config or model_config(root, model)
    return {name: value.string_value for name, value in config.parameters.items()}


def input_names(config: dict) -> list[str]:
    return [i["name"] for i in config["input"]]


def request_inputs(pb, request, names: list[str], *, copy: bool = False) -> dict[str, np.ndarray | None]:
    """name -> numpy array (None when an optional input was not sent).

    copy=True for arrays used after `execute` returns (a decoupled model's worker threads): `as_numpy()`
    views the request's shared-memory buffer, which the Python backend frees once execute is done.
    """
    arrays = _arrays(pb.get_input_tensor_by_name, request, names)
    if copy:
        return {name: None if array is None else np.array(array, copy=True) for name, array in arrays.items()}
    return arrays


def response_inputs(pb, response, names: list[str], *, copy: bool = False) -> dict[str, np.ndarray | None]:
    """A BLS response's outputs, name -> numpy array (None when absent); copy=True for arrays that
    outlive the response object (as_numpy views its shared memory)."""
    arrays = _arrays(pb.get_output_tensor_by_name, response, names)
    if copy:
        return {name: None if array is None else np.array(array, copy=True) for name, array in arrays.items()}
    return arrays


def _arrays(get, source, names: list[str]) -> dict[str, np.ndarray | None]:
    tensors_by_name = {name: get(source, name) for name in names}
    return {name: None if t is None else t.as_numpy() for name, t in tensors_by_name.items()}


def tensors(pb, arrays: dict) -> list:
    """pb_utils.Tensor per name; values already pb_utils.Tensor (same name) pass through."""
    return [value if isinstance(value, pb.Tensor) else pb.Tensor(name, np.ascontiguousarray(value))
            for name, value in arrays.items()]


def error_response(pb, message: str):
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))


def text_tensor(text: str) -> np.ndarray:
    """`text_output` of one response: 1-D, one entry per beam (tensorrtllm_backend's clients read
    `output[0].decode()`)."""
    return np.array([text.encode("utf-8")], dtype=object)  # [beam = 1]


def table_tensor(pb, name: str, table: np.ndarray, data_type: str):
    """A float32 prompt table as a pb_utils.Tensor of the decoder's precision (Triton `data_type`).

    The C++ backend refuses a table whose dtype differs from the engine's
    (serve/upstream/tensorrtllm_backend_1.2.json, prompt_table_dtype); NumPy has no bf16, so a bf16
    table goes through torch and dlpack.
    """
    from nvlm_deploy.contracts.precision import from_triton

    target = from_triton(data_type)
    if target.numpy is None:
        import torch

        return pb.Tensor.from_dlpack(name, torch.from_numpy(np.ascontiguousarray(table)).to(target.torch_dtype()))
    return pb.Tensor(name, np.ascontiguousarray(table, dtype=target.numpy_dtype()))


def is_decoupled(config: dict) -> bool:
    """The model config's transaction policy (package --decoupled-mode)."""
    return bool((config.get("model_transaction_policy") or {}).get("decoupled", False))


class CollectedResponses:
    """A response sender's stand-in for non-decoupled models: keeps what would be sent, so `execute` can
    return one response per request (Triton's rule without a decoupled transaction policy)."""

    def __init__(self):
        self.responses: list = []

    def send(self, response=None, flags: int = 0) -> None:
        if response is not None:
            self.responses.append(response)

    def is_cancelled(self) -> bool:
        return False

    def single(self, pb):
        """The one response to return: an error if any was sent, else the tensors of every response
        concatenated along the first axis (one row per answer)."""
        for response in self.responses:
            if response.has_error():
                return response
        if not self.responses:
            return error_response(pb, "the request was cancelled.")
        if len(self.responses) == 1:
            return self.responses[0]
        merged: dict[str, list] = {}
        for response in self.responses:
            for tensor in response.output_tensors():
                merged.setdefault(tensor.name(), []).append(tensor.as_numpy())
        return pb.InferenceResponse(output_tensors=[pb.Tensor(name, np.concatenate(arrays))
                                                    for name, arrays in merged.items()])


class Reply:
    """The one owner of a request's responses: every send of every thread goes through it.

    It sends in order under its lock, sends the final flag exactly once, and refuses (returns False)
    anything after it, so a worker thread that outlives its request, a deadline that fires while a
    step is running, or a cancelled client can never make a second final or a late send (what
    crashes Triton's Python backend in TRITONBACKEND_ResponseFactorySendFlags). A send that fails
    (the sender was closed under us) closes the reply instead of raising into the worker.

    Args:
        pb: triton_python_backend_utils.
        sender: the request's response sender, or CollectedResponses for a non-decoupled model.
        cancelled: whether the client cancelled (default: the sender's is_cancelled()).
        check_period_s: ask Triton at most this often, the first time one period after the reply was made
            (0: every time `cancelled()` is called). A request answered within one period never asks: each
            query is a round trip to the server process, 0.3 ms or more before a whole answer could go out.
    """

    def __init__(self, pb, sender, *, cancelled: Callable[[], bool] | None = None, check_period_s: float = 0.0):
        self.pb, self.sender = pb, sender
        self._is_cancelled = cancelled or getattr(sender, "is_cancelled", None)
        self._check_period_s = check_period_s
        self._next_check = time.monotonic() + check_period_s if check_period_s else 0.0
        self._lock = threading.Lock()
        self.done = threading.Event()  # set once the final flag went out (or could not)
        self._cancelled = False

    @property
    def closed(self) -> bool:
        return self.done.is_set()

    def send(self, response=None, *, final: bool = False) -> bool:
        """Send one response (final: with the final flag; response None: the flag alone); False if refused."""
        with self._lock:
            if self.done.is_set():
                return False
            if final:
                self.done.set()
            try:
                self.sender.send(response, flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)
            except Exception:  # closed by Triton (client gone, stub shutting down): nothing more can go out
                self.done.set()
                return False
            return True

    def finish(self, response=None) -> bool:
        return self.send(response, final=True)

    def fail(self, message: str) -> bool:
        return self.finish(error_response(self.pb, message))

    def cancelled(self) -> bool:
        """True once the client cancelled (asked of Triton until then; never after the final flag)."""
        if self._cancelled:
            return True
        if self.done.is_set() or self._is_cancelled is None:
            return False
        if self._check_period_s:  # each query is a round trip to the server process: at most one per period
            now = time.monotonic()
            if now < self._next_check:
                return False
            self._next_check = now + self._check_period_s
        try:
            self._cancelled = bool(self._is_cancelled())
        except Exception:  # the sender is gone: treat as cancelled, nobody is listening
            self._cancelled = True
        return self._cancelled

    def end_cancelled(self) -> bool:
        """The final flag alone: after a cancellation nothing but the flag that frees the request goes out."""
        return self.finish(None)


class Deadlines:
    """Ends every request still open `seconds` after it arrived with an error, from its own thread.

    Its own thread, so that a hung decoding step or a BLS call that never answers cannot keep a client
    waiting: the error goes out through the request's Reply, which then refuses whatever the stuck
    worker sends later.

    Args:
        seconds: the deadline (<= 0: none).
        message: the error text, given the deadline in seconds.
    """

    def __init__(self, seconds: float, message: Callable[[float], str]):
        self.seconds, self.message = seconds, message
        self._open: list[tuple[float, Reply]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if seconds > 0:
            self._thread = threading.Thread(target=self._watch, name="deadlines", daemon=True)
            self._thread.start()

    def watch(self, reply: Reply) -> None:
        if self._thread is not None:
            with self._lock:
                self._open.append((time.monotonic() + self.seconds, reply))

    def _watch(self) -> None:
        period = min(1.0, max(0.05, self.seconds / 4))
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                expired = [reply for due, reply in self._open if due <= now and not reply.closed]
                self._open = [(due, reply) for due, reply in self._open if due > now and not reply.closed]
            for reply in expired:
                reply.fail(self.message(self.seconds))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
