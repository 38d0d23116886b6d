"""Vision engine build: profile, config.json, the clear error without TensorRT; the GPU build itself."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from nvlm_deploy.build import vision_engine
from nvlm_deploy.errors import DeployError

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def fake_onnx_stage(tmp_path, tiny_checkpoint, *, dtype="bf16"):
    """An onnx/ stage directory's manifest as `convert vision` writes it (no graph: nothing reads it here)."""
    from nvlm_deploy.config import NvlmConfig
    from nvlm_deploy.contracts.manifest import OnnxManifest, write_manifest

    stage = tmp_path / "target" / "onnx"
    stage.mkdir(parents=True)
    config = NvlmConfig.from_hf(tiny_checkpoint)
    manifest = OnnxManifest(model_dir=str(tiny_checkpoint), input_hashes={}, precision=dtype,
                            image_size=config.image_size, tokens_per_tile=config.tokens_per_tile,
                            hidden_size=config.llm.hidden_size, opset=18, exporter="", compute="",
                            onnx_file="vision_encoder.onnx", external_data_file=None, weight_bytes=0, nodes=0,
                            export_seconds=0.0, tensorrt_onnx_ops={}, check={})
    write_manifest(stage, manifest)
    return stage, manifest


def limits(**choices):
    from nvlm_deploy.contracts.limits import DeploymentLimits

    return DeploymentLimits(**{"tokens_per_tile": 256, "thumbnail": True, "max_images": 1,
                               "max_tiles_before_thumbnail": 6, "max_input_len": 4096, "max_output_len": 256,
                               "max_batch_size": 8, **choices})


def test_tile_profile_follows_the_limits():
    profile = vision_engine.tile_profile(limits(), requests_per_call=4)
    assert (profile.min, profile.opt, profile.max) == (1, 7, 28)
    assert profile.shapes(448)["max"] == [28, 3, 448, 448]
    two_images = vision_engine.tile_profile(limits(max_images=2))
    assert (two_images.opt, two_images.max) == (7, 14)  # one call takes a whole request
    assert vision_engine.tile_profile(limits(max_tiles_before_thumbnail=1)).max == 1  # no thumbnail for 1 tile
    with pytest.raises(DeployError, match="--requests-per-call 0"):
        vision_engine.tile_profile(limits(), requests_per_call=0)


def test_engine_config_content(tmp_path, tiny_checkpoint):
    _, manifest = fake_onnx_stage(tmp_path, tiny_checkpoint)
    profile = vision_engine.tile_profile(limits(), requests_per_call=2)
    config = vision_engine.engine_config(manifest, profile=profile, hardware_compat="ampere+", tensorrt_version="10.13.0",
                                         gpu={"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    assert [i["name"] for i in config["inputs"]] == ["pixel_values"]
    assert config["outputs"][0] == {"name": "image_embeddings", "dtype": "bfloat16", "shape": ["num_tiles", 256, 128]}
    assert config["builder_flags"] == ["BF16"] and config["precision"] == "bf16"
    assert config["profile"]["shapes"]["pixel_values"] == {"min": [1, 3, 448, 448], "opt": [7, 3, 448, 448],
                                                           "max": [14, 3, 448, 448]}
    assert config["tensorrt_version"] == "10.13.0"
    assert config["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert json.loads(json.dumps(config)) == config  # serializable as written


def test_precision_flags_and_compat_table():
    from nvlm_deploy.contracts.precision import PRECISIONS

    assert {p.name: p.tensorrt_flag for p in PRECISIONS.values()} == {"fp32": None, "fp16": "FP16", "bf16": "BF16"}
    assert vision_engine.HARDWARE_COMPAT["ampere+"] == ("AMPERE_PLUS", "8.0")
    assert vision_engine.HARDWARE_COMPAT["none"] == ("NONE", None)


@pytest.mark.skipif(HAVE_TENSORRT, reason="checks the message shown when TensorRT is missing")
def test_missing_tensorrt_says_what_to_install(tmp_path, tiny_checkpoint, capsys):
    from nvlm_deploy.cli import main

    fake_onnx_stage(tmp_path, tiny_checkpoint)
    target = tmp_path / "target"
    rc = main(["build", "vision", "--onnx", str(target), "--out", str(target), "--requests-per-call", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "tensorrt" in err and "pip install" in err
    assert "CPU runtime" in err and "ONNX Runtime" in err and "Traceback" not in err
    assert not (target / "vision").exists()


def test_bad_build_input(tmp_path, tiny_checkpoint):
    with pytest.raises(DeployError, match="convert vision"):
        vision_engine.build_vision_engine(tmp_path / "nothing", tmp_path / "out")
    stage, _ = fake_onnx_stage(tmp_path, tiny_checkpoint)
    target = stage.parent
    with pytest.raises(DeployError, match="--hardware-compat 'turing'"):
        vision_engine.build_vision_engine(stage, target, hardware_compat="turing")
    (target / "vision").mkdir()
    with pytest.raises(DeployError, match="already exists.*--force"):
        vision_engine.build_vision_engine(target, target)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_tiny_engine_matches_onnx_runtime(tiny_checkpoint, tmp_path, dtype):
    import torch

    from nvlm_deploy.contracts.precision import precision
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    target = tmp_path / "target"
    export_vision_onnx(tiny_checkpoint, target, dtype=dtype, check_tiles=(1,))
    vision_dir = vision_engine.build_vision_engine(target, target)
    config = json.loads((vision_dir / "config.json").read_text())
    assert config["profile"]["max"] == 7 and config["gpu"]["compute_capability"]
    assert (vision_dir / "model.plan").stat().st_size > 0
    onnx_encoder = OnnxVisionEncoder(target)
    tol = precision("bf16" if dtype == "bf16" else "fp16").tolerance  # TensorRT may pick TF32 / reduced-precision tactics
    for tiles in (1, 3, 7):
        x = np.random.default_rng(tiles).standard_normal((tiles, 3, 448, 448), dtype=np.float32)
        expected = onnx_encoder.encode(x)
        actual = vision_engine.run_engine(vision_dir / "model.plan", torch.from_numpy(x)).float().cpu().numpy()
        assert actual.shape == expected.shape == (tiles, 256, 128)
        assert np.abs(actual - expected).max() / np.abs(expected).max() <= tol.rtol
    # the timing cache written by the first build is loaded by the next one
    again = json.loads((vision_engine.build_vision_engine(target, target, force=True) / "config.json").read_text())
    assert again["timing_cache"]["loaded_bytes"] > 0
