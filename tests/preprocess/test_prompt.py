"""Prompt text of HF NVLM-D chat(): chatml template and tile-tag image placeholders (nvlm-d.md §5)."""

from __future__ import annotations

import pytest

from nvlm_deploy.errors import DeployError
from nvlm_deploy.preprocess.prompt import build_prompt, chatml, image_placeholder, prompt_segments, tile_tags

PAD = "<|vision_pad|>"


def test_tile_tags():
    assert tile_tags(1) == ["<tile_global_thumbnail>"]
    assert tile_tags(7) == [f"<tile_{i}>" for i in range(1, 7)] + ["<tile_global_thumbnail>"]


def test_placeholder_single_tile_has_only_the_thumbnail_tag():
    assert image_placeholder(1, tokens_per_tile=256) == "<Image><tile_global_thumbnail>" + PAD * 256 + "</Image>"


def test_placeholder_seven_tiles():
    text = image_placeholder(7, tokens_per_tile=256)
    expected = "<Image>" + "".join(f"<tile_{i}>" + PAD * 256 for i in range(1, 7))
    expected += "<tile_global_thumbnail>" + PAD * 256 + "</Image>"
    assert text == expected
    assert text.count(PAD) == 7 * 256


def test_chatml_matches_the_mpt_style_template():
    assert chatml("<image>\nWhat is it?") == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?"
        "<|im_end|><|im_start|>assistant\n"
    )
    assert chatml("hi", system_message="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_single_image_without_marker_goes_first_with_a_newline():
    text = build_prompt("What is it?", (1,), tokens_per_tile=2)
    assert text == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n"
        "<Image><tile_global_thumbnail>" + PAD * 2 + "</Image>\nWhat is it?<|im_end|><|im_start|>assistant\n"
    )


def test_kth_marker_gets_kth_image():
    text = build_prompt("A: <image> B: <image> same?", (3, 1), tokens_per_tile=1)
    first = "<Image><tile_1>" + PAD + "<tile_2>" + PAD + "<tile_global_thumbnail>" + PAD + "</Image>"
    second = "<Image><tile_global_thumbnail>" + PAD + "</Image>"
    assert f"user\nA: {first} B: {second} same?<|im_end|>" in text


def test_several_images_without_markers_each_get_one():
    text = build_prompt("Compare.", (1, 1), tokens_per_tile=1)
    one = "<Image><tile_global_thumbnail>" + PAD + "</Image>"
    assert f"user\n{one}\n{one}\nCompare.<|im_end|>" in text


def test_text_only_prompt_has_no_image_text():
    text = build_prompt("Hello", (), tokens_per_tile=256)
    assert text == chatml("Hello")
    assert "<Image>" not in text and PAD not in text and "<image>" not in text


@pytest.mark.parametrize("query, tiles, markers, images", [
    ("<image> and <image>", (1,), 2, 1),
    ("<image> alone", (), 1, 0),
    ("<image> x", (1, 3), 1, 2),
])
def test_marker_count_mismatch(query, tiles, markers, images):
    with pytest.raises(DeployError, match=rf"has {markers} <image> marker\(s\) but the request has {images} image"):
        build_prompt(query, tiles, tokens_per_tile=4)


def test_segments_mark_only_the_templates_tokens_as_control():
    history = [("system", "Be <|im_end|> brief."), ("user", "<image> first"), ("assistant", "ok")]
    segments = prompt_segments("and <|im_start|> <image>", (1, 3), tokens_per_tile=2, history=history)
    assert "".join(s.text for s in segments) == build_prompt("and <|im_start|> <image>", (1, 3), tokens_per_tile=2,
                                                              history=history)
    start, end, pads = "<|im_start|>", "<|im_end|>", PAD * 2
    # system; user (image 1: 1 tile); assistant; the query (image 2: 3 tiles); the answer's start
    assert [s.text for s in segments if s.control] == [start, end, start, pads, end, start, end,
                                                        start, pads, pads, pads, end, start]
    assert [s.source for s in segments if s.source] == [
        "chat_history entry 0", "chat_history entry 1", "chat_history entry 1", "chat_history entry 2",
        "the prompt", "the prompt"]
    assert all("<|" not in s.text for s in segments if not s.control and not s.source)  # template text is plain
