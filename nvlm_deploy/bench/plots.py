"""PNG plots of benchmark results: matplotlib when installed, else drawn with Pillow.

What gets plotted is read from the result's shape, so modules need no plotting code:
- `samples` (raw latencies etc.)           -> distribution (empirical CDF per series)
- rows with a numeric `concurrency` column -> throughput (columns naming a rate) vs concurrency
- other rows with a label column           -> one bar chart per numeric column (each figure beside its
                                              baseline: conversion time/memory, cache on vs off, ...)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

MAX_BAR_CHARTS = 3
RATE = re.compile(r"throughput|/s\b|per s|req/s|tok/s|rps", re.I)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_columns(rows: Sequence[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c, v in row.items() if _numeric(v) and c not in columns]
    return columns


def _label_column(rows: Sequence[dict]) -> str | None:
    for column in rows[0] if rows else ():
        if all(isinstance(r.get(column), str) for r in rows):
            return column
    return None


UNITS = ("ms", "s", "GB", "GiB", "MB", "MiB", "req/s", "tok/s")  # figures; sizes of inputs (KB) are not


def _unit(column: str) -> str | None:
    """A column's unit: its last word when that is a unit; "ratio" for "x ..."/"... / ..." columns."""
    words = column.split()
    if words and words[-1] in UNITS:
        return words[-1]
    if "x" in words or " / " in column:
        return "ratio"
    return None


def _unit_groups(columns: list[str]) -> dict[str, list[str]]:
    """Numeric columns grouped by unit, so a figure and its baseline share one chart; without units, one
    group of every column (rows such as "before" / "after" measures)."""
    groups: dict[str, list[str]] = {}
    for column in columns:
        unit = _unit(column)
        if unit:
            groups.setdefault(unit, []).append(column)
    return groups or {"value": columns}


def chart_specs(name: str, result: dict) -> list[dict]:
    """The charts for one module's result: dicts with kind (cdf | lines | bars), title, file and data."""
    specs, rows = [], result.get("rows") or []
    samples = {k: [float(x) for x in v if _numeric(x)] for k, v in (result.get("samples") or {}).items()}
    samples = {k: v for k, v in samples.items() if v}
    title = result.get("title") or name
    if samples:
        specs.append({"kind": "cdf", "file": f"{name}_distribution.png", "title": f"{title}: distribution",
                      "xlabel": "value (see series name)", "ylabel": "fraction of samples <= x", "series": samples})
    numeric = _numeric_columns(rows)
    label = _label_column(rows)
    if "concurrency" in numeric:
        rates = [c for c in numeric if c != "concurrency" and RATE.search(c)] or \
                [c for c in numeric if c != "concurrency"][:2]
        series: dict[str, list[tuple[float, float]]] = {}
        for row in rows:
            for column in rates:
                if _numeric(row.get(column)) and _numeric(row.get("concurrency")):
                    key = f"{row[label]}: {column}" if label else column
                    series.setdefault(key, []).append((float(row["concurrency"]), float(row[column])))
        if series:
            specs.append({"kind": "lines", "file": f"{name}_vs_concurrency.png", "title": f"{title}: vs concurrency",
                          "xlabel": "concurrency", "ylabel": ", ".join(rates), "series": series})
    elif label and numeric:
        groups = _unit_groups(numeric)
        for unit, columns in list(groups.items())[:MAX_BAR_CHARTS]:
            labels = [str(r[label]) for r in rows]
            series = {c: [float(r[c]) if _numeric(r.get(c)) else 0.0 for r in rows] for c in columns}
            safe = re.sub(r"[^A-Za-z0-9]+", "_", unit if len(columns) > 1 else columns[0]).strip("_") or "value"
            specs.append({"kind": "bars", "file": f"{name}_{safe}.png", "title": f"{title}: {unit}",
                          "xlabel": label, "ylabel": unit, "labels": labels, "series": series})
    return specs


