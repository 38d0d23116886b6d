"""Target names: `<gpu slug>-<recipe>-tp<N>[pp<M>]` (e.g. `h100-sxm-bf16-tp2`) or `cpu-<recipe>`.

A name says where the engines run (a GPU of `nvlm_deploy.plan.gpus`, or the CPU runtime), the
recipe and the parallelism. GPU recipes are `nvlm_deploy.plan.recipes`' (bf16, fp16, fp8,
int4_awq); a CPU target's recipe is a precision (fp32, fp16, bf16: the dtype its ONNX graph and
checkpoint store) or a quantization recipe of `nvlm_deploy.quant.recipes` (fp8, int4_awq: the
decoder quantized as for a GPU, executed by the CPU runtime from its stored form). A quantized
recipe's `trtllm_checkpoint` stage is `nvlm-deploy quantize` instead of `convert llm`. The name is
only the target directory's name: every setting it carries is also written into the target's
manifest.json. The registries are imported when a name is parsed, never at import or `--help`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nvlm_deploy.contracts.precision import CHOICES as PRECISION_CHOICES, DEFAULT as DEFAULT_PRECISION
from nvlm_deploy.errors import DeployError

if TYPE_CHECKING:
    from nvlm_deploy.config import LlmConfig

CPU = "cpu"
AUTO = "auto"  # --target auto: one target per GPU type nvidia-smi lists
_GPU_NAME = re.compile(r"^(?P<gpu>[a-z0-9][a-z0-9-]*?)-(?P<recipe>[a-z0-9_]+)-tp(?P<tp>\d+)(?:pp(?P<pp>\d+))?$")
_CPU_NAME = re.compile(r"^cpu-(?P<recipe>[a-z0-9_]+)(?:-tp(?P<tp>\d+)(?:pp(?P<pp>\d+))?)?$")


@dataclass(frozen=True)
class TargetSpec:
    """One parsed target name. `gpu` is a registry slug, or None for the CPU runtime."""

    gpu: str | None
    recipe: str
    tp: int = 1
    pp: int = 1

    @property
    def name(self) -> str:
        """The canonical spelling (`pp1` left out): the target directory's name."""
        parallel = f"tp{self.tp}" + (f"pp{self.pp}" if self.pp > 1 else "")
        if self.gpu is None:
            return f"{CPU}-{self.recipe}" + (f"-{parallel}" if self.tp * self.pp > 1 else "")
        return f"{self.gpu}-{self.recipe}-{parallel}"

    @property
    def runtime(self) -> str:
        """serve.package.RUNTIMES key: what serves the repository."""
        return "cpu" if self.gpu is None else "gpu"

    @property
    def precision(self) -> str:
        """contracts.precision name of the vision graph and the decoder checkpoint's unquantized tensors."""
        if self.recipe in PRECISION_CHOICES:
            return self.recipe
        return recipe_registry().recipe(self.recipe).dtype or DEFAULT_PRECISION

    @property
    def quantized(self) -> bool:
        """The decoder is quantized (`nvlm_deploy.quant` recipe): its checkpoint comes from `quantize`."""
        return self.recipe in quantization_recipes()

    @property
    def world_size(self) -> int:
        return self.tp * self.pp


def parse_target(name: str) -> TargetSpec:
    """The spec of a target name, its GPU looked up in the registry and its recipe checked.

    Refused with a DeployError: names of another shape, GPUs the registry lacks, and recipes the GPU
    (or the CPU runtime) does not run.
    """
    cpu, gpu = _CPU_NAME.match(name), _GPU_NAME.match(name)
    match = cpu or gpu
    if match is None:
        raise DeployError(f"target {name!r} is not a target name: write <gpu>-<recipe>-tp<N>[pp<M>] "
                          "(e.g. h100-sxm-bf16-tp2, h100-sxm-bf16-tp4pp2), cpu-<precision> (e.g. cpu-fp32) or "
                          "`auto` (the GPUs of this machine).")
    spec = TargetSpec(gpu=None if cpu else match["gpu"], recipe=match["recipe"], tp=int(match["tp"] or 1),
                      pp=int(match["pp"] or 1))
    if spec.tp < 1 or spec.pp < 1:
        raise DeployError(f"target {name!r}: tp and pp must be at least 1.")
    check_recipe(spec)
    return spec


