"""What this machine offers a build: the GPUs nvidia-smi lists, and whether it can build a target's engines.

`--target auto` makes one target per GPU type: all GPUs of that type in tensor parallel (as many as
the decoder's heads split over), the default recipe (bf16 where the GPU runs it), no pipeline
parallelism. `gpu_blocker` says why a target's engines cannot be built here.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from nvlm_deploy.build.gpu import SmiGpu, parse_gpus, query_nvidia_smi  # noqa: F401  (this module's inputs)
from nvlm_deploy.errors import DeployError

if TYPE_CHECKING:
    from nvlm_deploy.build.targets import TargetSpec
    from nvlm_deploy.config import LlmConfig

EXPLICIT = "name targets explicitly instead, e.g. --target cpu-bf16 or --target h100-sxm-bf16-tp2"


def auto_targets(gpus: list[SmiGpu], llm: "LlmConfig") -> list["TargetSpec"]:
    """One target per GPU type in `gpus`, in the order nvidia-smi lists them.

    Args:
        gpus: parse_gpus output.
        llm: the decoder, whose heads bound the tensor parallelism.
    """
    from nvlm_deploy.build.targets import TargetSpec, auto_tp, default_recipe, gpu_registry

    if not gpus:
        raise DeployError(f"--target auto found no NVIDIA GPU on this machine (nvidia-smi lists none); {EXPLICIT}.")
    registry = gpu_registry()
    counts = Counter((g.name, g.memory_gib) for g in gpus)
    targets = []
    for (name, memory_gib), count in counts.items():
        spec = registry.match_gpu(name, memory_gib)
        if spec is None:
            raise DeployError(f"--target auto: {name} ({memory_gib} GiB) is not in the GPU registry "
                              f"(nvlm_deploy.plan.gpus knows: {', '.join(sorted(registry.GPUS))}); {EXPLICIT}.")
        targets.append(TargetSpec(gpu=spec.slug, recipe=default_recipe(spec.recipes), tp=auto_tp(count, llm)))
    return targets


def local_targets(llm: "LlmConfig") -> list["TargetSpec"]:
    """auto_targets for this machine's GPUs."""
    return auto_targets(parse_gpus(query_nvidia_smi()), llm)


def missing_gpu_libraries() -> list[str]:
    """TensorRT / TensorRT-LLM where not importable here (found without importing them)."""
    import importlib.util

    return [name for module, name in (("tensorrt", "TensorRT"), ("tensorrt_llm", "TensorRT-LLM"))
            if importlib.util.find_spec(module) is None]


def gpu_blocker(spec: "TargetSpec", *, local=None, missing: list[str] | None = None) -> str | None:
    """Why this machine cannot build `spec`'s engines (one phrase); None when it can.

    Args:
        spec: a GPU target.
        local: build.gpu.GpuInfo of this machine; None: describe_local_gpu().
        missing: libraries missing here; None: missing_gpu_libraries().
    """
    from nvlm_deploy.build.gpu import describe_local_gpu
    from nvlm_deploy.build.targets import gpu_facts

    missing = missing_gpu_libraries() if missing is None else missing
    if missing:
        return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed here"
    local = local or describe_local_gpu()
    want = gpu_facts(spec)
    if local.compute_capability is None:
        return "this machine has no NVIDIA GPU"
    if local.compute_capability != want["compute_capability"]:
        return (f"this machine's GPU is {local.name} (SM {local.compute_capability}); the target's is "
                f"{want['name']} (SM {want['compute_capability']})")
    return None
