"""triton_repo/tensorrt_llm_bls/1/model.py in-process (pb_utils stand-in): its BLS requests reach the
preprocessing, vision_encoder and tensorrt_llm model.py files of the same packaged CPU repository.

Every test runs with both decoders (`package --bls-decoder`): local (the CPU default: the decoder in
the BLS's process) and tensorrt_llm (each generation a BLS request, as on GPU)."""

import pytest

from nvlm_deploy.backend.bls import make_decode
from nvlm_deploy.contracts import bls_decoder
from nvlm_deploy.client.tensors import ChatRequest, input_arrays
from tests.triton_repo import pb_utils_standin as pb
from tests.triton_repo.in_process import (check_final_once_and_last, is_decoupled, load_model, model_config,
                                          outputs, request)

PROMPTS = {"text-only": ("Hello, how are you?", 0), "one image": ("What is in the picture?", 1),
           "two images": ("<image> and <image>: which shape is on the left?", 2)}


@pytest.fixture(scope="module", params=bls_decoder.CHOICES)
def bls(cpu_repo, request):
    """The BLS model with each decoder, with the models it calls (named by its config) served in-process."""
    params = model_config(cpu_repo, "tensorrt_llm_bls").parameters
    assert params[bls_decoder.PARAMETER].string_value == bls_decoder.LOCAL  # the CPU default
    names = {model: params[f"{model}_model"].string_value
             for model in ("preprocessing", "vision_encoder", "tensorrt_llm")}
    for model, name in names.items():
        pb.register_model(name, load_model(cpu_repo, model), decoupled=is_decoupled(cpu_repo, model))
    assert is_decoupled(cpu_repo, "tensorrt_llm_bls")
    model = load_model(cpu_repo, "tensorrt_llm_bls", {bls_decoder.PARAMETER: request.param})
    yield model
    model.finalize()
    for name in names.values():
        pb.unregister_model(name)


def send(bls, *requests: ChatRequest) -> list[list]:
    """Each request's sends (response, flags), once its final flag came (the BLS answers from the stub's event loop)."""
    incoming = [request(**{name: array for name, (_, array) in input_arrays(r).items()}) for r in requests]
    assert pb.run_execute(bls, incoming, decoupled=True) is None
    sent = [r.get_response_sender().wait_final() for r in incoming]
    for s in sent:
        check_final_once_and_last(s)
    return sent


def chunks(sent: list) -> list[str]:
    out = []
    for response, _ in sent:
        (text,) = outputs(response)["text_output"].as_numpy().reshape(-1)  # [1] BYTES: 1-D per response
        out.append(text.decode("utf-8"))
    return out


def ask(bls, prompt: str, images=(), **options) -> list[str]:
    (sent,) = send(bls, ChatRequest(prompt, tuple(images), **{"max_tokens": 16, **options}))
    return chunks(sent)


def reference_text(reference, prompt, images, max_tokens=16) -> str:
    ids = reference.generate_ids(reference.preprocessor.prepare(prompt, images), max_new_tokens=max_tokens)
    assert ids, "the reference generated nothing; pick another prompt"
    return make_decode(reference.tokenizer)(ids)


@pytest.mark.parametrize("case", list(PROMPTS))
def test_answer_equals_the_reference_and_text_only_skips_the_vision_encoder(bls, reference, images, case):
    prompt, n = PROMPTS[case]
    pb.EXEC_LOG.clear()
    assert ask(bls, prompt, images[:n]) == [reference_text(reference, prompt, images[:n])]
    # a text-only request is preprocessed inside the BLS (the same handler): no preprocessing round trip;
    # the local decoder makes no tensorrt_llm request
    assert pb.EXEC_LOG == (["preprocessing", "vision_encoder"] if n else []) + ([] if bls.local else ["tensorrt_llm"])


def test_streamed_and_echoed_chunks_concatenate_to_the_whole_text(bls, reference):
    prompt = "Describe the image in detail."  # the tiny model's answer streams in many chunks
    whole = reference_text(reference, prompt, [], max_tokens=24)
    streamed = ask(bls, prompt, stream=True, max_tokens=24)
    assert len(streamed) > 1 and "".join(streamed) == whole
    (echoed,) = ask(bls, prompt, exclude_input_in_output=False, max_tokens=24)
    assert echoed == prompt + whole  # the user's text in front (tensorrtllm_backend's meaning)
    assert "".join(ask(bls, prompt, stream=True, exclude_input_in_output=False, max_tokens=24)) == whole


def test_requests_of_one_call_get_their_own_answers(bls, reference, images):
    prompts = [("Hello, how are you?", []), ("What is in the picture?", images[:1])]
    sent = send(bls, *(ChatRequest(p, tuple(i), max_tokens=16) for p, i in prompts))
    assert [chunks(s) for s in sent] == [[reference_text(reference, p, i)] for p, i in prompts]


