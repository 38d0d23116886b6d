"""The OpenAI front end in-process (aiohttp on a free 127.0.0.1 port, in a thread), spoken to by the
official `openai` client; with a real tritonserver (fixture `server`) its answers are the reference's."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import urllib.error
import urllib.request

import pytest

from nvlm_deploy.openai.app import Settings, make_app
from nvlm_deploy.openai.images import ImagePolicy

openai = pytest.importorskip("openai")

QUESTION = "What is in the picture?"


class AppThread:
    """make_app(settings) served on 127.0.0.1 (a free port) by an event loop in a thread."""

    def __init__(self, settings: Settings):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(settings), self.loop).result(timeout=60)
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _start(self, settings):
        from aiohttp import web

        runner = web.AppRunner(make_app(settings))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    def client(self) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=300)

    def post(self, path: str, data: bytes) -> tuple[int, dict]:
        return self.request(urllib.request.Request(self.url + path, data=data, method="POST",
                                                   headers={"Content-Type": "application/json"}))

    def get(self, path: str) -> tuple[int, dict]:
        return self.request(urllib.request.Request(self.url + path))

    @staticmethod
    def request(req) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def is_openai_error(body: dict, *, type: str = "invalid_request_error") -> bool:
    error = body.get("error", {})
    return set(error) == {"message", "type", "param", "code"} and error["type"] == type and bool(error["message"])


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def image_message(image: bytes, text: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                        {"type": "text", "text": text}]}


# ---- without Triton: routing, errors, 503 ----

@pytest.fixture(scope="module")
def no_triton():
    from nvlm_deploy.serve.server import free_port

    app = AppThread(Settings(triton_url=f"127.0.0.1:{free_port()}", model_name="tiny"))  # nothing listens there
    yield app
    app.stop()


def test_models_are_listed_and_other_paths_are_openai_shaped_404(no_triton):
    assert [m.id for m in no_triton.client().models.list()] == ["tiny"]
    assert no_triton.get("/v1/models/tiny") == (200, {"id": "tiny", "object": "model", "owned_by": "nvlm-deploy",
                                                      "created": no_triton.get("/v1/models")[1]["data"][0]["created"]})
    status, body = no_triton.get("/v1/models/gpt-4o")
    assert status == 404 and is_openai_error(body) and body["error"]["code"] == "model_not_found"
    status, body = no_triton.get("/v1/nothing")
    assert status == 404 and is_openai_error(body)
    status, body = no_triton.get("/v1/chat/completions")
    assert status == 405 and is_openai_error(body)


def test_request_errors_come_before_triton_is_needed(no_triton):
    status, body = no_triton.post("/v1/chat/completions", b'{"model": "tiny", "messages": [')
    assert status == 400 and is_openai_error(body) and "JSON" in body["error"]["message"]
    with pytest.raises(openai.NotFoundError) as info:
        no_triton.client().chat.completions.create(model="other", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.body["code"] == "model_not_found"


def test_unreachable_triton_is_503_and_health_says_so(no_triton):
    with pytest.raises(openai.InternalServerError) as info:
        no_triton.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == 503 and info.value.body["code"] == "triton_unavailable"
    with pytest.raises(openai.InternalServerError):  # a stream fails before it starts: the same status
        no_triton.client().chat.completions.create(model="tiny", stream=True, messages=[{"role": "user", "content": "Hi"}])
    status, body = no_triton.get("/health")
    assert status == 503 and is_openai_error(body, type="server_error")


# ---- with a real tritonserver, against the PyTorch reference ----

def reference_answer(reference, prompt: str, images, max_tokens: int, history=()) -> tuple[str, int, int]:
    """(greedy text, prompt tokens, completion tokens) of the reference pipeline."""
    from nvlm_deploy.backend.bls import make_decode

    prepared = reference.preprocessor.prepare(prompt, images, history=history)
    ids = reference.generate_ids(prepared, max_new_tokens=max_tokens)
    return make_decode(reference.tokenizer)(ids), len(prepared.input_ids), len(ids)


@pytest.fixture(scope="module")
def front(server):
    app = AppThread(Settings(triton_url=server.grpc_url, model_name="nvlm-d-tiny"))
    yield app
    app.stop()


@pytest.fixture(scope="module")
def picture(images) -> bytes:
    """An image the tiny model answers with text about (images[0] gets only special tokens)."""
    return images[1]


@pytest.mark.server
@pytest.mark.slow
def test_openai_client_gets_the_reference_answer_about_a_data_url_image(front, reference, picture):
    want, prompt_tokens, completion_tokens = reference_answer(reference, QUESTION, [picture], 12)
    assert want.strip() and want != reference_answer(reference, QUESTION, [], 12)[0], "the image changes nothing"
    reply = front.client().chat.completions.create(model="nvlm-d-tiny", max_tokens=12,
                                                   messages=[image_message(picture, QUESTION)])
    assert reply.object == "chat.completion" and reply.model == "nvlm-d-tiny"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content == want
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, completion_tokens)
    assert reply.usage.total_tokens == prompt_tokens + completion_tokens and prompt_tokens > 256  # image tokens
    assert reply.choices[0].finish_reason == ("length" if completion_tokens == 12 else "stop")
    assert front.get("/health")[0] == 200


@pytest.mark.server
@pytest.mark.slow
def test_streaming_sends_deltas_that_join_to_the_answer_then_usage_then_done(front, reference, picture):
    want, prompt_tokens, completion_tokens = reference_answer(reference, QUESTION, [picture], 12)
    stream = front.client().chat.completions.create(model="nvlm-d-tiny", max_completion_tokens=12, stream=True,
                                                    stream_options={"include_usage": True},
                                                    messages=[image_message(picture, QUESTION)])
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks) and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(texts) == want and sum(1 for t in texts if t) > 1  # more than one piece: really streamed
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length" if completion_tokens == 12 else "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == prompt_tokens
    assert chunks[-1].usage.completion_tokens == completion_tokens


@pytest.mark.server
@pytest.mark.slow
def test_a_second_turn_is_answered_with_the_first_turn_in_the_prompt(front, reference):
    first_question, follow_up = "Hello, how are you?", "Tell me more."
    first, _, _ = reference_answer(reference, first_question, [], 8)
    history = [("user", first_question), ("assistant", first)]
    want, prompt_tokens, _ = reference_answer(reference, follow_up, [], 12, history=history)
    assert want != reference_answer(reference, follow_up, [], 12)[0], "the history changes nothing; pick another"
    messages = [{"role": "user", "content": first_question}, {"role": "assistant", "content": first},
                {"role": "user", "content": follow_up}]
    reply = front.client().chat.completions.create(model="nvlm-d-tiny", max_tokens=12, messages=messages)
    assert reply.choices[0].message.content == want and reply.usage.prompt_tokens == prompt_tokens


@pytest.mark.server
@pytest.mark.slow
def test_images_of_earlier_turns_stay_in_the_conversation(front, reference, picture):
    first, _, _ = reference_answer(reference, QUESTION, [picture], 8)
    follow_up = "And what color is the background?"
    history = [("system", "Be brief."), ("user", "<image>\n" + QUESTION), ("assistant", first)]
    want, prompt_tokens, _ = reference_answer(reference, follow_up, [picture], 12, history=history)
    messages = [{"role": "system", "content": "Be brief."}, image_message(picture, QUESTION),
                {"role": "assistant", "content": first}, {"role": "user", "content": follow_up}]
    reply = front.client().chat.completions.create(model="nvlm-d-tiny", max_tokens=12, messages=messages)
    assert reply.choices[0].message.content == want and reply.usage.prompt_tokens == prompt_tokens


@pytest.mark.server
@pytest.mark.slow
def test_remote_images_are_fetched_when_allowed(server, reference, picture):
    import http.server

    class Picture(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(picture)))
            self.end_headers()
            self.wfile.write(picture)

        def log_message(self, *args):
            pass

    images_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Picture)
    threading.Thread(target=images_server.serve_forever, daemon=True).start()
    app = AppThread(Settings(triton_url=server.grpc_url, images=ImagePolicy(allow_remote=True, timeout=30)))
    try:
        url = f"http://127.0.0.1:{images_server.server_address[1]}/picture.png"
        reply = app.client().chat.completions.create(model="nvlm-d", max_tokens=12, messages=[
            {"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]}])
    finally:
        app.stop()
        images_server.shutdown()
    assert reply.choices[0].message.content == reference_answer(reference, QUESTION, [picture], 12)[0]


@pytest.mark.server
@pytest.mark.slow
def test_stop_strings_end_the_answer_before_them_streamed_or_not(front, reference):
    want, _, _ = reference_answer(reference, "Hello, how are you?", [], 16)
    stop = want[len(want) // 2:len(want) // 2 + 2]
    assert stop.strip(), f"pick another cut of {want!r}"
    kwargs = dict(model="nvlm-d-tiny", max_tokens=16, stop=[stop], messages=[{"role": "user", "content": "Hello, how are you?"}])
    reply = front.client().chat.completions.create(**kwargs)
    assert reply.choices[0].message.content == want[:want.index(stop)] and reply.choices[0].finish_reason == "stop"
    chunks = list(front.client().chat.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want[:want.index(stop)]


@pytest.mark.server
@pytest.mark.slow
def test_a_seed_repeats_a_sampled_answer(front):
    kwargs = dict(model="nvlm-d-tiny", max_tokens=8, temperature=1.0, messages=[{"role": "user", "content": "Hi"}])
    first, again = (front.client().chat.completions.create(seed=7, **kwargs).choices[0].message.content for _ in range(2))
    others = {front.client().chat.completions.create(seed=s, **kwargs).choices[0].message.content for s in (1, 2, 3)}
    assert first == again and len(others | {first}) > 1


@pytest.mark.server
@pytest.mark.slow
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(front, reference, images):
    client = front.client()
    status, body = front.post("/v1/chat/completions", b"{'model': 'nvlm-d-tiny'}")
    assert status == 400 and is_openai_error(body)
    text_as_image = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not a picture").decode()}},
        {"type": "text", "text": "What is it?"}]}
    remote = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}},
                                          {"type": "text", "text": "What is it?"}]}
    hi = [{"role": "user", "content": "Hi"}]
    bad = {  # name: (request, error class, param or code it names)
        "unknown model": (dict(model="gpt-4o", messages=hi), openai.NotFoundError, "model_not_found"),
        "no messages": (dict(model="nvlm-d-tiny", messages=[]), openai.BadRequestError, "messages"),
        "not an image": (dict(model="nvlm-d-tiny", messages=[text_as_image]), openai.BadRequestError, "invalid_image"),
        "remote url": (dict(model="nvlm-d-tiny", messages=[remote]), openai.BadRequestError, "remote_images_disabled"),
        "n > 1": (dict(model="nvlm-d-tiny", messages=hi, n=2), openai.BadRequestError, "n"),
        "over the repository's max_output_len": (dict(model="nvlm-d-tiny", messages=hi, max_tokens=65),
                                                 openai.BadRequestError, "request_refused"),
        "too many images": (dict(model="nvlm-d-tiny", messages=[image_message(images[0], "<3")] * 2 + [
            image_message(images[1], "Which?")]), openai.BadRequestError, "request_refused"),
    }
    for name, (request, error, names) in bad.items():
        for stream in (False, True):
            with pytest.raises(error) as info:
                client.chat.completions.create(stream=stream, **request)
            assert is_openai_error({"error": info.value.body}), name
            assert names in (info.value.body["param"], info.value.body["code"]), (name, info.value.body)
    want, _, _ = reference_answer(reference, "Hello, how are you?", [], 8)
    good = client.chat.completions.create(model="nvlm-d-tiny", max_tokens=8,
                                          messages=[{"role": "user", "content": "Hello, how are you?"}])
    assert good.choices[0].message.content == want


@pytest.mark.server
@pytest.mark.slow
def test_a_client_that_leaves_mid_stream_does_not_stop_the_server(front, reference):
    import http.client

    body = json.dumps({"model": "nvlm-d-tiny", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "Hello, how are you?"}]})
    port = int(front.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    assert response.read(7) == b"data: {"  # the role chunk; then leave
    conn.sock.close()
    conn.close()
    want, _, _ = reference_answer(reference, "Hello, how are you?", [], 8)
    reply = front.client().chat.completions.create(model="nvlm-d-tiny", max_tokens=8,
                                                   messages=[{"role": "user", "content": "Hello, how are you?"}])
    assert reply.choices[0].message.content == want
