"""THE registry of GPU types the planner knows: datasheet figures, each with its source.

Units: memory in bytes (datasheet "GB" taken as 10^9 bytes: conservative, nvidia-smi usually
reports a little more on HBM parts), bandwidth in bytes/s (TB/s = 10^12), Tensor Core rates in
dense TFLOP/s. Datasheets print most Tensor Core rates "with sparsity" (2:4 structured); dense is
half of that, and only dense rates are stored here. `recipes` follows the compute capability
(plan/recipes.py). Compute capabilities: Transformer Engine's support matrix (Ampere 8.0/8.6,
Ada 8.9, Hopper 9.0, Blackwell data center 10.0). A figure that could not be confirmed from a
source while writing this table says so in `note`; an unknown figure is None, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from nvlm_deploy.errors import DeployError
from nvlm_deploy.plan.recipes import recipes_for

GB = 10**9
TB_S = 10**12

A100_SOURCE = ("NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf), as "
               "tabulated at glennklockwood.com/garden/processors/A100 and "
               "thundercompute.com/blog/nvidia-a100-specs-full-guide")
H100_SOURCE = ("NVIDIA H100 Tensor Core GPU datasheet table (SXM | PCIe; '* shown with sparsity, 1/2 lower without'), "
               "as reproduced at archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html; "
               "glennklockwood.com/garden/processors/h100")
H200_SOURCE = ("NVIDIA H200 product page figures as quoted at morphllm.com/nvidia-h200 (SXM: FP8 3,958*, BF16 1,979*; "
               "NVL: FP8 3,341*, BF16 1,671*; 141 GB HBM3e, 4.8 TB/s) and aiwiki.ai/wiki/nvidia_h200")
ADA_SOURCE = ("NVIDIA L40 / L40S datasheets (table 'BFLOAT16 Tensor Core 181.05 | 362.1*, 362.05 | 733*; "
              "FP8 362 | 724*, 733 | 1,466*'; 48 GB GDDR6, 864 GB/s) as reproduced at mullet.se")
GH200_NOTE = ("Tensor Core rates not confirmed from an NVIDIA GH200 datasheet here: taken equal to H100 SXM's "
              "(same GH100 GPU). ")


@dataclass(frozen=True)
class GpuSpec:
    slug: str  # registry key and target-directory name, e.g. "h100-sxm"
    name: str
    compute_capability: str  # "9.0"
    memory_bytes: int
    bandwidth_bytes_per_s: int
    bf16_tflops: float | None  # dense BF16 Tensor Core TFLOP/s; None: not confirmed
    fp8_tflops: float | None  # dense FP8 Tensor Core TFLOP/s; None: no FP8 Tensor Cores
    source: str
    note: str = ""
    recipes: tuple[str, ...] = field(default=())  # filled from compute_capability

    def __post_init__(self):
        if not self.recipes:
            object.__setattr__(self, "recipes", recipes_for(self.compute_capability))

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / GB

    @property
    def has_fp8(self) -> bool:
        return self.fp8_tflops is not None


def _gpu(slug, name, cc, memory_gb, bandwidth_gb_s, bf16, fp8, source, note="") -> GpuSpec:
    return GpuSpec(slug=slug, name=name, compute_capability=cc, memory_bytes=int(memory_gb * GB),
                   bandwidth_bytes_per_s=int(bandwidth_gb_s * GB), bf16_tflops=bf16, fp8_tflops=fp8,
                   source=source, note=note)


# slug, name, SM, memory GB, bandwidth GB/s, dense BF16 TFLOP/s, dense FP8 TFLOP/s (datasheet sparse / 2)
GPUS: dict[str, GpuSpec] = {g.slug: g for g in (
    _gpu("a100-sxm-40gb", "NVIDIA A100 40GB SXM", "8.0", 40, 1555, 312.0, None, A100_SOURCE,
         "BF16 312 dense (624 with sparsity); no FP8"),
    _gpu("a100-sxm-80gb", "NVIDIA A100 80GB SXM", "8.0", 80, 2039, 312.0, None, A100_SOURCE,
         "BF16 312 dense (624 with sparsity); no FP8"),
    _gpu("a100-pcie-40gb", "NVIDIA A100 40GB PCIe", "8.0", 40, 1555, 312.0, None, A100_SOURCE,
         "BF16 312 dense (624 with sparsity); no FP8"),
    _gpu("a100-pcie-80gb", "NVIDIA A100 80GB PCIe", "8.0", 80, 1935, 312.0, None, A100_SOURCE,
         "BF16 312 dense (624 with sparsity); no FP8"),
    _gpu("a10", "NVIDIA A10", "8.6", 24, 600, 125.0, None,
         "NVIDIA A10 datasheet figures as tabulated in gist.github.com/kimbochen (125 TFLOP/s, 0.6 TB/s, 24 GB); "
         "600.2 GB/s GDDR6 at sysrqmts.com",
         "BF16 125 dense not confirmed from the NVIDIA datasheet itself (third-party tables only); no FP8"),
    _gpu("a10g", "NVIDIA A10G", "8.6", 24, 600, None, None,
         "baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference (24 GB GDDR6, 600 GB/s, same as A10); "
         "AWS EC2 G5 instances",
         "AWS-only variant of the A10 with lower Tensor Core throughput: dense BF16 TFLOP/s not confirmed "
         "(no NVIDIA datasheet), so compute-bound estimates are omitted; SM 8.6 (GA102) from third-party tables; no FP8"),
    _gpu("l4", "NVIDIA L4", "8.9", 24, 300, 121.0, 242.5,
         "NVIDIA L4 datasheet (FP8 485*, BF16 242* with sparsity; 24 GB GDDR6, 300 GB/s) as quoted at "
         "grokipedia.com/page/NVIDIA_L4_vs_L40S and yobitel.com/knowledge-base/nvidia-l4",
         "dense = datasheet sparse / 2"),
    _gpu("l40", "NVIDIA L40", "8.9", 48, 864, 181.05, 362.0, ADA_SOURCE),
    _gpu("l40s", "NVIDIA L40S", "8.9", 48, 864, 362.05, 733.0, ADA_SOURCE),
    _gpu("h100-pcie", "NVIDIA H100 PCIe", "9.0", 80, 2000, 756.5, 1513.0, H100_SOURCE,
         "BF16 1,513*, FP8 3,026* with sparsity; HBM2e"),
    _gpu("h100-sxm", "NVIDIA H100 80GB SXM", "9.0", 80, 3350, 989.5, 1979.0, H100_SOURCE,
         "BF16 1,979*, FP8 3,958* with sparsity; HBM3"),
    _gpu("h100-nvl", "NVIDIA H100 NVL", "9.0", 94, 3900, 835.5, 1670.5,
         "NVIDIA H100 product page (H100 NVL column), not retrieved here; gpu.blog/gpus/nvidia-h100-nvl (94 GB HBM3)",
         "NOT CONFIRMED: 3.9 TB/s and BF16 1,671* / FP8 3,341* (sparse) are NVIDIA's published H100 NVL figures as "
         "remembered (the same Tensor Core rates as the confirmed H200 NVL); gpu.blog says 4.8 TB/s"),
    _gpu("h200", "NVIDIA H200 SXM", "9.0", 141, 4800, 989.5, 1979.0, H200_SOURCE,
         "same GH100 compute as H100 SXM; HBM3e"),
    _gpu("h200-nvl", "NVIDIA H200 NVL", "9.0", 141, 4800, 835.5, 1670.5, H200_SOURCE,
         "PCIe card; BF16 1,671*, FP8 3,341* with sparsity"),
    _gpu("gh200", "NVIDIA GH200 96GB HBM3", "9.0", 96, 4000, 989.5, 1979.0,
         "spheron.network/blog/nvidia-gh200-guide (96 GB HBM3 + 480 GB LPDDR5X); "
         "notes.haroldbenoit.com (96 GB HBM3 or 144 GB HBM3e)",
         GH200_NOTE + "4 TB/s bandwidth not confirmed from a retrieved source. nvidia-smi: 'NVIDIA GH200 480GB'"),
    _gpu("gh200-144gb", "NVIDIA GH200 144GB HBM3e", "9.0", 144, 4900, 989.5, 1979.0,
         "notes.haroldbenoit.com (GH200: 96 GB HBM3 or 144 GB HBM3e)",
         GH200_NOTE + "4.9 TB/s bandwidth not confirmed from a retrieved source"),
    _gpu("b200", "NVIDIA B200 (HGX)", "10.0", 180, 7700, 2250.0, 4500.0,
         "NVIDIA HGX B200 specifications (per GPU: 180 GB HBM3E, 7.7 TB/s, FP8 9 PFLOPS*, BF16 4.5 PFLOPS*) as "
         "reproduced at zdszero.github.io; dense rates at glennklockwood.com/garden/processors/B200 (HGX, 1,000 W)",
         "launch material said 192 GB / 8 TB/s; Blackwell's precision list in TensorRT-LLM 1.2's support matrix "
         "not confirmed here (FP8 and W4A16 AWQ assumed from 'Ada/Ampere and later')"),
)}


def gpu_spec(slug: str) -> GpuSpec:
    """The registry entry for a slug; an unknown slug is an error listing the valid ones."""
    if slug not in GPUS:
        raise DeployError(f"unknown GPU {slug!r}. Known GPUs: {', '.join(GPUS)} "
                          "(or an nvidia-smi name such as 'NVIDIA H100 80GB HBM3').")
    return GPUS[slug]


def _a100(words: str, memory_gib: float | None) -> str | None:
    form = "pcie" if "pcie" in words else "sxm"
    if "80gb" in words or "40gb" in words:
        size = "80gb" if "80gb" in words else "40gb"
    elif memory_gib is not None:
        size = "80gb" if memory_gib > 60 else "40gb"
    else:
        return None
    return f"a100-{form}-{size}"


def _h100(words: str, memory_gib: float | None) -> str:
    if "nvl" in words or (memory_gib is not None and 88 < memory_gib < 100):
        return "h100-nvl"
    return "h100-pcie" if "pcie" in words else "h100-sxm"


def _gh200(words: str, memory_gib: float | None) -> str:
    big = "144g" in words or "hbm3e" in words or (memory_gib is not None and memory_gib > 110)
    return "gh200-144gb" if big else "gh200"


# nvidia-smi name (lowercase, "NVIDIA " removed) -> slug; first match wins, so longer names come first
NAME_RULES: tuple[tuple[str, Callable[[str, float | None], str | None]], ...] = (
    (r"\bgh200\b", _gh200),
    (r"\bh200\b.*\bnvl\b", lambda w, m: "h200-nvl"),
    (r"\bh200\b", lambda w, m: "h200"),
    (r"\bh100\b", _h100),
    (r"\ba100\b", _a100),
    (r"\ba10g\b", lambda w, m: "a10g"),
    (r"\ba10\b", lambda w, m: "a10"),
    (r"\bl40s\b", lambda w, m: "l40s"),
    (r"\bl40\b", lambda w, m: "l40"),
    (r"\bl4\b", lambda w, m: "l4"),
    (r"\bb200\b", lambda w, m: "b200"),
)


def match_gpu(name: str, memory_gib: float | None = None) -> GpuSpec | None:
    """The registry entry for an nvidia-smi name ("NVIDIA H100 80GB HBM3" -> h100-sxm), else None.

    Args:
        name: nvidia-smi's `name` (a slug is accepted too).
        memory_gib: nvidia-smi's memory.total in GiB; separates 40/80 GB A100s named without a size.
    """
    if name in GPUS:
        return GPUS[name]
    words = re.sub(r"^nvidia\s+", "", name.strip().lower())
    words = re.sub(r"[-_]", " ", words)
    for pattern, resolve in NAME_RULES:
        if re.search(pattern, words):
            slug = resolve(words, memory_gib)
            return GPUS[slug] if slug else None
    return None
