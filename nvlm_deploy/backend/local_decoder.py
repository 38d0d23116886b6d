"""The CPU decoder inside `tensorrt_llm_bls`'s own process (`decoder` = local: contracts.bls_decoder).

Why: a BLS request that calls the `tensorrt_llm` model crosses between processes four more times than
one that decodes itself (BLS stub -> server -> tensorrt_llm stub, and every response back), and a
Python model's round trip costs 2.2-3 ms at p50 on the 2-core machine here (benchmarks/
serving_overhead.py, its `floor` row): a whole text answer spent 5.1 ms in tritonserver beyond the
same work in-process with those crossings, 2.7 ms without (benchmarks/RESULTS.md, issue 12). On GPU the decoder is the C++ backend, which
only a BLS request reaches; there the BLS keeps calling `tensorrt_llm`.

The decoder is the `tensorrt_llm` model's own (its LlmHandler and in-flight scheduler, built from its
config.pbtxt parameters), so answers, limits, refusals, deadlines and batching are the same; only
the transport differs. The `tensorrt_llm` model still loads for the `ensemble`: a CPU repository holds
the decoder's weights twice (`package --bls-decoder tensorrt_llm` keeps one copy).

Responses reach the BLS's event loop as the dicts a BLS response gives (`output_ids`,
`output_log_probs`, `cum_log_probs`); an error as RequestError with the model's message. Closing the
generator early (the client cancelled, the request timed out) ends the generation at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nvlm_deploy.backend.request_inputs import RequestError

FINAL = 1  # TRITONSERVER_RESPONSE_COMPLETE_FINAL's value; only compared with itself here


@dataclass(frozen=True)
class _Tensor:
    name: str
    array: np.ndarray


@dataclass(frozen=True)
class _Error:
    text: str

    def message(self) -> str:
        return self.text


@dataclass(frozen=True)
class _Response:
    output_tensors: list
    error: _Error | None = None


class InProcess:
    """The pb_utils names the scheduler and pbutils.Reply build responses with, as plain objects."""

    TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    Tensor = _Tensor
    TritonError = _Error

    @staticmethod
    def InferenceResponse(output_tensors=(), error=None) -> _Response:  # noqa: N802 (pb_utils' name)
        return _Response(list(output_tensors), error)


class _LoopSender:
    """A response sender that hands each (response, final) to an asyncio loop; the scheduler's thread calls it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.items = loop, asyncio.Queue()
        self.cancelled = False

    def send(self, response=None, flags: int = 0) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, (response, flags == FINAL))
        except RuntimeError:  # the loop is closed (the BLS is being unloaded): nobody is waiting
            self.cancelled = True
            raise

    def is_cancelled(self) -> bool:
        return self.cancelled


class LocalDecoder:
    """Args:
        handler: backend.llm.LlmHandler (the decoder and its limits).
        slots: requests decoding at once (tensorrt_llm's max_batch_size).
        request_timeout_s: tensorrt_llm's request_timeout_s (<= 0: none).
    """

    def __init__(self, handler, *, slots: int, request_timeout_s: float = 0.0):
        from nvlm_deploy.backend.llm_scheduler import LlmScheduler

        self.handler = handler
        self.scheduler = LlmScheduler(handler, InProcess, slots=slots, request_timeout_s=request_timeout_s)

    @classmethod
    def from_repository(cls, root: Path, model: str) -> "LocalDecoder":
        """The decoder the repository's `model` (tensorrt_llm, cpu) serves, configured from its config.pbtxt."""
        from nvlm_deploy.backend.llm import LlmHandler
        from nvlm_deploy.backend.llm_scheduler import is_static
        from nvlm_deploy.errors import DeployError
        from nvlm_deploy.serve.template import parse_model_config

        path = root / model / "config.pbtxt"
        config = parse_model_config(path.read_text(encoding="utf-8"), source=str(path))
        params = {name: value.string_value for name, value in config.parameters.items()}
        if "checkpoint_dir" not in params:
            raise DeployError(f"{path} is not the CPU tensorrt_llm model (no checkpoint_dir): a GPU repository's BLS "
                              "calls tensorrt_llm; re-package with --bls-decoder tensorrt_llm.")
        if is_static(params["gpt_model_type"]):
            raise DeployError(f"{path}: gpt_model_type {params['gpt_model_type']} (static batching) is served by the "
                              "tensorrt_llm model only; re-package with --bls-decoder tensorrt_llm.")
        return cls(LlmHandler.from_parameters(root, params), slots=max(1, config.max_batch_size),
                   request_timeout_s=float(params["request_timeout_s"]))

    async def generate(self, inputs) -> AsyncIterator[dict]:
        """tensorrt_llm's outputs for one request's tensors (a BLS `_generate`); RequestError when refused."""
        from nvlm_deploy.backend.pbutils import Reply

        try:  # refused before it is queued, with the tensorrt_llm model's messages
            request = self.handler.parse(inputs)
        except RequestError:
            raise
        except Exception as exc:
            raise RequestError(f"bad request: {type(exc).__name__}: {exc}") from None
        sender = _LoopSender(asyncio.get_running_loop())
        self.scheduler.submit(request, Reply(InProcess, sender))
        finished = False
        try:
            while True:
                response, final = await sender.items.get()
                if response is not None:
                    if response.error is not None:
                        finished = True
                        raise RequestError(response.error.message())
                    yield {tensor.name: tensor.array for tensor in response.output_tensors}
                if final:
                    finished = True
                    return
        finally:
            if not finished:  # closed early: the scheduler drops it before its next step (Reply.cancelled)
                sender.cancelled = True

    def close(self) -> None:
        self.scheduler.close()
