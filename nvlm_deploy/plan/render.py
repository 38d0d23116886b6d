"""A plan as a readable table (GB = 10^9 bytes, as the datasheets count)."""

from __future__ import annotations

from nvlm_deploy.plan.gpus import GB
from nvlm_deploy.plan.memory import RankMemory
from nvlm_deploy.plan.planner import Plan

KIB = 1024


def _gb(n: int) -> str:
    return f"{n / GB:.1f}" if n else "-"


def memory_table(ranks: tuple[RankMemory, ...]) -> list[str]:
    rows = [("GPU memory", lambda r: r.memory), ("decoder weights", lambda r: r.decoder_weights),
            ("vision engine (ViT + mlp1)", lambda r: r.vision_engine),
            ("vision activations + prompt tables", lambda r: r.vision_reserve),
            ("decoder activations (estimate)", lambda r: r.activations),
            ("CUDA context (estimate)", lambda r: r.cuda_context),
            ("KV cache", lambda r: r.kv_cache), ("left unused", lambda r: r.unused)]
    heads = [f"rank {r.ranks}" if "-" not in r.ranks else f"ranks {r.ranks}" for r in ranks]
    width = max(10, *(len(h) for h in heads)) + 2
    lines = ["memory per GPU (GB)".ljust(36) + "".join(h.rjust(width) for h in heads)]
    for label, value in rows:
        lines.append(f"  {label}".ljust(36) + "".join(_gb(value(r)).rjust(width) for r in ranks))
    lines.append("  KV tokens".ljust(36) + "".join(f"{r.kv_tokens:,}".rjust(width) for r in ranks))
    return lines


def _params(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 10**8 else f"{n:,}"


def _ms(value: float | None) -> str:
    return "unknown (no confirmed TFLOP/s for this GPU)" if value is None else f"{value:,.1f} ms"


def _row(label: str, text: str) -> str:
    return f"{label:<33}{text}"


def header(plan: Plan) -> list[str]:
    g, sizes = plan.gpu, plan.sizes
    out = [f"plan: NVLM-D from {plan.model} on {g.name} ({g.slug}, SM {g.compute_capability}, "
           f"{g.memory_gb:.0f} GB, {g.bandwidth_bytes_per_s / 1e12:.2f} TB/s), recipe {plan.recipe.name}",
           f"  sizes from {sizes.source}: vision {_params(sizes.vision_params)} params "
           f"({_params(sizes.vision_real_params)} without dummy heads), mlp1 {_params(sizes.projector_params)}, "
           f"decoder {_params(sizes.llm_params)}"]
    out += [f"  assumption: {a}" for a in plan.assumptions]
    return out + ([f"  GPU figures: {g.note}"] if g.note else [])


def layout(plan: Plan) -> list[str]:
    lim, spare = plan.limits, plan.gpus_available - plan.gpus_used
    gpus = f"tp {plan.tp}, pp {plan.pp}: {plan.gpus_used} GPU(s) on {plan.nodes} node(s)"
    if spare:
        gpus += f"; {spare} of {plan.gpus_available} GPUs left ({plan.gpus_available // plan.gpus_used} replicas fit)"
    return [_row("parallelism", gpus),
            _row("limits", f"{lim.max_images} image(s) x {lim.max_tiles_per_image} tiles x {lim.tokens_per_tile} "
                           f"tokens; input {lim.max_input_len}, output {lim.max_output_len} (max_seq_len "
                           f"{lim.max_seq_len}), batch {lim.max_batch_size}, max_num_tokens {lim.max_num_tokens}")]


def kv_summary(plan: Plan) -> list[str]:
    lim, kv = plan.limits, plan.kv
    bound = (f"--max-batch-size; the KV cache holds {plan.full_length_requests}" if plan.max_batch == lim.max_batch_size
             else "bound by the KV cache")
    return [_row("kv_cache_free_gpu_mem_fraction", f"{kv.fraction} (computed: {kv.free_after_decoder_bytes / GB:.1f} GB "
                 f"free on GPU 0 after the decoder loads, {kv.vision_reserve_bytes / GB:.1f} GB of it kept for the "
                 "vision engine and prompt tables)"),
            _row("KV cache", f"{plan.kv_capacity_tokens:,} tokens ({plan.kv_bytes_per_token / KIB:g} KiB/token, "
                             f"{plan.recipe.kv_cache_bytes * 8}-bit); {plan.full_length_requests} request(s) at "
                             f"full length {lim.max_seq_len}"),
            _row("max batch at these lengths", f"{plan.max_batch} ({bound})"),
            _row("max_prompt_embedding_table_size", f"{lim.max_prompt_embedding_table_size} ({lim.max_batch_size} "
                                                    f"requests x {lim.prompt_table_rows_per_request} rows)")]


def roofline(plan: Plan) -> list[str]:
    roof = plan.roofline
    rate = f" at {roof.prefill_tflops_per_gpu:g} TFLOP/s each" if roof.prefill_tflops_per_gpu else ""
    return ["roofline (datasheet peaks: upper bounds; no communication counted)",
            _row("  decode, batch 1", f"{roof.decode_tokens_per_s_batch1:,.1f} tokens/s "
                 f"({roof.decode_step_bytes_batch1 / GB:.1f} GB read per step at {roof.decode_context_tokens} "
                 "tokens of context)"),
            _row(f"  decode, batch {roof.decode_batch}", f"{roof.decode_tokens_per_s_max_batch:,.1f} tokens/s"),
            _row(f"  vision encoder, {roof.vision_tiles} tiles",
                 f"{_ms(roof.vision_ms)} ({roof.vision_flops / 1e12:,.1f} TFLOP at the 16-bit rate on GPU 0)"),
            _row(f"  prefill, {roof.prefill_tokens} image tokens",
                 f"{_ms(roof.prefill_ms)} ({roof.prefill_flops / 1e12:,.1f} TFLOP over {plan.tp} GPU(s){rate})")]


def render(plan: Plan) -> str:
    out = header(plan) + [""] + layout(plan) + [""] + memory_table(plan.ranks)
    idle = [r for r in plan.ranks[1:] if r.unused > GB]
    if idle:
        out.append(f"  (unused on rank(s) {', '.join(r.ranks for r in idle)}: kv_cache_free_gpu_mem_fraction is one "
                   "value for every rank, sized for GPU 0)")
    return "\n".join(out + [""] + kv_summary(plan) + [""] + roofline(plan))
