"""Bytes on each GPU of a tp x pp deployment: decoder weights per recipe, vision engine, activations,
KV cache. All sizes in bytes; per rank unless a name says otherwise.

Layout facts (shared/reference/tensorrt-llm.md §3-4, trtllm/splits.py): column-parallel weights
split their rows over tp, row-parallel their columns; KV heads split over tp and are copied when
tp exceeds them; norms and the vocabulary embedding are replicated (use_parallel_embedding False);
lm_head is padded to a multiple of tp and split; pipeline rank 0 holds the embedding, the last one
lm_head and the final norm; the first ranks take one layer more when layers do not divide.
The vision engine (InternViT + mlp1, 16-bit) and the prompt tables live on GPU 0, with rank 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.contracts.precision import from_torch_name, precision
from nvlm_deploy.plan.params import Linear, ModelSizes, llm_linears
from nvlm_deploy.plan.recipes import Recipe
from nvlm_deploy.serve.gpu_memory import CUDA_CONTEXT_BYTES, vision_reserve_bytes

NORMS_PER_LAYER = 2  # input_layernorm, post_attention_layernorm: [hidden] each
ACTIVATION_HIDDEN_BUFFERS = 4  # residual, normed input, attention output, MLP output: [tokens, hidden] each
LOGITS_BYTES = 4  # TensorRT-LLM logits_dtype float32


def model_itemsize(config: NvlmConfig) -> int:
    """Bytes per element of the model's own dtype (bf16 for NVLM-D): vision engine, prompt tables."""
    return from_torch_name(config.torch_dtype).itemsize


def dense_itemsize(config: NvlmConfig, recipe: Recipe) -> int:
    """Bytes per element of what a recipe leaves unquantized (embeddings, lm_head, norms, biases)."""
    return precision(recipe.dtype).itemsize if recipe.dtype else model_itemsize(config)


