"""Vision encoder dynamic batching across requests, on vs off (issue 12, goal 6).

Two CPU repositories of the demo model, packaged in the same run and served side by side (both servers
up, turns in ABBA order so load from other users of the machine falls on both):
  batching off  (the baseline: PackageOptions(vision_batch_queue_delay_us=None), no dynamic_batching block)
  batching on   (package's default queue delay)
Both with the tile cache off (vision_cache_bytes=0) and every request carrying DISTINCT pixels, so
nothing is answered from the cache and every tile reaches the encoder. Two workloads per server,
closed loop at CONCURRENCY:
  vision_encoder     the model itself over gRPC: pixel_values [1, T, 3, S, S] of random tiles, T = the
                     demo image's tile count (what the BLS sends it), so only the encoder's batching shows
  image request      the recommended entry point (tensorrt_llm_bls), a distinct random image per request,
                     1 new token: what a user sees of it, decoder and preprocessing included
The batch sizes actually formed come from Triton's own per-model counters on the metrics endpoint:
nv_inference_count (requests) / nv_inference_exec_count (executions) of vision_encoder = mean batch.
Last, the same ONNX encoder in-process at one request's tiles per call vs three requests': whether a
bigger call is cheaper per tile is all that batching can gain on this CPU.

    .venv/bin/python benchmarks/vision_batching.py [--quick] [--workdir DIR]
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

MODEL = "vision_encoder"
CONCURRENCY = 8
MAX_TOKENS = 1


def configs() -> tuple[tuple[str, dict], ...]:
    """(label, PackageOptions fields): baseline first. The 'on' delay is package's default (one owner)."""
    from nvlm_deploy.serve.package import PackageOptions

    delay = PackageOptions().vision_batch_queue_delay_us
    return (("batching off", dict(vision_batch_queue_delay_us=None, vision_cache_bytes=0)),
            (f"batching on ({delay} us)", dict(vision_batch_queue_delay_us=delay, vision_cache_bytes=0)))


def distinct_tiles(count: int, tiles: int, size: int, dtype, *, seed: int = 0) -> Iterator[np.ndarray]:
    """`count` pixel_values [1, tiles, 3, size, size], no two alike: one random base with the request's
    number written into each tile's first pixels, made as they are taken. Cheap on purpose: the client
    shares the cores with the server, and drawing fresh random tiles per request would load them."""
    base = np.random.default_rng(seed).standard_normal((1, tiles, 3, size, size), dtype=np.float32).astype(dtype)
    for k in range(count):
        pixels = base.copy()
        pixels[0, :, 0, 0, :4] = np.frombuffer(np.int64(k).tobytes(), dtype=np.uint16).astype(dtype)
        yield pixels


def distinct_png(index: int, size: tuple[int, int]) -> bytes:
    """A PNG of `size` (w, h) with random pixels seeded by `index`: distinct images, distinct tiles."""
    from PIL import Image

    pixels = np.random.default_rng(index).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def model_counts(metrics_text: str, model: str) -> dict[str, float]:
    """Triton's counters for one model from Prometheus text: metric name -> value (versions summed).
    `scrape_metrics` sums every label set, and these counters are per model."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and f'model="{model}"' in match.group(2):
            out[match.group(1)] = out.get(match.group(1), 0.0) + float(match.group(3))
    return out


def batch_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Requests, executions and the mean batch they formed between two model_counts snapshots, and
    Triton's cumulative queue and compute-infer microseconds divided by those requests."""
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    requests, executions = delta("nv_inference_count"), delta("nv_inference_exec_count")
    per_request = (lambda name: round(delta(name) / requests / 1e3, 1)) if requests else (lambda name: None)
    return {"encoder requests": int(requests), "executions": int(executions),
            "mean batch": round(requests / executions, 2) if executions else None,
            "queue ms/request": per_request("nv_inference_queue_duration_us"),
            "compute ms/request": per_request("nv_inference_compute_infer_duration_us")}


def _metrics_text(port: int) -> str:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


