"""benchmarks/vision_batching.py without a server: the two repositories it compares differ in the vision
encoder's dynamic batching only, its inputs are distinct and shaped as the preprocessing sends them, and
the batch figures and verdict come out of Triton's counters as stated."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import vision_batching as vb


@pytest.fixture(scope="module")
def repos(engines, tmp_path_factory):
    """The benchmark's two configurations packaged from the test target (CPU)."""
    from nvlm_deploy.serve.package import PackageOptions, package_repository
    from tests.serving import LIMITS

    root = tmp_path_factory.mktemp("vision-batching")
    return [(label, package_repository(engines, root / f"r{k}", runtime="cpu", log=lambda line: None,
                                       options=PackageOptions(limits=LIMITS, **options)))
            for k, (label, options) in enumerate(vb.configs())]


def test_the_two_repositories_differ_in_vision_batching_only(repos):
    from nvlm_deploy.serve.template import parse_model_config

    (off_label, off), (on_label, on) = repos
    assert off_label == "batching off"  # the baseline summarize() compares against
    configs = [parse_model_config((repo / vb.MODEL / "config.pbtxt").read_text()) for repo in (off, on)]
    assert not configs[0].HasField("dynamic_batching") and configs[1].HasField("dynamic_batching")
    assert all(c.parameters["cache_bytes"].string_value == "0" for c in configs)  # the cache cannot help
    for c in configs:
        c.ClearField("dynamic_batching")
    assert configs[0] == configs[1]
    assert (on / "ensemble" / "config.pbtxt").read_text() == (off / "ensemble" / "config.pbtxt").read_text()


def test_inputs_are_distinct_and_shaped_as_the_preprocessing_sends_them(repos):
    from nvlm_deploy.backend.tile_cache import tile_keys
    from nvlm_deploy.preprocess.image import load_image

    repo = repos[0][1]
    images = [vb.distinct_png(k, (336, 112)) for k in range(3)]
    assert len(set(images)) == 3 and load_image(images[0]).size == (336, 112)
    tiles = vb.request_tiles(repo, images[0])
    assert tiles > 1  # a wide image: several tiles and the thumbnail
    pixels = list(vb.distinct_tiles(50, tiles, 8, np.float32, seed=1))
    assert all(p.shape == (1, tiles, 3, 8, 8) and p.dtype == np.float32 for p in pixels)
    keys = [key for p in pixels for key in tile_keys(p[0], "encoder")]
    assert len(set(keys)) == len(keys) == 50 * tiles
    other_turn = next(vb.distinct_tiles(1, tiles, 8, np.float32, seed=2))
    assert not set(tile_keys(other_turn[0], "encoder")) & set(keys)


def test_batch_figures_come_from_the_vision_encoders_own_counters():
    text = "\n".join([
        "# HELP nv_inference_count Number of inferences performed",
        "# TYPE nv_inference_count counter",
        'nv_inference_count{model="vision_encoder",version="1"} 30',
        'nv_inference_count{model="tensorrt_llm",version="1"} 99',
        'nv_inference_exec_count{model="vision_encoder",version="1"} 10',
        'nv_inference_queue_duration_us{model="vision_encoder",version="1"} 60000',
        'nv_inference_compute_infer_duration_us{model="vision_encoder",version="1"} 90000',
        'nvlm_vision_encoder_calls{model="vision_encoder"} 12'])
    before = {"nv_inference_count": 6.0, "nv_inference_exec_count": 4.0}
    after = vb.model_counts(text, "vision_encoder")
    assert after["nv_inference_count"] == 30 and "tensorrt_llm" not in str(after)
    figures = vb.batch_figures(before, after)
    assert figures["encoder requests"] == 24 and figures["executions"] == 6 and figures["mean batch"] == 4.0
    assert figures["queue ms/request"] == 2.5 and figures["compute ms/request"] == 3.8
    assert vb.batch_figures(after, after)["mean batch"] is None  # nothing ran: no figure, no division


def _rows(on_rps: float, on_batch: float, errors: int = 0) -> list[dict]:
    """Measured rows as run() makes them: each workload off (baseline) then on."""
    rows = []
    for workload, base_rps, base_p50, on_p50 in (("vision_encoder", 10.0, 100.0, 80.0),
                                                 ("image request", 5.0, 200.0, 200.0)):
        rows.append({"config": "batching off", "workload": workload, "errors": 0, "req/s": base_rps,
                     "latency p50 ms": base_p50, "mean batch": 1.0})
        rows.append({"config": "batching on", "workload": workload, "errors": errors,
                     "req/s": on_rps if workload == "vision_encoder" else base_rps,
                     "latency p50 ms": on_p50, "mean batch": on_batch})
    return rows


def test_the_verdict_puts_each_figure_beside_the_baseline():
    rows = _rows(15.0, 3.0)
    met, notes = vb.summarize(rows)
    assert met and rows[1]["req/s x baseline"] == 1.5 and rows[1]["p50 x baseline"] == 0.8
    assert rows[0]["req/s x baseline"] == 1.0 and "mean batch 3.0" in notes
    assert not vb.summarize(_rows(15.0, 1.0))[0]  # no batches formed
    assert not vb.summarize(_rows(8.0, 3.0))[0]  # slower than the baseline
    assert not vb.summarize(_rows(15.0, 3.0, errors=1))[0]
