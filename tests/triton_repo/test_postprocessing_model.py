"""triton_repo/postprocessing/1/model.py in-process (pb_utils stand-in) on the packaged CPU repository."""

import numpy as np
import pytest

from nvlm_deploy.backend.bls import make_decode
from tests.triton_repo.in_process import load_model, outputs, request


@pytest.fixture(scope="module")
def model(cpu_repo):
    return load_model(cpu_repo, "postprocessing")


def ids_request(ids: list[int], length: int | None = None):
    """tensorrt_llm's outputs as the ensemble routes them: TOKENS_BATCH [1, beam=1, n], SEQUENCE_LENGTH [1, 1]."""
    return request(TOKENS_BATCH=np.array([[ids]], np.int32),
                   SEQUENCE_LENGTH=np.array([[len(ids) if length is None else length]], np.int32))


def text(response) -> list:
    return outputs(response)["OUTPUT"].as_numpy().tolist()


def test_each_request_gets_its_ids_decoded(model, reference):
    decode = make_decode(reference.tokenizer)
    a = reference.tokenizer.encode("Hello there")
    b = reference.tokenizer.encode("Les chats sont mignons.")
    first, second = model.execute([ids_request(a), ids_request(b)])
    assert text(first) == [decode(a).encode()] and text(second) == [decode(b).encode()]  # 1-D: one per beam


def test_the_sequence_length_cuts_the_ids(model, reference):
    ids = reference.tokenizer.encode("one two three")
    (response,) = model.execute([ids_request(ids + [0, 0, 0], length=len(ids))])  # padded row
    assert text(response) == [make_decode(reference.tokenizer)(ids).encode()]


def test_ids_outside_the_tokenizer_are_dropped_and_the_next_request_is_served(model, reference):
    """Image slots (vocab_size + k) and padded vocab rows can reach it: they decode to nothing, not an error."""
    ids = reference.tokenizer.encode("Hi")
    outside = len(reference.tokenizer) + 5
    (response,) = model.execute([ids_request([outside] + ids + [outside])])
    assert text(response) == [make_decode(reference.tokenizer)(ids).encode()]
    (after,) = model.execute([ids_request(ids)])
    assert text(after) == [make_decode(reference.tokenizer)(ids).encode()]


@pytest.mark.parametrize("bad", [-1, 10_000_000])
def test_ids_the_decoder_cannot_return_are_refused_alone(model, reference, bad):
    """Past the vocabulary and the image slots (or negative): that request's error; its batch is served."""
    from tests.triton_repo.in_process import error_message

    ids = reference.tokenizer.encode("Hi")
    wrong, right = model.execute([ids_request(ids + [bad]), ids_request(ids)])
    assert f"token ids outside [0, {model.id_limit})" in error_message(wrong)
    assert text(right) == [make_decode(reference.tokenizer)(ids).encode()]
