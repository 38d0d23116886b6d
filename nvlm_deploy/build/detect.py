"""What this machine offers a build: the GPUs nvidia-smi lists, and whether it can build a target's engines.

`--target auto` makes one target per GPU type: all GPUs of that type in tensor parallel (as many as
the decoder's heads split over), the default recipe (bf16 where the GPU runs it), no pipeline
parallelism. `gpu_blocker` says why a target's engines cannot be built here.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nvlm_deploy.errors import DeployError

if TYPE_CHECKING:
    from nvlm_deploy.build.targets import TargetSpec
    from nvlm_deploy.config import LlmConfig

QUERY = ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"]
NO_DEVICES = "No devices were found"  # what nvidia-smi prints (exit 6) on a machine without GPUs
EXPLICIT = "name targets explicitly instead, e.g. --target cpu-bf16 or --target h100-sxm-bf16-tp2"


@dataclass(frozen=True)
class SmiGpu:
    """One line of QUERY's output."""

    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # e.g. "9.0"
    memory_gib: float  # memory.total (MiB) / 1024


def query_nvidia_smi() -> str:
    """QUERY's output; "" when nvidia-smi is missing or finds no GPU."""
    if not shutil.which(QUERY[0]):
        return ""
    try:
        result = subprocess.run(QUERY, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DeployError(f"`{' '.join(QUERY)}` did not run ({exc}); {EXPLICIT}.") from None
    if NO_DEVICES in result.stdout + result.stderr:
        return ""
    if result.returncode != 0:
        raise DeployError(f"`{' '.join(QUERY)}` failed (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()}; {EXPLICIT}.")
    return result.stdout


def parse_gpus(text: str) -> list[SmiGpu]:
    """QUERY's CSV lines -> one SmiGpu per GPU; a line of another shape is an error naming it."""
    gpus = []
    for line in text.splitlines():
        if not line.strip() or NO_DEVICES in line:
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            name, cc, mib = parts
            float(cc)
            gpus.append(SmiGpu(name=name, compute_capability=cc, memory_gib=round(float(mib) / 1024, 1)))
        except ValueError:
            raise DeployError(f"cannot read nvidia-smi's line {line!r} (expected `name, compute_cap, memory.total "
                              f"in MiB`, from `{' '.join(QUERY)}`); {EXPLICIT}.") from None
    return gpus


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
