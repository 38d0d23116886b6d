"""Roofline estimates from datasheet peaks: upper bounds on speed, not measurements.

Decode is bandwidth-bound: one step reads every weight of the decoder once (the embedding table
only by the rows it looks up, so it is left out) plus the KV cache of every sequence in the batch;
step time = bytes read / memory bandwidth, summed over pipeline stages (a token passes them in
turn; micro-batch overlap between stages is not counted). tokens/s = batch / step time.
Vision and prefill are compute-bound: FLOPs = 2 x parameters x tokens (a multiply-add per weight
per token) + attention's score and value products; time = FLOPs / (GPUs x dense TFLOP/s).
Communication (all-reduce between tp ranks) is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.plan.gpus import GpuSpec
from nvlm_deploy.plan.memory import decoder_rank_bytes, embedding_bytes, kv_bytes_per_token, stage_layers
from nvlm_deploy.plan.params import ModelSizes
from nvlm_deploy.plan.recipes import Recipe


@dataclass(frozen=True)
class Roofline:
    decode_context_tokens: int  # mean context over a generation: input + output / 2
    decode_step_bytes_batch1: int  # bytes read per decode step, summed over pipeline stages
    decode_tokens_per_s_batch1: float
    decode_batch: int
    decode_tokens_per_s_max_batch: float
    vision_tiles: int  # one image at its most tiles (thumbnail included)
    vision_flops: float
    vision_ms: float | None  # None: the GPU's 16-bit TFLOP/s is not known
    prefill_tokens: int  # image tokens of that image
    prefill_flops: float
    prefill_ms: float | None
    prefill_tflops_per_gpu: float | None  # the dense rate the recipe's GEMMs run at


def decode_step_bytes(config: NvlmConfig, recipe: Recipe, *, tp: int, pp: int, batch: int, context: int) -> int:
    """Σ over stages of one rank's bytes: weights (minus the embedding table) + batch x context x KV/token."""
    total = 0
    for pp_rank in range(pp):
        weights = decoder_rank_bytes(config, recipe, tp=tp, pp=pp, pp_rank=pp_rank)
        if pp_rank == 0:
            weights -= embedding_bytes(config, recipe)
        layers = stage_layers(config, pp=pp, pp_rank=pp_rank)
        total += weights + batch * context * kv_bytes_per_token(config, recipe, tp=tp, layers=layers)
    return total


def vision_flops(config: NvlmConfig, sizes: ModelSizes, *, tiles: int) -> float:
    """Per tile: 2 x ViT params x (patches + CLS) + 4 x layers x tokens² x (real + dummy heads x head_dim)
    (QKᵀ and AV) + 2 x mlp1 params x image tokens per tile."""
    v = config.vision
    tokens = v.num_patches + 1
    attention = 4 * v.num_hidden_layers * tokens**2 * v.total_heads * v.head_dim
    per_tile = 2 * sizes.vision_params * tokens + attention + 2 * sizes.projector_params * config.tokens_per_tile
    return tiles * per_tile


def prefill_flops(config: NvlmConfig, sizes: ModelSizes, *, tokens: int) -> float:
    """2 x (decoder params - embedding - lm_head) x tokens + causal attention 2 x layers x tokens² x
    heads x head_dim + lm_head on the last token."""
    llm = config.llm
    body = sizes.llm_params - sizes.embedding_params - sizes.lm_head_params
    attention = 2 * llm.num_hidden_layers * tokens**2 * llm.num_attention_heads * llm.head_dim
    return 2 * body * tokens + attention + 2 * llm.vocab_size * llm.hidden_size


def estimate(config: NvlmConfig, sizes: ModelSizes, recipe: Recipe, limits: DeploymentLimits, gpu: GpuSpec, *,
             tp: int, pp: int, max_batch: int) -> Roofline:
    context = limits.max_input_len + limits.max_output_len // 2
    step = {b: decode_step_bytes(config, recipe, tp=tp, pp=pp, batch=b, context=context) for b in (1, max_batch)}
    tiles, tokens = limits.max_tiles_per_image, limits.image_tokens_per_image
    v_flops, p_flops = vision_flops(config, sizes, tiles=tiles), prefill_flops(config, sizes, tokens=tokens)
    rate = gpu.fp8_tflops if recipe.compute == "fp8" else gpu.bf16_tflops
    return Roofline(
        decode_context_tokens=context, decode_step_bytes_batch1=step[1],
        decode_tokens_per_s_batch1=gpu.bandwidth_bytes_per_s / step[1],
        decode_batch=max_batch, decode_tokens_per_s_max_batch=max_batch * gpu.bandwidth_bytes_per_s / step[max_batch],
        vision_tiles=tiles, vision_flops=v_flops,
        vision_ms=None if gpu.bf16_tflops is None else v_flops / (gpu.bf16_tflops * 1e12) * 1e3,
        prefill_tokens=tokens, prefill_flops=p_flops,
        prefill_ms=None if rate is None else p_flops / (tp * rate * 1e12) * 1e3, prefill_tflops_per_gpu=rate)
