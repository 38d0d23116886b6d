"""The BLS flow in-process: the real handlers stand in for the BLS requests between models."""

import numpy as np
import pytest

from nvlm_deploy.backend.bls import BlsHandler, make_decode
from nvlm_deploy.backend.llm import LlmHandler
from nvlm_deploy.backend.preprocessing import PreprocessingHandler
from nvlm_deploy.backend.request_inputs import repository_limits
from nvlm_deploy.backend.vision import VisionHandler


@pytest.fixture(scope="module")
def pipeline(cpu_repo, engines):
    from nvlm_deploy.runtime.decoder import TrtllmCheckpointRuntime
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    limits = repository_limits(cpu_repo)
    pre = PreprocessingHandler(cpu_repo / "preprocessing" / "assets", limits=limits)
    runtime = TrtllmCheckpointRuntime.load(engines / "trtllm_checkpoint")
    vision = VisionHandler(OnnxVisionEncoder(engines / "onnx"), hidden_size=runtime.hidden_size,
                           max_tiles=limits.max_tiles_per_request)
    llm = LlmHandler(runtime, max_input_len=limits.max_input_len, max_output_len=limits.max_output_len)
    calls = []

    def encode(pixels):
        calls.append(pixels.shape)
        return vision.run(pixels)

    def generate(inputs):
        out = []
        llm.run([llm.parse(inputs)], lambda k, outputs: out.append(outputs))
        return out

    from nvlm_deploy.backend.detokenize import byte_level_unfinished

    bls = BlsHandler(make_decode(pre.tokenizer), preprocess=pre.run, encode=encode, generate=generate,
                     unfinished=byte_level_unfinished(cpu_repo / "preprocessing" / "assets" / "tokenizer.json"))
    return bls, calls, pre


def ask(bls, prompt, images=(), *, stream=False, echo=False, max_tokens=12):
    inputs = {"text_input": np.array([[prompt.encode()]], dtype=object), "max_tokens": np.array([[max_tokens]], np.int32),
              "stream": np.array([[stream]]), "exclude_input_in_output": np.array([[not echo]])}
    if images:
        from nvlm_deploy.client.tensors import image_arrays

        inputs["image_files_input"], inputs["image_files_lengths"] = image_arrays(images)
    sent = []
    bls.run(inputs, lambda text, usage: sent.append((text, usage)))
    assert [usage is not None for _, usage in sent] == [False] * (len(sent) - 1) + [True]
    return [text for text, _ in sent]


def test_text_only_skips_the_vision_encoder_and_images_use_it(pipeline, images, reference):
    bls, calls, _ = pipeline
    calls.clear()
    text = ask(bls, "Hello, how are you?")
    assert calls == [] and len(text) == 1
    ask(bls, "What is it?", images[:1])
    assert len(calls) == 1 and calls[0][0] == 1


def test_answers_match_the_reference(pipeline, images, reference):
    bls, _, pre = pipeline
    for prompt, imgs in (("Hello, how are you?", []), ("What is in the picture?", images[:1])):
        want = reference.generate_ids(reference.preprocessor.prepare(prompt, imgs), max_new_tokens=12)
        assert ask(bls, prompt, imgs) == [make_decode(pre.tokenizer)(want)]


def test_stream_and_echo_concatenate_to_the_whole_text(pipeline):
    bls, _, pre = pipeline
    whole = ask(bls, "Hello, how are you?", max_tokens=24)[0]
    assert "".join(ask(bls, "Hello, how are you?", stream=True, max_tokens=24)) == whole
    # tensorrtllm_backend's meaning: the user's text in front, not streamed; a stream never repeats it
    assert ask(bls, "Hello, how are you?", echo=True, max_tokens=24) == ["Hello, how are you?" + whole]
    assert "".join(ask(bls, "Hello, how are you?", stream=True, echo=True, max_tokens=24)) == whole


