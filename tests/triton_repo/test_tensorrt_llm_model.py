"""triton_repo/tensorrt_llm/1/model.py (the CPU runtime's decoupled model) in-process (pb_utils stand-in)."""

import numpy as np
import pytest

from tests.triton_repo.in_process import (FINAL, check_final_once_and_last, error_message, is_decoupled, load_model,
                                          outputs, request)

MAX_TOKENS = 16


@pytest.fixture(scope="module")
def model(cpu_repo):
    assert is_decoupled(cpu_repo, "tensorrt_llm")
    return load_model(cpu_repo, "tensorrt_llm")


def llm_request(input_ids: list[int], eos: int, *, streaming: bool, exclude_input: bool = True, table=None,
                max_tokens: int = MAX_TOKENS):
    ids = np.array(input_ids, np.int32).reshape(1, -1)
    arrays = dict(input_ids=ids, input_lengths=np.array([[ids.shape[1]]], np.int32),
                  request_output_len=np.array([[max_tokens]], np.int32), end_id=np.array([[eos]], np.int32),
                  streaming=np.array([[streaming]]), exclude_input_in_output=np.array([[exclude_input]]))
    if table is not None:  # [rows, hidden] -> [1, rows, hidden], as vision_encoder sends it
        arrays.update(prompt_embedding_table=table[None], prompt_vocab_size=np.array([[table.shape[0]]], np.int32))
    return request(**arrays)


def sends(req) -> list:
    sent = req.get_response_sender().sent
    check_final_once_and_last(sent)
    return sent


def streamed_ids(req) -> list[int]:
    """One token per response; the final flag rides on the last (alone only when end_id ended it)."""
    sent = sends(req)
    out = []
    for response, flags in sent:
        if response is None:
            assert flags == FINAL
            continue
        got = outputs(response)
        ids = got["output_ids"].as_numpy()
        assert ids.dtype == np.int32 and ids.shape == (1, 1, 1) and got["sequence_length"].as_numpy().tolist() == [[1]]
        out.append(int(ids[0, 0, 0]))
    return out


def whole_ids(req) -> list[int]:
    """One response with every id, carrying the final flag."""
    ((response, flags),) = sends(req)
    assert flags == FINAL
    got = outputs(response)
    ids = got["output_ids"].as_numpy()[0, 0].tolist()
    assert got["sequence_length"].as_numpy().tolist() == [[len(ids)]]
    return ids


def wait(*requests) -> None:
    for r in requests:  # the scheduler thread answers after execute returned
        r.get_response_sender().wait_final()


@pytest.mark.parametrize("prompt, n", [("Hello, how are you?", 0), ("What is in the picture?", 1)])
def test_streamed_tokens_equal_the_reference_and_the_final_flag_comes_once_last(model, reference, images, prompt, n):
    prepared = reference.preprocessor.prepare(prompt, images[:n])
    want = reference.generate_ids(prepared, max_new_tokens=MAX_TOKENS)
    assert want, "the reference generated nothing; pick another prompt"
    table = reference.image_features(prepared.pixel_values).numpy() if n else None
    eos = reference.tokenizer.eos_id
    ids = prepared.input_ids
    streamed = llm_request(ids, eos, streaming=True, table=table)
    echoed = llm_request(ids, eos, streaming=False, exclude_input=False, table=table)
    plain = llm_request(ids, eos, streaming=False, table=table)
    assert model.execute([streamed, echoed, plain]) is None  # decoupled: everything goes through the senders
    wait(streamed, echoed, plain)
    assert streamed_ids(streamed) == want
    assert whole_ids(echoed) == list(prepared.input_ids) + want
    assert whole_ids(plain) == want


