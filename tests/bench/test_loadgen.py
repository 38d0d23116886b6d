"""The load generator: statistics and CSV offline; one short closed-loop run against the CPU server."""

from __future__ import annotations

import asyncio
import csv
import math

import pytest

from nvlm_deploy.bench.loadgen import REQUEST_METRICS, RUN_METRICS, LoadResult, RequestRecord, percentile, run_load


def test_percentiles_match_numpy():
    import numpy as np

    values = [5.0, 1.0, 3.0, 9.0, 7.0, 2.0]
    for p in (25, 50, 90, 99):
        assert percentile(values, p) == pytest.approx(np.percentile(values, p))
    assert math.isnan(percentile([], 50))


def test_record_metrics_and_csv_layout(tmp_path):
    ok = RequestRecord(start=0.0, first_token=0.1, last_token=0.4, end=0.5, responses=4, output_tokens=4,
                       input_tokens=10)
    failed = RequestRecord(start=0.2, end=0.3, error="ServerError: refused")
    result = LoadResult([ok, failed], mode="concurrency 1")
    m = ok.metrics()
    assert m["ttft_ms"] == pytest.approx(100) and m["itl_ms"] == pytest.approx(100) and m["latency_ms"] == 500
    s = result.summary()
    assert s["errors"] == 1 and s["requests"] == 2 and s["output_token_throughput"] == pytest.approx(8.0)
    rows = list(csv.reader(open(result.write_csv(tmp_path / "x.csv"))))
    assert rows[0] == ["Metric", "avg", "min", "max", "p99", "p95", "p90", "p75", "p50", "p25"]
    assert [r[0] for r in rows[1:6]] == list(REQUEST_METRICS.values())
    assert rows[6] == [] and rows[7] == ["Metric", "Value"]
    assert dict(rows[8:]) == {"Output Token Throughput (per sec)": "8.00", "Request Throughput (per sec)": "2.00",
                              "Request Count": "2", "Error Count": "1"}


def test_one_of_concurrency_or_rate_is_required():
    from nvlm_deploy.errors import DeployError

    with pytest.raises(DeployError, match="exactly one"):
        asyncio.run(run_load("127.0.0.1:1", None, concurrency=2, rate=1.0))


@pytest.mark.server
@pytest.mark.slow
def test_closed_and_open_loop_against_the_cpu_server(multibyte_server, images, tmp_path):
    """The multibyte server answers MULTIBYTE_TEXT one byte per token: 9 tokens are its 9 UTF-8 bytes, so
    the token count, the streamed text and the number of text responses can be checked against each other."""
    from nvlm_deploy.client.tensors import ChatRequest
    from tests.serving import MULTIBYTE_TEXT

    server = multibyte_server
    text_only = ChatRequest(prompt="Say it.", max_tokens=9, stream=True)
    closed = asyncio.run(run_load(server.grpc_url, text_only, concurrency=2, duration_s=60, max_requests=4))
    assert len(closed.records) == 4 and all(r.ok for r in closed.records), closed.summary()["error_messages"]
    for r in closed.records:
        assert r.text == MULTIBYTE_TEXT and r.output_tokens == len(MULTIBYTE_TEXT.encode()) == 9
        assert r.responses == len(MULTIBYTE_TEXT)  # one response per completed character
        assert r.input_tokens and r.input_tokens > 3
        assert r.start < r.first_token < r.last_token <= r.end
    s = closed.summary()
    assert s["errors"] == 0 and s["latency_ms"]["p50"] >= s["ttft_ms"]["p50"] > 0
    rows = {row[0]: row for row in csv.reader(open(closed.write_csv(tmp_path / "c.csv"))) if row}
    assert set(REQUEST_METRICS.values()) | set(RUN_METRICS.values()) <= set(rows)
    assert rows["Error Count"][1] == "0" and rows["Request Count"][1] == "4"
    with_image = ChatRequest(prompt="Say it.", images=(images[0],), max_tokens=4, stream=True)
    opened = asyncio.run(run_load(server.grpc_url, with_image, rate=20.0, duration_s=60, max_requests=3))
    assert len(opened.records) == 3 and opened.summary()["errors"] == 0
    assert all(r.output_tokens == 4 and r.input_tokens > closed.records[0].input_tokens for r in opened.records)


def test_cli_against_no_server_exits_1_with_the_reason(capsys):
    from nvlm_deploy.cli import main

    assert main(["loadgen", "--url", "127.0.0.1:1", "--concurrency", "1", "--duration", "1"]) == 1
    err = capsys.readouterr().err
    assert "warm-up request to 127.0.0.1:1 failed" in err and "Traceback" not in err
