"""What the local machine offers for engines: GPU name, compute capability, library versions.

Engines are tied to the GPU architecture (SM) and to the TensorRT / TensorRT-LLM versions they were
built with; manifests record `describe_local_gpu()` and the server compares against it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata

from nvlm_deploy.errors import DeployError

QUERY = ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"]
NO_DEVICES = "No devices were found"  # what nvidia-smi prints (exit 6) on a machine without GPUs


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
        raise DeployError(f"`{' '.join(QUERY)}` did not run ({exc}); name targets explicitly instead (e.g. --target cpu-bf16 or --target h100-sxm-bf16-tp2).") from None
    if NO_DEVICES in result.stdout + result.stderr:
        return ""
    if result.returncode != 0:
        raise DeployError(f"`{' '.join(QUERY)}` failed (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()}; name targets explicitly instead (e.g. --target cpu-bf16 or --target h100-sxm-bf16-tp2).")
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
                              f"in MiB`, from `{' '.join(QUERY)}`); name targets explicitly instead (e.g. --target cpu-bf16 or --target h100-sxm-bf16-tp2).") from None
    return gpus


@dataclass(frozen=True)
class GpuInfo:
    name: str | None  # e.g. "NVIDIA H100 80GB HBM3"; None without a GPU
    compute_capability: str | None  # e.g. "9.0"
    memory_gib: float | None
    tensorrt: str | None  # installed versions, None when absent
    tensorrt_llm: str | None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def slug(self) -> str:
        """Short GPU name for target directories: "h100-sxm", "a100-pcie", ... ("cpu" without a GPU)."""
        if not self.name:
            return "cpu"
        words = re.sub(r"^NVIDIA\s+", "", self.name).lower()
        words = re.sub(r"\b\d+gb\b|\bhbm\d*e?\b", "", words)
        return re.sub(r"[^a-z0-9]+", "-", words).strip("-") or "gpu"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def describe_local_gpu() -> GpuInfo:
    """GPU 0 as nvidia-smi reports it (no CUDA import), plus installed
    TensorRT(-LLM) versions; no GPU when nvidia-smi is missing, finds none, or fails."""
    try:
        gpus = parse_gpus(query_nvidia_smi())
    except DeployError:
        gpus = []
    first = gpus[0] if gpus else None
    return GpuInfo(name=first and first.name, compute_capability=first and first.compute_capability,
                   memory_gib=first and first.memory_gib,
                   tensorrt=_version("tensorrt") or _version("tensorrt-cu12"),
                   tensorrt_llm=_version("tensorrt-llm") or _version("tensorrt_llm"))