def test_final_response_counts_the_tokens(pipeline, images):
    bls, _, pre = pipeline
    from nvlm_deploy.client.tensors import image_arrays

    inputs = {"text_input": np.array([[b"What is it?"]], dtype=object), "max_tokens": np.array([[5]], np.int32),
              "end_id": np.array([[-1]], np.int32)}
    inputs["image_files_input"], inputs["image_files_lengths"] = image_arrays(images[:1])
    sent = []
    bls.run(inputs, lambda text, usage: sent.append(usage))
    prepared = pre.prepare("What is it?", images[:1])
    assert sent[-1].num_input_tokens == len(prepared.input_ids) and sent[-1].num_output_tokens == 5


def test_history_reaches_the_prompt(pipeline):
    bls, _, pre = pipeline
    history = '[["user", "Hi"], {"role": "assistant", "content": "Hello!"}]'
    sent = []
    inputs = {"text_input": np.array([[b"And now?"]], dtype=object), "max_tokens": np.array([[3]], np.int32),
              "chat_history": np.array([[history.encode()]], dtype=object)}
    bls.run(inputs, lambda text, usage: sent.append(usage))
    want = pre.prepare("And now?", [], history=[("user", "Hi"), ("assistant", "Hello!")])
    assert sent[-1].num_input_tokens == len(want.input_ids) > len(pre.prepare("And now?", []).input_ids)


def run_raw(bls, prompt="Hello, how are you?", **arrays):
    sent = []
    bls.run({"text_input": np.array([[prompt.encode()]], dtype=object), "max_tokens": np.array([[12]], np.int32),
             "exclude_input_in_output": np.array([[True]]), **arrays}, lambda text, usage: sent.append((text, usage)))
    return "".join(t for t, _ in sent), sent[-1][1]


def test_stop_words_end_the_answer_and_log_probs_come_back(pipeline, reference):
    bls, _, pre = pipeline
    whole, usage = run_raw(bls, return_log_probs=np.array([[True]]))
    assert len(usage.output_log_probs) == usage.num_output_tokens == 12
    assert usage.cum_log_prob == pytest.approx(sum(usage.output_log_probs), abs=1e-4)
    assert all(lp <= 0 for lp in usage.output_log_probs)
    prompt = "Describe the image in detail."  # its answer has tokens that tokenize back to themselves
    ids = reference.generate_ids(reference.preprocessor.prepare(prompt, []), max_new_tokens=12)
    tok = pre.tokenizer
    k = next(k for k, t in enumerate(ids) if k >= 1 and t not in ids[:k] and tok.encode(tok.decode([t])) == [t])
    whole, _ = run_raw(bls, prompt)
    cut, cut_usage = run_raw(bls, prompt, stop_words=np.array([[tok.decode([ids[k]]).encode()]], dtype=object))
    assert cut_usage.num_output_tokens == k + 1  # TensorRT-LLM keeps the stop word in the output
    assert whole.startswith(cut) and len(cut) < len(whole)


def test_sampling_inputs_reach_the_runtime_or_are_refused(pipeline):
    from nvlm_deploy.backend.request_inputs import RequestError

    bls, _, _ = pipeline
    plain, _ = run_raw(bls)
    penalized, _ = run_raw(bls, repetition_penalty=np.array([[3.0]], np.float32))
    assert penalized != plain  # the tiny model repeats itself; the penalty changes the greedy answer
    with pytest.raises(RequestError, match="beam"):
        run_raw(bls, beam_width=np.array([[2]], np.int32))
    with pytest.raises(RequestError, match="repetition_penalty"):
        run_raw(bls, repetition_penalty=np.array([[-1.0]], np.float32))
    with pytest.raises(RequestError, match="embedding bias"):
        run_raw(bls, embedding_bias_words=np.array([[b"x"]], dtype=object))


def test_word_lists_round_trip(pipeline):
    from nvlm_deploy.backend.llm import word_lists

    _, _, pre = pipeline
    words = ["Hello", " world!", "日本"]
    packed = pre.word_list(np.array([[w.encode() for w in words]], dtype=object), name="stop_words")
    assert word_lists(packed) == [pre.tokenizer.encode(w) for w in words]
    assert word_lists(pre.word_list(None, name="stop_words")) == []


