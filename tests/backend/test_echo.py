"""The user's text out of an echoed chat prompt (the ensemble's exclude_input_in_output = false)."""

from nvlm_deploy.backend.bls import make_decode
from nvlm_deploy.backend.echo import split_echo


def test_the_last_user_turn_comes_back_without_image_placeholders(reference, images):
    tok = reference.tokenizer
    prepared = reference.preprocessor.prepare("What is it?", images[:1], history=[("user", "Hi"), ("assistant", "Hello")])
    answer = tok.encode(" a red ball")
    user, rest = split_echo(prepared.input_ids + answer, tok, make_decode(tok))
    assert (user, rest) == ("What is it?", answer)


def test_ids_without_a_prompt_are_left_alone(reference):
    tok = reference.tokenizer
    assert split_echo(tok.encode("just an answer"), tok, make_decode(tok)) is None
