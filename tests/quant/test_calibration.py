"""Calibration requests: demo-task images + text-only prompts, or a folder of images and prompts.txt."""

import pytest

from nvlm_deploy.errors import DeployError
from nvlm_deploy.quant.calibration import calibration_prompts, calibration_requests
from tests.serving import png_bytes


def test_demo_set_mixes_image_and_text_only_requests():
    pairs = calibration_prompts("demo", size=6)
    assert [len(images) for _, images in pairs] == [1, 1, 0, 1, 1, 0]
    assert len({q for q, _ in pairs}) > 1  # several tasks' questions


def test_folder_pairs_images_with_prompts_and_adds_each_prompt_alone(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "b.png").write_bytes(png_bytes((300, 600)))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "prompts.txt").write_text("Describe it.\n\nWhat color?\n")
    pairs = calibration_prompts(str(tmp_path), size=10)
    assert [(q, [p.name for p in imgs]) for q, imgs in pairs] == [
        ("Describe it.", ["a.png"]), ("What color?", ["b.png"]), ("Describe it.", []), ("What color?", [])]
    assert len(calibration_prompts(str(tmp_path), size=3)) == 3


def test_requests_carry_the_vision_encoders_prompt_table(tiny_model, tiny_checkpoint):
    from nvlm_deploy.preprocess.request import Preprocessor

    reqs = calibration_requests(tiny_model, Preprocessor.from_model_dir(tiny_checkpoint), "demo", size=3)
    vocab = tiny_model.vocab_size
    with_image, text_only = reqs[0], reqs[2]
    slots = sum(i >= vocab for i in with_image.input_ids)
    assert with_image.prompt_table.shape == (slots, tiny_model.config.llm.hidden_size) and slots > 0
    assert text_only.prompt_table is None and max(text_only.input_ids) < vocab


def test_an_empty_size_is_refused():
    with pytest.raises(DeployError, match="--calib-size must be at least 1"):
        calibration_prompts("demo", size=0)
