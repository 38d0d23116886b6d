"""tensorrt_llm_bls: the main entry point (nvlm_deploy.backend.bls).

Calls preprocessing (text-only requests are preprocessed here, by the same handler with the
preprocessing model's parameters: one model round trip less), vision_encoder only when the request
has images, tensorrt_llm (decoupled) or, with the `decoder` parameter local (the CPU default:
contracts.bls_decoder), the CPU decoder in this process (backend.local_decoder: no model round trip),
and detokenizes incrementally so streamed chunks concatenate to exactly the whole text.

An asyncio model (`async def execute`): python_backend runs the coroutine on the stub's one event
loop, in the background for a decoupled model and to completion for a non-decoupled one
(triton-inference-server/python_backend r24.10 = Triton 2.51, the installed server: README.md
"Async Execute" and "Decoupled BLS"/`async_exec(decoupled=True)`; src/pb_stub.cc `Stub::RunCoroutine`,
`"async_exec"`). Every request (and every batch row) is a task on that loop, so requests still reach
tensorrt_llm together and batch, but every pb_utils object is made, read and sent from the loop's
one thread. Only the calls that block on the server process run in `self.blocking`'s threads:
`InferenceRequest.exec` (what `async_exec` itself does: `loop.run_in_executor(None, exec)`, pb_stub.cc;
our own pool because the default one has min(32, cpus + 4) threads and 64 streams each wait on one)
and the response iterator's `next` (both release the GIL while they wait on the server process).
A generation's exec and all its `next` calls run in one pool job (`_Drain`), which hands each
response to the loop as it arrives: one thread switch per response instead of three (loop -> pool
thread -> loop for every `next`). Text-only prompts up to INLINE_TOKENIZE_BYTES are tokenized on the
loop itself (0.3 ms for a short prompt, less than the two thread switches a pool job costs); longer
ones in the pool (no pb_utils). Timestamped on the demo model (2 shared cores): each takes a few
tenths of a millisecond off a whole answer's path, at the edge of what benchmarks/serving_overhead.py
can resolve on a shared machine; what remains are the crossings between processes.

Why (issue 14): under 64 streaming clients the stub's Python heap was corrupted ("malloc(): unaligned
fastbin chunk detected", segfaults in libpython's _PyObject_Malloc). The installed python_backend frees
Python objects without the GIL: a finished BLS response iterator is erased from the stub's map on its
stub-to-parent thread, and if that drops the last reference, its responses' numpy arrays are freed there
(ITERATOR_GRACE_S). Each request thread dropped its iterator right after the last response, so that race
was lost often; requests on one event loop lose it rarely (one 60 s soak in four), and keeping each
iterator a little after its end closes it. Threads calling pb_utils from every request also made the
heap races more likely (sends serialized on one thread, the old code still crashed).

Every send goes through the request's pbutils.Reply (final flag exactly once, nothing after it);
inputs are copied inside execute() before its first await. A client that cancels, or a request past
`request_timeout_s` (which then gets an error; asyncio.wait_for, on the loop), ends its generation:
the BLS sends tensorrt_llm a `stop` request (tensorrtllm_backend's) naming it.
"""

import asyncio
import collections
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import triton_python_backend_utils as pb_utils

from nvlm_deploy.preprocess.tokenizer import Tokenizer
from nvlm_deploy.backend import pbutils
from nvlm_deploy.backend import request_inputs as rq
from nvlm_deploy.contracts.client_tensors import (BATCH_INDEX, CUM_LOG_PROBS, NUM_INPUT_TOKENS, NUM_OUTPUT_TOKENS,
                                                  OUTPUT_LOG_PROBS, SEQUENCE_INDEX, TEXT_OUTPUT)
from nvlm_deploy.backend.bls import BlsHandler, make_decode, split_rows
from nvlm_deploy.backend.preprocessing import PreprocessingHandler
from nvlm_deploy.backend.detokenize import byte_level_unfinished
from nvlm_deploy.backend.local_decoder import LocalDecoder
from nvlm_deploy.contracts import bls_decoder
from nvlm_deploy.backend.request_inputs import RequestError

