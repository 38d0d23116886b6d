"""Synthetic image tasks for the demo model: seeded generators of (image, question, answer).

Every sample is a pure function of (task, split, seed, index): numpy's SeedSequence mixes them, so
training and evaluation data never overlap and any sample can be regenerated alone. Images are
drawn with PIL at the demo's tile size (112 px); the tiling task draws wide images that dynamic
tiling cuts into 2 or 3 tiles plus the thumbnail.

Tasks register by name in TASKS; each one lists its possible answers, so evaluation can state
chance level.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from nvlm_deploy.errors import DeployError

TILE = 112  # the demo preset's image_size; images are drawn at this scale

# name -> RGB. Chosen far apart so one word per color is unambiguous on both backgrounds.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 60, 220), "yellow": (235, 215, 30),
    "purple": (140, 40, 170), "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
COUNT_WORDS = ("one", "two", "three", "four")
SIDES = {2: ("left", "right"), 3: ("left", "middle", "right")}
SPLITS = {"train": 0, "eval": 1, "sample": 2}


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    question: str
    answer: str
    options: tuple[str, ...]  # the answers possible for this image (chance = 1 / len)


@dataclass(frozen=True)
class Task:
    name: str
    question: str
    answers: tuple[str, ...]
    draw: Callable[[np.random.Generator, int], tuple[Image.Image, str, tuple[str, ...]]]  # -> image, answer, options
    needs_tiles: bool = False  # answerable only at tile resolution (not from the thumbnail)


TASKS: dict[str, Task] = {}


def register(name: str, *, question: str, answers: tuple[str, ...], needs_tiles: bool = False):
    def wrap(draw):
        TASKS[name] = Task(name, question, answers, draw, needs_tiles)
        return draw
    return wrap


def task_names(names: str | list[str] | None = None) -> list[str]:
    """Validated task names; None or "all" means every registered task, in registration order."""
    if names is None or names == "all":
        return list(TASKS)
    names = names.split(",") if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise DeployError(f"unknown demo task(s) {unknown}; choose from {list(TASKS)}.")
    return names


def make_sample(task: str, *, split: str, seed: int, index: int) -> Sample:
    """The `index`-th sample of `task` in `split` ("train", "eval" or "sample") for `seed`.

    Args:
        task: a TASKS name.
        split: data split; different splits never share a random stream.
        seed: the run's seed.
        index: sample number within (task, split, seed).
    """
    spec = TASKS[task_names([task])[0]]
    entropy = [zlib.crc32(task.encode()), SPLITS[split], seed, index]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    image, answer, options = spec.draw(rng, index)
    return Sample(image=image, question=spec.question, answer=answer, options=options)


# --- drawing ---------------------------------------------------------------------------------

def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    gray = int(rng.integers(215, 250)) if rng.random() < 0.7 else int(rng.integers(10, 50))
    return Image.new("RGB", size, (gray, gray, gray))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        w, h = (x1 - x0) / 3, (y1 - y0) / 3
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=fill)
        draw.rectangle((x0, y0 + h, x1, y1 - h), fill=fill)
    else:
        raise ValueError(shape)


def _place(rng: np.random.Generator, size: int, *, lo: int = 4, hi: int = TILE - 4) -> tuple[int, int, int, int]:
    x0 = int(rng.integers(lo, hi - size + 1))
    y0 = int(rng.integers(4, TILE - 4 - size + 1))
    return (x0, y0, x0 + size - 1, y0 + size - 1)


@register("color", question="What color is the shape?", answers=tuple(COLORS))
def draw_color(rng: np.random.Generator, index: int) -> tuple[Image.Image, str, tuple[str, ...]]:
    image = _background(rng, (TILE, TILE))
    color = str(rng.choice(list(COLORS)))
    shape = str(rng.choice(SHAPES))
    _draw_shape(ImageDraw.Draw(image), shape, _place(rng, int(rng.integers(28, 70))), COLORS[color])
    return image, color, tuple(COLORS)


@register("shape", question="What shape is it?", answers=SHAPES)
def draw_shape(rng: np.random.Generator, index: int) -> tuple[Image.Image, str, tuple[str, ...]]:
    image = _background(rng, (TILE, TILE))
    color = COLORS[str(rng.choice(list(COLORS)))]
    shape = str(rng.choice(SHAPES))
    _draw_shape(ImageDraw.Draw(image), shape, _place(rng, int(rng.integers(36, 76))), color)
    return image, shape, SHAPES


@register("count", question="How many shapes are there?", answers=COUNT_WORDS)
def draw_count(rng: np.random.Generator, index: int) -> tuple[Image.Image, str, tuple[str, ...]]:
    """1-4 shapes, each inside its own cell of the 4x4 grid of 28-px cells (one image token each)."""
    image = _background(rng, (TILE, TILE))
    draw = ImageDraw.Draw(image)
    n = int(rng.integers(1, len(COUNT_WORDS) + 1))
    cell = TILE // 4  # 2x2 patches of 14 px: the area of one image token after pixel shuffle
    for c in rng.permutation(16)[:n]:
        size = int(rng.integers(14, 23))
        x0 = cell * (c % 4) + int(rng.integers(2, cell - size - 1))
        y0 = cell * (c // 4) + int(rng.integers(2, cell - size - 1))
        color = COLORS[str(rng.choice(list(COLORS)))]
        _draw_shape(draw, str(rng.choice(SHAPES)), (x0, y0, x0 + size - 1, y0 + size - 1), color)
    return image, COUNT_WORDS[n - 1], COUNT_WORDS


@register("striped", question="Which side has the striped square?", answers=("left", "middle", "right"),
          needs_tiles=True)
def draw_striped(rng: np.random.Generator, index: int, *, stripes: bool = True
                 ) -> tuple[Image.Image, str, tuple[str, ...]]:
    """A wide image, one square per tile; one square has 1-px vertical stripes.

    The stripes alternate base ± delta, so their mean is the other squares' solid base color. The
    thumbnail squeezes the width by 2 or 3, which averages the stripes away: only the tiles show them.
    `stripes=False` draws the same image with all squares solid (to check that claim). Even
    indices get 2 tiles, odd ones 3: consecutive samples keep a training batch's tile count fixed.
    """
    tiles = 2 + index % 2
    image = _background(rng, (TILE * tiles, TILE))
    pixels = np.asarray(image).copy()
    base = rng.integers(80, 176, size=3).astype(np.int16)  # mid-tones: base ± delta never clips
    delta = int(rng.integers(50, 80))
    striped = int(rng.integers(tiles))
    size = int(rng.integers(40, 72))
    y0 = int(rng.integers(6, TILE - 6 - size + 1))
    for t in range(tiles):
        x0 = t * TILE + 2 * int(rng.integers(3, (TILE - size) // 2 - 3))  # even x: stripes start in phase
        block = np.broadcast_to(base, (size, size, 3)).copy()
        if t == striped and stripes:
            sign = np.where(np.arange(size) % 2 == 0, 1, -1)[None, :, None]  # alternate columns
            block = block + sign * delta
        pixels[y0:y0 + size, x0:x0 + size] = block.astype(np.uint8)
    return Image.fromarray(pixels), SIDES[tiles][striped], SIDES[tiles]
