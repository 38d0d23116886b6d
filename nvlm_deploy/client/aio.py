"""asyncio gRPC client: one gRPC stream per request, so many requests run concurrently.

tritonclient's aio `stream_infer` has no empty final response: the stream ends when the request is
complete (the BLS marks its last text response final).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

from nvlm_deploy.errors import DeployError
from nvlm_deploy.client.tensors import DEFAULT_MODEL, ChatChunk, ChatRequest, ServerError, chunk, infer_inputs, read_images


class AsyncNvlmClient:
    """Args: url: "host:port" of the gRPC endpoint; model: entry point (tensorrt_llm_bls or ensemble)."""

    def __init__(self, url: str, *, model: str = DEFAULT_MODEL):
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient

        self._module = grpcclient
        self.url, self.model = url, model
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

        import grpc
        from tritonclient.utils import InferenceServerException

        try:
            async for result, error in self._client.stream_infer(inputs_iterator=one()):
                if error is not None:
                    raise ServerError(error.message() if hasattr(error, "message") else str(error))
                piece = chunk(result)
                yield piece
                if piece.final:
                    return
        except InferenceServerException as exc:
            raise DeployError(f"cannot talk to the server at {self.url}: {exc.message()}") from None
        except grpc.RpcError as exc:  # the aio stream lets transport errors through unwrapped
            raise DeployError(f"cannot talk to the server at {self.url}: {exc.details()}") from None
