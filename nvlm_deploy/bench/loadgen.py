"""A gRPC load generator for any served repository (CPU or GPU): streaming TTFT, inter-token latency,
end-to-end latency, tokens in/out, errors; percentiles; CSV in genai-perf's layout.

Closed loop (`concurrency=N`): N workers, each sends its next request when the last one ends.
Open loop (`rate=R`): requests start at Poisson arrivals (exponential gaps, mean 1/R s) whatever the
server's state, which is what users do and what exposes queueing.
Requests go through `nvlm_deploy.client.AsyncNvlmClient` (one gRPC stream per request; asyncio).

Definitions (genai-perf's): TTFT = first response with text - request start; inter-token latency =
(last response - first response) / (output tokens - 1); request latency = final response - start;
output tokens = the server's `num_output_tokens` (BLS final response) or, without it, the number of
text responses. Throughputs are over the whole run (first start to last end).

CSV layout and metric names follow genai-perf's `profile_export_genai_perf.csv` (perf_analyzer
repository, genai-perf/tests/test_csv_exporter.py expected content: a "Metric,avg,min,max,p99,p95,
p90,p75,p50,p25" block, a blank line, then "Metric,Value" with "Output Token Throughput (per sec)"
and "Request Throughput (per sec)"). "Request Count" and "Error Count" are ours, in the second block.
"""

from __future__ import annotations

import asyncio
import csv
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nvlm_deploy.errors import DeployError

PERCENTILES = (99, 95, 90, 75, 50, 25)
STAT_COLUMNS = ("avg", "min", "max") + tuple(f"p{p}" for p in PERCENTILES)
# our field -> genai-perf's metric name (per-request statistics)
REQUEST_METRICS = {"ttft_ms": "Time To First Token (ms)", "itl_ms": "Inter Token Latency (ms)",
                   "latency_ms": "Request Latency (ms)", "output_tokens": "Output Sequence Length",
                   "input_tokens": "Input Sequence Length"}
RUN_METRICS = {"output_token_throughput": "Output Token Throughput (per sec)",
               "request_throughput": "Request Throughput (per sec)", "requests": "Request Count",
               "errors": "Error Count"}


@dataclass
class RequestRecord:
    """One request's timings (seconds, time.perf_counter) and token counts; `error` when it failed."""

    start: float
    end: float = math.nan
    first_token: float = math.nan
    last_token: float = math.nan
    responses: int = 0
    output_tokens: int = 0
    input_tokens: int | None = None
    text: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def metrics(self) -> dict[str, float]:
        """ttft_ms, itl_ms (nan below 2 tokens), latency_ms, output_tokens, input_tokens."""
        itl = (self.last_token - self.first_token) / (self.output_tokens - 1) if self.output_tokens > 1 else math.nan
        return {"ttft_ms": 1e3 * (self.first_token - self.start), "itl_ms": 1e3 * itl,
                "latency_ms": 1e3 * (self.end - self.start), "output_tokens": float(self.output_tokens),
                "input_tokens": math.nan if self.input_tokens is None else float(self.input_tokens)}


@dataclass
class LoadResult:
    records: list[RequestRecord] = field(default_factory=list)
    mode: str = ""
    wall_s: float = 0.0

    @property
    def ok(self) -> list[RequestRecord]:
        return [r for r in self.records if r.ok]

    def series(self, name: str) -> list[float]:
        """A per-request metric over the successful requests (nan values dropped)."""
        return [v for v in (r.metrics()[name] for r in self.ok) if not math.isnan(v)]

    def summary(self) -> dict:
        """Per-request statistics (avg, min, max, percentiles) and the run's throughputs and counts."""
        ok = self.ok
        span = (max(r.end for r in ok) - min(r.start for r in ok)) if ok else 0.0
        out = {name: stats(self.series(name)) for name in REQUEST_METRICS}
        out.update({"output_token_throughput": sum(r.output_tokens for r in ok) / span if span > 0 else 0.0,
                    "request_throughput": len(ok) / span if span > 0 else 0.0,
                    "requests": len(self.records), "errors": len(self.records) - len(ok), "mode": self.mode,
                    "error_messages": sorted({r.error for r in self.records if r.error})[:5]})
        return out

    def write_csv(self, path: str | Path) -> Path:
        """genai-perf's CSV layout (see module docstring)."""
        summary, path = self.summary(), Path(path)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["Metric", *STAT_COLUMNS])
            for key, name in REQUEST_METRICS.items():
                w.writerow([name, *(_fmt(summary[key].get(c)) for c in STAT_COLUMNS)])
            w.writerow([])
            w.writerow(["Metric", "Value"])
            for key, name in RUN_METRICS.items():
                w.writerow([name, _fmt(summary[key])])
        return path


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "N/A"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default), nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {c: math.nan for c in STAT_COLUMNS}
    return {"avg": sum(values) / len(values), "min": min(values), "max": max(values),
            **{f"p{p}": percentile(values, p) for p in PERCENTILES}}


