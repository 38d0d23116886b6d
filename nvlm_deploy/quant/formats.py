"""Quantized tensor formats of TensorRT-LLM checkpoints: FP8 (e4m3) and W4A16_AWQ (packed int4).

Facts, each with where it was read (docs/quantization-formats.md has the full notes):

- FP8 weight = e4m3 of `w / weights_scaling_factor`, scale per tensor = amax / 448
  (nvidia-modelopt 0.47 `export/quant_utils.py` get_scaling_factor, to_quantized_weight). The
  checkpoint may hold the e4m3 bytes viewed as int8; TensorRT-LLM's loader re-views int8 weights as
  float8_e4m3fn (`tensorrt_llm/models/modeling_utils.py` preprocess_perlayer_weights, FP8 branch).
  Activations and the KV cache are quantized the same way with their per-tensor scales.
- W4A16_AWQ weight: q = round(w / s[:, k // G]).clamp(-8, 7), s = group amax / 7 ([N, K/G]);
  two values per byte packed along the output dimension (row 2j in the low nibble, row 2j+1 in the
  high nibble), stored as int8 [N/2, K] (modelopt `pack_int4_in_uint8` + `model_config_utils.py`
  pack_linear_weights' int8 view). TensorRT-LLM's loader passes `w.T` ([K, N/2]) to
  `preprocess_weights_for_mixed_gemm(..., torch.quint4x2, ...)`, transposes the scales to
  [K/G, N] and reshapes `prequant_scaling_factor` to [1, K] (modeling_utils.py, W4A16_AWQ branch).
  The layer computes y = (x * prequant) @ dequant(q)^T.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT4_MIN, INT4_MAX = -8, 7
INT4_MAXBOUND = 7.0  # modelopt's maxbound for 4-bit signed: scale = amax / 7


def fp8_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3 values of x / scale, saturated at +-448 (FP8 GEMM inputs saturate in TensorRT-LLM's quantize)."""
    return (x.float() / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def fp8_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values of stored e4m3 (or its int8 view) times the scale."""
    if q.dtype == torch.int8:
        q = q.view(torch.float8_e4m3fn)
    return q.float() * scale.float()


def fp8_fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize in x's dtype: what an FP8 input or FP8 KV cache sees."""
    return fp8_dequantize(fp8_quantize(x, scale), scale).to(x.dtype)


def int4_group_scales(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] -> per-group scales [N, K/G] = amax / 7; all-zero groups (padding) get 1.0 (any positive value dequantizes 0 to 0)."""
    n, k = w.shape
    amax = w.float().abs().reshape(n, k // group_size, group_size).amax(-1)
    return torch.where(amax > 0, amax / INT4_MAXBOUND, torch.ones_like(amax))


def int4_quantize(w: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] float -> int8 values in [-8, 7] (unpacked), with scales [N, K/G]."""
    expanded = scales.float().repeat_interleave(group_size, dim=1)  # [N, K]
    return (w.float() / expanded).round().clamp(INT4_MIN, INT4_MAX).to(torch.int8)


def int4_dequantize(q: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """Unpacked int4 values [N, K] and scales [N, K/G] -> float32 [N, K]."""
    return q.float() * scales.float().repeat_interleave(group_size, dim=1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Unpacked values [N, K] in [-8, 7] -> int8 [N/2, K]: row 2j low nibble, row 2j+1 high nibble."""
    if q.shape[0] % 2:
        raise ValueError(f"cannot pack int4 weights with an odd output dimension {q.shape[0]}")
    nib = q.to(torch.int16) & 0x0F
    packed = nib[0::2] | (nib[1::2] << 4)  # [N/2, K], 0..255
    return packed.to(torch.uint8).view(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: int8 [N/2, K] -> int8 values [N, K] (sign-extended nibbles)."""
    b = packed.view(torch.uint8).to(torch.int16)
    low, high = b & 0x0F, (b >> 4) & 0x0F
    low, high = torch.where(low > 7, low - 16, low), torch.where(high > 7, high - 16, high)
    out = torch.empty(packed.shape[0] * 2, *packed.shape[1:], dtype=torch.int8)
    out[0::2], out[1::2] = low.to(torch.int8), high.to(torch.int8)
    return out
