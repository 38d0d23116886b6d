"""The target directory: stage folders found once, and one set of limits that built engines must cover."""

import json

import pytest

from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.contracts.target import Target
from nvlm_deploy.errors import DeployError


def test_stage_folder_or_target_folder_is_worked_out_once(engines):
    assert Target.of(engines).root == engines
    assert Target.of(engines / "onnx", stage="onnx").root == engines
    assert Target.of(engines / "trtllm_checkpoint", stage="trtllm_checkpoint").manifest("trtllm_checkpoint").tp == 1


def test_missing_stage_names_its_command(tmp_path):
    with pytest.raises(DeployError, match=r"llm does not exist: write it with `nvlm-deploy build llm"):
        Target(tmp_path).manifest("llm")


def test_limits_are_stored_once_and_refused_when_an_engine_cannot_serve_them(tiny_checkpoint, tmp_path):
    from tests.build.test_llm_engine import fake_vision_engine

    config = NvlmConfig.from_hf(tiny_checkpoint)
    target = Target(tmp_path / "t")
    first = target.settle_limits(config, model_dir=tiny_checkpoint, choices={"max_images": 1})
    assert target.limits() == first
    assert json.loads((target.root / "manifest.json").read_text())["limits"]["max_images"] == 1
    fake_vision_engine(target.root, max_tiles=7)
    with pytest.raises(DeployError, match=r"14 tiles per request \(--max-images 2.*at most 7 tiles per call"):
        target.settle_limits(config, model_dir=tiny_checkpoint, choices={"max_images": 2})
    assert target.limits() == first  # unchanged
    # rebuilding the vision engine itself is allowed to change them
    assert target.settle_limits(config, model_dir=tiny_checkpoint, choices={"max_images": 2}, rebuilding="vision",
                                store=False).max_images == 2
    # lower limits are served by the same engine
    assert target.settle_limits(config, model_dir=tiny_checkpoint, choices={"max_output_len": 16}).max_output_len == 16
