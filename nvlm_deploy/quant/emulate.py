"""Executing quantized TensorRT-LLM checkpoints on CPU exactly as the format defines.

Loading (`dequantize_rank`, called by `trtllm.rank_files` per rank before ranks are merged):
- FP8: weight = e4m3 value * weights_scaling_factor (float32). `activation_scaling_factor` stays.
- W4A16_AWQ: weight = unpack(int4) * group scale, then prequant_scaling_factor folded into its
  input columns (y = (x * s) @ W^T = x @ (W * s)^T; W4A16 has no activation quantization, so this
  is the same product in float32).
Running (`linear`, `kv_fake_quant`, called by `runtime.decoder`):
- an FP8 linear's input is quantized to e4m3 with its `activation_scaling_factor` and dequantized
  (TensorRT-LLM's FP8 GEMM multiplies the e4m3 values and rescales by both scales);
- with `kv_cache_quant_algo: FP8`, k (after RoPE) and v are quantized to e4m3 with the layer's
  `kv_cache_scaling_factor` where they enter the cache, and read back dequantized.
"""

from __future__ import annotations

import torch

from nvlm_deploy.errors import DeployError
from nvlm_deploy.quant import formats
from nvlm_deploy.trtllm import names


def quantized_weight_names(local_names, *, quant_algo: str | None) -> list[str]:
    """The quantized linear weights among a rank's tensor names."""
    if quant_algo is None:
        return []
    return [n for n in local_names if n.startswith("transformer.layers.")
            and n.split(".", 3)[3] in names.QUANTIZED_LINEARS]


def expected_scale_names(weight_names, *, quant_algo: str | None, kv_layers=(), kv_quant_algo: str | None = None) -> set[str]:
    """Scale tensors a rank must hold beside these quantized weights (and for these local layers)."""
    from nvlm_deploy.quant.recipes import recipe_for_quant_algo

    r = recipe_for_quant_algo(quant_algo)
    kinds = []
    if r is not None:
        kinds = [names.WEIGHTS_SCALING_FACTOR] + \
            ([names.PREQUANT_SCALING_FACTOR] if r.int4 else [names.ACTIVATION_SCALING_FACTOR])
    out = {names.scale_name(w, kind) for w in weight_names for kind in kinds}
    if kv_quant_algo is not None:
        if kv_quant_algo != "FP8":
            raise DeployError(f"kv_cache_quant_algo {kv_quant_algo!r} is not supported; this project reads FP8 or null.")
        out |= {names.layer_tensor(i, names.KV_CACHE_SCALING_FACTOR) for i in kv_layers}
    return out


def dequantize_rank(tensors: dict[str, torch.Tensor], *, quant_algo: str | None, group_size: int) -> dict[str, torch.Tensor]:
    """One rank's tensors with quantized weights as float32 and their weight / pre-quant scales consumed."""
    from nvlm_deploy.quant.recipes import recipe_for_quant_algo

    r = recipe_for_quant_algo(quant_algo)
    if r is None:
        return tensors
    out = dict(tensors)
    for name in quantized_weight_names(tensors, quant_algo=quant_algo):
        stored = out.pop(name)
        scale = out.pop(names.scale_name(name, names.WEIGHTS_SCALING_FACTOR))
        if r.int4:
            pqs = out.pop(names.scale_name(name, names.PREQUANT_SCALING_FACTOR)).float().reshape(-1)
            weight = formats.int4_dequantize(formats.unpack_int4(stored), scale, group_size)  # [N, K]
            out[name] = weight * pqs[None, :]
        else:
            out[name] = formats.fp8_dequantize(stored, scale.reshape(()))
    return out


def is_scale(name: str) -> bool:
    """Per-tensor scales kept after loading (replicated across ranks, never cast to the compute dtype)."""
    return name.endswith((names.ACTIVATION_SCALING_FACTOR, "kv_cache_scaling_factor"))


def linear(x: torch.Tensor, weights: dict[str, torch.Tensor], name: str, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear with the weight `name`; an FP8 linear first fake-quantizes its input with its stored scale."""
    scale = weights.get(names.scale_name(name, names.ACTIVATION_SCALING_FACTOR))
    if scale is not None:
        x = formats.fp8_fake_quant(x, scale)
    return torch.nn.functional.linear(x, weights[name], bias)


def kv_fake_quant(weights: dict[str, torch.Tensor], layer: int, k: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v as an FP8 KV cache holds them (unchanged without a kv_cache_scaling_factor)."""
    scale = weights.get(names.layer_tensor(layer, names.KV_CACHE_SCALING_FACTOR))
    if scale is None:
        return k, v
    return formats.fp8_fake_quant(k, scale), formats.fp8_fake_quant(v, scale)
