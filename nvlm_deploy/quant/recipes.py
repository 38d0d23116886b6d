"""Quantization recipes, registered by name: what modelopt calibrates and what the checkpoint says.

| recipe | modelopt config (0.47) | TensorRT-LLM `quant_algo` | weights | activations |
|---|---|---|---|---|
| fp8 | FP8_DEFAULT_CFG | FP8 | e4m3, per-tensor scale | e4m3, per-tensor scale |
| int4_awq | INT4_AWQ_CFG (awq_lite), block = group_size | W4A16_AWQ | packed int4, [N, K/G] scales, pre_quant_scale | model dtype |
| int4_rtn | INT4_AWQ_CFG's weight quantizer, algorithm "max" | W4A16_AWQ (pre_quant_scale all ones) | as int4_awq | model dtype |

`int4_rtn` is plain round-to-nearest with the same groups, the baseline that `eval` sets beside AWQ.
`--kv-cache fp8` adds modelopt's FP8_KV_CFG (`*[kv]_bmm_quantizer`) and `kv_cache_quant_algo: FP8`.
`quant_algo` strings are TensorRT-LLM's `QuantAlgo` values (tensorrt_llm/quantization/mode.py);
`group_size`, `has_zero_point`, `pre_quant_scale` are `QuantConfig` fields
(tensorrt_llm/models/modeling_utils.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from nvlm_deploy.errors import DeployError

KV_CACHE_CHOICES = ("fp8", "none")



@dataclass(frozen=True)
class Recipe:
    name: str
    quant_algo: str  # TensorRT-LLM QuantAlgo
    int4: bool  # grouped int4 weights (needs group_size) vs fp8
    awq: bool  # search activation-aware pre_quant_scale
    help: str

    def modelopt_config(self, *, group_size: int, kv_cache: str) -> dict:
        """The modelopt quantize config (a copy of its table entry, adjusted)."""
        from nvlm_deploy.lazy import require

        mtq = require("modelopt.torch.quantization", extra="quant", purpose=f"the {self.name} recipe")
        cfg = copy.deepcopy(mtq.INT4_AWQ_CFG if self.int4 else mtq.FP8_DEFAULT_CFG)
        if self.int4:
            for entry in cfg["quant_cfg"]:
                if entry.get("quantizer_name") == "*weight_quantizer":
                    entry["cfg"]["block_sizes"][-1] = group_size
            if not self.awq:
                cfg["algorithm"] = "max"
        if kv_cache == "fp8":
            cfg["quant_cfg"] = list(cfg["quant_cfg"]) + copy.deepcopy(list(mtq.FP8_KV_CFG["quant_cfg"]))
        return cfg

    def quant_config(self, *, group_size: int, kv_cache: str):
        """TensorRT-LLM's `quantization` entry of config.json."""
        from nvlm_deploy.trtllm.config import QuantConfig

        return QuantConfig(quant_algo=self.quant_algo, kv_cache_quant_algo="FP8" if kv_cache == "fp8" else None,
                           # fp8 has no groups: 128 is QuantConfig's own default group_size (tensorrt_llm/models/modeling_utils.py)
                           group_size=group_size if self.int4 else 128, has_zero_point=False,
                           pre_quant_scale=self.int4, exclude_modules=["lm_head"])


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


def _quant_algo(name: str) -> str:
    """quant_algo of a planner recipe (plan.recipes owns the recipe -> quant_algo and GPU-support facts)."""
    from nvlm_deploy.plan.recipes import recipe as plan_recipe

    return plan_recipe(name).quant_algo


register(Recipe("fp8", _quant_algo("fp8"), int4=False, awq=False,
                help="FP8 e4m3 weights and activations, per-tensor scales (Ada / Hopper and newer GPUs)"))
register(Recipe("int4_awq", _quant_algo("int4_awq"), int4=True, awq=True,
                help="INT4 weights in groups with AWQ pre-quant scales, 16-bit activations"))
register(Recipe("int4_rtn", _quant_algo("int4_awq"), int4=True, awq=False,
                help="INT4 weights in groups, plain round-to-nearest (the baseline AWQ is measured against)"))


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise DeployError(f"unknown quantization recipe {name!r}; choose one of {sorted(RECIPES)}.")
    return RECIPES[name]


def recipe_for_quant_algo(quant_algo: str | None) -> Recipe | None:
    """The recipe whose checkpoint layout a `quant_algo` names (int4 recipes share one layout)."""
    if quant_algo is None:
        return None
    for r in RECIPES.values():
        if r.quant_algo == quant_algo:
            return r
    raise DeployError(f"quant_algo {quant_algo!r} is not one this project reads; it reads "
                      f"{sorted({r.quant_algo for r in RECIPES.values()})} (or null).")


def check_group_size(*, group_size: int, hidden_size: int, head_dim: int, num_heads: int, tp: int) -> None:
    """Every int4 linear's input width (per tensor-parallel rank for the row-parallel dense) must split into groups."""
    if group_size < 1 or group_size % 2:
        raise DeployError(f"--group-size {group_size} must be a positive even number (TensorRT-LLM uses 64 or 128).")
    if hidden_size % group_size:
        raise DeployError(f"--group-size {group_size} does not divide the decoder's hidden size {hidden_size}: "
                          f"choose a group size that divides it (e.g. {_divisors_hint(hidden_size)}).")
    dense_in = num_heads * head_dim // tp  # attention.dense is row-parallel: each rank holds K / tp inputs
    if dense_in % group_size:
        raise DeployError(f"--group-size {group_size} does not divide attention.dense's {dense_in} inputs per "
                          f"rank at --tp {tp}: choose a smaller group size or tp "
                          f"(e.g. --group-size {_divisors_hint(dense_in)}).")


def _divisors_hint(n: int) -> str:
    return " or ".join(str(g) for g in (128, 64, 32) if n % g == 0) or "a divisor"


def padded_intermediate(intermediate_size: int, *, group_size: int, tp: int) -> int:
    """Smallest multiple of group_size * tp at or above intermediate_size (29568 -> 29696 for G 128, tp 2/4/8)."""
    unit = group_size * tp
    return -(-intermediate_size // unit) * unit
