"""asyncio gRPC client: one gRPC stream per request, so many requests run concurrently.

tritonclient's aio `stream_infer` has no empty final response: the stream ends when the request is
complete (the BLS marks its last text response final).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

from nvlm_deploy.errors import DeployError
from nvlm_deploy.client.tensors import (DEFAULT_MODEL, DEFAULT_TIMEOUT_S, ChatChunk, ChatRequest, ServerError, chunk,
                                       infer_inputs, read_images, stalled, transport_failure)


class AsyncNvlmClient:
    """Args: url: "host:port" of the gRPC endpoint; model: entry point (tensorrt_llm_bls or ensemble);
    timeout: seconds to wait for each response before the stream counts as stalled (None: forever).
    Errors as NvlmClient's: ServerUnavailable (unreachable, went away, stalled) or ServerError."""

    def __init__(self, url: str, *, model: str = DEFAULT_MODEL, timeout: float | None = DEFAULT_TIMEOUT_S):
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient

        self._module = grpcclient
        self.url, self.model, self.timeout = url, model, timeout
        self._client = aioclient.InferenceServerClient(url)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncNvlmClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def stream(self, prompt: str, images: Sequence = (), **options) -> AsyncIterator[str]:
        """Text chunks as they come; options as ChatRequest."""
        request = ChatRequest(prompt=prompt, images=read_images(images), stream=True, **options)
        async for text in self.responses(request):
            yield text

    async def chat(self, prompt: str, images: Sequence = (), *, stream: bool = False, **options) -> str:
        request = ChatRequest(prompt=prompt, images=read_images(images), stream=stream, **options)
        return "".join([text async for text in self.responses(request)])

    async def responses(self, request: ChatRequest) -> AsyncIterator[str]:
        """Texts of the responses to one request."""
        async for piece in self.events(request):
            if piece.text:
                yield piece.text

    async def events(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Every response as a ChatChunk (the final one with token counts), until the final one."""
        inputs = infer_inputs(self._module, request)

        async def one():
            yield {"model_name": self.model, "inputs": inputs, "request_id": uuid.uuid4().hex}

        import asyncio

        import grpc
        from tritonclient.utils import InferenceServerException

        stream = self._client.stream_infer(inputs_iterator=one()).__aiter__()
        try:
            while True:
                try:
                    result, error = await asyncio.wait_for(stream.__anext__(), self.timeout)
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise stalled(self.url, self.timeout) from None
                if error is not None:
                    message = error.message() if hasattr(error, "message") else str(error)
                    status = error.status() if hasattr(error, "status") else None
                    raise transport_failure(self.url, status, message) or ServerError(message)
                piece = chunk(result)
                yield piece
                if piece.final:
                    return
        except InferenceServerException as exc:
            raise (transport_failure(self.url, exc.status(), exc.message())
                   or DeployError(f"cannot talk to the server at {self.url}: {exc.message()}")) from None
        except grpc.RpcError as exc:  # the aio stream lets transport errors through unwrapped
            raise (transport_failure(self.url, str(exc.code()), exc.details() or "")
                   or DeployError(f"cannot talk to the server at {self.url}: {exc.details()}")) from None
        finally:
            closing = getattr(stream, "aclose", None) or getattr(stream, "cancel", None)
            if closing is not None:
                result = closing()
                if asyncio.iscoroutine(result):
                    await result
