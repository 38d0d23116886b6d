"""Benchmark: ONNX export of a vision encoder with InternViT-6B's real widths (not a CI test).

A 2-layer InternViT (hidden 3200, 25 real + 7 dummy heads, 448-px tiles) with NVLM-D-72B's mlp1
(LayerNorm 12800 -> Linear 29568 -> GELU -> Linear 8192) goes through `export_vision_onnx`: export,
constant folding, TensorRT op check, external data when over 2 GB, and the self-check against torch.
Each phase runs in a fresh process so its peak memory (max RSS) is its own. Baseline, same run:
loading the same encoder into torch and one forward pass, next to the export and an ONNX Runtime pass.

    .venv/bin/python benchmarks/vision_export_6b.py [--dtypes fp32,bf16] [--work /tmp/nvlm-bench-vision]

Writes benchmarks/results/vision_export_6b.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "vision_export_6b.json"
VISION_LAYERS = 2
CHECK_TILES = (1, 3)  # the CI tests cover (1, 3, 7) on the tiny model; 7 tiles here cost minutes of CPU


def bench_config():
    """NVLM-D-72B's vision widths and mlp1, 2 vision layers, a decoder with no layers (never loaded)."""
    from nvlm_deploy.model.tiny import preset_config

    c = preset_config("72b")
    return dataclasses.replace(
        c, vision=dataclasses.replace(c.vision, num_hidden_layers=VISION_LAYERS),
        llm=dataclasses.replace(c.llm, num_hidden_layers=0, vocab_size=1030))


def write_checkpoint(out: Path) -> dict:
    """Random weights with NVLM-like scales (std 0.02, unit norms, layer scale 0.1), dummy heads zero."""
    import torch

    from nvlm_deploy.model.nvlm import NvlmModel
    from nvlm_deploy.model.tiny import stored_dtype, write_tiny_checkpoint, zero_dummy_heads

    config = bench_config()
    with torch.device("meta"):
        shapes = {n: t.shape for n, t in NvlmModel(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        if name.endswith((".ls1", ".ls2")):
            t = torch.full(shape, 0.1)
        elif ("norm" in name or name.startswith("mlp1.0")) and name.endswith(".weight"):
            t = torch.ones(shape)
        else:
            t = torch.randn(shape, generator=gen) * 0.02
        state[name] = t.to(stored_dtype(name))
    zero_dummy_heads(state, config)
    write_tiny_checkpoint(out, config=config, state=state, max_shard_bytes=1 << 30, force=True)
    return {"params_m": round(sum(t.numel() for t in state.values()) / 1e6, 1)}


def phase_load(ckpt: Path, dtype: str) -> dict:
    """Baseline: load the encoder into torch and run it once on one tile."""
    import torch

    from nvlm_deploy.convert.vision_onnx import load_vision_encoder

    start = time.perf_counter()
    encoder = load_vision_encoder(ckpt, dtype=dtype)
    loaded = time.perf_counter() - start
    x = torch.randn(1, 3, 448, 448).to(next(encoder.parameters()).dtype)
    start = time.perf_counter()
    with torch.inference_mode():
        encoder(x)
    return {"load_s": round(loaded, 1), "torch_forward_t1_s": round(time.perf_counter() - start, 2)}


def phase_export(ckpt: Path, out: Path, dtype: str) -> dict:
    import numpy as np

    from nvlm_deploy.convert.vision_onnx import export_vision_onnx
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    start = time.perf_counter()
    stage = export_vision_onnx(ckpt, out, dtype=dtype, force=True, check_tiles=CHECK_TILES)
    total = time.perf_counter() - start
    manifest = json.loads((stage / "manifest.json").read_text())
    files = {p.name: p.stat().st_size for p in stage.iterdir()}
    encoder = OnnxVisionEncoder(stage)
    x = np.random.default_rng(0).standard_normal((1, 3, 448, 448), dtype=np.float32)
    start = time.perf_counter()
    encoder.encode(x)
    return {"export_s": manifest["export_seconds"], "check_s": round(manifest["check"]["seconds"], 1),
            "total_s": round(total, 1), "files": files, "external_data": manifest["files"]["external_data"],
            "weight_bytes": manifest["weight_bytes"], "nodes": manifest["nodes"],
            "check": manifest["check"], "ort_forward_t1_s": round(time.perf_counter() - start, 2)}


def run_phase(*args: str) -> dict:
    """Run a phase in a fresh interpreter; returns its result plus its peak RSS."""
    proc = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"phase {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--work", default="/tmp/nvlm-bench-vision", help="checkpoint and outputs (several GB)")
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        name, *rest = args.phase
        fn = {"write": lambda out: write_checkpoint(Path(out)), "load": lambda c, d: phase_load(Path(c), d),
              "export": lambda c, o, d: phase_export(Path(c), Path(o), d)}[name]
        result = fn(*rest)
        from nvlm_deploy.bench.machine import peak_rss_bytes

        result["peak_rss_gib"] = round(peak_rss_bytes() / 2**30, 2)
        print(json.dumps(result))
        return
    work = Path(args.work)
    ckpt = work / "ckpt"
    results = {"config": {"vision_hidden": 3200, "heads": "25 + 7 dummy", "vision_layers": VISION_LAYERS,
                          "mlp1": "LayerNorm(12800) -> 12800x29568 -> GELU -> 29568x8192", "tile": 448,
                          "check_tiles": list(CHECK_TILES)},
               "machine": {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version()},
               "checkpoint": run_phase("write", str(ckpt)), "runs": {}}
    for dtype in args.dtypes.split(","):
        results["runs"][dtype] = {"baseline_torch": run_phase("load", str(ckpt), dtype),
                                  "export": run_phase("export", str(ckpt), str(work / f"target-{dtype}"), dtype)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict) -> str:
    rows = ["| dtype | weights | external data | export s | check s (T=" + ",".join(map(str, CHECK_TILES)) + ") | "
            "peak RSS export | baseline: torch load s / peak RSS | torch T=1 s | ORT T=1 s | max rel diff |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for dtype, r in results["runs"].items():
        e, b = r["export"], r["baseline_torch"]
        ext = f"{e['external_data']} ({e['files'].get(e['external_data'], 0) / 2**30:.2f} GiB)" if e["external_data"] else "no"
        rel = max(d["max_rel"] for d in e["check"]["diffs"])
        rows.append(f"| {dtype} | {e['weight_bytes'] / 2**30:.2f} GiB | {ext} | {e['export_s']} | {e['check_s']} | "
                    f"{e['peak_rss_gib']} GiB | {b['load_s']} / {b['peak_rss_gib']} GiB | {b['torch_forward_t1_s']} | "
                    f"{e['ort_forward_t1_s']} | {rel:.2g} ({'pass' if e['check']['passed'] else 'FAIL'}) |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