async def _encoder_load(url: str, inputs: Iterable[np.ndarray], *, concurrency: int, duration_s: float):
    """Closed loop straight to vision_encoder; each request takes the next distinct pixel_values."""
    from tritonclient.grpc import InferInput, InferRequestedOutput
    from tritonclient.grpc.aio import InferenceServerClient
    from tritonclient.utils import np_to_triton_dtype

    from nvlm_deploy.bench.loadgen import LoadResult, RequestRecord

    result, queue = LoadResult(mode=f"concurrency {concurrency}"), iter(inputs)
    async with InferenceServerClient(url) as client:
        deadline = time.perf_counter() + duration_s

        async def worker():
            for pixels in queue:
                if time.perf_counter() >= deadline:
                    return
                tensor = InferInput("pixel_values", list(pixels.shape), np_to_triton_dtype(pixels.dtype))
                tensor.set_data_from_numpy(pixels)
                record = RequestRecord(start=time.perf_counter())
                try:
                    await client.infer(MODEL, [tensor], outputs=[InferRequestedOutput("prompt_embedding_table")])
                    record.output_tokens = 1
                except Exception as exc:  # a refused request is data here
                    record.error = f"{type(exc).__name__}: {exc}"
                record.end = record.first_token = record.last_token = time.perf_counter()
                result.records.append(record)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


async def _image_load(url: str, image_size: tuple[int, int], *, concurrency: int, duration_s: float, seed: int):
    """Closed loop through the recommended entry point; request k carries distinct_png(seed + k)."""
    from nvlm_deploy.bench.deployment import DEMO_QUESTION
    from nvlm_deploy.bench.loadgen import LoadResult, one_request
    from nvlm_deploy.client.aio import AsyncNvlmClient
    from nvlm_deploy.client.tensors import DEFAULT_MODEL, ChatRequest

    result, counter = LoadResult(mode=f"concurrency {concurrency}"), iter(range(seed, seed + 10**6))
    async with AsyncNvlmClient(url, model=DEFAULT_MODEL) as client:
        deadline = time.perf_counter() + duration_s

        async def worker():
            while time.perf_counter() < deadline:
                image = distinct_png(next(counter), image_size)
                request = ChatRequest(prompt=DEMO_QUESTION, images=(image,), max_tokens=MAX_TOKENS, stream=True)
                result.records.append(await one_request(client, request))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


def _row(label: str, workload: str, parts: list, batches: dict) -> tuple[dict, object]:
    """One table row from the LoadResults of one configuration's turns (ABBA order, see run): requests/s over
    the time each turn was busy, latency percentiles over all their requests; and the merged LoadResult."""
    from nvlm_deploy.bench.loadgen import LoadResult

    merged = LoadResult(records=[r for part in parts for r in part.records])
    s = merged.summary()
    busy = sum(max(r.end for r in p.ok) - min(r.start for r in p.ok) for p in parts if p.ok)
    return {"config": label, "workload": workload, "concurrency": CONCURRENCY, "requests": s["requests"],
            "errors": s["errors"], "req/s": round(len(merged.ok) / busy, 2) if busy else 0.0,
            "latency p50 ms": round(s["latency_ms"]["p50"], 1), "latency p95 ms": round(s["latency_ms"]["p95"], 1),
            **batches}, merged


def encoder_ms_per_tile(onnx_dir: Path, tile: int, *, call_sizes=(4, 12), tiles: int = 24,
                        rounds: int = 3) -> dict[int, float]:
    """In-process ONNX Runtime (the server's settings: default threads, no spinning): median ms per tile
    encoding `tiles` distinct tiles in calls of each size, sizes alternating round by round. Whether one
    call of many tiles is cheaper per tile than several small ones is what batching can gain here."""
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    encoder = OnnxVisionEncoder(onnx_dir, spinning=False)
    pixels = np.random.default_rng(7).standard_normal((tiles, 3, tile, tile), dtype=np.float32)
    encoder.encode(pixels[:1])  # first call pays ONNX Runtime's lazy setup
    times: dict[int, list[float]] = {size: [] for size in call_sizes}
    for _ in range(rounds):
        for size in call_sizes:
            start = time.perf_counter()
            for first in range(0, tiles, size):
                encoder.encode(pixels[first:first + size])
            times[size].append(1e3 * (time.perf_counter() - start) / tiles)
    return {size: round(float(np.median(t)), 2) for size, t in times.items()}


