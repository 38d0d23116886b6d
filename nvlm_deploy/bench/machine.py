"""What machine and which library versions a benchmark run used (RESULTS.md's header)."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def tritonserver_version() -> str:
    """The tritonserver that `serve` would start (the one inside nvidia-pytriton here)."""
    try:
        from nvlm_deploy.serve.server import find_tritonserver

        dist = find_tritonserver()
        if dist.kind == "pytriton":
            return f"the one inside nvidia-pytriton {version('nvidia-pytriton')}"
        return str(dist.binary)
    except Exception as exc:  # not installed: say so, never fail the report
        return f"not found ({type(exc).__name__})"


def describe_machine() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable, "ram_gib": ram_gib(),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "torch": version("torch"), "onnxruntime": version("onnxruntime"), "tritonclient": version("tritonclient"),
        "tritonserver": tritonserver_version(), "nvlm-deploy": version("nvlm-deploy"),
    }


def peak_rss_bytes() -> int:
    """This process's peak resident set since it was exec'd (VmHWM of /proc/self/status).

    Not `ru_maxrss`: Linux keeps the high-water mark of the memory image that execve replaces, so a
    benchmark child forked from a large parent would report the parent's peak, not its own.
    """
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: the best there is
