"""Blocking gRPC client. Every request goes over the gRPC stream: the models are decoupled (streaming
needs it), and Triton refuses unary ModelInfer on decoupled models; a non-streamed answer is the
single response (or, for the ensemble, the responses joined).

The stream stays open between requests that end normally: opening one costs 1-4 ms on this
project's CPU machines, most of a text request's serving overhead (benchmarks/serving_overhead.py).
A request that ends any other way (error, stall, the caller stopping early) closes it, and Triton
cancels what was still running on it; the next request opens a new one."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator, Sequence

from nvlm_deploy.client.tensors import (DEFAULT_MODEL, DEFAULT_TIMEOUT_S, ChatChunk, ChatRequest, ServerError, chunk,
                                       infer_inputs, read_images, stalled, transport_failure)
from nvlm_deploy.errors import DeployError


class NvlmClient:
    """Args: url: "host:port" of the server's gRPC endpoint; model: entry point (tensorrt_llm_bls or
    ensemble); timeout: seconds to wait for each response (the first one included) before the stream
    counts as stalled (ServerUnavailable); None waits forever; keep_stream: keep the gRPC stream open
    between requests (default; False opens and closes one per request).

    A server that cannot be reached or goes away mid-request raises ServerUnavailable (a DeployError)
    with the address and what to do; a request the server refuses raises ServerError with its message."""

    def __init__(self, url: str, *, model: str = DEFAULT_MODEL, timeout: float | None = DEFAULT_TIMEOUT_S,
                 keep_stream: bool = True):
        import tritonclient.grpc as grpcclient

        self._module = grpcclient
        self.url, self.model, self.timeout, self.keep_stream = url, model, timeout, keep_stream
        self._client = grpcclient.InferenceServerClient(url)
        self._results: queue.Queue | None = None  # the open stream's responses, None when no stream is open

    def close(self) -> None:
        self._close_stream()
        self._client.close()

    def __enter__(self) -> "NvlmClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stream_open(self) -> bool:
        """Whether a gRPC stream is open (kept from the last request)."""
        return self._results is not None

    def is_ready(self) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self._client.is_server_ready())
        except InferenceServerException:
            return False

    def stream(self, prompt: str, images: Sequence = (), **options) -> Iterator[str]:
        """Text chunks as the server sends them; options as ChatRequest (max_tokens, temperature, ...)."""
        request = ChatRequest(prompt=prompt, images=read_images(images), stream=True, **options)
        yield from self.responses(request)

    def chat(self, prompt: str, images: Sequence = (), *, stream: bool = False, **options) -> str:
        """The whole answer; stream=True asks the server to stream and joins the chunks."""
        request = ChatRequest(prompt=prompt, images=read_images(images), stream=stream, **options)
        return "".join(self.responses(request))

    def responses(self, request: ChatRequest) -> Iterator[str]:
        """Texts of the responses to one request."""
        for piece in self.events(request):
            if piece.text:
                yield piece.text

    def events(self, request: ChatRequest) -> Iterator[ChatChunk]:
        """Every response as a ChatChunk (the final one with token counts), over the client's gRPC stream."""
        from tritonclient.utils import InferenceServerException

        reused = self._results is not None
        results = self._open_stream()
        request_id = uuid.uuid4().hex
        done = False
        try:
            try:
                self._client.async_stream_infer(self.model, infer_inputs(self._module, request),
                                                request_id=request_id, enable_empty_final_response=True)
            except InferenceServerException as exc:  # the stream broke; its reason went to the callback
                try:
                    _, error = results.get(timeout=5)
                except queue.Empty:
                    error = exc
                if reused:  # a stream left open by the last request died since (e.g. the server restarted)
                    self._close_stream()
                    done = True
                    yield from self.events(request)
                    return
                raise (transport_failure(self.url, _status(error), _message(error))
                       or DeployError(f"cannot talk to the server at {self.url}: {_message(error)}")) from None
            while True:
                try:
                    result, error = results.get(timeout=self.timeout)
                except queue.Empty:
                    raise stalled(self.url, self.timeout) from None
                if error is not None:
                    raise transport_failure(self.url, _status(error), _message(error)) or ServerError(_message(error))
                if result.get_response().id != request_id:
                    continue  # not this request's (never expected: a stream carries one request at a time)
                piece = chunk(result)
                if piece.final:
                    done = True
                yield piece
                if piece.final:
                    return
        finally:
            if not done or not self.keep_stream:
                self._close_stream()

    def _open_stream(self) -> queue.Queue:
        """The open stream's response queue, opening a stream if there is none or the open one reported an error."""
        from tritonclient.utils import InferenceServerException

        if self._results is not None:
            while not self._results.empty():  # what arrived between requests: only a broken stream's error
                if self._results.get_nowait()[1] is not None:
                    self._close_stream()
                    break
        if self._results is None:
            results: queue.Queue = queue.Queue()
            try:
                self._client.start_stream(callback=lambda result, error: results.put((result, error)))
            except InferenceServerException as exc:
                raise DeployError(f"cannot open a gRPC stream to {self.url}: {exc.message()}") from None
            self._results = results
        return self._results

    def _close_stream(self) -> None:
        if self._results is not None:
            self._results = None
            self._client.stop_stream(cancel_requests=True)


def _message(error) -> str:
    return error.message() if hasattr(error, "message") else str(error)


def _status(error) -> str | None:
    return error.status() if hasattr(error, "status") else None