BAD = {
    "corrupt image": (dict(images=(b"\x89PNG\r\n\x1a\nnot really",)), "not an image"),
    "too many images": (dict(images="three"), "more than this repository's limit of 2"),
    "max_tokens over the limit": (dict(max_tokens=65), "between 1 and 64"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_one_final_error_and_the_next_is_served(bls, reference, images, case):
    options, message = BAD[case]
    if options.get("images") == "three":
        options = {**options, "images": (images[0],) * 3}
    bad, good = send(bls, ChatRequest("What is it?", **{"max_tokens": 16, **options}),
                     ChatRequest("Hello, how are you?", max_tokens=16))
    ((response, flags),) = bad
    assert flags == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL and response.has_error()
    assert message in response.error().message()
    want = reference_text(reference, "Hello, how are you?", [])
    assert chunks(good) == [want]
    assert ask(bls, "Hello, how are you?") == [want]


def test_text_output_is_one_dimensional_as_upstream_clients_read_it(bls):
    """tensorrtllm_backend's clients do `result.as_numpy("text_output")[0].decode()`."""
    sent = send(bls, ChatRequest("Hello, how are you?", max_tokens=4))[0]
    array = outputs(sent[-1][0])["text_output"].as_numpy()
    assert array.shape == (1,) and isinstance(array[0].decode(), str)


def test_a_batched_request_gets_one_answer_per_row(bls, reference):
    """tensorrtllm_backend clients may send [B, 1] tensors: each row is answered, responses say their row."""
    import numpy as np

    rows = ["Hello, how are you?", "Describe the image in detail."]
    incoming = request(text_input=np.array([[p.encode()] for p in rows], dtype=object),
                       max_tokens=np.array([[8], [8]], np.int32),
                       exclude_input_in_output=np.array([[True], [True]]))
    assert pb.run_execute(bls, [incoming], decoupled=True) is None
    sent = incoming.get_response_sender().wait_final()
    check_final_once_and_last(sent)
    by_row: dict[int, str] = {}
    for response, _ in sent:
        tensors = outputs(response)
        row = int(tensors["batch_index"].as_numpy()[0])
        by_row[row] = by_row.get(row, "") + tensors["text_output"].as_numpy()[0].decode()
        assert int(tensors["sequence_index"].as_numpy()[0]) == 0
    assert by_row == {k: reference_text(reference, p, [], max_tokens=8) for k, p in enumerate(rows)}


def test_rows_of_different_batch_sizes_are_refused(bls):
    import numpy as np

    from tests.triton_repo.in_process import error_message

    incoming = request(text_input=np.array([[b"a"], [b"b"]], dtype=object), max_tokens=np.array([[8]], np.int32))
    pb.run_execute(bls, [incoming], decoupled=True)
    sent = incoming.get_response_sender().wait_final()
    assert "batch size 2" in error_message(sent[-1][0])


# the local decoder makes no tensorrt_llm request to hang (tests/backend/test_local_decoder.py has its deadline)
@pytest.mark.parametrize("bls", [bls_decoder.TENSORRT_LLM], indirect=True)
def test_a_request_past_its_deadline_gets_an_error_and_the_next_is_served(cpu_repo, bls, reference):
    """request_timeout_s (asyncio.wait_for on the stub's loop): a generation that never answers ends with
    the deadline's error, promptly; the BLS keeps serving. (The stand-in's exec(decoupled=True) hands its
    responses over only at the end, so the stop request that follows in Triton is not seen here.)"""
    import threading

    import numpy as np

    release = threading.Event()

    class Hung:  # a decoupled tensorrt_llm that answers nothing until released
        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                stop = pb.get_input_tensor_by_name(request, "stop")
                if stop is not None and bool(np.asarray(stop.as_numpy()).reshape(-1)[0]):
                    release.set()
                    sender.send(pb.InferenceResponse(), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                threading.Thread(target=lambda s=sender: (release.wait(5), s.send(
                    None, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)), daemon=True).start()

    pb.register_model("hung_llm", Hung(), decoupled=True)
    saved = bls.models["tensorrt_llm"], bls.timeout_s
    bls.models["tensorrt_llm"], bls.timeout_s = "hung_llm", 0.5
    try:
        (sent,) = send(bls, ChatRequest("Hello, how are you?", max_tokens=4))
    finally:
        bls.models["tensorrt_llm"], bls.timeout_s = saved
        release.set()
        pb.unregister_model("hung_llm")
    ((response, _),) = sent
    assert response.has_error() and "request_timeout_s" in response.error().message()
    assert ask(bls, "Hello, how are you?") == [reference_text(reference, "Hello, how are you?", [])]
