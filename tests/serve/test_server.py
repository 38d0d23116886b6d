"""The whole request path on a real tritonserver (127.0.0.1, free ports), against the PyTorch reference."""

from __future__ import annotations

import asyncio
import queue

import numpy as np
import pytest

from nvlm_deploy.backend.bls import make_decode

pytestmark = [pytest.mark.server, pytest.mark.slow]

PROMPTS = {"text-only": ("Hello, how are you?", 0), "one image": ("What is in the picture?", 1),
           "two images": ("<image> and <image>: which shape is on the left?", 2)}


def reference_ids(reference, prompt, images, max_tokens):
    return reference.generate_ids(reference.preprocessor.prepare(prompt, images), max_new_tokens=max_tokens)


def client(server, model="tensorrt_llm_bls"):
    from nvlm_deploy.client.sync import NvlmClient

    return NvlmClient(server.grpc_url, model=model, timeout=300)


def infer(server, model, arrays):
    """Unary infer of a non-decoupled model with raw tensors."""
    import tritonclient.grpc as g

    from nvlm_deploy.client.tensors import infer_inputs  # noqa: F401  (same InferInput class)

    c = g.InferenceServerClient(server.grpc_url)
    inputs = []
    for name, (dtype, array) in arrays.items():
        tensor = g.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return c.infer(model, inputs)


def stream_ids(server, arrays):
    """Token ids streamed by the decoupled tensorrt_llm model for raw tensors."""
    import tritonclient.grpc as g

    c = g.InferenceServerClient(server.grpc_url)
    results = queue.Queue()
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    inputs = []
    for name, (dtype, array) in arrays.items():
        tensor = g.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    c.async_stream_infer("tensorrt_llm", inputs, enable_empty_final_response=True)
    ids = []
    while True:
        result, error = results.get(timeout=300)
        assert error is None, error
        out = result.as_numpy("output_ids")
        if out is not None:
            ids += out.reshape(-1).tolist()
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    c.stop_stream()
    return ids


@pytest.mark.parametrize("case", list(PROMPTS))
def test_greedy_answer_equals_reference_token_for_token(server, reference, images, case):
    """Server-side preprocessing -> vision_encoder -> tensorrt_llm over gRPC give the reference's tokens,
    and the BLS and ensemble texts are those tokens decoded."""
    prompt, n = PROMPTS[case]
    want = reference_ids(reference, prompt, images[:n], 16)
    assert want, "the reference generated nothing; pick another prompt"
    image_arrays = {}
    if n:
        from nvlm_deploy.client.tensors import image_arrays as pack

        data, lengths = pack(images[:n])
        image_arrays = {"IMAGE_FILES": ("UINT8", data), "IMAGE_FILES_LENGTHS": ("INT32", lengths)}
    pre = infer(server, "preprocessing", {"QUERY": ("BYTES", np.array([[prompt.encode()]], dtype=object)),
                                          "REQUEST_OUTPUT_LEN": ("INT32", np.array([[16]], np.int32)), **image_arrays})
    ids = pre.as_numpy("INPUT_ID")
    llm = {"input_ids": ("INT32", ids), "input_lengths": ("INT32", pre.as_numpy("REQUEST_INPUT_LEN")),
           "request_output_len": ("INT32", np.array([[16]], np.int32)),
           "end_id": ("INT32", pre.as_numpy("OUT_END_ID")), "streaming": ("BOOL", np.array([[True]])),
           "exclude_input_in_output": ("BOOL", np.array([[True]]))}
    if n:
        vision = infer(server, "vision_encoder", {"pixel_values": ("FP32", pre.as_numpy("PIXEL_VALUES"))})
        table = vision.as_numpy("prompt_embedding_table")
        assert table.shape[1] == sum(reference.preprocessor.prepare(prompt, images[:n]).tiles_per_image) * 256
        llm.update(prompt_embedding_table=("FP32", table), prompt_vocab_size=("INT32", vision.as_numpy("prompt_vocab_size")))
    assert stream_ids(server, llm) == want
    decode = make_decode(reference.tokenizer)
    with client(server) as bls, client(server, "ensemble") as ens:
        assert bls.chat(prompt, images[:n], max_tokens=16) == decode(want)
        assert ens.chat(prompt, images[:n], max_tokens=16) == decode(want)


