"""Reading modelopt's unified HF quantized checkpoint back as float weights (`model.checkpoint` uses it).

Layouts (nvidia-modelopt 0.47 export/unified_export_hf.py, quant_utils.py; docs/quantization-formats.md):
FP8 weights F8_E4M3 with a scalar `weight_scale`; W4A16_AWQ weights uint8 [N/2, K] (row 2j in the
low nibble) with `weight_scale` [N, K/G] and, where not folded into the preceding norm,
`pre_quant_scale` [K]. Activation (`input_scale`) and KV (`k_scale`, `v_scale`) scales are not
applied on this path: it gives the dequantized weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nvlm_deploy.errors import DeployError
from nvlm_deploy.quant import formats

HF_QUANT_CONFIG = "hf_quant_config.json"
WEIGHT_SCALE, INPUT_SCALE, PRE_QUANT_SCALE = "weight_scale", "input_scale", "pre_quant_scale"
SCALE_SUFFIXES = (".weight_scale", ".input_scale", ".pre_quant_scale", ".k_scale", ".v_scale", ".weight_scale_2")


def quant_algo_of(model_dir: Path) -> str | None:
    """The modelopt quant_algo of a unified HF checkpoint (None: not quantized)."""
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    try:
        quant = json.loads(path.read_text(encoding="utf-8")).get("quantization_config")
    except json.JSONDecodeError:
        return None
    if not quant:
        return None
    if quant.get("quant_method") != "modelopt" or quant.get("quant_algo") not in ("FP8", "W4A16_AWQ"):
        raise DeployError(f"{path}: quantization_config {quant} is not one this project reads "
                          "(modelopt FP8 or W4A16_AWQ).")
    return quant["quant_algo"]


def group_size_of(model_dir: Path) -> int:
    hf_quant = json.loads((model_dir / HF_QUANT_CONFIG).read_text(encoding="utf-8"))
    return int(hf_quant["quantization"].get("group_size") or 128)


def is_scale(name: str) -> bool:
    return name.endswith(SCALE_SUFFIXES)


def dequantize_tensor(name: str, stored: torch.Tensor, sibling, *, quant_algo: str, group_size: int) -> torch.Tensor:
    """A weight as float32 from its stored form; `sibling(suffix)` is the tensor `<module>.<suffix>` or None."""
    scale = sibling(WEIGHT_SCALE)
    if scale is None:
        return stored
    if quant_algo == "FP8":
        return formats.fp8_dequantize(stored, scale.reshape(()))
    weight = formats.int4_dequantize(formats.unpack_int4(stored.view(torch.int8)), scale, group_size)
    pqs = sibling(PRE_QUANT_SCALE)
    return weight if pqs is None else weight * pqs.float().reshape(1, -1)