async def one_request(client, request) -> RequestRecord:
    """Send one streaming request; never raises (a failure is the record's error)."""
    record = RequestRecord(start=time.perf_counter())
    try:
        async for piece in client.events(request):
            now = time.perf_counter()
            if piece.text:
                record.responses += 1
                record.text += piece.text
                if math.isnan(record.first_token):
                    record.first_token = now
                record.last_token = now
            if piece.final:
                record.output_tokens = piece.completion_tokens if piece.completion_tokens is not None \
                    else record.responses
                record.input_tokens = piece.prompt_tokens
        record.end = time.perf_counter()
        if math.isnan(record.first_token):  # tokens that decode to no text yet (e.g. a split character)
            if record.output_tokens == 0:
                record.error = "the request ended without any output token"
            record.first_token = record.last_token = record.end
    except Exception as exc:  # a refused request is data here, not a crash
        record.end = time.perf_counter()
        record.error = f"{type(exc).__name__}: {exc}"
    return record


async def run_load(url: str, request, *, concurrency: int | None = None, rate: float | None = None,
                   duration_s: float = 10.0, max_requests: int | None = None, model: str | None = None,
                   seed: int = 0, warmup: int = 0) -> LoadResult:
    """Drive `request` (a client ChatRequest with stream=True) at `concurrency` (closed loop) or `rate`
    requests/s (open loop, Poisson) for `duration_s` seconds or `max_requests` requests, whichever first.
    `warmup` requests are sent (one at a time) and discarded first."""
    from nvlm_deploy.client.aio import AsyncNvlmClient
    from nvlm_deploy.client.tensors import DEFAULT_MODEL

    if (concurrency is None) == (rate is None):
        raise DeployError("give exactly one of --concurrency N (closed loop) or --rate R (open loop, requests/s).")
    if concurrency is not None and concurrency < 1:
        raise DeployError(f"--concurrency {concurrency}: must be at least 1.")
    if rate is not None and rate <= 0:
        raise DeployError(f"--rate {rate}: must be above 0 requests per second.")
    async with AsyncNvlmClient(url, model=model or DEFAULT_MODEL) as client:
        for _ in range(warmup):
            record = await one_request(client, request)
            if record.error:
                raise DeployError(f"warm-up request to {url} failed: {record.error}")
        result = LoadResult(mode=f"concurrency {concurrency}" if concurrency else f"rate {rate}/s")
        start = time.perf_counter()
        deadline = start + duration_s
        budget = [max_requests if max_requests is not None else math.inf]

        def take() -> bool:
            if budget[0] <= 0 or time.perf_counter() >= deadline:
                return False
            budget[0] -= 1
            return True

        if concurrency:
            async def worker():
                while take():
                    result.records.append(await one_request(client, request))
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            rng, tasks = random.Random(seed), []
            next_at = start
            while take():
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                tasks.append(asyncio.ensure_future(one_request(client, request)))
                next_at += rng.expovariate(rate)
            result.records.extend(await asyncio.gather(*tasks))
        result.wall_s = time.perf_counter() - start
    return result


def format_summary(summary: dict) -> str:
    """A markdown table of the run, genai-perf's names."""
    lines = [f"| Statistic ({summary['mode']}) | " + " | ".join(STAT_COLUMNS) + " |",
             "|---|" + "---:|" * len(STAT_COLUMNS)]
    for key, name in REQUEST_METRICS.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(summary[key][c]) for c in STAT_COLUMNS) + " |")
    lines.append("")
    lines += [f"{name}: {_fmt(summary[key])}" for key, name in RUN_METRICS.items()]
    if summary.get("error_messages"):
        lines.append("errors: " + "; ".join(summary["error_messages"]))
    return "\n".join(lines)
