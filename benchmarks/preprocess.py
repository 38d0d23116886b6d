"""Image preprocessing (decode -> HF tiles -> normalized float32) against its floor, old path beside new.

Floor: what HF's algorithm cannot avoid: decode the file, resize it to the tile grid and to the
thumbnail (PIL bicubic, as HF). Old path: the code before issue 12 (decode + `convert("RGB")` copy,
PIL tile crops, broadcast `(x/255 - mean) / std` on full-size float32 arrays, the server's extra
`astype(float32)`). New path: `preprocess.image.load_image` + `preprocess.tiling.tile_pixel_values`
(a 256-entry table per channel written into one preallocated array) + the server's
`np.asarray(..., float32)`, exactly what `Preprocessor.prepare` and the preprocessing model run.
The three run round-robin in one process on the same generated images (a 1920x1080 JPEG, a
4000x3000 JPEG, a 1000x1000 PNG), and the old and new outputs are checked bit for bit.

    .venv/bin/python benchmarks/preprocess.py [--quick] [--workdir /tmp/nvlm-bench-preprocess]

Writes benchmarks/results/preprocess.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).parent / "results" / "preprocess.json"
GOAL = 1.15  # new path / floor, median over the images (issue 12)
S, MAX_TILES = 448, 6  # NVLM-D: 448-px tiles, max_dynamic_patch 6, thumbnail on
IMAGES = {"1080p JPEG": ((1920, 1080), "JPEG"), "12 MP JPEG": ((4000, 3000), "JPEG"),
          "1000x1000 PNG": ((1000, 1000), "PNG")}


def photo_like(width: int, height: int, *, seed: int = 0) -> Image.Image:
    """Smooth gradients, a few shapes and mild noise: compresses like a photo, not like noise or a flat fill."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 97 + c) * np.cos(y / 131 - c) for c in range(3)], axis=-1)
    base += rng.normal(0, 6, base.shape).astype(np.float32)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(min(width, height) // 20, min(width, height) // 4))
        draw.ellipse([x0, y0, x0 + size, y0 + size], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def floor(data: bytes) -> None:
    """Decode + the two resizes HF's algorithm needs (grid, thumbnail)."""
    from nvlm_deploy.preprocess.tiling import tile_grid

    image = Image.open(io.BytesIO(data))
    image.load()
    cols, rows = tile_grid(*image.size, image_size=S, min_num=1, max_num=MAX_TILES)
    image.resize((S * cols, S * rows), Image.Resampling.BICUBIC)
    if cols * rows != 1:
        image.resize((S, S), Image.Resampling.BICUBIC)


def old_path(data: bytes) -> np.ndarray:
    """The code before issue 12, kept here as the baseline (same values, more copies)."""
    from nvlm_deploy.preprocess.tiling import IMAGENET_MEAN, IMAGENET_STD, dynamic_tiles

    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    tiles = dynamic_tiles(image, image_size=S, min_num=1, max_num=MAX_TILES, use_thumbnail=True)
    pixels = np.stack([np.asarray(tile.convert("RGB"), dtype=np.uint8) for tile in tiles])  # [T, S, S, 3]
    pixels = pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)  # [T, 3, S, S]
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    values = np.ascontiguousarray((pixels - mean) / std)
    return values.astype(np.float32)[None]  # the server's copy


def new_path(data: bytes) -> np.ndarray:
    """What Preprocessor.prepare and the preprocessing model run for one image."""
    from nvlm_deploy.preprocess.image import load_image
    from nvlm_deploy.preprocess.tiling import tile_pixel_values

    image = load_image(data, name="image #1 of the request")
    values = tile_pixel_values(image, image_size=S, min_num=1, max_num=MAX_TILES, use_thumbnail=True)
    return np.asarray(values, dtype=np.float32)[None]


def run(workdir: Path, quick: bool = False) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    reps = 5 if quick else 15
    paths = {"floor": floor, "old": old_path, "new": new_path}
    rows, samples, ratios = [], {}, []
    for k, (label, (size, fmt)) in enumerate(IMAGES.items()):
        data = encode(photo_like(*size, seed=k), fmt)
        (workdir / f"{label.replace(' ', '_')}.{fmt.lower()}").write_bytes(data)
        old, new = old_path(data), new_path(data)  # warm-up, and the bit-for-bit check
        identical = old.shape == new.shape and old.tobytes() == new.tobytes()
        times = {name: [] for name in paths}
        for rep in range(reps):  # round-robin, order flipped every round: the machine's noise falls on all alike
            for name in (list(paths) if rep % 2 == 0 else list(paths)[::-1]):
                start = time.perf_counter()
                paths[name](data)
                times[name].append((time.perf_counter() - start) * 1e3)
        median = {name: statistics.median(ts) for name, ts in times.items()}
        # each round's ratio is taken from runs seconds apart, so a busy spell on the shared CPU cancels out
        paired = {name: statistics.median(t / f for t, f in zip(times[name], times["floor"])) for name in ("old", "new")}
        ratios.append(paired["new"])
        rows.append({"image": label, "size": f"{size[0]}x{size[1]}", "file KB": round(len(data) / 1024),
                     "tiles": int(new.shape[1]), "floor ms": round(median["floor"], 1),
                     "old ms": round(median["old"], 1), "new ms": round(median["new"], 1),
                     "old / floor": round(paired["old"], 3), "new / floor": round(paired["new"], 3),
                     "new bit-identical to old": identical})
        samples.update({f"{label} {name} ms": [round(t, 3) for t in ts] for name, ts in times.items()})
        print(f"  {label}: floor {median['floor']:.1f} ms, old {median['old']:.1f} ms, new {median['new']:.1f} ms",
              flush=True)
    median_ratio = statistics.median(ratios)
    all_identical = all(row["new bit-identical to old"] for row in rows)
    return {
        "name": "preprocess",
        "title": "Image preprocessing: decode -> HF tiles -> normalized float32",
        "goal": f"new path <= {GOAL}x the floor (decode + the two resizes), median over the three images; "
                "output bit-identical to the old (HF) path",
        "met": bool(median_ratio <= GOAL and all_identical),
        "rows": rows,
        "samples": samples,
        "notes": (f"median new/floor {median_ratio:.3f} (old/floor "
                  f"{statistics.median(r['old / floor'] for r in rows):.3f}); ms: medians of {reps} round-robin "
                  "runs per path in one process (single-threaded PIL); x floor: median of each round's ratio. "
                  "Ratios only: the CPU is shared. "
                  f"Tiles: NVLM-D's {S}-px grid up to {MAX_TILES} + thumbnail."),
    }


def markdown(result: dict) -> str:
    columns = list(result["rows"][0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in result["rows"]]
    return "\n".join([f"### {result['title']}", "", *lines, "", f"goal: {result['goal']}; met: {result['met']}",
                      "", result["notes"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs per path instead of 15")
    parser.add_argument("--workdir", default="/tmp/nvlm-bench-preprocess", help="where the generated images go")
    args = parser.parse_args(argv)
    result = run(Path(args.workdir), quick=args.quick)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