PRE_OUTPUTS = ["INPUT_ID", "REQUEST_INPUT_LEN", "REQUEST_OUTPUT_LEN", "PIXEL_VALUES", "OUT_END_ID", "OUT_PAD_ID",
               "STOP_WORDS_IDS", "BAD_WORDS_IDS"]
LLM_OUTPUTS = ["output_ids", "output_log_probs", "cum_log_probs"]
# the BLS asks Triton whether its client cancelled at most this often, the first time this long after the
# request arrived (a round trip to the server process per query; tensorrt_llm itself checks before every step,
# so a stopped request ends one step after this)
CANCEL_CHECK_PERIOD_S = 0.02
# preprocessing inputs that carry images (or video): a request with none of them is text-only
MEDIA_INPUTS = ("IMAGE_INPUT", "IMAGE_BYTES", "IMAGE_URL", "VIDEO_BYTES", "IMAGE_FILES")
ROW_TENSORS = {b: np.array([b], np.int32) for b in range(64)}  # batch_index values, made once
SEQUENCE_ZERO = np.array([0], np.int32)
# what a stop request carries besides `stop` and the request_id: tensorrt_llm's required inputs
# threads for the calls that block on the server process (exec, the next streamed response, tokenizing):
# one per stream that can be waiting at once, beyond the soak's 64 clients
BLOCKING_THREADS = 256
# a text-only request whose text inputs (prompt, history, stop/bad words) total at most this many bytes is
# tokenized on the event loop: measured on the demo tokenizer, 0.1 ms for a 24-byte prompt and 0.3-0.45 ms for
# 1 KiB, about what handing it to a pool thread and back costs; a longer one (4 KiB: 1.1-1.6 ms) in a pool
# thread, so that it cannot hold up the other streams' responses that long
INLINE_TOKENIZE_BYTES = 1024
_END = object()  # the response iterator's end
# tensorrt_llm always ends a request with output_ids or an error. Seen under 64 clients (issue 14): about one
# in five requests that tensorrt_llm refuses at once (NaN temperature, top_p 1.5: its error sent from its
# execute) came back to this BLS as a stream with no response at all, its error lost in the stub's BLS
# response iterator; such a request must still be refused, never answered with empty text.
EMPTY_STREAM = ("tensorrt_llm ended the request without an answer or an error message; it refuses requests "
                "whose sampling parameters are out of range (temperature, top_p, top_k, penalties): check them.")
# python_backend r24.10 (the installed Triton 2.51) erases a finished BLS response iterator from the stub's
# response_iterator_map_ on its stub-to-parent thread, without the GIL (src/pb_stub.cc SendCleanupId, from
# ServiceStubToParentRequests). If that erase drops the last reference, the iterator's responses go with it
# and ~PbTensor frees their numpy arrays without the GIL (fixed upstream after 24.10: python_backend PR #390,
# commit b771f4f "Hold GIL when deleting numpy array"): a corrupted Python heap. So every iterator is kept
# this long after its end, and our reference, dropped on the loop under the GIL, is the last.
ITERATOR_GRACE_S = 2.0
STOP_REQUEST = {"input_ids": np.array([[0]], np.int32), "input_lengths": np.array([[1]], np.int32),
                "request_output_len": np.array([[1]], np.int32), "stop": np.array([[True]])}


