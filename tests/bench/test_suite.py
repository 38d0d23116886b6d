"""The suite runner and its report on fake benchmark modules (fresh processes, failures recorded)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from nvlm_deploy.bench.suite import EXPECTED, discover, run_suite, validate

GOOD = '''
def run(workdir, quick=False):
    (workdir / "touched").write_text("x")
    return {"name": "fake_good", "title": "Fake latency", "goal": "p50 <= 2x baseline", "met": quick,
            "rows": [{"case": "baseline", "p50 ms": 1.0, "concurrency": 1, "req/s": 10.0},
                     {"case": "ours", "p50 ms": 1.5, "concurrency": 2, "req/s": 18.0}],
            "samples": {"ours ms": [1.0, 1.5, 2.0], "baseline ms": [0.9, 1.0]},
            "notes": "quick=%s" % quick}
'''
BARS = '''
def run(workdir, quick=False):
    return {"name": "fake_bars", "title": "Fake conversion", "goal": "<= 1.5x copy", "met": False,
            "rows": [{"case": "copy", "wall s": 10.0, "peak GB": 0.4}, {"case": "convert", "wall s": 20.0, "peak GB": 2.8}],
            "notes": "falls short by 0.5x"}
'''
RAISES = "def run(workdir, quick=False):\n    raise RuntimeError('boom: the fake failed')\n"
BAD_RESULT = "def run(workdir, quick=False):\n    return {'name': 'x'}\n"
NO_RUN = "VALUE = 1\n"
HANGS = "import time\ndef run(workdir, quick=False):\n    time.sleep(60)\n"


@pytest.fixture
def bench_dir(tmp_path):
    d = tmp_path / "fakebench"
    d.mkdir()
    (d / "__init__.py").write_text("")
    for name, text in [("fake_good", GOOD), ("fake_bars", BARS), ("fake_raises", RAISES), ("fake_bad", BAD_RESULT),
                       ("fake_norun", NO_RUN), ("fake_hangs", HANGS)]:
        (d / f"{name}.py").write_text(textwrap.dedent(text))
    return d


def test_discover_lists_expected_first_then_the_rest(bench_dir):
    names = discover(bench_dir)
    assert names[:len(EXPECTED)] == list(EXPECTED)
    assert names[len(EXPECTED):] == sorted(["fake_good", "fake_bars", "fake_raises", "fake_bad", "fake_norun",
                                           "fake_hangs"])


def test_validate_refuses_incomplete_results():
    with pytest.raises(ValueError, match="lacks"):
        validate({"name": "x"}, "x")
    with pytest.raises(ValueError, match="met"):
        validate({"name": "x", "title": "", "goal": "", "met": "yes", "rows": []}, "x")
    ok = validate({"name": "", "title": "t", "goal": "g", "met": None, "rows": []}, "fallback")
    assert ok["name"] == "fallback" and ok["samples"] == {} and ok["notes"] == ""


def test_suite_runs_each_module_records_failures_and_writes_report(bench_dir, tmp_path):
    results = bench_dir / "results"
    lines = []
    outcomes = run_suite(bench_dir, workdir=tmp_path / "work", results_dir=results, timeout_s=20,
                         only=["fake_good", "fake_bars", "fake_raises", "fake_bad", "fake_norun", "fake_hangs",
                               "not_written"], command="python -m benchmarks --only ...", log=lines.append)
    status = {o.name: o.status for o in outcomes}
    assert status == {"fake_good": "ok", "fake_bars": "ok", "fake_raises": "failed", "fake_bad": "failed",
                      "fake_norun": "failed", "fake_hangs": "failed", "not_written": "missing"}
    errors = {o.name: o.error for o in outcomes}
    assert "boom: the fake failed" in errors["fake_raises"]
    assert "lacks" in errors["fake_bad"]
    assert "no run(" in errors["fake_norun"]
    assert "timed out" in errors["fake_hangs"]
    # quick mode by default, and each module ran in its own work directory
    good = json.loads((results / "fake_good.json").read_text())
    assert good["met"] is True and good["notes"] == "quick=True"
    assert (tmp_path / "work" / "fake_good" / "touched").is_file()
    assert not (results / "fake_raises.json").exists()
    suite = json.loads((results / "suite.json").read_text())
    assert [o["name"] for o in suite["outcomes"]] == list(status)

    report = (bench_dir / "RESULTS.md").read_text()
    assert "python -m benchmarks --only ..." in report and "CPU:" in report and "torch" in report
    assert "| case | p50 ms | concurrency | req/s |" in report and "| ours | 1.5 | 2 | 18 |" in report
    assert "**not met**" in report and "falls short by 0.5x" in report
    assert "FAILED**: exit status" in report and "boom: the fake failed" in report
    assert "MISSING**" in report
    # plots: distribution (samples), throughput vs concurrency, bars per numeric column
    plots = sorted(p.name for p in (results / "plots").glob("*.png"))
    assert plots == ["fake_bars_peak_GB.png", "fake_bars_wall_s.png", "fake_good_distribution.png",
                     "fake_good_vs_concurrency.png"]
    assert "![fake_good_distribution](results/plots/fake_good_distribution.png)" in report


def test_full_mode_passes_quick_false_and_heavy_modules_are_skipped_by_default(bench_dir, tmp_path, monkeypatch):
    from nvlm_deploy.bench import suite

    monkeypatch.setattr(suite, "EXPECTED", ())
    monkeypatch.setattr(suite, "HEAVY", {"fake_bars": "too big for the default run"})
    for name in ("fake_raises", "fake_bad", "fake_norun", "fake_hangs"):
        (bench_dir / f"{name}.py").unlink()
    outcomes = run_suite(bench_dir, workdir=tmp_path / "w1", results_dir=tmp_path / "r1" / "results", log=print)
    assert {o.name: o.status for o in outcomes} == {"fake_bars": "skipped", "fake_good": "ok"}
    assert "too big" in (tmp_path / "r1" / "RESULTS.md").read_text()
    outcomes = run_suite(bench_dir, workdir=tmp_path / "w2", results_dir=tmp_path / "r2" / "results", full=True,
                         log=print)
    assert {o.name: o.status for o in outcomes} == {"fake_bars": "ok", "fake_good": "ok"}
    assert next(o for o in outcomes if o.name == "fake_good").result["notes"] == "quick=False"


def test_python_m_benchmarks_help_runs():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--only" in out.stdout and "--full" in out.stdout


def test_render_only_redraws_the_report_from_suite_json(bench_dir, tmp_path):
    from nvlm_deploy.bench.suite import render_again

    results = bench_dir / "results"
    run_suite(bench_dir, workdir=tmp_path / "w", results_dir=results, only=["fake_bars"], log=print)
    (bench_dir / "RESULTS.md").unlink()
    for png in (results / "plots").glob("*.png"):
        png.unlink()
    render_again(results, log=print)
    assert "falls short by 0.5x" in (bench_dir / "RESULTS.md").read_text()
    assert sorted(p.name for p in (results / "plots").glob("*.png")) == ["fake_bars_peak_GB.png", "fake_bars_wall_s.png"]


def test_a_partial_run_updates_its_modules_in_the_last_report(bench_dir, tmp_path):
    results = bench_dir / "results"
    run_suite(bench_dir, workdir=tmp_path / "w1", results_dir=results, only=["fake_bars", "fake_good"], log=print)
    (bench_dir / "fake_bars.py").write_text(BARS.replace("falls short by 0.5x", "now short by 0.1x"))
    outcomes = run_suite(bench_dir, workdir=tmp_path / "w2", results_dir=results, only=["fake_bars"], log=print,
                         command="python -m benchmarks --only fake_bars")
    assert [o.name for o in outcomes] == ["fake_bars", "fake_good"]
    report = (bench_dir / "RESULTS.md").read_text()
    assert "now short by 0.1x" in report and "falls short" not in report and "quick=True" in report
    assert "re-ran fake_bars; the other modules from the run of" in report
