"""In-flight batching for the CPU `tensorrt_llm` model: one long-lived thread owns the decoder's batch.

`execute()` parses its requests and hands each over with its `Reply` (`submit`), then returns. The
scheduler thread loops: between two decoding steps it ends the requests that were cancelled (the
client went away, or a `stop` request named them) or ran past their deadline, admits waiting ones
into free slots (each prefilled alone; its first token goes out at once), runs one step for every
active request and sends each its new token. The final flag goes out exactly once per request,
through its Reply, which refuses anything later (pbutils.Reply). A finished request frees its slot;
nobody else's KV cache moves (runtime.decoder.InflightBatch).

This is the C++ backend's behaviour (`gpt_model_type` `inflight_fused_batching`); `V1` (static
batching) is kept for comparison: execute() then waits until its own requests are done, so a
request that arrives meanwhile waits for the whole batch.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from nvlm_deploy.backend.llm import LlmHandler, LlmRequest, output_tensors
from nvlm_deploy.backend.pbutils import Deadlines, Reply
from nvlm_deploy.errors import DeployError

INFLIGHT, STATIC = "inflight_fused_batching", "V1"  # tensorrtllm_backend's gpt_model_type values we serve
BATCHING = (INFLIGHT, "inflight_batching", STATIC, "v1")  # every value the C++ backend accepts


def is_static(gpt_model_type: str) -> bool:
    if gpt_model_type not in BATCHING:
        raise DeployError(f"tensorrt_llm parameter gpt_model_type {gpt_model_type!r} is not one of {', '.join(BATCHING)} "
                          "(tensorrtllm_backend's values): use inflight_fused_batching, or V1 for static batching.")
    return gpt_model_type in (STATIC, "v1")


def model_scheduler(handler: LlmHandler, pb, *, max_batch_size: int | None, params) -> "LlmScheduler":
    """The tensorrt_llm model's scheduler as its config sets it up: max_batch_size slots (at least one),
    its request_timeout_s parameter (the model's execute, and the BLS's local decoder)."""
    return LlmScheduler(handler, pb, slots=max(1, int(max_batch_size or 1)),
                        request_timeout_s=float(params["request_timeout_s"]))


@dataclass(eq=False)
class _Entry:
    request: LlmRequest
    reply: Reply
    request_id: str = ""
    decoding: object = None  # runtime.decoder.Decoding once admitted
    emitted: int = 0  # tokens already sent
    stop: bool = False  # a `stop` request named it


class LlmScheduler:
    """Args:
        handler: the model's LlmHandler (runtime and limits).
        slots: requests decoding at once (the repository's max_batch_size); more wait their turn.
        request_timeout_s: a request not finished this long after it arrived ends with an error (<= 0: never).
        pb: triton_python_backend_utils (responses are built with it).
    """

    def __init__(self, handler: LlmHandler, pb, *, slots: int, request_timeout_s: float = 0.0):
        from nvlm_deploy.runtime.decoder import InflightBatch

        self.handler, self.pb = handler, pb
        self.batch = InflightBatch(handler.runtime, slots=slots, max_len=handler.max_input_len + handler.max_output_len,
                                   normalize_log_probs=handler.normalize_log_probs)
        self.deadlines = Deadlines(request_timeout_s, lambda s: (
            f"generation did not finish within {s:g} s and was stopped (tensorrt_llm parameter request_timeout_s; "
            "ask for fewer tokens, or raise it in the repository's tensorrt_llm/config.pbtxt)."))
        self._waiting: deque[_Entry] = deque()
        self._active: list[_Entry] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="tensorrt_llm-scheduler", daemon=True)
        self._thread.start()

    # ---- called from execute() ----

    def submit(self, request: LlmRequest, reply: Reply, *, request_id: str = "") -> None:
        with self._cond:
            if self._closed:
                reply.fail("the tensorrt_llm model is being unloaded; retry once it is ready again.")
                return
            self._waiting.append(_Entry(request, reply, request_id))
            self._cond.notify()
        self.deadlines.watch(reply)

    def stop(self, request_id: str) -> None:
        """tensorrtllm_backend's `stop` request: end the requests with this id at the next step boundary."""
        with self._cond:
            for entry in [*self._waiting, *self._active]:
                if entry.request_id == request_id:
                    entry.stop = True
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (finalize()); requests still open end with an error, never silently."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        for entry in [*self._waiting, *self._active]:
            entry.reply.fail("the tensorrt_llm model was unloaded before this request finished.")
        self.deadlines.close()

    # ---- the scheduler thread ----

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._active:
                    self._cond.wait()
                if self._closed:
                    return
            self._drop_ended()
            self._admit()
            if self._active:
                self._step()

    def _ended(self, entry: _Entry) -> bool:
        """Cancelled, stopped or past its deadline (then its Reply is closed already)."""
        return entry.stop or entry.reply.closed or entry.reply.cancelled()

    def _drop_ended(self) -> None:
        ended = [e for e in self._active if self._ended(e)]  # only this thread changes _active
        if not ended:
            return
        with self._cond:
            self._active = [e for e in self._active if e not in ended]
        for entry in ended:
            self.batch.remove(entry.decoding)
            entry.reply.end_cancelled()  # only the flag: no response after a cancellation (a no-op after a deadline)

    def _admit(self) -> None:
        while self.batch.has_room:
            with self._cond:
                if not self._waiting:
                    return
                entry = self._waiting.popleft()
            if self._ended(entry):
                entry.reply.end_cancelled()
                continue
            try:
                entry.decoding = self.batch.add(entry.request.generation)
            except DeployError as exc:
                entry.reply.fail(str(exc))
                continue
            except Exception as exc:  # this request's failure only: the batch goes on
                entry.reply.fail(f"generation failed: {type(exc).__name__}: {exc}")
                continue
            if not entry.decoding.done:
                with self._cond:
                    self._active.append(entry)
            self._emit(entry)

    def _step(self) -> None:
        try:
            self.batch.step()
        except Exception as exc:  # one step holds every active request: all of them end with its message
            with self._cond:
                failed, self._active = self._active, []
            for entry in failed:
                self.batch.remove(entry.decoding)
                entry.reply.fail(f"generation failed: {type(exc).__name__}: {exc}")
            return
        with self._cond:
            active = list(self._active)
            self._active = [e for e in active if not e.decoding.done]
        for entry in active:
            self._emit(entry)

    def _emit(self, entry: _Entry) -> None:
        """Send what the last prefill or step produced: the new token (streaming) or the whole output at
        the end; the final flag rides on the last response."""
        result, request, done = entry.decoding.result, entry.request, entry.decoding.done
        new = result.tokens[entry.emitted:]
        entry.emitted = len(result.tokens)
        if request.streaming:
            if new:
                log_probs = None if result.output_log_probs is None else result.output_log_probs[-len(new):]
                entry.reply.send(self._response(output_tensors(new, log_probs, generated=len(new))), final=done)
            elif done:
                entry.reply.finish()
            return
        if done:
            prefix = [] if request.exclude_input else list(request.generation.input_ids)
            entry.reply.finish(self._response(output_tensors(prefix + list(result.tokens), result.output_log_probs,
                                                             result.cum_log_probs, generated=len(result.tokens))))

    def _response(self, outputs: dict[str, np.ndarray]):
        return self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(name, np.ascontiguousarray(array))
                                                         for name, array in outputs.items()])
