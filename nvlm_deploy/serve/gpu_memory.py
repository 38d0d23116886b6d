"""GPU 0's memory in a GPU deployment: the KV-cache fraction that leaves room for the vision engine.

tensorrtllm_backend hands `kv_cache_free_gpu_mem_fraction` of the memory that is *free after the
decoder engine is loaded* to the KV cache (default 0.9; serve/upstream/tensorrtllm_backend_1.2.json).
The vision encoder runs on the same GPU 0 in the `vision_encoder` Python model and may load after
the KV cache is sized, so the fraction must leave its plan, its activations and the prompt tables
free. Sizes come from the manifests (`llm/` engine bytes of rank 0, `vision/` plan bytes, the GPU's
memory); the CUDA context and activation allowances are estimates, stated in the plan and in
`package`'s output, and `--kv-cache-free-gpu-mem-fraction` overrides the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nvlm_deploy.errors import DeployError

GIB = 1 << 30
CUDA_CONTEXT_BYTES = 1 * GIB  # per process on GPU 0: CUDA context, cuBLAS/cuDNN handles (estimate)
VISION_ACTIVATION_MIN_BYTES = 1 * GIB  # TensorRT activations of one full-profile call (estimate, at least)
VISION_ACTIVATION_SHARE = 0.25  # ... or this share of the plan, when larger
UPSTREAM_DEFAULT_FRACTION = 0.9  # tensorrtllm_backend's default when the parameter is unset
LOWEST_USEFUL_FRACTION = 0.05


@dataclass(frozen=True)
class KvCachePlan:
    fraction: float
    gpu_memory_bytes: int | None
    free_after_decoder_bytes: int | None
    vision_reserve_bytes: int
    how: str  # "computed" | "given" | "default (no GPU memory in the manifests)"

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.how != "computed":
            return f"kv_cache_free_gpu_mem_fraction {self.fraction} ({self.how})"
        return (f"kv_cache_free_gpu_mem_fraction {self.fraction}: GPU 0 has {self.gpu_memory_bytes / GIB:.1f} GiB, "
                f"about {self.free_after_decoder_bytes / GIB:.1f} GiB free after the decoder engine; "
                f"{self.vision_reserve_bytes / GIB:.1f} GiB kept for the vision engine and prompt tables")


def vision_reserve_bytes(*, plan_bytes: int, prompt_table_bytes: int) -> int:
    """Plan weights + activations of one call + the prompt tables handed to the decoder."""
    activations = max(VISION_ACTIVATION_MIN_BYTES, int(plan_bytes * VISION_ACTIVATION_SHARE))
    return plan_bytes + activations + prompt_table_bytes


def plan_kv_cache(*, gpu_memory_bytes: int | None, decoder_rank0_bytes: int, vision_plan_bytes: int,
                  prompt_table_bytes: int, given: float | None = None) -> KvCachePlan:
    """The fraction to write (two decimals, rounded down), or the user's `given` one.

    Args:
        gpu_memory_bytes: GPU 0's memory (the engines' manifest), None when unknown.
        decoder_rank0_bytes: size of rank0.engine (weights resident on GPU 0).
        vision_plan_bytes: size of vision/model.plan.
        prompt_table_bytes: max_batch_size x rows per request x hidden x bytes per element.
        given: --kv-cache-free-gpu-mem-fraction.
    """
    reserve = vision_reserve_bytes(plan_bytes=vision_plan_bytes, prompt_table_bytes=prompt_table_bytes)
    if given is not None:
        if not 0 < given < 1:
            raise DeployError(f"--kv-cache-free-gpu-mem-fraction must be between 0 and 1 (exclusive), got {given}.")
        return KvCachePlan(given, gpu_memory_bytes, None, reserve, "given")
    if not gpu_memory_bytes:
        return KvCachePlan(UPSTREAM_DEFAULT_FRACTION, None, None, reserve,
                           "default (no GPU memory in the manifests)")
    free = gpu_memory_bytes - decoder_rank0_bytes - CUDA_CONTEXT_BYTES
    if free <= reserve:
        raise DeployError(
            f"GPU 0 ({gpu_memory_bytes / GIB:.1f} GiB) cannot hold the decoder's rank 0 ({decoder_rank0_bytes / GIB:.1f} GiB) "
            f"and the vision engine with its prompt tables ({reserve / GIB:.1f} GiB) with room for a KV cache: use more "
            "tensor/pipeline ranks, a quantized decoder, or lower --max-batch-size / --max-images.")
    fraction = min(UPSTREAM_DEFAULT_FRACTION, math.floor((1 - reserve / free) * 100) / 100)
    if fraction < LOWEST_USEFUL_FRACTION:
        raise DeployError(f"after the decoder and the vision engine only {fraction:.2f} of GPU 0's free memory is "
                          "left for the KV cache; use more GPUs, a quantized decoder or lower limits.")
    return KvCachePlan(fraction, gpu_memory_bytes, free, reserve, "computed")