def summarize(rows: list[dict]) -> tuple[bool, str]:
    """(met, notes): each 'on' row beside the baseline's row of the same workload (ratios filled in place).
    Met: batching on formed batches (mean > 1), off ran one request per execution, no request failed, and
    requests/s with batching is not below the baseline's."""
    base = {r["workload"]: r for r in rows if r["config"] == "batching off"}
    for row in rows:
        ref = base[row["workload"]]
        row["req/s x baseline"] = round(row["req/s"] / ref["req/s"], 3) if ref["req/s"] else None
        row["p50 x baseline"] = round(row["latency p50 ms"] / ref["latency p50 ms"], 3) \
            if ref["latency p50 ms"] else None
    on = [r for r in rows if r["config"] != "batching off"]
    errors = sum(r["errors"] for r in rows)
    batched = all((r["mean batch"] or 0) > 1 for r in on)
    single = all(r["mean batch"] in (1, 1.0) for r in base.values())
    faster = all((r["req/s x baseline"] or 0) >= 1 for r in on)
    parts = [f"{r['workload']}: {r['req/s']} req/s vs {base[r['workload']]['req/s']} (x{r['req/s x baseline']}), "
             f"p50 {r['latency p50 ms']} vs {base[r['workload']]['latency p50 ms']} ms, mean batch {r['mean batch']} "
             f"vs {base[r['workload']]['mean batch']}" for r in on]
    notes = ("Dynamic batching on vs off, tile cache off and distinct pixels in every request. " + "; ".join(parts)
             + f". Failed requests: {errors}. Mean batch = Triton's nv_inference_count / nv_inference_exec_count "
             "for vision_encoder over the run. The demo encoder is tiny (2.7 M parameters in all) and runs under "
             "ONNX Runtime on 2 shared cores; on a GPU with InternViT-6B a batch fills the device (not measured "
             "here). Shared machine and turns of a few seconds: compare ratios within this run, and expect them "
             "to move between runs.")
    return batched and single and faster and not errors, notes


def request_tiles(repo: Path, image: bytes) -> int:
    """Tiles the repository's preprocessing makes of `image` (its Preprocessor under the repository's
    limits, thumbnail included): what an image request sends vision_encoder."""
    from nvlm_deploy.backend.request_inputs import repository_limits
    from nvlm_deploy.preprocess.request import Preprocessor
    from nvlm_deploy.serve.package import ASSETS

    limits = repository_limits(repo)
    preprocessor = Preprocessor.from_model_dir(repo / ASSETS, max_tiles=limits.max_tiles_before_thumbnail)
    return preprocessor.num_tiles(preprocessor.load(image))