BAD = {
    "request_output_len over max_output_len": (dict(max_tokens=65), "between 1 and 64"),
    "request_output_len 0": (dict(max_tokens=0), "between 1 and 64"),
    "empty input_ids": (dict(input_ids=[]), "input_ids is empty"),
    "end_id outside the vocabulary": (dict(eos=5000), "end_id 5000 is outside the vocabulary"),
    "prompt table of the wrong width": (dict(table=np.zeros((3, 5), np.float32)), "does not hold prompt_vocab_size 3 rows"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_one_final_error_and_the_others_are_served(model, reference, case):
    changes, message = BAD[case]
    prepared = reference.preprocessor.prepare("Hello, how are you?")
    want = reference.generate_ids(prepared, max_new_tokens=MAX_TOKENS)
    eos = reference.tokenizer.eos_id
    bad = llm_request(changes.get("input_ids", prepared.input_ids), changes.get("eos", eos), streaming=True,
                      max_tokens=changes.get("max_tokens", MAX_TOKENS), table=changes.get("table"))
    good = llm_request(prepared.input_ids, eos, streaming=True)
    model.execute([bad, good])
    wait(bad, good)
    ((response, flags),) = bad.get_response_sender().sent  # the error is its one and final send
    assert flags == FINAL and message in error_message(response)
    assert streamed_ids(good) == want
    after = llm_request(prepared.input_ids, eos, streaming=False)
    model.execute([after])
    wait(after)
    assert whole_ids(after) == want


# ---- in-flight batching, cancellation, stop requests, deadlines ----

LONG = 64  # the repository's max_output_len


def _first_send(req, timeout=60.0):
    import time

    sender, start = req.get_response_sender(), time.monotonic()
    while not sender.sent:
        assert time.monotonic() - start < timeout, "no response came"
        time.sleep(0.001)


def test_a_short_request_joins_a_running_long_one_and_finishes_first(model, reference):
    prepared = reference.preprocessor.prepare("Describe the image in detail.")
    long = llm_request(prepared.input_ids, -1, streaming=True, max_tokens=LONG)
    short = llm_request(prepared.input_ids, -1, streaming=True, max_tokens=2)
    order = []
    for r, name in ((long, "long"), (short, "short")):
        sender = r.get_response_sender()
        send = sender.send
        sender.send = lambda response=None, flags=0, _send=send, _name=name: (
            _send(response, flags), flags & FINAL and order.append(_name))
    model.execute([long])
    _first_send(long)
    model.execute([short])  # arrives while the long one decodes: joins it between two steps
    wait(long, short)
    assert order == ["short", "long"]
    assert len(streamed_ids(long)) == LONG and len(streamed_ids(short)) == 2


def test_a_cancelled_request_stops_within_one_step_and_gets_only_the_final_flag(model, reference):
    prepared = reference.preprocessor.prepare("Describe the image in detail.")
    doomed = llm_request(prepared.input_ids, -1, streaming=True, max_tokens=LONG)
    model.execute([doomed])
    _first_send(doomed)
    sender = doomed.get_response_sender()
    sender.cancelled = True
    tokens_then = len(sender.sent)
    sent = sender.wait_final()
    check_final_once_and_last(sent)
    assert sent[-1] == (None, FINAL) and len(sent) - 1 <= tokens_then + 1 < LONG
    after = llm_request(prepared.input_ids, -1, streaming=False, max_tokens=4)
    model.execute([after])
    wait(after)
    assert len(whole_ids(after)) == 4  # the slot was freed


def test_a_stop_request_ends_the_request_with_its_id(model, reference):
    from tests.triton_repo import pb_utils_standin as pb

    prepared = reference.preprocessor.prepare("Describe the image in detail.")
    ids = np.array([prepared.input_ids], np.int32)
    target = pb.InferenceRequest(inputs=[pb.Tensor(n, a) for n, a in dict(
        input_ids=ids, input_lengths=np.array([[ids.shape[1]]], np.int32),
        request_output_len=np.array([[LONG]], np.int32), streaming=np.array([[True]])).items()], request_id="r-1")
    stop = pb.InferenceRequest(inputs=[pb.Tensor(n, a) for n, a in dict(
        input_ids=np.array([[0]], np.int32), input_lengths=np.array([[1]], np.int32),
        request_output_len=np.array([[1]], np.int32), stop=np.array([[True]])).items()], request_id="r-1")
    model.execute([target])
    _first_send(target)
    model.execute([stop])
    ((response, flags),) = stop.get_response_sender().wait_final()
    assert flags == FINAL and not response.has_error() and response.output_tensors() == []
    sent = target.get_response_sender().wait_final()
    check_final_once_and_last(sent)
    assert sent[-1] == (None, FINAL) and len(sent) - 1 < LONG


def test_a_hung_step_past_the_deadline_ends_with_an_error_and_nothing_after_it(engines):
    import threading

    from nvlm_deploy.backend.llm import LlmHandler
    from nvlm_deploy.backend.llm_scheduler import LlmScheduler
    from nvlm_deploy.backend.pbutils import Reply
    from nvlm_deploy.runtime.decoder import TrtllmCheckpointRuntime
    from tests.triton_repo import pb_utils_standin as pb

    handler = LlmHandler(TrtllmCheckpointRuntime.load(engines / "trtllm_checkpoint"), max_input_len=16, max_output_len=8)
    scheduler = LlmScheduler(handler, pb, slots=2, request_timeout_s=0.3)
    release, real_step = threading.Event(), scheduler.batch.step
    scheduler.batch.step = lambda: (release.wait(30), real_step())[1]  # the first step hangs
    arrays = dict(input_ids=np.array([[5, 6, 7]], np.int32), request_output_len=np.array([[4]], np.int32),
                  streaming=np.array([[True]]))
    hung = pb.ResponseSender()
    scheduler.submit(handler.parse(arrays), Reply(pb, hung))
    ((error, flags),) = hung.wait_final(30)[1:]  # the prefill's token went out, then the deadline's error
    assert flags == FINAL and "did not finish within 0.3 s" in error.error().message()
    release.set()
    scheduler.batch.step = real_step
    fine = pb.ResponseSender()
    scheduler.submit(handler.parse({**arrays, "streaming": np.array([[False]])}), Reply(pb, fine))
    ((response, flags),) = fine.wait_final(30)
    assert flags == FINAL and not response.has_error()
    scheduler.close()
    assert hung.sent[-1] == (error, FINAL) and len(hung.sent) == 2  # the step that came back sent nothing more