class TritonPythonModel:
    def initialize(self, args):
        config, params, root = pbutils.model_setup(args)
        self.names = pbutils.input_names(config)
        self.models = {k: params[f"{k}_model"] for k in ("preprocessing", "vision_encoder", "tensorrt_llm")}
        assets = root / params["assets_dir"]
        # decoder local (contracts.bls_decoder; the CPU default): the decoder runs in this process, no tensorrt_llm calls
        self.local = None
        if params.get(bls_decoder.PARAMETER, bls_decoder.TENSORRT_LLM) == bls_decoder.LOCAL:
            self.local = LocalDecoder.from_repository(root, self.models["tensorrt_llm"])
        self.handler = BlsHandler(make_decode(Tokenizer.load(assets)), preprocess=self._preprocess, encode=self._encode,
                                  generate=self._generate if self.local is None else self.local.generate,
                                  unfinished=byte_level_unfinished(assets / "tokenizer.json"),
                                  extra_ids=_extra_ids(params, assets))
        # text-only requests are preprocessed here, by the preprocessing model's own handler and parameters:
        # the same ids without a model round trip; requests with images go to its instances
        self.text_preprocessing = PreprocessingHandler.from_parameters(
            root, pbutils.model_parameters(root, self.models["preprocessing"]))
        # package --decoupled-mode: this model and tensorrt_llm are packaged alike
        self.decoupled = pbutils.is_decoupled(config)
        self.timeout_s = float(params["request_timeout_s"])  # <= 0: none
        self.blocking = ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="bls-blocking")
        self.retired = collections.deque()  # (drop after, response iterator): see ITERATOR_GRACE_S

    async def execute(self, requests):
        tasks, replies = [], []
        for request in requests:
            sender = request.get_response_sender() if self.decoupled else pbutils.CollectedResponses()
            reply = pbutils.Reply(pb_utils, sender, cancelled=None if self.decoupled else request.is_cancelled,
                                  check_period_s=CANCEL_CHECK_PERIOD_S)
            replies.append(reply)
            try:  # copied before the first await: the request's buffers belong to the stub
                inputs = pbutils.request_inputs(pb_utils, request, self.names, copy=True)
            except Exception as exc:
                reply.fail(f"bad request: {type(exc).__name__}: {exc}")
                continue
            tasks.append(asyncio.ensure_future(self._serve_in_time(inputs, reply)))
        await asyncio.gather(*tasks)  # concurrently: the requests reach tensorrt_llm together
        if self.decoupled:
            return None
        return [reply.sender.single(pb_utils) for reply in replies]

    def finalize(self):
        self.blocking.shutdown(wait=False, cancel_futures=True)
        if self.local is not None:
            self.local.close()

    async def _serve_in_time(self, inputs, reply):
        """_serve, ended with an error after request_timeout_s (its generation stopped in tensorrt_llm)."""
        try:
            if self.timeout_s > 0:
                await asyncio.wait_for(self._serve(inputs, reply), self.timeout_s)
            else:
                await self._serve(inputs, reply)
        except asyncio.TimeoutError:  # wait_for ran out (the builtin TimeoutError since Python 3.11)
            reply.fail(f"the request did not finish within {self.timeout_s:g} s and was stopped (tensorrt_llm_bls "
                       "parameter request_timeout_s; ask for fewer tokens, or raise it in the repository's "
                       "config.pbtxt).")
        except Exception as exc:  # a bug must fail the request with its message, never hang the stream
            reply.fail(f"internal error: {type(exc).__name__}: {exc}")

    async def _blocking(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.blocking, function, *args)

    async def _serve(self, inputs, reply):
        """One request; a batch of B rows is B answers (each response says its batch_index), the last
        response of the last row to finish carries the final flag. Rows are tasks of the one loop."""
        try:
            if not self.decoupled and rq.first(inputs.get("stream"), False):
                raise RequestError("streaming needs a decoupled repository; this one was packaged with "
                                   "--decoupled-mode false: send stream=false, or re-package.")
            rows = split_rows(inputs)
        except Exception as exc:
            reply.fail(str(exc) if isinstance(exc, RequestError) else f"bad request: {type(exc).__name__}: {exc}")
            return
        remaining = [len(rows)]  # no lock: only the loop's thread touches it

        def finish_row(response):
            remaining[0] -= 1
            last = remaining[0] == 0
            if response is not None:
                reply.send(response, final=last)
            elif last:
                reply.end_cancelled()

        def ended():
            return reply.closed or reply.cancelled()

        async def serve_row(b, inputs):
            def send(text, usage):
                outputs = [pb_utils.Tensor(TEXT_OUTPUT.name, pbutils.text_tensor(text)),
                           pb_utils.Tensor(BATCH_INDEX.name, ROW_TENSORS.get(b, np.array([b], np.int32))),
                           pb_utils.Tensor(SEQUENCE_INDEX.name, SEQUENCE_ZERO)]
                if usage is None:
                    reply.send(pb_utils.InferenceResponse(output_tensors=outputs))
                    return
                outputs += [pb_utils.Tensor(NUM_INPUT_TOKENS.name, np.array([usage.num_input_tokens], np.int32)),
                            pb_utils.Tensor(NUM_OUTPUT_TOKENS.name, np.array([usage.num_output_tokens], np.int32)),
                            pb_utils.Tensor(CUM_LOG_PROBS.name, np.array([usage.cum_log_prob], np.float32)),
                            pb_utils.Tensor(OUTPUT_LOG_PROBS.name,
                                            np.array([usage.output_log_probs], np.float32).reshape(1, -1))]
                finish_row(pb_utils.InferenceResponse(output_tensors=outputs))

            try:
                if not await self.handler.run_async(inputs, send, ended=ended):
                    finish_row(None)  # cancelled: no response, only the final flag if last
            except RequestError as exc:
                finish_row(pbutils.error_response(pb_utils, str(exc)))
            except Exception as exc:  # a bug must fail this row with its message, never hang the stream
                finish_row(pbutils.error_response(pb_utils, f"internal error: {type(exc).__name__}: {exc}"))

        if len(rows) == 1:  # the usual request: no task of its own (one loop turn less)
            await serve_row(0, rows[0])
        else:
            await asyncio.gather(*(serve_row(b, row) for b, row in enumerate(rows)))

    def _request(self, model, inputs, outputs, request_id=""):
        return pb_utils.InferenceRequest(model_name=self.models[model], requested_output_names=outputs,
                                         inputs=pbutils.tensors(pb_utils, inputs), request_id=request_id)

    async def _exec(self, request, decoupled=False):
        """request.exec in a blocking thread: python_backend's async_exec, on our pool (module docstring)."""
        return await self._blocking(lambda: request.exec(decoupled=decoupled))

    async def _preprocess(self, inputs):
        if not any(name in inputs for name in MEDIA_INPUTS):
            try:  # tokenizing touches no pb_utils: a long prompt goes off the loop
                if _text_bytes(inputs) <= INLINE_TOKENIZE_BYTES:
                    return self.text_preprocessing.run(inputs)
                return await self._blocking(self.text_preprocessing.run, inputs)
            except RequestError:
                raise
            except Exception as exc:  # as the preprocessing model answers it
                raise RequestError(f"bad request: {type(exc).__name__}: {exc}") from None
        response = await self._exec(self._request("preprocessing", inputs, PRE_OUTPUTS))
        if response.has_error():
            raise RequestError(response.error().message())
        return pbutils.response_inputs(pb_utils, response, PRE_OUTPUTS, copy=True)  # used after it is dropped

    async def _encode(self, pixel_values):
        response = await self._exec(self._request("vision_encoder", {"pixel_values": pixel_values},
                                                  ["prompt_embedding_table", "prompt_vocab_size"]))
        if response.has_error():
            raise RequestError(response.error().message())
        # copied out of the response, whose shared memory goes with it when this returns (the table is read
        # again when the tensorrt_llm request is sent); a bf16 table has no numpy view, so it goes through torch
        table = pb_utils.get_output_tensor_by_name(response, "prompt_embedding_table")
        try:
            table = np.array(table.as_numpy(), copy=True)
        except Exception:  # bf16 (GPU deployments): a torch copy, handed over by dlpack
            import torch

            table = pb_utils.Tensor.from_dlpack("prompt_embedding_table", torch.from_dlpack(table.to_dlpack()).clone())
        return table, np.array(pb_utils.get_output_tensor_by_name(response, "prompt_vocab_size").as_numpy(), copy=True)

    def _retire(self, responses):
        """Keep a finished (or abandoned) response iterator ITERATOR_GRACE_S more; drop the ones due (loop thread)."""
        now = asyncio.get_running_loop().time()
        while self.retired and self.retired[0][0] <= now:
            self.retired.popleft()
        self.retired.append((now + ITERATOR_GRACE_S, responses))

    async def _next(self, responses):
        """The stream's next response (None at its end), waited for in a blocking thread."""
        response = await self._blocking(next, responses, _END)
        return None if response is _END else response

    async def _generate(self, inputs):
        """tensorrt_llm's responses; closed early (cancelled, timed out), it stops the generation there."""
        if not self.decoupled:
            response = await self._exec(self._request("tensorrt_llm", inputs, LLM_OUTPUTS))
            if response.has_error():
                raise RequestError(response.error().message())
            yield pbutils.response_inputs(pb_utils, response, LLM_OUTPUTS)
            return
        request_id = f"bls-{uuid.uuid4().hex}"
        drain = _Drain(asyncio.get_running_loop(), self._retire)
        self.blocking.submit(drain.run, self._request("tensorrt_llm", inputs, LLM_OUTPUTS, request_id))
        finished, answered = False, False
        try:
            while (response := await drain.next()) is not None:
                if response.has_error():
                    finished = True
                    raise RequestError(response.error().message())
                outputs = pbutils.response_inputs(pb_utils, response, LLM_OUTPUTS)
                if outputs["output_ids"] is not None:
                    answered = True
                    yield outputs
            finished = True
            if not answered:
                raise RequestError(EMPTY_STREAM)
        finally:
            if not finished:
                await drain.settled.wait()  # exec returns with the first response: a stop must come after it
                if drain.started:
                    await self._stop(request_id, drain)

    async def _stop(self, request_id, drain):
        """tensorrtllm_backend's stop request, then the end of the stopped stream (it ends within one step)."""
        stop = await self._exec(self._request("tensorrt_llm", STOP_REQUEST, [], request_id), decoupled=True)
        try:
            while await self._next(stop) is not None:
                pass
        finally:
            self._retire(stop)
        await drain.ended.wait()


