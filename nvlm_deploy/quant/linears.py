"""Calibrated decoder linears -> what the checkpoint stores for each: weight, scales, pre-quant scale.

modelopt calibrates the HF Qwen2 decoder in place (QuantLinear modules with weight/input
quantizers, `k_bmm_quantizer`/`v_bmm_quantizer` on attention for the KV cache). Before export, the
linears TensorRT-LLM fuses (q, k, v -> attention.qkv) go through modelopt's own
`preprocess_linear_fusion` (nvidia-modelopt 0.47 export/quant_utils.py): one pre_quant_scale (their
mean, weights re-smoothed and their group amax re-collected) and, for FP8, one input and one weight
amax (the max). Scales are read with modelopt's `get_weight_scaling_factor`,
`get_activation_scaling_factor`, `get_prequant_scaling_factor` and `get_kv_cache_scaling_factor`
(amax / maxbound; KV scales clamped at 1.0 for FP8 as modelopt does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nvlm_deploy.trtllm.names import HF_PREFIX

FUSED_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class CalibratedLinear:
    """One HF linear after calibration (float32; `weight` already divided by pre_quant_scale for AWQ)."""

    weight: torch.Tensor  # [N, K]
    weight_scale: torch.Tensor  # fp8: [] ; int4: [N, K/G]
    activation_scale: torch.Tensor | None  # fp8: []
    pre_quant_scale: torch.Tensor | None  # int4: [K]


@dataclass
class CalibratedDecoder:
    linears: dict[str, CalibratedLinear]  # by full HF weight name (language_model.model.layers.i.<linear>.weight)
    kv_scales: dict[int, torch.Tensor]  # layer -> [] (max of the K and V scales), when the KV cache is quantized


def collect(language_model, *, int4: bool, group_size: int, kv_cache: bool) -> CalibratedDecoder:
    """Read every calibrated decoder linear (and KV scale) out of a modelopt-quantized Qwen2ForCausalLM."""
    from modelopt.torch.export.quant_utils import (get_activation_scaling_factor, get_kv_cache_scaling_factor,
                                                   get_prequant_scaling_factor, get_weight_scaling_factor,
                                                   preprocess_linear_fusion)

    linears, kv_scales = {}, {}
    for i, layer in enumerate(language_model.model.layers):
        for group in FUSED_GROUPS:
            preprocess_linear_fusion([layer.get_submodule(n) for n in group])
        for name in LINEARS:
            module = layer.get_submodule(name)
            wsf = get_weight_scaling_factor(module).float()
            n, k = module.weight.shape
            if int4:
                wsf = wsf.reshape(n, k // group_size)
                pqs = get_prequant_scaling_factor(module)
                pqs = torch.ones(k) if pqs is None else pqs.float().reshape(k)
                act = None
            else:
                wsf, pqs = wsf.reshape(()), None
                act = get_activation_scaling_factor(module).float().reshape(())
            linears[f"{HF_PREFIX}model.layers.{i}.{name}.weight"] = CalibratedLinear(
                module.weight.detach().float().clone(), wsf.detach().clone(), act, pqs)
        if kv_cache:
            k_scale, v_scale = get_kv_cache_scaling_factor(layer.self_attn)
            kv_scales[i] = torch.maximum(k_scale.float(), v_scale.float()).reshape(())
    return CalibratedDecoder(linears, kv_scales)


def pad_intermediate(decoder: CalibratedDecoder, *, num_layers: int, intermediate: int, padded: int,
                     group_size: int) -> None:
    """Zero-pad the MLP to `padded` (int4 + tp): gate/up rows, down columns; padded groups get scale 1.

    The padded fc/gate rows output 0 (no bias), SiLU(0) * 0 = 0, and the zero proj columns add 0,
    so the function is unchanged (tests/quant prove it on a model whose group count per rank is odd).
    """
    extra = padded - intermediate
    if extra <= 0:
        return
    for i in range(num_layers):
        prefix = f"{HF_PREFIX}model.layers.{i}.mlp."
        for name in ("gate_proj", "up_proj"):  # column-parallel: [I, H] rows
            lin = decoder.linears[f"{prefix}{name}.weight"]
            lin.weight = torch.cat([lin.weight, lin.weight.new_zeros(extra, lin.weight.shape[1])])
            lin.weight_scale = torch.cat([lin.weight_scale, lin.weight_scale.new_ones(extra, lin.weight_scale.shape[1])])
        down = decoder.linears[f"{prefix}down_proj.weight"]  # row-parallel: [H, I] columns
        down.weight = torch.cat([down.weight, down.weight.new_zeros(down.weight.shape[0], extra)], dim=1)
        down.weight_scale = torch.cat([down.weight_scale,
                                       down.weight_scale.new_ones(down.weight_scale.shape[0], extra // group_size)], dim=1)
        down.pre_quant_scale = torch.cat([down.pre_quant_scale, down.pre_quant_scale.new_ones(extra)])
