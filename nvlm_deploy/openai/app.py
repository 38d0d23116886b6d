"""The OpenAI-compatible HTTP front end (aiohttp) over Triton's `tensorrt_llm_bls` gRPC entry point.

    POST /v1/chat/completions   text + image_url parts, multi-turn, streamed as server-sent events
    GET  /v1/models             the one model served
    GET  /health                200 when Triton and tensorrt_llm_bls are ready, else 503

Every failure is OpenAI's `{"error": {message, type, param, code}}`: 400 for the request's own
mistakes (the Triton server's refusals included: too many images, max_tokens above the
repository's limit, a prompt too long), 404 for another model or path, 503 when Triton cannot be
reached. A stream that fails after it started ends with an error event, then `[DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from aiohttp import web

from nvlm_deploy.client.aio import AsyncNvlmClient
from nvlm_deploy.client.tensors import DEFAULT_MODEL, ChatRequest, ServerError
from nvlm_deploy.errors import DeployError
from nvlm_deploy.openai import responses as out
from nvlm_deploy.openai.images import ImagePolicy, load_images
from nvlm_deploy.openai.protocol import (DEFAULT_MODEL_NAME, CompletionRequest, OpenAIError, parse_json, parse_request,
                                         unknown_model)
from nvlm_deploy.openai.stops import StopText

MAX_BODY_BYTES = 128 * 2**20  # base64 images make bodies large
HEALTH_TIMEOUT = 5.0  # seconds for Triton's readiness answers


@dataclass(frozen=True)
class Settings:
    """Args:
        triton_url: "host:port" of Triton's gRPC endpoint.
        model_name: the name clients send as `model` (and GET /v1/models lists).
        images: remote fetching (off by default), byte limit and timeout.
        default_max_tokens: when a request sets neither max_tokens nor max_completion_tokens;
            None: ChatRequest's default.
    """

    triton_url: str
    model_name: str = DEFAULT_MODEL_NAME
    images: ImagePolicy = field(default_factory=ImagePolicy)
    default_max_tokens: int | None = None


@dataclass
class Outcome:
    """What the final response and the stop strings said about one answer."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stopped: bool = False  # a stop string ended it

    def usage(self) -> dict:
        if self.prompt_tokens is None or self.completion_tokens is None:
            raise OpenAIError("the Triton server's final response has no token counts (num_input_tokens, "
                              "num_output_tokens); serve a repository packaged by this version of nvlm-deploy.",
                              status=502, type="server_error", code="bad_gateway")
        return out.usage(self.prompt_tokens, self.completion_tokens)

    def finish_reason(self, max_tokens: int) -> str:
        return "stop" if self.stopped else out.finish_reason(self.completion_tokens or 0, max_tokens)


@dataclass(frozen=True)
class Connections:
    """Made in the server's event loop (gRPC aio channels belong to one loop), closed at shutdown."""

    nvlm: AsyncNvlmClient
    health: object  # tritonclient.grpc.aio.InferenceServerClient: readiness
    http: object | None  # aiohttp.ClientSession when remote images are on
    created: int  # when this server started: /v1/models' `created`

    async def close(self) -> None:
        await self.nvlm.close()
        await self.health.close()
        if self.http is not None:
            await self.http.close()


SETTINGS = web.AppKey("settings", Settings)
CONNECTIONS = web.AppKey("connections", Connections)


def make_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[openai_errors])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_connections)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/health", health)
    return app


async def _connections(app: web.Application) -> AsyncIterator[None]:
    """gRPC clients (made in the server's event loop) and, when remote images are on, an HTTP session."""
    import time

    import aiohttp
    import tritonclient.grpc.aio as grpc_aio

    settings = app[SETTINGS]
    app[CONNECTIONS] = Connections(nvlm=AsyncNvlmClient(settings.triton_url, model=DEFAULT_MODEL),
                                   health=grpc_aio.InferenceServerClient(settings.triton_url),
                                   http=aiohttp.ClientSession() if settings.images.allow_remote else None,
                                   created=int(time.time()))
    yield
    await app[CONNECTIONS].close()


@web.middleware
async def openai_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OpenAIError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:  # no such path (404), wrong method (405), body too large (413)
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        error = OpenAIError(f"{request.method} {request.path}: {exc.text or exc.reason}. This server answers "
                            "POST /v1/chat/completions, GET /v1/models and GET /health.", status=exc.status, type=kind)
        return web.json_response(error.body(), status=exc.status)


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(out.model_list(request.app[SETTINGS].model_name,
                                            created=request.app[CONNECTIONS].created))


