"""The CPU vision runtime: the exported graph under ONNX Runtime, float32 in and out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvlm_deploy.errors import DeployError
from nvlm_deploy.runtime import vision


@pytest.fixture(scope="module")
def bf16_target(tiny_checkpoint, tmp_path_factory):
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx

    target = tmp_path_factory.mktemp("target")
    export_vision_onnx(tiny_checkpoint, target, dtype="bf16", check_tiles=(1,))
    return target


def test_encode_matches_bf16_reference(bf16_target, tiny_checkpoint):
    from nvlm_deploy.convert.vision_onnx import load_vision_encoder

    encoder = vision.OnnxVisionEncoder(bf16_target, threads=1)
    assert encoder.dtype == "bf16" and encoder.image_size == 448
    x = np.random.default_rng(3).standard_normal((2, 3, 448, 448), dtype=np.float32)
    out = encoder.encode(x)
    assert out.dtype == np.float32 and out.shape == (2, 256, 128)
    with torch.no_grad():
        ref = load_vision_encoder(tiny_checkpoint, dtype="bf16")(torch.from_numpy(x).bfloat16()).float().numpy()
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 2e-2
    # every output value is a bf16 number (the graph's output dtype), widened exactly
    assert np.array_equal(torch.from_numpy(out).bfloat16().float().numpy(), out)


def test_bf16_rounding_matches_torch():
    x = np.random.default_rng(0).standard_normal(10_000, dtype=np.float32) * 100
    x[:4] = [np.inf, -np.inf, 0.0, -0.0]
    ours = vision._to_bf16_bits(x)
    theirs = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)
    assert np.isnan(vision._bf16_bits_to_float32(vision._to_bf16_bits(np.array([np.nan], np.float32)))).all()


def test_path_resolution(bf16_target):
    onnx_file = bf16_target / "onnx" / vision.ONNX_FILE
    for path in (bf16_target, bf16_target / "onnx", onnx_file):
        assert vision.resolve_onnx_path(path) == onnx_file
    with pytest.raises(DeployError, match="convert vision"):
        vision.resolve_onnx_path(bf16_target / "missing")


def test_rejects_wrong_shape(bf16_target):
    encoder = vision.OnnxVisionEncoder(bf16_target / "onnx")
    for shape in [(3, 448, 448), (1, 3, 224, 224), (0, 3, 448, 448)]:
        with pytest.raises(DeployError, match="pixel_values has shape"):
            encoder.encode(np.zeros(shape, np.float32))