def quantization_recipes() -> tuple[str, ...]:
    """The planner's recipes that quantize the decoder (fp8, int4_awq): built by `nvlm-deploy quantize`."""
    return tuple(r.name for r in recipe_registry().RECIPES.values() if r.quant_algo is not None)


def available_recipes(runtime: str) -> tuple[str, ...]:
    """Recipes a target of `runtime` ("gpu" | "cpu") can be built with."""
    if runtime == "cpu":
        return (*PRECISION_CHOICES, *quantization_recipes())
    return tuple(recipe_registry().RECIPES)


def check_recipe(spec: TargetSpec) -> None:
    """The recipe exists and the GPU runs it (registry); the CPU runtime runs precisions and quantized recipes."""
    known = available_recipes(spec.runtime)
    if spec.recipe not in known:
        cpu = spec.recipe in PRECISION_CHOICES
        hint = f" ({spec.recipe} is a CPU runtime precision: cpu-{spec.recipe})" if cpu else ""
        raise DeployError(f"target {spec.name!r}: recipe {spec.recipe!r} is not one of {list(known)}{hint}.")
    if spec.gpu is not None:
        gpu = gpu_registry().gpu_spec(spec.gpu)  # DeployError naming the known slugs
        if spec.recipe not in gpu.recipes:
            raise DeployError(f"target {spec.name!r}: {gpu.name} does not run {spec.recipe} "
                              f"(its recipes: {', '.join(gpu.recipes)}).")


def check_parallelism(spec: TargetSpec, llm: "LlmConfig") -> None:
    """The decoder splits into the target's tp x pp, and a quantized recipe's settings fit it (before any
    stage runs)."""
    from nvlm_deploy.trtllm import splits

    try:
        if spec.quantized:
            from nvlm_deploy.quant.quantize import check_options

            check_options(llm, quantize_options(spec))  # int4: the MLP is padded for tp, not refused
            return
        splits.check_tp(num_heads=llm.num_attention_heads, num_kv_heads=llm.num_key_value_heads, tp=spec.tp,
                        intermediate_size=llm.intermediate_size)
        splits.check_pp(num_layers=llm.num_hidden_layers, pp=spec.pp)
    except DeployError as exc:
        raise DeployError(f"target {spec.name!r}: {exc}") from None


def quantize_options(spec: TargetSpec):
    """`quant.quantize.QuantizeOptions` of a quantized target: its recipe, tp, pp and precision; the rest
    `nvlm-deploy quantize`'s defaults (demo calibration set, group size 128, model-dtype KV cache)."""
    from nvlm_deploy.quant.quantize import QuantizeOptions

    return QuantizeOptions(recipe=spec.recipe, tp=spec.tp, pp=spec.pp, dtype=spec.precision)


def gpu_registry():
    """`nvlm_deploy.plan.gpus`: GPUS, gpu_spec(slug), match_gpu(name, memory_gib)."""
    from nvlm_deploy.plan import gpus

    return gpus


def recipe_registry():
    """`nvlm_deploy.plan.recipes`: RECIPES, recipe(name)."""
    from nvlm_deploy.plan import recipes

    return recipes


def gpu_facts(spec: TargetSpec) -> dict[str, Any]:
    """The registry's facts about the target's GPU, as the target manifest records them ({} on CPU)."""
    if spec.gpu is None:
        return {}
    gpu = gpu_registry().gpu_spec(spec.gpu)
    return {"slug": gpu.slug, "name": gpu.name, "compute_capability": str(gpu.compute_capability),
            "memory_bytes": gpu.memory_bytes}


def auto_tp(count: int, llm: "LlmConfig") -> int:
    """The most GPUs (at most `count`) the decoder's heads and MLP split over."""
    from nvlm_deploy.trtllm.splits import valid_tp_sizes

    ok = valid_tp_sizes(num_heads=llm.num_attention_heads, num_kv_heads=llm.num_key_value_heads,
                        intermediate_size=llm.intermediate_size)
    return max(tp for tp in ok if tp <= count)


def default_recipe(recipes) -> str:
    """bf16 (NVLM-D's dtype) when the GPU runs it, else its first recipe."""
    usable = [r for r in recipes if r in available_recipes("gpu")]
    if not usable:
        raise DeployError(f"none of the GPU's recipes ({', '.join(recipes)}) is available yet "
                          f"(available: {', '.join(available_recipes('gpu'))}).")
    return DEFAULT_PRECISION if DEFAULT_PRECISION in usable else usable[0]