class _Drain:
    """One generation's `request.exec(decoupled=True)` and every `next` of its response iterator, in one pool thread;
    each response goes to the loop as it arrives (call_soon_threadsafe). The loop keeps the iterator and
    retires it (ITERATOR_GRACE_S) once the stream has ended, whether or not anyone still reads it.

    Args:
        loop: the model's event loop.
        retire: TritonPythonModel._retire (called on the loop).
    """

    def __init__(self, loop, retire):
        self.loop, self.retire = loop, retire
        self.items = asyncio.Queue()  # responses, then None at the end; an exception if exec failed
        self.ended = asyncio.Event()  # set on the loop once the stream ended (or exec failed)
        self.settled = asyncio.Event()  # set on the loop once exec returned or failed
        self.started = False  # exec returned a stream (a stop request can name it)
        self.iterator = None

    def run(self, request):
        """Pool thread: exec, then every response, then the end (an error of exec or next: raised to the reader)."""
        try:
            iterator = request.exec(decoupled=True)
        except BaseException as exc:
            self._post(self._failed, exc)
            return
        self._post(self._opened, iterator)
        try:
            while (response := next(iterator, _END)) is not _END:
                self._post(self.items.put_nowait, response)
                del response  # the loop holds it now
        except BaseException as exc:
            self._post(self.items.put_nowait, exc)
        del iterator  # the loop's reference is the last: it retires the iterator
        self._post(self._finished, None)

    async def next(self):
        """The next response, or None at the stream's end."""
        item = await self.items.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _post(self, callback, value):
        try:
            self.loop.call_soon_threadsafe(callback, value)
        except RuntimeError:  # the loop is closed (the model is being unloaded): nobody is waiting
            pass

    # ---- on the loop ----

    def _opened(self, iterator):
        self.iterator, self.started = iterator, True
        self.settled.set()

    def _failed(self, exc):
        self.items.put_nowait(exc)
        self.settled.set()
        self.ended.set()

    def _finished(self, _):
        self.items.put_nowait(None)
        self.ended.set()
        iterator, self.iterator = self.iterator, None
        self.retire(iterator)


def _text_bytes(inputs) -> int:
    """Bytes of a request's text inputs (object arrays of bytes or str)."""
    total = 0
    for value in inputs.values():
        if value is not None and value.dtype == object:
            total += sum(len(v) for v in value.reshape(-1) if isinstance(v, (bytes, str)))
    return total


def _extra_ids(params, assets):
    """package --prompt-table-extra-ids (GPU): prompt_table_extra_ids from the tiles' pixels, else None."""
    if params.get("prompt_table_extra_ids", "false") != "true":
        return None
    import functools

    from nvlm_deploy.backend.tile_cache import token_extra_ids
    from nvlm_deploy.config import NvlmConfig

    return functools.partial(token_extra_ids, vocab_size=NvlmConfig.from_hf(assets).llm.vocab_size)

