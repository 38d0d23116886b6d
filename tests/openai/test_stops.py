import pytest

from nvlm_deploy.openai.stops import StopText


def run(stops, chunks):
    cut = StopText(stops)
    sent = [cut.push(c) for c in chunks] + [cut.finish()]
    return sent, cut.stopped


def test_the_answer_ends_before_the_first_stop_string_even_across_chunks():
    sent, stopped = run(["END"], ["Hello E", "N", "D and more", " text"])
    assert "".join(sent) == "Hello " and stopped
    assert sent[0] == "Hello "  # "E" may begin "END": held back, never shown


def test_the_earliest_of_several_stop_strings_wins():
    sent, _ = run(["world", "lo"], ["hello world"])
    assert "".join(sent) == "hel"


@pytest.mark.parametrize("chunks", [["abc", "de"], ["a", "b", "c", "d", "e"], ["abcde"]])
def test_without_a_match_every_character_comes_out_once(chunks):
    sent, stopped = run(["cdx", "ex"], chunks)
    assert "".join(sent) == "abcde" and not stopped


def test_held_back_text_that_turns_out_not_to_stop_is_sent_later():
    cut = StopText(["\n\n"])
    assert cut.push("line\n") == "line"
    assert cut.push("next") == "\nnext"
    assert cut.finish() == ""


def test_no_stop_strings_pass_everything_through():
    cut = StopText(())
    assert cut.push("abc") == "abc" and cut.finish() == "" and not cut.stopped
