"""Throughput vs concurrency on the served demo deployment (CPU), through the load generator.

Closed loop at concurrency 1, 2, 4, 8 with the same image question (demo image, 16 new tokens),
all against one tritonserver in one run; concurrency 1 is the baseline. Issue 12 goal 4: requests/s
at concurrency 8 at least 2x concurrency 1 (needs in-flight batching in the CPU decoder).

    .venv/bin/python benchmarks/throughput.py [--quick] [--workdir DIR]
"""

from __future__ import annotations

import asyncio
from pathlib import Path

CONCURRENCY = (1, 2, 4, 8)
MAX_TOKENS = 16
GOAL_RATIO = 2.0


def run(workdir: Path, quick: bool = False) -> dict:
    from nvlm_deploy.bench.deployment import DEMO_IMAGE, DEMO_QUESTION, package_demo, served
    from nvlm_deploy.bench.loadgen import run_load
    from nvlm_deploy.client.tensors import ChatRequest

    duration = 8.0 if quick else 30.0
    repo = package_demo(Path(workdir), "throughput")
    # min_tokens: the demo model answers in one word; every request decodes MAX_TOKENS tokens
    request = ChatRequest(prompt=DEMO_QUESTION, images=(DEMO_IMAGE.read_bytes(),), max_tokens=MAX_TOKENS,
                          min_tokens=MAX_TOKENS, stream=True)
    rows, samples, errors = [], {}, set()
    with served(repo) as server:
        for n in CONCURRENCY:
            print(f"concurrency {n}: {duration:.0f} s ...", flush=True)
            result = asyncio.run(run_load(server.grpc_url, request, concurrency=n, duration_s=duration,
                                          warmup=1 if n == 1 else 0))
            s = result.summary()
            rows.append({"concurrency": n, "requests": s["requests"], "errors": s["errors"],
                         "req/s": round(s["request_throughput"], 3),
                         "output tok/s": round(s["output_token_throughput"], 2),
                         "TTFT p50 ms": round(s["ttft_ms"]["p50"], 1), "latency p50 ms": round(s["latency_ms"]["p50"], 1),
                         "latency p99 ms": round(s["latency_ms"]["p99"], 1),
                         "ITL p50 ms": round(s["itl_ms"]["p50"], 2)})
            samples[f"latency ms @ concurrency {n}"] = result.series("latency_ms")
            errors.update(s["error_messages"])
    base, top = rows[0]["req/s"], rows[-1]["req/s"]
    ratio = top / base if base else 0.0
    for row in rows:
        row["x concurrency 1"] = round(row["req/s"] / base, 2) if base else None
    met = ratio >= GOAL_RATIO and not any(r["errors"] for r in rows)
    return {"name": "throughput", "title": "Throughput vs concurrency (demo model, CPU server)",
            "goal": f"req/s at concurrency 8 >= {GOAL_RATIO}x concurrency 1", "met": met, "rows": rows,
            "samples": samples,
            "notes": (f"Concurrency 8 gives {ratio:.2f}x the requests/s of concurrency 1"
                      + ("" if met else f", short of {GOAL_RATIO}x by {GOAL_RATIO - ratio:.2f}x") +
                      f". Closed loop, {duration:.0f} s per level, image question ({DEMO_IMAGE.name}), "
                      f"{MAX_TOKENS} new tokens (min_tokens), through tensorrt_llm_bls; one tritonserver, levels run one after "
                      "the other in the same run. Shared 2-core machine: compare the ratios."
                      + (f" Errors: {'; '.join(sorted(errors)[:3])}" if errors else ""))}


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find `benchmarks`
    from benchmarks._serving import script_main

    script_main(run, "throughput")
