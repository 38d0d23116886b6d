"""The smallest tp (then pp) that serves NVLM-D on a GPU type with a recipe, or why none does.

A layout fits when every rank holds its decoder weights, its activations and the CUDA context,
GPU 0 also the vision engine with its activations and prompt tables (serve/gpu_memory.py), and the
KV cache, sized as tensorrtllm_backend sizes it (kv_cache_free_gpu_mem_fraction of the memory free
after the decoder loads, the same fraction on every rank), holds `concurrency` requests at full
length (max_seq_len). Capacity is that of the tightest rank: every rank keeps its layers' and
heads' share of every token. tp stays within a node (8 GPUs) and must split the heads
(trtllm/splits.valid_tp_sizes); pipeline stages come only when tp cannot hold the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.errors import DeployError
from nvlm_deploy.plan.gpus import GB, GPUS, GpuSpec, gpu_spec, match_gpu
from nvlm_deploy.plan.memory import RankMemory, prompt_table_bytes, rank_loads
from nvlm_deploy.plan.params import ModelSizes, PlannedModel, load_model
from nvlm_deploy.plan.recipes import DEFAULT, Recipe, recipe as recipe_by_name
from nvlm_deploy.plan.roofline import Roofline, estimate
from nvlm_deploy.serve.gpu_memory import KvCachePlan, plan_kv_cache

GPUS_PER_NODE = 8
MAX_SEARCH_GPUS = 64  # how far "what would fit" looks for more GPUs (8 nodes)


@dataclass(frozen=True)
class Fit:
    """One tp x pp layout, evaluated: `reason` is None when it fits."""

    tp: int
    pp: int
    ranks: tuple[RankMemory, ...]
    kv: KvCachePlan | None
    kv_capacity_tokens: int
    reason: str | None
    weights_fit: bool  # weights + vision engine + CUDA context fit every GPU (limits cannot change that)


@dataclass(frozen=True)
class Plan:
    model: str
    gpu: GpuSpec
    recipe: Recipe
    gpus_available: int
    tp: int
    pp: int
    limits: DeploymentLimits
    concurrency: int  # full-length requests the KV cache must hold at once
    sizes: ModelSizes
    ranks: tuple[RankMemory, ...]
    kv: KvCachePlan
    kv_bytes_per_token: int  # whole model: all layers, all KV heads
    kv_capacity_tokens: int
    full_length_requests: int  # requests of max_seq_len tokens the KV cache holds together
    max_batch: int  # min(max_batch_size, full_length_requests)
    roofline: Roofline
    assumptions: tuple[str, ...]

    @property
    def gpus_used(self) -> int:
        return self.tp * self.pp

    @property
    def nodes(self) -> int:
        return -(-self.gpus_used // GPUS_PER_NODE)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(limits=self.limits.as_dict(), gpus_used=self.gpus_used, nodes=self.nodes,
                   max_prompt_embedding_table_size=self.limits.max_prompt_embedding_table_size,
                   kv_cache_free_gpu_mem_fraction=self.kv.fraction)
        for rank, memory in zip(out["ranks"], self.ranks):
            rank.update(kv_tokens=memory.kv_tokens, unused=memory.unused)
        return out


def resolve_gpu(name: str) -> GpuSpec:
    """A registry slug or an nvidia-smi name."""
    return match_gpu(name) or gpu_spec(name)


def plan_deployment(model_dir: str | Path, *, gpu: str, recipe: str | None = None, gpus: int | None = None,
                    limits: dict[str, int | None] | None = None, concurrency: int | None = None) -> Plan:
    """The smallest layout on `gpus` GPUs (default: one node) that fits, or a DeployError saying why and what would.

    Args:
        model_dir: HF NVLM-D checkpoint directory (config.json alone is enough).
        gpu: GPU type, a registry slug or an nvidia-smi name.
        recipe: decoder recipe (plan/recipes.py), default bf16.
        gpus: GPUs available.
        limits: DeploymentLimits choices (None values take the defaults).
        concurrency: full-length requests the KV cache must hold at once (default 1).
    """
    model, spec, rec = load_model(model_dir), resolve_gpu(gpu), recipe_by_name(recipe or DEFAULT)
    check_recipe(spec, rec)
    gpus = GPUS_PER_NODE if gpus is None else gpus
    concurrency = 1 if concurrency is None else concurrency
    if gpus < 1 or concurrency < 1:
        raise DeployError(f"--gpus and --concurrency must be at least 1 (got {gpus}, {concurrency}).")
    lim = DeploymentLimits.for_model(model.config, **(limits or {}))
    if concurrency > lim.max_batch_size:
        raise DeployError(f"--concurrency {concurrency} exceeds --max-batch-size {lim.max_batch_size}: the engine "
                          f"batches at most max_batch_size requests; raise --max-batch-size to {concurrency}.")
    fit, last = search(model, spec, rec, lim, max_gpus=gpus, concurrency=concurrency)
    if fit is None:
        raise DeployError(no_fit_message(model, spec, rec, lim, gpus=gpus, concurrency=concurrency, last=last))
    return make_plan(model, spec, rec, lim, fit, gpus=gpus, concurrency=concurrency)


def check_recipe(spec: GpuSpec, rec: Recipe) -> None:
    if rec.name in spec.recipes:
        return
    others = [g.slug for g in GPUS.values() if rec.name in g.recipes]
    why = " and has no FP8 Tensor Cores" if rec.compute == "fp8" and not spec.has_fp8 else ""
    raise DeployError(
        f"recipe {rec.name} needs a GPU of SM {rec.min_compute_capability} or newer; {spec.name} is SM "
        f"{spec.compute_capability}{why}. On {spec.slug} use --recipe {' or '.join(spec.recipes)}; "
        f"for {rec.name} use one of: {', '.join(others)}.")


def candidates(model: PlannedModel, rec: Recipe, *, max_gpus: int) -> list[tuple[int, int]]:
    """(tp, pp) in the order tried: pp 1 with tp rising, then more stages."""
    from nvlm_deploy.trtllm.splits import valid_tp_sizes

    llm = model.config.llm
    tps = valid_tp_sizes(num_heads=llm.num_attention_heads, num_kv_heads=llm.num_key_value_heads,
                         intermediate_size=None if rec.group_size else llm.intermediate_size)
    tps = [tp for tp in tps if tp <= GPUS_PER_NODE]
    return [(tp, pp) for pp in range(1, min(max_gpus, llm.num_hidden_layers) + 1) for tp in tps if tp * pp <= max_gpus]


def search(model, spec, rec, limits, *, max_gpus: int, concurrency: int) -> tuple[Fit | None, Fit | None]:
    """(the first layout that fits, None) or (None, the closest miss: most GPUs, then the widest tp)."""
    misses = []
    for tp, pp in candidates(model, rec, max_gpus=max_gpus):
        fit = evaluate(model, spec, rec, limits, tp=tp, pp=pp, concurrency=concurrency)
        if fit.reason is None:
            return fit, None
        misses.append(fit)
    return None, max(misses, key=lambda f: (f.tp * f.pp, f.tp), default=None)


def evaluate(model: PlannedModel, spec: GpuSpec, rec: Recipe, limits: DeploymentLimits, *, tp: int, pp: int,
             concurrency: int) -> Fit:
    config = model.config
    loads = rank_loads(config, model.sizes, rec, limits, memory=spec.memory_bytes, tp=tp, pp=pp)
    weights_fit = all(r.decoder_weights + r.vision_engine + r.cuda_context <= r.memory for r in loads)
    too_full = [r for r in loads if r.static >= r.memory]
    if too_full:
        r = too_full[0]
        return Fit(tp, pp, tuple(loads), None, 0, f"rank {r.ranks} needs {r.static / GB:.1f} GB before any KV cache "
                   f"({breakdown(r)}) but {spec.slug} has {spec.memory_gb:.0f} GB", weights_fit)
    rank0 = loads[0]
    try:
        kv = plan_kv_cache(gpu_memory_bytes=spec.memory_bytes, decoder_rank0_bytes=rank0.decoder_weights + rank0.activations,
                           vision_plan_bytes=rank0.vision_engine, prompt_table_bytes=prompt_table_bytes(config, limits))
    except DeployError as exc:
        return Fit(tp, pp, tuple(loads), None, 0, str(exc), weights_fit)
    ranks = tuple(dataclasses.replace(r, kv_cache=int(kv.fraction * r.free_after_decoder)) for r in loads)
    capacity = min(r.kv_tokens for r in ranks)
    need = concurrency * limits.max_seq_len
    reason = None if capacity >= need else (
        f"the KV cache holds {capacity:,} tokens (kv_cache_free_gpu_mem_fraction {kv.fraction}), fewer than "
        f"{concurrency} request(s) x max_seq_len {limits.max_seq_len} = {need:,}")
    return Fit(tp, pp, ranks, kv, capacity, reason, weights_fit)


def breakdown(r: RankMemory) -> str:
    parts = [("decoder weights", r.decoder_weights), ("vision engine", r.vision_engine),
             ("vision activations + prompt tables", r.vision_reserve), ("activations", r.activations),
             ("CUDA context", r.cuda_context)]
    return ", ".join(f"{name} {b / GB:.1f}" for name, b in parts if b)


def make_plan(model: PlannedModel, spec: GpuSpec, rec: Recipe, limits: DeploymentLimits, fit: Fit, *, gpus: int,
              concurrency: int) -> Plan:
    from nvlm_deploy.plan.memory import kv_bytes_per_token

    full = fit.kv_capacity_tokens // limits.max_seq_len
    max_batch = min(limits.max_batch_size, full)
    roof = estimate(model.config, model.sizes, rec, limits, spec, tp=fit.tp, pp=fit.pp, max_batch=max_batch)
    return Plan(model=model.path, gpu=spec, recipe=rec, gpus_available=gpus, tp=fit.tp, pp=fit.pp, limits=limits,
                concurrency=concurrency, sizes=model.sizes, ranks=fit.ranks, kv=fit.kv,
                kv_bytes_per_token=kv_bytes_per_token(model.config, rec), kv_capacity_tokens=fit.kv_capacity_tokens,
                full_length_requests=full, max_batch=max_batch, roofline=roof, assumptions=model.assumptions)


def no_fit_message(model, spec, rec, limits, *, gpus: int, concurrency: int, last: Fit | None) -> str:
    """Why no layout on `gpus` GPUs fits, and what would: more GPUs, another recipe, lower limits."""
    where = f"{gpus} x {spec.name} ({spec.slug})"
    lines = [f"NVLM-D ({model.path}) does not fit on {where} with recipe {rec.name}."]
    if last is None:
        lines.append(f"No tensor-parallel size up to {gpus} splits the decoder's heads.")
    else:
        lines.append(f"Closest layout, tp {last.tp} pp {last.pp}: {last.reason}.")
    lines.append("What would fit:")
    more, _ = search(model, spec, rec, limits, max_gpus=MAX_SEARCH_GPUS, concurrency=concurrency)
    if more and more.tp * more.pp > gpus:
        lines.append(f"  - more GPUs: {more.tp * more.pp} x {spec.slug} (tp {more.tp}, pp {more.pp}) with {rec.name}")
    for name in spec.recipes:
        other = recipe_by_name(name)
        if other.name != rec.name:
            fit, _ = search(model, spec, other, limits, max_gpus=gpus, concurrency=concurrency)
            if fit:
                lines.append(f"  - another recipe: --recipe {name} on {fit.tp * fit.pp} GPU(s) (tp {fit.tp}, pp {fit.pp})")
    lines.append("  - " + limits_advice(last, limits, concurrency))
    return "\n".join(lines)


def limits_advice(last: Fit | None, limits: DeploymentLimits, concurrency: int) -> str:
    if last is None or not last.weights_fit:
        return "lower limits cannot help: the weights alone (decoder share + vision engine on GPU 0) exceed a GPU"
    if last.kv is not None:
        longest = last.kv_capacity_tokens // concurrency
        return (f"lower limits: the KV cache of tp {last.tp} pp {last.pp} holds {last.kv_capacity_tokens:,} tokens, "
                f"so --max-input-len + --max-output-len <= {longest:,} with --concurrency {concurrency}")
    return ("lower limits: smaller --max-batch-size / --max-images (prompt tables and vision activations on GPU 0) "
            f"and --max-input-len (activations of {limits.max_num_tokens} tokens per step)")
