"""Decoder recipes as the planner sizes them: bytes per weight, KV-cache bytes, GPUs that run them.

A recipe decides how the Qwen2 decoder's linear layers are stored (bf16 | fp16 | fp8 | int4_awq);
the vision encoder and the projector stay in the model's dtype whatever the recipe (the ViT is
kept 16-bit: shared/reference/nvlm-d.md §8). Sources of the rules:
- Precision per architecture: TensorRT-LLM support matrix (nvidia.github.io/TensorRT-LLM,
  reference/support-matrix): Ampere (SM80, SM86) FP16, BF16, INT8, INT4; Ada (SM89) and Hopper
  (SM90) add FP8. TensorRT Model Optimizer support matrix: FP8 "GPUs: Ada and later", W4A16 AWQ
  "GPUs: Ampere and later". TensorRT-LLM "Supported hardware" lists Ampere (A100) as the oldest.
- Layouts: shared/reference/tensorrt-llm.md §4 (FP8 per-tensor fp32 weight and activation
  scales; W4A16_AWQ group 128, scales [N, K/G] in the model dtype, pre_quant_scale [1, K]).
- lm_head and embeddings stay 16-bit: ModelOpt's default quantization configs disable every
  `*lm_head*` quantizer (`modelopt.torch.quantization.config`, "*lm_head*": {"enable": False})
  and quantize only linear layers; tensorrt-llm.md §4: "lm_head is normally not FP8".
"""

from __future__ import annotations

from dataclasses import dataclass

from nvlm_deploy.contracts.precision import precision
from nvlm_deploy.errors import DeployError


@dataclass(frozen=True)
class Recipe:
    name: str
    quant_algo: str | None  # TensorRT-LLM checkpoint `quantization.quant_algo`
    min_compute_capability: str  # oldest SM whose TensorRT-LLM 1.2 kernels run it
    linear_weight_bytes: float  # bytes per weight of the decoder's linear layers
    kv_cache_bytes: int  # bytes per cached K or V element
    compute: str  # which Tensor Core rate runs its GEMMs: "bf16" (16-bit) | "fp8"
    dtype: str | None  # 16-bit precision of everything not quantized; None: the model's own dtype
    group_size: int | None = None  # AWQ: one scale per group of input features
    scale_bytes: int = 0  # AWQ group scales and pre_quant_scale: model dtype (2 bytes)
    tensor_scale_bytes: int = 0  # FP8: fp32 weight + activation scale per linear layer
    note: str = ""

    @property
    def min_sm(self) -> tuple[int, int]:
        return sm_tuple(self.min_compute_capability)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("bf16", None, "8.0", precision("bf16").itemsize, precision("bf16").itemsize, "bf16", "bf16",
           note="no quantization (NVLM-D ships bf16); BF16 needs SM 8.0+"),
    Recipe("fp16", None, "8.0", precision("fp16").itemsize, precision("fp16").itemsize, "bf16", "fp16",
           note="no quantization, fp16 weights (16-bit Tensor Core rate taken as the bf16 figure)"),
    Recipe("fp8", "FP8", "8.9", 1, 1, "fp8", None, tensor_scale_bytes=2 * 4,
           note="FP8 weights and activations, per-tensor scales; FP8 KV cache; needs FP8 Tensor Cores (SM 8.9+)"),
    Recipe("int4_awq", "W4A16_AWQ", "8.0", 0.5, 2, "bf16", None, group_size=128, scale_bytes=2,
           note="4-bit weights, 16-bit activations (GEMMs at the 16-bit rate); group 128; 16-bit KV cache"),
)}
CHOICES = tuple(RECIPES)
DEFAULT = "bf16"


def sm_tuple(compute_capability: str) -> tuple[int, int]:
    major, _, minor = compute_capability.partition(".")
    return int(major), int(minor or 0)


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise DeployError(f"recipe {name!r} is not one of {list(CHOICES)}.")
    return RECIPES[name]


def recipes_for(compute_capability: str) -> tuple[str, ...]:
    """Recipes TensorRT-LLM 1.2 runs on a GPU of this compute capability."""
    sm = sm_tuple(compute_capability)
    return tuple(r.name for r in RECIPES.values() if sm >= r.min_sm)
