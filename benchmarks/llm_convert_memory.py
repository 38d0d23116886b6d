"""Peak memory of `convert llm` on a 2-layer decoder with NVLM-D-72B's widths, against a plain copy.

Writes a synthetic HF checkpoint (hidden 8192, intermediate 29568, 64/8 heads, vocab 152064; q/k/v
in fp32 and the rest in bf16 as NVLM-D-72B stores them; about 8.8 GB, largest tensor 2.5 GB), then,
each in a fresh process so that peak RSS (VmHWM, `bench.machine.peak_rss_bytes`) is its own: a plain copy of the same files
(the wall-time baseline, before and after), the conversion at tp 1, the conversion at tp 4. Reports peak RSS against
the bound 1.5 x largest tensor + 0.5 GB and wall time against the copy.

    .venv/bin/python benchmarks/llm_convert_memory.py [--quick] [--workdir /tmp/nvlm-llm-bench] [--keep]

`run(workdir, quick)` is the suite's interface (RULES.md); `quick` uses a quarter of the widths.

Writes benchmarks/results/llm_convert_memory.json and prints a markdown table. Not run by CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

GB = 1e9
NAME = "llm_convert_memory"
SHARD_BYTES = 4 * 1024**3
HASHED_COPY = "copy+blake3"  # a plain copy, then the BLAKE3 of each copied file (every core)


def write_checkpoint(root: Path, **llm_overrides) -> dict:
    """The synthetic checkpoint: config.json + sharded safetensors (decoder tensors only), streamed.

    `llm_overrides` change the decoder's widths (benchmarks/llm_convert_speed.py's quick mode)."""
    import torch

    from nvlm_deploy.convert.llm_checkpoint import SafetensorsWriter
    from nvlm_deploy.model.tiny import preset_config, stored_dtype

    config = preset_config("72b")
    config = dataclasses.replace(config, llm=dataclasses.replace(config.llm, num_hidden_layers=2, **llm_overrides))
    llm = config.llm
    hd, kv = llm.head_dim, llm.num_key_value_heads
    shapes = {"language_model.model.embed_tokens.weight": (llm.vocab_size, llm.hidden_size),
              "language_model.model.norm.weight": (llm.hidden_size,),
              "language_model.lm_head.weight": (llm.vocab_size, llm.hidden_size)}
    for i in range(llm.num_hidden_layers):
        p = f"language_model.model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (llm.hidden_size, llm.hidden_size),
            p + "self_attn.q_proj.bias": (llm.hidden_size,),
            p + "self_attn.k_proj.weight": (kv * hd, llm.hidden_size), p + "self_attn.k_proj.bias": (kv * hd,),
            p + "self_attn.v_proj.weight": (kv * hd, llm.hidden_size), p + "self_attn.v_proj.bias": (kv * hd,),
            p + "self_attn.o_proj.weight": (llm.hidden_size, llm.hidden_size),
            p + "mlp.gate_proj.weight": (llm.intermediate_size, llm.hidden_size),
            p + "mlp.up_proj.weight": (llm.intermediate_size, llm.hidden_size),
            p + "mlp.down_proj.weight": (llm.hidden_size, llm.intermediate_size),
            p + "input_layernorm.weight": (llm.hidden_size,),
            p + "post_attention_layernorm.weight": (llm.hidden_size,)})
    specs = {n: (stored_dtype(n), s) for n, s in shapes.items()}
    nbytes = {n: torch.Size(s).numel() * torch.empty(0, dtype=d).element_size() for n, (d, s) in specs.items()}
    shards, size = [[]], 0
    for name in shapes:
        if shards[-1] and size + nbytes[name] > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes[name]
    root.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    gen = torch.Generator().manual_seed(0)
    block = 0.02 * torch.randn(1 << 24, generator=gen)  # 16M values, tiled: realistic bytes, little memory
    for k, names in enumerate(shards, start=1):
        shard = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        writer = SafetensorsWriter(root / shard, {n: specs[n] for n in names})
        for name in names:
            raw = block.to(specs[name][0]).view(torch.uint8).numpy()
            writer.file.seek(writer.data_start + writer.header[name]["data_offsets"][0])
            for done in range(0, nbytes[name], len(raw)):
                writer.file.write(raw[:min(len(raw), nbytes[name] - done)])
            writer.written.add(name)
            weight_map[name] = shard
        writer.close()
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    return {"total_bytes": sum(nbytes.values()), "largest_tensor_bytes": max(nbytes.values()),
            "largest_tensor": max(nbytes, key=nbytes.get), "shards": len(shards)}


def child(args: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; prints its wall time and peak RSS as JSON."""
    import torch  # noqa: F401  (imported before the baseline RSS, as the conversion imports it)

    import nvlm_deploy.convert.llm_checkpoint as llm_checkpoint
    # What the conversion imports on first use, as `nvlm-deploy` has by the time it converts: start-up
    # is neither conversion nor copy, so neither case's clock counts it.
    import nvlm_deploy.contracts.target  # noqa: F401
    import nvlm_deploy.model.checkpoint  # noqa: F401
    import nvlm_deploy.progress  # noqa: F401
    import nvlm_deploy.quant.hf_format  # noqa: F401  (CheckpointIndex.open's; the CLI's limits report opens it first)
    import safetensors  # noqa: F401

    from nvlm_deploy.bench.machine import peak_rss_bytes

    base_bytes = peak_rss_bytes()
    cpu_start = _cpu_s()
    start = time.perf_counter()
    if args.child == "copy" and args.copy_bytes:
        _copy_bytes(sorted(Path(args.model).iterdir()), Path(args.out), args.copy_bytes)
    elif args.child in ("copy", HASHED_COPY):
        from nvlm_deploy.artifacts import file_digest

        out = Path(args.out)
        out.mkdir(parents=True)
        for f in sorted(Path(args.model).iterdir()):
            shutil.copyfile(f, out / f.name)
            if args.child == HASHED_COPY:  # what a copy that records digests, as the conversion does, costs
                file_digest(out / f.name)
    else:
        llm_checkpoint.convert_llm_checkpoint(args.model, args.out, tp=args.tp, pp=1, dtype="bf16")
    wall = time.perf_counter() - start
    print(json.dumps({"wall_s": wall, "cpu_s": _cpu_s() - cpu_start, "peak_rss_bytes": peak_rss_bytes(),
                      "rss_after_imports_bytes": base_bytes}))


