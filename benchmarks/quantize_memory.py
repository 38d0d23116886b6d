"""Peak RSS of `nvlm-deploy quantize` against modelopt's plain whole-model flow, same checkpoint, same run.

A 2-layer NVLM-D checkpoint (random weights, the tiny vision tower) whose decoder has NVLM-D-72B's
widths divided by `scale` (quick: 1/16 -> hidden 512, intermediate 1848; full: scale 1 -> hidden
8192, intermediate 29568, vocab 152064) is quantized to fp8, each case in a fresh process so that
ru_maxrss is its own:

- `ours`: `quantize_checkpoint` (reference model in fp32, modelopt calibration, the project's writer);
- `modelopt`: the flow modelopt documents: the whole model loaded, `mtq.quantize`, `export_hf_checkpoint`.

Both calibrate on the same 4 demo requests. The figure is the ratio ours / modelopt and the model's
fp32 size beside them. `quantize` does not calibrate layer by layer yet (it loads the whole
reference model, as modelopt's flow does), so the goal "below modelopt's whole-model peak" is
expected to be not met; the benchmark says by how much.

    .venv/bin/python benchmarks/quantize_memory.py            # quick (about 1 GB peak)
    .venv/bin/python benchmarks/quantize_memory.py --full     # NVLM-D-72B widths: ~2 x 10 GB of fp32
                                                               # weights, needs a host with >= 32 GB free

Writes benchmarks/results/quantize_memory.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "quantize_memory.json"
GB = 1e9


def write_model(root: Path, *, scale: int) -> dict:
    """The synthetic checkpoint; returns its decoder widths."""
    from nvlm_deploy.model.tiny import PRESETS, preset_config, write_tiny_checkpoint

    big = PRESETS["72b"]["llm"]
    config = preset_config("tiny")
    llm = dataclasses.replace(config.llm, hidden_size=big["hidden_size"] // scale,
                              intermediate_size=big["intermediate_size"] // scale, num_hidden_layers=2,
                              num_attention_heads=max(big["num_attention_heads"] // scale, 8), num_key_value_heads=2,
                              vocab_size=big["vocab_size"] if scale == 1 else 1030)
    config = dataclasses.replace(config, llm=llm)
    if not (root / "config.json").is_file():
        from nvlm_deploy.model.tiny import random_state_dict

        state = random_state_dict(config, seed=0)
        write_tiny_checkpoint(root, config=config, state=state, max_shard_bytes=2 * 1024**3)
        del state
    return {"hidden_size": llm.hidden_size, "intermediate_size": llm.intermediate_size, "vocab_size": llm.vocab_size,
            "num_hidden_layers": 2}


def child(case: str, model: Path, out: Path) -> None:
    """One case in this process; prints {"peak_rss_bytes", "seconds"} as JSON."""
    start = time.perf_counter()
    if case == "ours":
        from nvlm_deploy.quant.quantize import QuantizeOptions, quantize_checkpoint

        quantize_checkpoint(model, out, QuantizeOptions(recipe="fp8", calib_size=4, dtype="bf16"), force=True)
    else:
        import torch
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import export_hf_checkpoint

        from nvlm_deploy.model.nvlm import NvlmModel
        from nvlm_deploy.preprocess.request import Preprocessor
        from nvlm_deploy.quant.calibration import calibration_requests, forward_loop

        nvlm = NvlmModel.from_pretrained(model, dtype="fp32")
        requests = calibration_requests(nvlm, Preprocessor.from_model_dir(model), "demo", size=4)
        with torch.no_grad():
            mtq.quantize(nvlm.language_model, mtq.FP8_DEFAULT_CFG, forward_loop(nvlm, requests))
        export_hf_checkpoint(nvlm.language_model, dtype=torch.bfloat16, export_dir=out)
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "seconds": time.perf_counter() - start}))


def measure(case: str, model: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", case, "--model", str(model), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(workdir: Path, quick: bool = False, *, scale: int | None = None) -> dict:
    scale = scale or (16 if quick else 4)
    workdir = Path(workdir)
    model = workdir / f"model-1of{scale}"
    widths = write_model(model, scale=scale)
    ours = measure("ours", model, workdir / "ours")
    theirs = measure("modelopt", model, workdir / "modelopt")
    h, i, v = widths["hidden_size"], widths["intermediate_size"], widths["vocab_size"]
    decoder_params = 2 * (h * h * 2 + 2 * h * (h // 4) + 3 * h * i) + 2 * v * h  # rough: layers + embed + lm_head
    ratio = ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]
    rows = [{"case": "nvlm-deploy quantize (fp8)", "peak_rss_gb": round(ours["peak_rss_bytes"] / GB, 3),
             "seconds": round(ours["seconds"], 1), "vs_modelopt": round(ratio, 3)},
            {"case": "modelopt whole-model (quantize + export_hf_checkpoint)",
             "peak_rss_gb": round(theirs["peak_rss_bytes"] / GB, 3), "seconds": round(theirs["seconds"], 1),
             "vs_modelopt": 1.0},
            {"case": "decoder fp32 weights (estimate)", "peak_rss_gb": round(4 * decoder_params / GB, 3),
             "seconds": None, "vs_modelopt": None}]
    return {"name": "quantize_memory", "title": "Peak RSS of quantize vs modelopt's whole-model flow",
            "goal": "quantize peak RSS below modelopt's whole-model flow on the same checkpoint",
            "met": ratio < 1.0, "rows": rows, "samples": {},
            "notes": (f"2-layer NVLM-D, decoder widths 72B/{scale} ({widths}); fp8, 4 calibration requests; each case "
                      "in a fresh process (ru_maxrss); timings are noisy on the shared machine. quantize loads the "
                      "whole reference model (no layer-by-layer calibration yet), so it is not expected to beat "
                      "modelopt's flow. Full 72B widths: --full (needs >= 32 GB free).")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/nvlm-quant-bench")
    parser.add_argument("--full", action="store_true", help="NVLM-D-72B widths (scale 1)")
    parser.add_argument("--child")
    parser.add_argument("--model")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.model), Path(args.out))
        return
    result = run(Path(args.workdir), scale=1 if args.full else 16)
    print("| case | peak RSS (GB) | seconds | vs modelopt |\n|---|---:|---:|---:|")
    for r in result["rows"]:
        print(f"| {r['case']} | {r['peak_rss_gb']} | {r['seconds']} | {r['vs_modelopt']} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