def _split_multibyte(tokenizer, ids):
    """True when some token holds only part of a multi-byte character of the decoded text."""
    decode = make_decode(tokenizer)
    return any(ord(ch) > 127 for ch in decode(ids)) and any("\ufffd" in decode([i]) for i in ids)


def test_stream_concatenates_to_exact_text_with_multibyte_characters(server, reference):
    decode = make_decode(reference.tokenizer)
    candidates = ["Hello, how are you?", "Describe the image in detail.", "What color is the shape?",
                  "Les chats sont mignons.", "日本語のテキスト。", "Emoji: 🙂 🚀 ✓"]
    found = [(p, ids) for p in candidates if _split_multibyte(reference.tokenizer, ids := reference_ids(reference, p, [], 32))]
    assert found, "no candidate prompt makes the tiny model emit a character split across tokens"
    prompt, ids = found[0]
    with client(server) as c:
        chunks = list(c.stream(prompt, max_tokens=32))
        whole = c.chat(prompt, max_tokens=32)
        echoed = c.chat(prompt, max_tokens=32, exclude_input_in_output=False)
        echoed_chunks = list(c.stream(prompt, max_tokens=32, exclude_input_in_output=False))
    assert whole == decode(ids)
    assert len(chunks) > 1 and "".join(chunks) == whole
    assert all("\ufffd" not in c for c in chunks[:-1]) or "\ufffd" in whole  # no partial character mid-stream
    assert echoed == prompt + whole  # tensorrtllm_backend's meaning: the user's text, then the answer
    assert "".join(echoed_chunks) == whole  # a stream never repeats the input (upstream's BLS neither)


def test_sixteen_concurrent_streams_get_their_own_answers(server, reference):
    from nvlm_deploy.client.aio import AsyncNvlmClient

    decode = make_decode(reference.tokenizer)
    prompts = [f"Question {k}: how many shapes are there? {'red green blue yellow'.split()[k % 4]}" for k in range(16)]
    want = [decode(reference_ids(reference, p, [], 12)) for p in prompts]
    assert len(set(want)) > 1, "all answers are the same; the test would not tell them apart"

    async def ask_all():
        async with AsyncNvlmClient(server.grpc_url) as c:
            async def ask(p):
                return [chunk async for chunk in c.stream(p, max_tokens=12)]
            return await asyncio.gather(*(ask(p) for p in prompts))

    got = asyncio.run(ask_all())
    assert ["".join(chunks) for chunks in got] == want


@pytest.mark.parametrize("model", ["tensorrt_llm_bls", "ensemble"])
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, reference, images, model):
    from nvlm_deploy.client.tensors import ServerError

    bad = {
        "corrupt image": (dict(prompt="What is it?", images=[b"\x89PNG\r\n\x1a\nnot really"], max_tokens=4), "image"),
        "empty prompt": (dict(prompt="  ", max_tokens=4), "prompt is empty"),
        "max_tokens 0": (dict(prompt="Hi", max_tokens=0), "max_tokens is 0"),
        "max_tokens above limit": (dict(prompt="Hi", max_tokens=65), "max_tokens is 65"),
        "prompt too long": (dict(prompt="red " * 3000, max_tokens=4), "max_input_len of 2048"),
        "too many images": (dict(prompt="Compare.", images=images + images[:1], max_tokens=4), "limit of 2"),
    }
    with client(server, model) as c:
        for name, (request, message) in bad.items():
            with pytest.raises(ServerError, match=message):
                c.chat(**request)
        good = c.chat("Hello, how are you?", max_tokens=8)
    assert good == make_decode(reference.tokenizer)(reference_ids(reference, "Hello, how are you?", [], 8))


