"""Markdown rendering of results and the chart choice (no processes)."""

from __future__ import annotations


from nvlm_deploy.bench.plots import _pillow_draw, chart_specs
from nvlm_deploy.bench.report import cell, markdown_table, render
from nvlm_deploy.bench.suite import Outcome


def test_cells_and_tables():
    assert cell(0.123456) == "0.123" and cell(1234.5) == "1234.5" and cell(None) == "" and cell(True) == "True"
    assert cell("a|b") == "a\\|b"
    table = markdown_table([{"a": 1, "b": 2.5}, {"a": 3, "c": "x"}])
    assert table.splitlines()[0] == "| a | b | c |"
    assert table.splitlines()[3] == "| 3 |  | x |"


def test_render_summary_says_met_failed_and_missing(tmp_path):
    outcomes = [Outcome("a", "ok", 1.0, {"title": "A", "goal": "g", "met": True, "rows": [{"x": 1}], "notes": "n"}),
                Outcome("b", "failed", 2.0, error="exit status 1\nTraceback: boom"),
                Outcome("c", "missing", error="benchmarks/c.py does not exist")]
    text = render(outcomes, {"command": "python -m benchmarks", "machine": {"cpu": "Fake CPU", "cores": 2}}, {},
                  base=tmp_path)
    assert "| a | A | g | met |" in text
    assert "| b |  |  | FAILED |" in text and "| c |  |  | MISSING |" in text
    assert "Traceback: boom" in text and "Fake CPU, 2 cores" in text


def test_chart_specs_and_pillow_drawing(tmp_path):
    result = {"title": "T", "rows": [{"mode": "on", "concurrency": 1, "req/s": 2.0},
                                     {"mode": "on", "concurrency": 2, "req/s": 3.5},
                                     {"mode": "off", "concurrency": 1, "req/s": 1.0}],
              "samples": {"on ms": [1, 2, 3], "empty": []}}
    specs = chart_specs("m", result)
    assert [s["kind"] for s in specs] == ["cdf", "lines"]
    assert set(specs[0]["series"]) == {"on ms"}
    assert specs[1]["series"]["on: req/s"] == [(1.0, 2.0), (2.0, 3.5)]
    bars = chart_specs("b", {"rows": [{"case": "copy", "wall s": 1.0, "peak GB": 0.4, "base ms": 3.0, "new ms": 2.0},
                                      {"case": "conv", "wall s": 2.0, "peak GB": 2.8, "base ms": 4.0, "new ms": 1.0}]})
    assert [(s["ylabel"], list(s["series"])) for s in bars] == [("s", ["wall s"]), ("GB", ["peak GB"]),
                                                                ("ms", ["base ms", "new ms"])]
    assert bars[2]["series"]["new ms"] == [2.0, 1.0] and bars[2]["labels"] == ["copy", "conv"]
    for spec in specs + bars:
        path = tmp_path / spec["file"]
        _pillow_draw(spec, path)
        from PIL import Image

        assert Image.open(path).size == (760, 460)
