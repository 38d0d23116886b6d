"""Dynamic tiling and normalization, numerically identical to HF NVLM-D (shared/reference/nvlm-d.md §4).

An image is resized whole to a grid of `cols x rows` tiles of `S x S` (S = image_size, 448), the
grid chosen among the `cols*rows in [min_num, max_num]` candidates by closest aspect ratio, cut
row-major, and followed by a thumbnail (the whole image resized to `S x S`) when there is more
than one tile. Every resize is PIL's bicubic (PIL's default for RGB), as in HF.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def target_ratios(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """Candidate grids (cols, rows) in HF's exact order.

    HF sorts a *set* by cols*rows, so within one product the order is CPython's set iteration
    order; it depends on how the set was filled, so the set is filled the same way here.
    """
    candidates = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    )
    return sorted(candidates, key=lambda ratio: ratio[0] * ratio[1])


def find_closest_aspect_ratio(
    aspect_ratio: float,
    ratios: list[tuple[int, int]],
    *,
    width: int,
    height: int,
    image_size: int,
) -> tuple[int, int]:
    """The grid whose cols/rows is closest to `aspect_ratio` (first one wins, strict <).

    On an exact tie a later grid replaces the current one only when the image has more than half
    the pixels of that grid (`width*height > 0.5 * S*S * cols*rows`), so big images get more tiles.

    Args:
        aspect_ratio: width / height of the original image.
        ratios: candidates in HF order (`target_ratios`).
        width, height: original size in pixels (for the tie rule).
        image_size: tile side S.
    """
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for cols, rows in ratios:
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def tile_grid(width: int, height: int, *, image_size: int, min_num: int, max_num: int) -> tuple[int, int]:
    """(cols, rows) HF chooses for a `width x height` image."""
    return find_closest_aspect_ratio(
        width / height, target_ratios(min_num, max_num), width=width, height=height, image_size=image_size
    )


def num_tiles(width: int, height: int, *, image_size: int, min_num: int, max_num: int,
              use_thumbnail: bool) -> int:
    """Tiles `dynamic_tiles` returns for this size, thumbnail included, without touching pixels."""
    cols, rows = tile_grid(width, height, image_size=image_size, min_num=min_num, max_num=max_num)
    blocks = cols * rows
    return blocks + 1 if use_thumbnail and blocks != 1 else blocks


def dynamic_tiles(
    image: Image.Image,
    *,
    image_size: int,
    min_num: int,
    max_num: int,
    use_thumbnail: bool,
) -> list[Image.Image]:
    """Cut an RGB image into S x S tiles, row-major, thumbnail last (HF `dynamic_preprocess`).

    Args:
        image: RGB PIL image (see `image.load_image`).
        image_size: tile side S.
        min_num, max_num: bounds on cols*rows (config min/max_dynamic_patch).
        use_thumbnail: append the whole image resized to S x S when there is more than one tile.
    """
    width, height = image.size
    cols, rows = tile_grid(width, height, image_size=image_size, min_num=min_num, max_num=max_num)
    resized = image.resize((image_size * cols, image_size * rows), Image.Resampling.BICUBIC)
    tiles = []
    for index in range(cols * rows):
        left, top = (index % cols) * image_size, (index // cols) * image_size
        tiles.append(resized.crop((left, top, left + image_size, top + image_size)))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return tiles


def normalize(tiles: list[Image.Image]) -> np.ndarray:
    """torchvision ToTensor + Normalize(ImageNet) on each tile, in float32 -> [T, 3, S, S].

    Same float32 values as torchvision (see NORMALIZED): bit-identical.
    """
    if not tiles:
        raise ValueError("normalize needs at least one tile")
    out = np.empty((len(tiles), 3, *tiles[0].size[::-1]), dtype=np.float32)  # [T, 3, S, S]
    for tile, dest in zip(tiles, out):
        normalize_into(dest, np.asarray(tile if tile.mode == "RGB" else tile.convert("RGB")))
    return out


def tile_pixel_values(image: Image.Image, *, image_size: int, min_num: int, max_num: int, use_thumbnail: bool,
                      out: np.ndarray | None = None) -> np.ndarray:
    """`normalize(dynamic_tiles(image, ...))` without the PIL tiles: the same values, written once.

    The work is HF's two resizes (grid, thumbnail), one uint8 view each, and a table lookup per
    channel straight into `out` (no float32 temporaries, no tile copies).

    Args:
        image: RGB PIL image.
        image_size, min_num, max_num, use_thumbnail: as dynamic_tiles.
        out: float32 [T, 3, S, S] to fill (T = num_tiles(...)); None: a new array.
    """
    width, height = image.size
    cols, rows = tile_grid(width, height, image_size=image_size, min_num=min_num, max_num=max_num)
    count = cols * rows + (1 if use_thumbnail and cols * rows != 1 else 0)
    if out is None:
        out = np.empty((count, 3, image_size, image_size), dtype=np.float32)
    if out.shape != (count, 3, image_size, image_size) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {[count, 3, image_size, image_size]}, got {out.dtype} {list(out.shape)}")
    grid = np.asarray(image.resize((image_size * cols, image_size * rows), Image.Resampling.BICUBIC))  # [rows*S, cols*S, 3]
    for index in range(cols * rows):  # row-major, as dynamic_tiles crops
        top, left = (index // cols) * image_size, (index % cols) * image_size
        normalize_into(out[index], grid[top:top + image_size, left:left + image_size])
    if count != cols * rows:
        normalize_into(out[-1], np.asarray(image.resize((image_size, image_size), Image.Resampling.BICUBIC)))
    return out


def _lookup_table() -> np.ndarray:
    """[3, 256] float32: NORMALIZED[c, v] = (v / 255 - mean[c]) / std[c], torchvision's float32 ops in its order
    (ToTensor: .div(255); Normalize: .sub_(mean).div_(std), mean and std rounded to float32 first)."""
    values = np.arange(256, dtype=np.float32) / np.float32(255)  # [256]
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None]
    return (values[None, :] - mean) / std


# Each float32 op is correctly rounded, so a pixel's value depends on its byte alone: looking it up
# gives the very bits the full-size arithmetic would.
NORMALIZED = _lookup_table()


def normalize_into(dest: np.ndarray, pixels: np.ndarray) -> None:
    """dest float32 [3, S, S] <- normalized uint8 pixels [S, S, 3] (a strided view is fine)."""
    for channel in range(3):
        np.take(NORMALIZED[channel], pixels[:, :, channel], out=dest[channel], mode="wrap")  # uint8: never wraps