def test_an_ended_request_closes_its_generation_and_sends_nothing_more(pipeline):
    """A cancelled or timed-out request: the BLS closes tensorrt_llm's stream (which sends the stop request)."""
    _, _, pre = pipeline
    produced, closed = [], []

    def generate(inputs):
        try:
            for k in range(10):
                produced.append(k)
                yield {"output_ids": np.array([[[pre.tokenizer.encode(" a")[0]]]], np.int32)}
        finally:
            closed.append(len(produced))

    bls = BlsHandler(make_decode(pre.tokenizer), preprocess=pre.run, encode=lambda p: None, generate=generate)
    sent = []
    inputs = {"text_input": np.array([[b"Hi"]], dtype=object), "max_tokens": np.array([[10]], np.int32),
              "stream": np.array([[True]])}
    finished = bls.run(inputs, lambda text, usage: sent.append((text, usage)), ended=lambda: len(produced) >= 3)
    assert finished is False and closed == [3] and len(produced) == 3
    assert len(sent) == 2 and all(usage is None for _, usage in sent)  # two chunks, no final response


def test_run_async_sends_what_run_sends_and_closes_an_ended_generation(pipeline, images):
    """run_async (tensorrt_llm_bls's asyncio execute): awaitable preprocess/encode and an async generator of
    tensorrt_llm's outputs give the same sends as run; ended, the async generator is closed (its cleanup
    sends tensorrt_llm's stop request) and nothing final is sent."""
    import asyncio

    bls, _, pre = pipeline

    async def preprocess(inputs):
        await asyncio.sleep(0)
        return bls.preprocess(inputs)

    async def encode(pixels):
        return bls.encode(pixels)

    closed = []

    async def generate(inputs):
        try:
            for outputs in bls.generate(inputs):
                await asyncio.sleep(0)
                yield outputs
        finally:
            closed.append(True)

    async_bls = BlsHandler(bls.decode, preprocess=preprocess, encode=encode, generate=generate,
                           unfinished=bls.unfinished)
    from nvlm_deploy.client.tensors import image_arrays

    inputs = {"text_input": np.array([[b"Describe the image in detail."]], dtype=object),
              "max_tokens": np.array([[12]], np.int32), "stream": np.array([[True]])}
    inputs["image_files_input"], inputs["image_files_lengths"] = image_arrays(images[:1])
    sync_sent, async_sent = [], []
    assert bls.run(inputs, lambda text, usage: sync_sent.append((text, usage))) is True
    assert asyncio.run(async_bls.run_async(inputs, lambda text, usage: async_sent.append((text, usage)))) is True
    assert async_sent == sync_sent and sync_sent[-1][1] is not None and closed == [True]

    closed.clear()
    asked, ended_sent = [], []

    def ended():
        asked.append(True)
        return len(asked) > 3  # after three of tensorrt_llm's outputs

    finished = asyncio.run(async_bls.run_async(inputs, lambda text, usage: ended_sent.append((text, usage)),
                                               ended=ended))
    assert finished is False and closed == [True] and len(asked) == 4
    assert all(usage is None for _, usage in ended_sent)  # nothing final


@pytest.mark.parametrize("arrays, message", [
    ({"temperature": np.array([[np.nan]], np.float32)}, "temperature must be a finite number"),
    ({"top_p": np.array([[1.5]], np.float32)}, r"top_p must be in \[0, 1\]"),
    ({"temperature": np.array([[np.inf]], np.float32), "top_k": np.array([[5]], np.int32)}, "temperature"),
])
def test_settings_tensorrt_llm_would_refuse_never_reach_it(pipeline, arrays, message):
    """Refused by the BLS itself: a tensorrt_llm stream that ends at once with an error is what python_backend
    r24.10 handles worst (lost errors, a server abort in the soak's bad-every-4 pattern)."""
    from nvlm_deploy.backend.request_inputs import RequestError

    _, _, pre = pipeline

    def generate(inputs):
        raise AssertionError("tensorrt_llm was asked to generate")

    bls = BlsHandler(make_decode(pre.tokenizer), preprocess=pre.run, encode=None, generate=generate)
    with pytest.raises(RequestError, match=message):
        run_raw(bls, **arrays)