async def get_model(request: web.Request) -> web.Response:
    name = request.app[SETTINGS].model_name
    if request.match_info["model"] != name:
        raise unknown_model(request.match_info["model"], name)
    return web.json_response(out.model_card(name, created=request.app[CONNECTIONS].created))


async def health(request: web.Request) -> web.Response:
    from tritonclient.utils import InferenceServerException

    client, url = request.app[CONNECTIONS].health, request.app[SETTINGS].triton_url
    try:
        ready = (await client.is_server_ready(client_timeout=HEALTH_TIMEOUT)
                 and await client.is_model_ready(DEFAULT_MODEL, client_timeout=HEALTH_TIMEOUT))
    except InferenceServerException as exc:
        raise _unavailable(f"the Triton server at {url} does not answer: {exc.message()}") from None
    if not ready:
        raise _unavailable(f"the Triton server at {url} or its {DEFAULT_MODEL} model is not ready yet.")
    return web.json_response({"status": "ok", "model": request.app[SETTINGS].model_name, "triton": url})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    parsed = parse_request(parse_json(await request.read()), served=settings.model_name)
    chat = await chat_request(parsed, settings=settings, http=request.app[CONNECTIONS].http)
    outcome = Outcome()
    pieces = answer(request.app[CONNECTIONS].nvlm, chat, outcome)
    try:
        first = await anext(pieces, "")  # failures before the first text still get their HTTP status
        if parsed.stream:
            return await _stream(request, pieces, first, parsed=parsed, chat=chat, outcome=outcome)
        text = first + "".join([piece async for piece in pieces])
    finally:
        await pieces.aclose()
    body = out.completion(out.Completion.new(parsed.model), text=text, counts=outcome.usage(),
                          finish=outcome.finish_reason(chat.max_tokens))
    return web.json_response(body)


async def chat_request(parsed: CompletionRequest, *, settings: Settings, http) -> ChatRequest:
    conversation, sampling = parsed.conversation, parsed.sampling
    images = await load_images(conversation.images, policy=settings.images, session=http)
    chat = ChatRequest(prompt=conversation.prompt, images=images, history=conversation.history, stream=parsed.stream,
                       temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                       seed=sampling.seed, stop=parsed.stop)
    max_tokens = parsed.max_tokens or settings.default_max_tokens
    return chat if max_tokens is None else replace(chat, max_tokens=max_tokens)


async def answer(client: AsyncNvlmClient, chat: ChatRequest, outcome: Outcome) -> AsyncIterator[str]:
    """The answer's text as it comes, cut before the first stop string; the final response fills `outcome`.

    After a stop string the rest is still read (and dropped) for the final response's token counts.
    """
    stop = StopText(chat.stop)
    try:
        async for event in client.events(chat):
            text = stop.push(event.text)
            if text:
                yield text
            if event.final:
                outcome.prompt_tokens, outcome.completion_tokens = event.prompt_tokens, event.completion_tokens
    except ServerError as exc:  # the server refused the request: the user's to fix
        raise OpenAIError(str(exc), code="request_refused") from None
    except DeployError as exc:  # could not talk to Triton at all
        raise _unavailable(str(exc)) from None
    outcome.stopped = stop.stopped
    rest = stop.finish()
    if rest:
        yield rest


async def _stream(request: web.Request, pieces: AsyncIterator[str], first: str, *, parsed: CompletionRequest,
                  chat: ChatRequest, outcome: Outcome) -> web.StreamResponse:
    """Server-sent events: role, text deltas, finish reason, (usage), [DONE]."""
    c = out.Completion.new(parsed.model)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        await response.write(out.event(out.chunk(c, delta={"role": "assistant", "content": ""})))
        if first:
            await response.write(out.event(out.chunk(c, delta={"content": first})))
        try:
            async for piece in pieces:
                await response.write(out.event(out.chunk(c, delta={"content": piece})))
            events = [out.chunk(c, delta={}, finish=outcome.finish_reason(chat.max_tokens))]
            if parsed.include_usage:
                events.append(out.usage_chunk(c, outcome.usage()))
        except OpenAIError as exc:
            events = [exc.body()]
        for body in events:
            await response.write(out.event(body))
        await response.write(out.DONE)
    except ConnectionResetError:  # the client left; closing `pieces` cancels the Triton request
        return response
    await response.write_eof()
    return response


def _unavailable(message: str) -> OpenAIError:
    return OpenAIError(message, status=503, type="server_error", code="triton_unavailable")
