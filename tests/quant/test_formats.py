"""Quantized tensor layouts against modelopt's own export code (nvidia-modelopt 0.47)."""

import pytest
import torch

from nvlm_deploy.quant import formats


def test_int4_pack_is_modelopts_byte_for_byte_and_unpacks_back():
    quant_utils = pytest.importorskip("modelopt.torch.export.quant_utils")
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    scales = formats.int4_group_scales(w, 128)  # [64, 2]
    values = formats.int4_quantize(w, scales, 128)
    theirs = quant_utils.pack_int4_in_uint8(w, scales, 128)  # uint8 [32, 256]
    assert torch.equal(formats.pack_int4(values).view(torch.uint8), theirs)
    assert torch.equal(formats.unpack_int4(formats.pack_int4(values)), values)
    assert values.min() >= -8 and values.max() <= 7 and (values == -7).any()


def test_fp8_weight_is_modelopts_and_dequantizes_within_e4m3_precision():
    quant_utils = pytest.importorskip("modelopt.torch.export.quant_utils")
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    scale = w.abs().max() / formats.FP8_MAX
    ours = formats.fp8_quantize(w, scale)
    theirs = quant_utils.to_quantized_weight(w, scale, "fp8")
    assert torch.equal(ours.view(torch.int8), theirs.view(torch.int8))
    back = formats.fp8_dequantize(ours.view(torch.int8), scale)  # int8 view, as TensorRT-LLM re-views it
    assert (back - w).abs().max() <= w.abs().max() * 2**-4  # 3 mantissa bits: half a step is 2^-4 relative


def test_fp8_fake_quant_saturates_instead_of_overflowing():
    x = torch.tensor([1000.0, -1000.0, 1.0])
    out = formats.fp8_fake_quant(x, torch.tensor(1.0))
    assert out.tolist() == [448.0, -448.0, 1.0]


def test_all_zero_groups_get_a_positive_scale():
    w = torch.zeros(4, 128)
    scales = formats.int4_group_scales(w, 64)
    assert torch.all(scales > 0) and torch.equal(formats.int4_dequantize(formats.int4_quantize(w, scales, 64), scales, 64), w)
