"""Peak RSS of `nvlm-deploy quantize` against modelopt's plain whole-model flow, same checkpoint, same run.

A 2-layer NVLM-D checkpoint (random weights, the tiny vision tower) whose decoder has NVLM-D-72B's
vocabulary (152064) and its widths divided by `scale` (quick: 1/16 -> hidden 512, intermediate 1848;
suite: 1/4 -> hidden 2048, intermediate 7392; --full: scale 1) is quantized to fp8, each case in a
fresh process (peak RSS = its VmHWM):

- `layerwise`: `nvlm-deploy quantize` as it runs by default (quant.layerwise: one decoder layer in
  memory at a time, embedding rows read from the memory-mapped checkpoint, one rank written at a time);
- `whole-model`: `quantize --calibration whole-model` (the reference model in fp32, modelopt over it);
- `modelopt`: the flow modelopt documents: the whole model loaded, `mtq.quantize`, `export_hf_checkpoint`.

All calibrate on the same 4 demo requests. The figure is the ratio to modelopt's peak, with the
decoder's fp32 size beside it.

    .venv/bin/python benchmarks/quantize_memory.py            # quick (1/16 widths)
    .venv/bin/python benchmarks/quantize_memory.py --scale 4  # what the suite runs
    .venv/bin/python benchmarks/quantize_memory.py --full     # NVLM-D-72B widths: ~17 GB of fp32 decoder
                                                               # weights, needs a host with >= 40 GB free

Writes benchmarks/results/quantize_memory.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

NAME = "quantize_memory"
GB = 1e9
CALIBRATIONS = ("layerwise", "whole-model")  # quant.quantize.CALIBRATIONS, the cases run through `quantize`


def write_model(root: Path, *, scale: int) -> dict:
    """The synthetic checkpoint; returns its decoder widths."""
    from nvlm_deploy.model.tiny import PRESETS, preset_config, write_tiny_checkpoint

    big = PRESETS["72b"]["llm"]
    config = preset_config("tiny")
    llm = dataclasses.replace(config.llm, hidden_size=big["hidden_size"] // scale,
                              intermediate_size=big["intermediate_size"] // scale, num_hidden_layers=2,
                              num_attention_heads=max(big["num_attention_heads"] // scale, 8), num_key_value_heads=2,
                              vocab_size=big["vocab_size"])
    config = dataclasses.replace(config, llm=llm)
    if not (root / "config.json").is_file():
        from nvlm_deploy.model.tiny import random_state_dict

        state = random_state_dict(config, seed=0)
        write_tiny_checkpoint(root, config=config, state=state, max_shard_bytes=2 * 1024**3)
        del state
    return {"hidden_size": llm.hidden_size, "intermediate_size": llm.intermediate_size, "vocab_size": llm.vocab_size,
            "num_attention_heads": llm.num_attention_heads, "num_hidden_layers": 2}


def child(case: str, model: Path, out: Path) -> None:
    """One case in this process; prints {"peak_rss_bytes", "seconds"} as JSON."""
    start = time.perf_counter()
    if case in CALIBRATIONS:
        from nvlm_deploy.quant.quantize import QuantizeOptions, quantize_checkpoint

        quantize_checkpoint(model, out, QuantizeOptions(recipe="fp8", calib_size=4, dtype="bf16", calibration=case),
                            force=True)
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
    from nvlm_deploy.bench.machine import peak_rss_bytes

    print(json.dumps({"peak_rss_bytes": peak_rss_bytes(),
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
    peaks = {case: measure(case, model, workdir / case) for case in (*CALIBRATIONS, "modelopt")}
    h, i, v = widths["hidden_size"], widths["intermediate_size"], widths["vocab_size"]
    kv = 2 * h // widths["num_attention_heads"]  # 2 KV heads
    decoder_params = 2 * (2 * h * h + 2 * h * kv + 3 * h * i) + 2 * v * h  # 2 layers (q, o, k, v, mlp) + embedding + lm_head
    base = peaks["modelopt"]["peak_rss_bytes"]
    labels = {"layerwise": "nvlm-deploy quantize (fp8, layerwise: the default)",
              "whole-model": "nvlm-deploy quantize (fp8, --calibration whole-model)",
              "modelopt": "modelopt whole-model (quantize + export_hf_checkpoint)"}
    rows = [{"case": labels[case], "peak_rss_gb": round(p["peak_rss_bytes"] / GB, 3), "seconds": round(p["seconds"], 1),
             "vs_modelopt": round(p["peak_rss_bytes"] / base, 3)} for case, p in peaks.items()]
    rows.append({"case": "decoder fp32 weights (estimate)", "peak_rss_gb": round(4 * decoder_params / GB, 3),
                 "seconds": None, "vs_modelopt": None})
    ratio = peaks["layerwise"]["peak_rss_bytes"] / base
    return {"name": NAME, "title": "Peak RSS of quantize (layer by layer) vs modelopt's whole-model flow",
            "goal": "quantize peak RSS below modelopt's whole-model flow on the same checkpoint",
            "met": ratio < 1.0, "rows": rows, "samples": {},
            "notes": (f"2-layer NVLM-D, NVLM-D-72B's vocabulary, decoder widths 72B/{scale} ({widths}); fp8, 4 "
                      "calibration requests; each case in a fresh process (VmHWM, which includes about 0.8 GB "
                      "of torch + transformers + modelopt after import); timings are noisy on the shared machine. "
                      "Layer-by-layer calibration gives the same checkpoint byte for byte "
                      "(tests/quant/test_quantize.py). Full 72B widths: --full (needs >= 40 GB free).")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/nvlm-quant-bench")
    parser.add_argument("--full", action="store_true", help="NVLM-D-72B widths (scale 1)")
    parser.add_argument("--scale", type=int, default=16, help="divide NVLM-D-72B's decoder widths by this (default 16)")
    parser.add_argument("--child")
    parser.add_argument("--model")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.model), Path(args.out))
        return
    result = run(Path(args.workdir), scale=1 if args.full else args.scale)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
    from benchmarks._serving import report_result

    report_result(result, NAME)


if __name__ == "__main__":
    main()