def _copy_bytes(files: list[Path], out: Path, nbytes: int) -> None:
    """Copy `files` round after round into `out` (kernel sendfile, like shutil.copyfile) until `nbytes`
    are written: a plain copy of as many bytes as a conversion writes."""
    import os

    out.mkdir(parents=True)
    left, round_ = nbytes, 0
    while left > 0:
        for f in files:
            with open(f, "rb") as src, open(out / f"{round_}-{f.name}", "wb") as dst:
                offset, size = 0, min(f.stat().st_size, left)
                while offset < size:
                    offset += os.sendfile(dst.fileno(), src.fileno(), offset, size - offset)
            left -= size
            if left <= 0:
                return
        round_ += 1


def _cpu_s() -> float:
    """User + system CPU seconds of this process, every thread (steadier than wall time on a shared machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(case: str, model: Path, out: Path, *, tp: int = 1, copy_bytes: int = 0) -> dict:
    """One case in a fresh process; `copy_bytes`: a copy writes this many bytes (the source's files
    over again) instead of the source once."""
    cmd = [sys.executable, __file__, "--child", case, "--model", str(model), "--out", str(out), "--tp", str(tp),
           "--copy-bytes", str(copy_bytes)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    out_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    shutil.rmtree(out)  # keep disk use at source + one output
    return {"case": case if case != "convert" else f"convert tp{tp}", **row, "output_bytes": out_bytes}


QUICK_WIDTHS = dict(hidden_size=2048, intermediate_size=7392, num_attention_heads=16, num_key_value_heads=2)


def run(workdir: Path, quick: bool = False) -> dict:
    """Peak RSS of convert tp1 / tp4 against 1.5 x the largest tensor + 0.5 GB, beside a plain copy."""
    work = Path(workdir)
    shutil.rmtree(work / "model", ignore_errors=True)
    start = time.perf_counter()
    source = write_checkpoint(work / "model", **(QUICK_WIDTHS if quick else {}))
    source["write_s"] = time.perf_counter() - start
    # The copy runs first and last: the first also absorbs the writeback of the freshly written
    # checkpoint; the faster of the two is the baseline.
    rows = [measure("copy", work / "model", work / "copy"),
            measure("convert", work / "model", work / "tp1", tp=1),
            measure("convert", work / "model", work / "tp4", tp=4),
            measure("copy", work / "model", work / "copy")]
    bound = 1.5 * source["largest_tensor_bytes"] + 0.5 * GB
    copy_s = min(r["wall_s"] for r in rows if r["case"] == "copy")
    table = [{"case": r["case"], "wall s": round(r["wall_s"], 2), "x copy": round(r["wall_s"] / copy_s, 2),
              "peak RSS GB": round(r["peak_rss_bytes"] / GB, 2), "bound GB": round(bound / GB, 2),
              "within bound": r["peak_rss_bytes"] <= bound, "output GB": round(r["output_bytes"] / GB, 2)}
             for r in rows]
    return {"name": NAME,
            "title": f"Decoder conversion peak memory ({'quarter' if quick else 'NVLM-D-72B'} widths, 2 layers, "
                     f"{source['total_bytes'] / GB:.2f} GB)",
            "goal": "peak RSS <= 1.5 x the largest tensor + 0.5 GB at tp 1 and tp 4",
            "met": all(row["within bound"] for row in table),
            "rows": table, "samples": {"peak_rss_gb": [row["peak RSS GB"] for row in table]},
            "notes": f"largest tensor {source['largest_tensor']} {source['largest_tensor_bytes'] / GB:.2f} GB; "
                     f"each case a fresh process (peak RSS = VmHWM); cpus {__import__('os').cpu_count()}.",
            "source": source}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/nvlm-llm-bench")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint")
    parser.add_argument("--quick", action="store_true", help="a quarter of the widths (~1.5 GB source)")
    parser.add_argument("--child", choices=["copy", HASHED_COPY, "convert"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--copy-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    try:
        result = run(work, quick=args.quick)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from benchmarks._serving import report_result

    report_result(result, NAME)


if __name__ == "__main__":
    main()