def test_chat_cli_streams_the_answer_about_an_image(server, reference, images, tmp_path, capsys):
    from nvlm_deploy.cli import main

    path = tmp_path / "picture.png"
    path.write_bytes(images[0])
    want = make_decode(reference.tokenizer)(reference_ids(reference, "What is in the picture?", [images[0]], 8))
    assert main(["chat", "--url", server.grpc_url, "--image", str(path), "--stream", "--max-tokens", "8",
                 "What is in the picture?"]) == 0
    assert capsys.readouterr().out == want + "\n"
    assert main(["chat", "--url", server.grpc_url, "--max-tokens", "0", "Hi"]) == 1
    assert "max_tokens is 0" in capsys.readouterr().err


def test_serve_cli_waits_until_ready_and_stops_cleanly_on_ctrl_c(cpu_repo):
    import os
    import re
    import signal
    import subprocess
    import sys

    from nvlm_deploy.client.sync import NvlmClient
    from nvlm_deploy.serve.server import free_ports

    grpc_port, http_port = free_ports(2)
    cli = [sys.executable, "-m", "nvlm_deploy", "serve", str(cpu_repo), "--grpc-port", str(grpc_port),
           "--http-port", str(http_port)]
    proc = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready:"):
                break
        assert lines and lines[-1].startswith(f"ready: gRPC 127.0.0.1:{grpc_port}"), "".join(lines)
        server_pid = int(re.search(r"pid (\d+)", lines[-1]).group(1))
        with NvlmClient(f"127.0.0.1:{grpc_port}") as c:
            assert c.is_ready() and c.chat("Hello, how are you?", max_tokens=2) is not None
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped (exit 0)" in out
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


def test_multibyte_characters_stream_whole_and_join_to_exactly_the_text(multibyte_server, images):
    """A checkpoint built to answer "日🙂é..." one byte per token: every character is split across tokens."""
    from tests.serving import MULTIBYTE_TEXT

    text = MULTIBYTE_TEXT * 2  # 18 bytes = 18 tokens
    with client(multibyte_server) as bls:
        assert bls.chat("Say it.", max_tokens=18) == text
        assert list(bls.stream("Say it.", max_tokens=18)) == list(text)  # one whole character per chunk
        assert list(bls.stream("What is it?", images[:1], max_tokens=18)) == list(text)
        cut = bls.chat("Say it.", max_tokens=20)  # ends inside a character: the whole decode shows U+FFFD
        assert cut == text + "\ufffd" and "".join(bls.stream("Say it.", max_tokens=20)) == cut
    with client(multibyte_server, "ensemble") as ens:
        assert ens.chat("Say it.", max_tokens=18) == text
        pieces = list(ens.stream("Say it.", max_tokens=18))  # decoded one response at a time
    assert "".join(pieces) != text and "\ufffd" in "".join(pieces)


@pytest.mark.parametrize("model", ["tensorrt_llm_bls", "ensemble"])
def test_both_entry_points_echo_the_users_text_as_upstream_does(server, reference, images, model):
    """exclude_input_in_output false, or unset (upstream's default): the user's text_input in front of a
    non-streamed answer, not the chat-templated prompt with its image placeholders."""
    from nvlm_deploy.client import NvlmClient

    prompt = "Describe the image in detail."
    with NvlmClient(server.grpc_url, model=model) as c:
        for imgs in ([], images[1:]):
            whole = make_decode(reference.tokenizer)(reference_ids(reference, prompt, imgs, 8))
            assert c.chat(prompt, imgs, max_tokens=8) == whole
            assert c.chat(prompt, imgs, max_tokens=8, exclude_input_in_output=False) == prompt + whole
            assert c.chat(prompt, imgs, max_tokens=8, exclude_input_in_output=None) == prompt + whole


