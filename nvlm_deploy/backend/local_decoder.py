"""The CPU decoder inside `tensorrt_llm_bls`'s own process (`decoder` = local: contracts.bls_decoder).

Why: a BLS request that calls the `tensorrt_llm` model crosses between processes four more times than
one that decodes itself (BLS stub -> server -> tensorrt_llm stub, and every response back), and a
Python model's round trip costs 2.2-3 ms at p50 on the 2-core machine here (benchmarks/
serving_overhead.py, its `floor` row): a whole text answer spent 5.1 ms in tritonserver beyond the
same work in-process with those crossings, 2.7 ms without (benchmarks/RESULTS.md, issue 12). On GPU
the decoder is the C++ backend, which only a BLS request reaches; there the BLS keeps calling
`tensorrt_llm`.

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
        scheduler: backend.llm_scheduler.LlmScheduler over the decoder, building its responses with
            `InProcess` (from_repository: the tensorrt_llm model's own settings).
    """

    def __init__(self, scheduler):
        self.scheduler, self.handler = scheduler, scheduler.handler

    @classmethod
    def from_repository(cls, root: Path, model: str) -> "LocalDecoder":
        """The decoder the repository's `model` (tensorrt_llm, cpu) serves, configured from its config.pbtxt."""
        from nvlm_deploy.backend.llm import LlmHandler
        from nvlm_deploy.backend.llm_scheduler import is_static, model_scheduler
        from nvlm_deploy.backend.pbutils import model_config, model_parameters
        from nvlm_deploy.errors import DeployError

        config = model_config(root, model)
        params = model_parameters(root, model, config)
        where = root / model / "config.pbtxt"
        if config.backend != "python":
            raise DeployError(f"{where} is not the CPU tensorrt_llm model (backend {config.backend!r}): a GPU "
                              "repository's BLS calls tensorrt_llm; re-package with --bls-decoder tensorrt_llm.")
        if is_static(params["gpt_model_type"]):
            raise DeployError(f"{where}: gpt_model_type {params['gpt_model_type']} (static batching) is served by the "
                              "tensorrt_llm model only; re-package with --bls-decoder tensorrt_llm.")
        return cls(model_scheduler(LlmHandler.from_parameters(root, params), InProcess,
                                   max_batch_size=config.max_batch_size, params=params))

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
