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
    """One token per response, then a bare final flag."""
    sent = sends(req)
    assert sent[-1] == (None, FINAL)
    out = []
    for response, flags in sent[:-1]:
        assert flags == 0
        got = outputs(response)
        ids = got["output_ids"].as_numpy()
        assert ids.dtype == np.int32 and ids.shape == (1, 1, 1) and got["sequence_length"].as_numpy().tolist() == [[1]]
        out.append(int(ids[0, 0, 0]))
    return out


def whole_ids(req) -> list[int]:
    """One response with every id, then a bare final flag."""
    (response, flags), final = sends(req)
    assert flags == 0 and final == (None, FINAL)
    got = outputs(response)
    ids = got["output_ids"].as_numpy()[0, 0].tolist()
    assert got["sequence_length"].as_numpy().tolist() == [[len(ids)]]
    return ids


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
    assert streamed_ids(streamed) == want
    assert whole_ids(echoed) == list(prepared.input_ids) + want
    assert whole_ids(plain) == want


BAD = {
    "request_output_len over max_output_len": (dict(max_tokens=65), "between 1 and 64"),
    "request_output_len 0": (dict(max_tokens=0), "between 1 and 64"),
    "empty input_ids": (dict(input_ids=[]), "input_ids is empty"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_one_final_error_and_the_others_are_served(model, reference, case):
    changes, message = BAD[case]
    prepared = reference.preprocessor.prepare("Hello, how are you?")
    want = reference.generate_ids(prepared, max_new_tokens=MAX_TOKENS)
    eos = reference.tokenizer.eos_id
    bad = llm_request(changes.get("input_ids", prepared.input_ids), eos, streaming=True,
                      max_tokens=changes.get("max_tokens", MAX_TOKENS))
    good = llm_request(prepared.input_ids, eos, streaming=True)
    model.execute([bad, good])
    ((response, flags),) = bad.get_response_sender().sent  # the error is its one and final send
    assert flags == FINAL and message in error_message(response)
    assert streamed_ids(good) == want
    after = llm_request(prepared.input_ids, eos, streaming=False)
    model.execute([after])
    assert whole_ids(after) == want