@pytest.fixture(scope="module")
def unary_server(engines, tmp_path_factory):
    """The same artifacts packaged with --decoupled-mode false: what tensorrtllm_backend's clients use
    when they do not stream (unary ModelInfer)."""
    from nvlm_deploy.serve.package import PackageOptions, package_repository
    from nvlm_deploy.serve.server import start_server
    from tests.serving import LIMITS

    repo = package_repository(engines, tmp_path_factory.mktemp("unary") / "repo", runtime="cpu",
                              options=PackageOptions(limits=LIMITS, decoupled_mode=False), log=lambda line: None)
    srv = start_server(repo, timeout=600)
    yield srv
    srv.stop()


def test_unary_requests_are_answered_by_a_non_decoupled_repository(unary_server, reference, images):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from nvlm_deploy.client.tensors import ChatRequest, infer_inputs

    prompt = "What is in the picture?"
    want = make_decode(reference.tokenizer)(reference_ids(reference, prompt, images[1:], 8))
    assert want  # a non-empty answer to compare
    client = grpcclient.InferenceServerClient(unary_server.grpc_url)
    for model in ("tensorrt_llm_bls", "ensemble"):
        request = ChatRequest(prompt, images=tuple(images[1:]), max_tokens=8)
        result = client.infer(model, infer_inputs(grpcclient, request))  # unary ModelInfer
        assert result.as_numpy("text_output").reshape(-1)[0].decode() == want, model
    with pytest.raises(InferenceServerException, match="--decoupled-mode false"):
        client.infer("tensorrt_llm_bls", infer_inputs(grpcclient, ChatRequest(prompt, max_tokens=4, stream=True)))
    client.close()


def test_greedy_answers_are_identical_across_grpc_and_triton_http(server, reference, images):
    """The same question about the same image through gRPC tensors (encoded file) and Triton's HTTP
    generate extension (a data: URL in image_url_input); tests/openai checks the OpenAI API against the
    same reference answer."""
    import base64
    import json
    import urllib.request

    prompt = "Describe the image in detail."
    want = make_decode(reference.tokenizer)(reference_ids(reference, prompt, images[1:], 8))
    with client(server) as c:
        assert c.chat(prompt, images[1:], max_tokens=8) == want
    url = "data:image/png;base64," + base64.b64encode(images[1]).decode()
    body = json.dumps({"text_input": prompt, "image_url_input": url, "max_tokens": 8, "stream": True,
                       "exclude_input_in_output": True}).encode()
    request = urllib.request.Request(f"http://{server.host}:{server.http_port}/v2/models/tensorrt_llm_bls/generate_stream",
                                     data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        events = [json.loads(line[5:]) for line in response.read().decode().splitlines() if line.startswith("data:")]
    assert "".join(e["text_output"] for e in events) == want


def test_the_client_keeps_its_stream_between_requests_and_drops_it_when_a_request_is_abandoned(server, reference):
    want = reference_ids(reference, "Hello, how are you?", [], 8)
    decode = make_decode(reference.tokenizer)
    with client(server) as c:
        assert c.chat("Hello, how are you?", max_tokens=8) == decode(want) and c.stream_open
        assert c.chat("Hello, how are you?", max_tokens=8, stream=True) == decode(want) and c.stream_open
        pieces = c.stream("Hello, how are you?", max_tokens=64)
        next(pieces)
        pieces.close()  # the caller stops reading: the stream is closed and Triton cancels the rest
        assert not c.stream_open
        assert c.chat("Hello, how are you?", max_tokens=8) == decode(want)
    from nvlm_deploy.client.sync import NvlmClient

    with NvlmClient(server.grpc_url, keep_stream=False) as fresh:
        assert fresh.chat("Hello, how are you?", max_tokens=8) == decode(want) and not fresh.stream_open