def write_plots(outcomes: Sequence, out_dir: Path) -> dict[str, list[Path]]:
    """Draw every successful module's charts into out_dir (replacing the PNGs there); returns module
    name -> PNG paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):  # every plot is drawn from the results: none outlives its data
        stale.unlink()
    draw = _matplotlib_draw() or _pillow_draw
    written: dict[str, list[Path]] = {}
    for outcome in outcomes:
        if outcome.status != "ok":
            continue
        for spec in chart_specs(outcome.name, outcome.result):
            path = out_dir / spec["file"]
            draw(spec, path)
            written.setdefault(outcome.name, []).append(path)
    return written


def _cdf(values: Sequence[float]) -> list[tuple[float, float]]:
    ordered = sorted(values)
    n = len(ordered)
    return [(v, (k + 1) / n) for k, v in enumerate(ordered)]


# ---- matplotlib ----

def _matplotlib_draw():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(spec: dict, path: Path) -> None:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        if spec["kind"] == "cdf":
            for name, values in spec["series"].items():
                xs, ys = zip(*_cdf(values))
                ax.step(xs, ys, where="post", label=name)
        elif spec["kind"] == "lines":
            for name, points in spec["series"].items():
                xs, ys = zip(*sorted(points))
                ax.plot(xs, ys, marker="o", label=name)
        else:
            labels, series = spec["labels"], spec["series"]
            width = 0.8 / len(series)
            for k, (name, values) in enumerate(series.items()):
                ax.bar([i + k * width for i in range(len(labels))], values, width, label=name)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=20, ha="right")
        ax.set_title(spec["title"])
        ax.set_xlabel(spec["xlabel"])
        ax.set_ylabel(spec["ylabel"])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    return draw


# ---- Pillow ----

W, H, LEFT, RIGHT, TOP, BOTTOM = 760, 460, 80, 20, 40, 95


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _pillow_draw(spec: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(image)
    small, big = _font(11), _font(14)
    d.text((LEFT, 10), spec["title"][:90], fill="black", font=big)
    if spec["kind"] == "bars":
        labels, series = spec["labels"], spec["series"]
        ys = [v for values in series.values() for v in values]
        x_lo, x_hi = -0.6, len(labels) - 0.4
    else:
        series = spec["series"] if spec["kind"] == "lines" else {k: _cdf(v) for k, v in spec["series"].items()}
        points = [p for pts in series.values() for p in pts]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(0.0, min(ys)), max(ys)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        y_hi = y_lo + 1
    y_hi += 0.05 * (y_hi - y_lo)

    def px(x: float, y: float) -> tuple[float, float]:
        return (LEFT + (x - x_lo) / (x_hi - x_lo) * (W - LEFT - RIGHT),
                H - BOTTOM - (y - y_lo) / (y_hi - y_lo) * (H - TOP - BOTTOM))

    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    for k in range(6):  # y grid and ticks
        y = y_lo + k * (y_hi - y_lo) / 5
        _, yy = px(x_lo, y)
        d.line([LEFT, yy, W - RIGHT, yy], fill=(225, 225, 225))
        d.text((4, yy - 6), f"{y:.3g}", fill="black", font=small)
    if spec["kind"] == "bars":
        slot = (W - LEFT - RIGHT) / max(1, len(labels))
        width = 0.8 * slot / len(series)
        for k, (name, values) in enumerate(series.items()):
            color = PALETTE[k % len(PALETTE)]
            for i, value in enumerate(values):
                x0, y0 = px(i, value)
                x0 += (k - len(series) / 2) * width
                _, base = px(i, 0.0)
                d.rectangle([x0, min(y0, base), x0 + width, max(y0, base)], fill=color)
                d.text((x0, min(y0, base) - 13), f"{value:.3g}", fill="black", font=small)
            lx, ly = (LEFT + 10 if k < 4 else W // 2), H - BOTTOM + 40 + 13 * (k % 4)
            d.rectangle([lx, ly + 2, lx + 12, ly + 10], fill=color)
            d.text((lx + 18, ly), name[:50], fill=color, font=small)
        for i, label in enumerate(labels):
            x0, _ = px(i, 0.0)
            d.text((x0 - slot / 2 + 4, H - BOTTOM + 6), label[:max(8, int(slot / 7))], fill="black", font=small)
    else:
        for k in range(6):  # x ticks
            x = x_lo + k * (x_hi - x_lo) / 5
            xx, _ = px(x, y_lo)
            d.text((xx - 10, H - BOTTOM + 6), f"{x:.3g}", fill="black", font=small)
        for k, (name, pts) in enumerate(series.items()):
            color = PALETTE[k % len(PALETTE)]
            line = [px(x, y) for x, y in sorted(pts)]
            if len(line) > 1:
                d.line(line, fill=color, width=2)
            if spec["kind"] == "lines":
                for x, y in line:
                    d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
            lx, ly = (LEFT + 10 if k < 4 else W // 2), H - BOTTOM + 40 + 13 * (k % 4)
            d.line([lx, ly + 6, lx + 16, ly + 6], fill=color, width=3)  # legend swatch
            d.text((lx + 22, ly), name[:50], fill=color, font=small)
    d.text((W // 2 - 60, H - BOTTOM + 22), spec["xlabel"][:60], fill="black", font=small)
    d.text((4, TOP - 16), spec["ylabel"][:80], fill="black", font=small)
    image.save(path)