def padded_intermediate(config: NvlmConfig, recipe: Recipe, *, tp: int) -> int:
    """AWQ: MLP width zero-padded to a multiple of group x tp (29568 -> 29696 for tp 2/4/8, DESIGN.md),
    so each rank's down_proj input is whole groups."""
    width = config.llm.intermediate_size
    if not recipe.group_size:
        return width
    multiple = recipe.group_size * tp
    return -(-width // multiple) * multiple


def stage_layers(config: NvlmConfig, *, pp: int, pp_rank: int) -> int:
    from nvlm_deploy.trtllm.splits import pp_layer_range

    return len(pp_layer_range(config.llm.num_hidden_layers, pp=pp, pp_rank=pp_rank))


def rank_shape(lin: Linear, *, tp: int, num_kv_heads: int) -> tuple[int, int]:
    """[out, in] of one tp rank's piece."""
    if lin.split == "column":
        return lin.out_features // tp, lin.in_features
    if lin.split == "row":
        return lin.out_features, lin.in_features // tp
    heads = max(num_kv_heads // tp, 1)  # "kv": heads split, each copied tp / heads times when tp > heads
    return lin.out_features // num_kv_heads * heads, lin.in_features


def linear_bytes(lin: Linear, recipe: Recipe, *, tp: int, num_kv_heads: int, dense: int) -> float:
    """weights x bytes/weight + AWQ scales ([out, in/G] and pre_quant_scale [in]) + FP8 scales + bias."""
    out, inp = rank_shape(lin, tp=tp, num_kv_heads=num_kv_heads)
    total = out * inp * recipe.linear_weight_bytes + recipe.tensor_scale_bytes
    if recipe.group_size:
        total += (out * -(-inp // recipe.group_size) + inp) * recipe.scale_bytes
    if lin.bias:
        total += out * dense
    return total


def decoder_rank_bytes(config: NvlmConfig, recipe: Recipe, *, tp: int, pp: int = 1, pp_rank: int = 0) -> int:
    """Decoder weights one rank holds: its layers' linears and norms, + embedding (first stage),
    + lm_head rows (padded vocab / tp) and final norm (last stage)."""
    from nvlm_deploy.trtllm.splits import padded_vocab

    llm, dense = config.llm, dense_itemsize(config, recipe)
    linears = llm_linears(config, intermediate_size=padded_intermediate(config, recipe, tp=tp))
    per_layer = sum(linear_bytes(lin, recipe, tp=tp, num_kv_heads=llm.num_key_value_heads, dense=dense)
                    for lin in linears) + NORMS_PER_LAYER * llm.hidden_size * dense
    total = stage_layers(config, pp=pp, pp_rank=pp_rank) * per_layer
    if pp_rank == 0:
        total += embedding_bytes(config, recipe)
    if pp_rank == pp - 1:  # lm_head [padded vocab / tp, hidden] (stored even when tied) + final norm [hidden]
        total += padded_vocab(llm.vocab_size, tp) // tp * llm.hidden_size * dense + llm.hidden_size * dense
    return math.ceil(total)


def embedding_bytes(config: NvlmConfig, recipe: Recipe) -> int:
    """[vocab, hidden] in 16-bit, whole on every rank of the first stage."""
    return config.llm.vocab_size * config.llm.hidden_size * dense_itemsize(config, recipe)


def kv_bytes_per_token(config: NvlmConfig, recipe: Recipe, *, tp: int = 1, layers: int | None = None) -> int:
    """2 (K, V) x layers x KV heads (per rank: split over tp, at least 1) x head_dim x bytes.
    NVLM-D-72B: 2 x 80 x 8 x 128 x 2 = 320 KiB (bf16), 160 KiB with the fp8 KV cache."""
    llm = config.llm
    layers = llm.num_hidden_layers if layers is None else layers
    heads = max(llm.num_key_value_heads // tp, 1)
    return 2 * layers * heads * llm.head_dim * recipe.kv_cache_bytes


def activation_bytes(config: NvlmConfig, recipe: Recipe, limits: DeploymentLimits, *, tp: int) -> int:
    """Estimate of an engine step's activations: TensorRT reuses buffers from layer to layer, so the peak
    is one layer at max_num_tokens: [tokens, 4 x hidden + rank's q/k/v + rank's gate/up] 16-bit, plus
    fp32 logits [max_batch, padded vocab / tp]."""
    from nvlm_deploy.trtllm.splits import padded_vocab

    llm = config.llm
    kv_heads = max(llm.num_key_value_heads // tp, 1)
    width = (ACTIVATION_HIDDEN_BUFFERS * llm.hidden_size + (llm.num_attention_heads // tp + 2 * kv_heads) * llm.head_dim
             + 2 * padded_intermediate(config, recipe, tp=tp) // tp)
    logits = limits.max_batch_size * padded_vocab(llm.vocab_size, tp) // tp * LOGITS_BYTES
    return limits.max_num_tokens * width * dense_itemsize(config, recipe) + logits


def vision_plan_bytes(config: NvlmConfig, sizes: ModelSizes) -> int:
    """vision/model.plan: InternViT (dummy heads included) + mlp1 in the model dtype."""
    return (sizes.vision_params + sizes.projector_params) * model_itemsize(config)


def prompt_table_bytes(config: NvlmConfig, limits: DeploymentLimits) -> int:
    """Prompt tables of a full batch: max_prompt_embedding_table_size rows x hidden, model dtype."""
    return limits.max_prompt_embedding_table_size * config.llm.hidden_size * model_itemsize(config)


@dataclass(frozen=True)
class RankMemory:
    """One GPU's bytes. `ranks` names the ranks it stands for (rank = pp_rank x tp + tp_rank)."""

    ranks: str
    pp_rank: int
    layers: int
    memory: int
    decoder_weights: int
    vision_engine: int  # GPU 0 only
    vision_reserve: int  # GPU 0 only: vision activations + prompt tables (gpu_memory.vision_reserve_bytes)
    activations: int
    cuda_context: int
    kv_bytes_per_token: int
    kv_cache: int = 0

    @property
    def static(self) -> int:
        return self.decoder_weights + self.vision_engine + self.vision_reserve + self.activations + self.cuda_context

    @property
    def free_after_decoder(self) -> int:
        """What tensorrtllm_backend's kv_cache_free_gpu_mem_fraction applies to."""
        return self.memory - self.decoder_weights - self.activations - self.cuda_context

    @property
    def kv_tokens(self) -> int:
        return self.kv_cache // self.kv_bytes_per_token

    @property
    def unused(self) -> int:
        return self.memory - self.static - self.kv_cache


def rank_loads(config: NvlmConfig, sizes: ModelSizes, recipe: Recipe, limits: DeploymentLimits, *, memory: int,
               tp: int, pp: int) -> list[RankMemory]:
    """Rank 0 (with the vision engine), the other ranks of stage 0, then one rank per later stage."""
    plan = vision_plan_bytes(config, sizes)
    reserve = vision_reserve_bytes(plan_bytes=plan, prompt_table_bytes=prompt_table_bytes(config, limits)) - plan
    activations = activation_bytes(config, recipe, limits, tp=tp)
    out = []
    for pp_rank in range(pp):
        layers = stage_layers(config, pp=pp, pp_rank=pp_rank)
        common = dict(pp_rank=pp_rank, layers=layers, memory=memory, activations=activations,
                      decoder_weights=decoder_rank_bytes(config, recipe, tp=tp, pp=pp, pp_rank=pp_rank),
                      cuda_context=CUDA_CONTEXT_BYTES,
                      kv_bytes_per_token=kv_bytes_per_token(config, recipe, tp=tp, layers=layers))
        first, last = pp_rank * tp, pp_rank * tp + tp - 1
        if pp_rank == 0:
            out.append(RankMemory(ranks="0", vision_engine=plan, vision_reserve=reserve, **common))
            first += 1
        if first <= last:
            label = str(first) if first == last else f"{first}-{last}"
            out.append(RankMemory(ranks=label, vision_engine=0, vision_reserve=0, **common))
    return out
