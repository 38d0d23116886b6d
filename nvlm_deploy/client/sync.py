"""Blocking gRPC client. Every request goes over the gRPC stream: the models are decoupled (streaming
needs it), and Triton refuses unary ModelInfer on decoupled models; a non-streamed answer is the
single response (or, for the ensemble, the responses joined)."""

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
    counts as stalled (ServerUnavailable); None waits forever.

    A server that cannot be reached or goes away mid-request raises ServerUnavailable (a DeployError)
    with the address and what to do; a request the server refuses raises ServerError with its message."""

    def __init__(self, url: str, *, model: str = DEFAULT_MODEL, timeout: float | None = DEFAULT_TIMEOUT_S):
        import tritonclient.grpc as grpcclient

        self._module = grpcclient
        self.url, self.model, self.timeout = url, model, timeout
        self._client = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "NvlmClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        """Texts of the responses to one request over a fresh gRPC stream."""
        for piece in self.events(request):
            if piece.text:
                yield piece.text

    def events(self, request: ChatRequest) -> Iterator[ChatChunk]:
        """Every response as a ChatChunk (the final one with token counts), over a fresh gRPC stream."""
        from tritonclient.utils import InferenceServerException

        results: queue.Queue = queue.Queue()
        try:
            self._client.start_stream(callback=lambda result, error: results.put((result, error)))
        except InferenceServerException as exc:
            raise DeployError(f"cannot open a gRPC stream to {self.url}: {exc.message()}") from None
        try:
            try:
                self._client.async_stream_infer(self.model, infer_inputs(self._module, request),
                                                request_id=uuid.uuid4().hex, enable_empty_final_response=True)
            except InferenceServerException as exc:  # the stream broke; its reason went to the callback
                try:
                    _, error = results.get(timeout=5)
                except queue.Empty:
                    error = exc
                raise (transport_failure(self.url, _status(error), _message(error))
                       or DeployError(f"cannot talk to the server at {self.url}: {_message(error)}")) from None
            while True:
                try:
                    result, error = results.get(timeout=self.timeout)
                except queue.Empty:
                    raise stalled(self.url, self.timeout) from None
                if error is not None:
                    raise transport_failure(self.url, _status(error), _message(error)) or ServerError(_message(error))
                piece = chunk(result)
                yield piece
                if piece.final:
                    return
        finally:
            self._client.stop_stream(cancel_requests=True)


def _message(error) -> str:
    return error.message() if hasattr(error, "message") else str(error)


def _status(error) -> str | None:
    return error.status() if hasattr(error, "status") else None
