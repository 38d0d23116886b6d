"""Vision engine build: profile, config.json, the clear error without TensorRT; the GPU build itself."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from nvlm_deploy.build import vision_engine
from nvlm_deploy.errors import DeployError

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def fake_onnx_stage(tmp_path, tiny_checkpoint, *, max_tiles=7, dtype="bf16"):
    """An onnx/ stage directory's manifest as `convert vision` writes it (no graph: nothing reads it here)."""
    from nvlm_deploy.artifacts import write_manifest
    from nvlm_deploy.config import NvlmConfig
    from nvlm_deploy.convert.vision_onnx import io_spec

    stage = tmp_path / "target" / "onnx"
    stage.mkdir(parents=True)
    config = NvlmConfig.from_hf(tiny_checkpoint)
    return stage, write_manifest(stage, stage="onnx", settings={"dtype": dtype, "max_tiles": max_tiles},
                                 extra={"io": io_spec(config, dtype)})


def test_tile_profile():
    profile = vision_engine.tile_profile(max_tiles=7, max_batch=4)
    assert (profile.min, profile.opt, profile.max) == (1, 7, 28)
    assert profile.shapes(448)["max"] == [28, 3, 448, 448]
    assert vision_engine.tile_profile(max_tiles=1, max_batch=1).max == 1
    with pytest.raises(DeployError, match="--max-batch 0"):
        vision_engine.tile_profile(max_tiles=7, max_batch=0)
    with pytest.raises(DeployError, match="max tiles 0"):
        vision_engine.tile_profile(max_tiles=0, max_batch=1)


def test_engine_config_content(tmp_path, tiny_checkpoint):
    _, manifest = fake_onnx_stage(tmp_path, tiny_checkpoint, max_tiles=7)
    profile = vision_engine.tile_profile(max_tiles=7, max_batch=2)
    config = vision_engine.engine_config(manifest, profile=profile, hardware_compat="ampere+", tensorrt_version="10.13.0",
                                         gpu={"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    assert [i["name"] for i in config["inputs"]] == ["pixel_values"]
    assert config["outputs"][0] == {"name": "image_embeddings", "dtype": "bfloat16", "shape": ["num_tiles", 256, 128]}
    assert config["builder_flags"] == ["BF16"]
    assert config["profile"]["shapes"]["pixel_values"] == {"min": [1, 3, 448, 448], "opt": [7, 3, 448, 448],
                                                           "max": [14, 3, 448, 448]}
    assert config["max_batch"] == 2 and config["tensorrt_version"] == "10.13.0"
    assert config["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert json.loads(json.dumps(config)) == config  # serializable as written


def test_precision_and_compat_tables_cover_export_dtypes():
    from nvlm_deploy.convert.vision_onnx import DTYPE_NAMES

    assert set(vision_engine.PRECISION_FLAGS) == set(DTYPE_NAMES)
    assert vision_engine.HARDWARE_COMPAT["ampere+"] == "AMPERE_PLUS"


@pytest.mark.skipif(HAVE_TENSORRT, reason="checks the message shown when TensorRT is missing")
def test_missing_tensorrt_says_what_to_install(tmp_path, tiny_checkpoint, capsys):
    from nvlm_deploy.cli import main

    fake_onnx_stage(tmp_path, tiny_checkpoint)
    target = tmp_path / "target"
    rc = main(["build", "vision", "--onnx", str(target), "--out", str(target), "--max-batch", "2"])
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

    from nvlm_deploy.convert.onnx_check import TOLERANCES
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    target = tmp_path / "target"
    export_vision_onnx(tiny_checkpoint, target, dtype=dtype, check_tiles=(1,))
    vision_dir = vision_engine.build_vision_engine(target, target, max_batch=1)
    config = json.loads((vision_dir / "config.json").read_text())
    assert config["profile"]["max"] == 7 and config["gpu"]["compute_capability"]
    assert (vision_dir / "model.plan").stat().st_size > 0
    onnx_encoder = OnnxVisionEncoder(target)
    tol = TOLERANCES["bf16" if dtype == "bf16" else "fp16"]  # TensorRT may pick TF32 / reduced-precision tactics
    for tiles in (1, 3, 7):
        x = np.random.default_rng(tiles).standard_normal((tiles, 3, 448, 448), dtype=np.float32)
        expected = onnx_encoder.encode(x)
        actual = vision_engine.run_engine(vision_dir / "model.plan", torch.from_numpy(x)).float().cpu().numpy()
        assert actual.shape == expected.shape == (tiles, 256, 128)
        assert np.abs(actual - expected).max() / np.abs(expected).max() <= tol.rtol
    # the timing cache written by the first build is loaded by the next one
    again = json.loads((vision_engine.build_vision_engine(target, target, force=True) / "config.json").read_text())
    assert again["timing_cache"]["loaded_bytes"] > 0
