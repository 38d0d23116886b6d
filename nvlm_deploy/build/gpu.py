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
    """GPU 0 as nvidia-smi reports it (no CUDA import), plus installed TensorRT(-LLM) versions."""
    name = cc = mem = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()
            if out:
                name, cc, mem_mib = (x.strip() for x in out[0].split(","))
                mem = round(float(mem_mib) / 1024, 1)
        except (subprocess.SubprocessError, ValueError, OSError):
            name = cc = mem = None
    return GpuInfo(name=name, compute_capability=cc, memory_gib=mem,
                   tensorrt=_version("tensorrt") or _version("tensorrt-cu12"),
                   tensorrt_llm=_version("tensorrt-llm") or _version("tensorrt_llm"))
