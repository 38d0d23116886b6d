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
    """One HF linear after calibration (float32; `weight` already divided by pre_quant_scale for AWQ).

    `compact` replaces `weight` by its stored values (`values`: 1 byte per weight instead of 4), which
    is what layer-by-layer calibration keeps of a finished layer.
    """

    weight: torch.Tensor | None  # [N, K] float32; None once compacted
    weight_scale: torch.Tensor  # fp8: [] ; int4: [N, K/G]
    activation_scale: torch.Tensor | None  # fp8: []
    pre_quant_scale: torch.Tensor | None  # int4: [K]
    values: torch.Tensor | None = None  # [N, K] stored values: int4 in int8 (unpacked) or float8_e4m3fn

    def stored_values(self, *, int4: bool, group_size: int) -> torch.Tensor:
        """[N, K] what the checkpoint stores before splitting and packing (quant.formats)."""
        from nvlm_deploy.quant import formats

        if self.values is not None:
            return self.values
        if int4:
            return formats.int4_quantize(self.weight, self.weight_scale, group_size)
        return formats.fp8_quantize(self.weight, self.weight_scale)

    def compact(self, *, int4: bool, group_size: int) -> None:
        self.values = self.stored_values(int4=int4, group_size=group_size)
        self.weight = None


@dataclass
class CalibratedDecoder:
    linears: dict[str, CalibratedLinear]  # by full HF weight name (language_model.model.layers.i.<linear>.weight)
    kv_scales: dict[int, torch.Tensor]  # layer -> [] (max of the K and V scales), when the KV cache is quantized


def collect(language_model, *, int4: bool, group_size: int, kv_cache: bool, first_layer: int = 0) -> CalibratedDecoder:
    """Read every calibrated decoder linear (and KV scale) out of a modelopt-quantized Qwen2ForCausalLM.

    `first_layer`: the checkpoint index of the model's layer 0 (a one-layer model in layer-by-layer calibration).
    """
    from modelopt.torch.export.quant_utils import (get_activation_scaling_factor, get_kv_cache_scaling_factor,
                                                   get_prequant_scaling_factor, get_weight_scaling_factor,
                                                   preprocess_linear_fusion)

    linears, kv_scales = {}, {}
    for i, layer in enumerate(language_model.model.layers, start=first_layer):
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


def meta_decoder(num_layers: int, shape, *, int4: bool, group_size: int, kv_cache: bool, padded: int) -> CalibratedDecoder:
    """A compacted CalibratedDecoder of meta tensors with the real shapes: what the writer plans file headers from.

    Args:
        num_layers: decoder layers.
        shape: HF tensor name -> its shape in the checkpoint (CheckpointIndex.shape; no data read).
        padded: the MLP width the checkpoint holds (gate/up rows and down columns padded to it).
    """
    meta = torch.device("meta")
    linears = {}
    for i in range(num_layers):
        for name in LINEARS:
            full = f"{HF_PREFIX}model.layers.{i}.{name}.weight"
            n, k = shape(full)
            if name in ("mlp.gate_proj", "mlp.up_proj"):  # column-parallel: padded rows
                n = padded
            elif name == "mlp.down_proj":  # row-parallel: padded columns
                k = padded
            if int4:
                lin = CalibratedLinear(None, torch.empty(n, k // group_size, device=meta), None,
                                       torch.empty(k, device=meta), torch.empty(n, k, dtype=torch.int8, device=meta))
            else:
                lin = CalibratedLinear(None, torch.empty((), device=meta), torch.empty((), device=meta), None,
                                       torch.empty(n, k, dtype=torch.float8_e4m3fn, device=meta))
            linears[full] = lin
    kv = {i: torch.empty((), device=meta) for i in range(num_layers)} if kv_cache else {}
    return CalibratedDecoder(linears, kv)


def pad_intermediate(decoder: CalibratedDecoder, *, num_layers: int, intermediate: int, padded: int,
                     group_size: int, layers=None) -> None:
    """Zero-pad the MLP to `padded` (int4 + tp): gate/up rows, down columns; padded groups get scale 1.

    `layers`: the layers to pad (default all `num_layers`), e.g. the one just calibrated.

    The padded fc/gate rows output 0 (no bias), SiLU(0) * 0 = 0, and the zero proj columns add 0,
    so the function is unchanged (tests/quant prove it on a model whose group count per rank is odd).
    """
    extra = padded - intermediate
    if extra <= 0:
        return
    for i in range(num_layers) if layers is None else layers:
        prefix = f"{HF_PREFIX}model.layers.{i}.mlp."
        for name in ("gate_proj", "up_proj"):  # column-parallel: [I, H] rows
            lin = decoder.linears[f"{prefix}{name}.weight"]
            lin.weight, lin.values = (None if t is None else torch.cat([t, t.new_zeros(extra, t.shape[1])])
                                      for t in (lin.weight, lin.values))
            lin.weight_scale = torch.cat([lin.weight_scale, lin.weight_scale.new_ones(extra, lin.weight_scale.shape[1])])
        down = decoder.linears[f"{prefix}down_proj.weight"]  # row-parallel: [H, I] columns
        down.weight, down.values = (None if t is None else torch.cat([t, t.new_zeros(t.shape[0], extra)], dim=1)
                                    for t in (down.weight, down.values))
        down.weight_scale = torch.cat([down.weight_scale,
                                       down.weight_scale.new_ones(down.weight_scale.shape[0], extra // group_size)], dim=1)
        down.pre_quant_scale = torch.cat([down.pre_quant_scale, down.pre_quant_scale.new_ones(extra)])