def run(workdir: Path, quick: bool = False) -> dict:
    """Package both repositories, serve them side by side, drive both workloads in ABBA turns, read the
    batch counters, then time the encoder in-process by tiles per call."""
    from PIL import Image

    from nvlm_deploy.bench.deployment import DEMO_IMAGE, demo_target, package_demo, served
    from nvlm_deploy.serve.template import parse_model_config
    from tritonclient.grpc import model_config_pb2
    from tritonclient.utils import triton_to_np_dtype

    duration = 4.0 if quick else 20.0  # seconds per workload and configuration, in two turns
    image_size = Image.open(DEMO_IMAGE).size
    repos = [(label, package_demo(Path(workdir), f"vbatch{k}", **options))
             for k, (label, options) in enumerate(configs())]
    config = parse_model_config((repos[0][1] / MODEL / "config.pbtxt").read_text(encoding="utf-8"))
    pixels = next(t for t in config.input if t.name == "pixel_values")
    dtype = triton_to_np_dtype(model_config_pb2.DataType.Name(pixels.data_type).removeprefix("TYPE_"))
    size = int(pixels.dims[-1])
    tiles = request_tiles(repos[0][1], distinct_png(0, image_size))
    # more distinct inputs than a turn can send (a few hundred requests/s at most here): no pixels repeat
    per_turn = int(duration * 200) + CONCURRENCY
    rows, samples = [], {}
    with contextlib.ExitStack() as stack:
        # both servers up at once, turns in ABBA order: load from other users of this machine falls on both
        servers = [stack.enter_context(served(repo, metrics=True)) for _, repo in repos]
        for server in servers:  # one request of each kind first: lazy initialization stays out of the timings
            asyncio.run(_encoder_load(server.grpc_url, distinct_tiles(1, tiles, size, dtype, seed=10**6),
                                      concurrency=1, duration_s=60))
            asyncio.run(_image_load(server.grpc_url, image_size, concurrency=1, duration_s=0.01, seed=10**6))
        for workload in ("vision_encoder", "image request"):
            parts: dict[int, list] = {0: [], 1: []}
            before = [model_counts(_metrics_text(s.metrics_port), MODEL) for s in servers]
            for turn, k in enumerate((0, 1, 1, 0)):
                label, server = repos[k][0], servers[k]
                print(f"{label}, {workload}, concurrency {CONCURRENCY}: {duration / 2:.1f} s ...", flush=True)
                if workload == "vision_encoder":
                    inputs = distinct_tiles(per_turn, tiles, size, dtype, seed=turn)
                    part = asyncio.run(_encoder_load(server.grpc_url, inputs, concurrency=CONCURRENCY,
                                                     duration_s=duration / 2))
                else:
                    part = asyncio.run(_image_load(server.grpc_url, image_size, concurrency=CONCURRENCY,
                                                   duration_s=duration / 2, seed=10**5 * (turn + 1)))
                parts[k].append(part)
            for k, server in enumerate(servers):
                batches = batch_figures(before[k], model_counts(_metrics_text(server.metrics_port), MODEL))
                row, merged = _row(repos[k][0], workload, parts[k], batches)
                rows.append(row)
                samples[f"{repos[k][0]} / {workload} latency ms"] = merged.series("latency_ms")
    print("in-process encoder: ms per tile by tiles per call ...", flush=True)
    per_tile = encoder_ms_per_tile(demo_target(Path(workdir)) / "onnx", size)
    met, notes = summarize(rows)
    (small, ms_small), (large, ms_large) = sorted(per_tile.items())
    rows += [{"config": f"{small} tiles per call", "workload": "encoder in-process", "ms per tile": ms_small},
             {"config": f"{large} tiles per call", "workload": "encoder in-process", "ms per tile": ms_large,
              "ms per tile x baseline": round(ms_large / ms_small, 3) if ms_small else None}]
    ratio = rows[-1]["ms per tile x baseline"]
    notes += (f" In-process, the same encoder costs {ms_small} ms per tile in calls of {small} tiles (one request's) "
              f"and {ms_large} ms in calls of {large} (x{ratio}): on this CPU a bigger call is "
              + ("not cheaper per tile, so batching here trades latency for fewer calls." if ratio is None or ratio >= 1
                 else "hardly cheaper per tile, so batching here mostly trades latency for fewer calls." if ratio > 0.9
                 else "cheaper per tile, which is what batching gains here."))
    return {"name": "vision_batching",
            "title": "Vision encoder dynamic batching across requests, on vs off (demo model, CPU server)",
            "goal": "concurrent image requests with distinct images are encoded in batches (mean batch > 1) "
                    "with no errors and requests/s not below batching off",
            "met": met, "rows": rows, "samples": samples, "notes": notes}


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find `benchmarks`
    from benchmarks._serving import script_main

    script_main(run, "vision_batching")
