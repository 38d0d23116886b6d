"""Dynamic tiling and normalization against HF NVLM-D's rules (shared/reference/nvlm-d.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nvlm_deploy.preprocess.tiling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZED,
    dynamic_tiles,
    find_closest_aspect_ratio,
    normalize,
    num_tiles,
    target_ratios,
    tile_grid,
    tile_pixel_values,
)

S = 448
# nvlm-d.md §4: CPython 3.11's order of sorted(set(...), key=i*j) for max 6, (cols, rows).
HF_ORDER_MAX_6 = [(1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1), (6, 1),
                  (2, 3), (1, 6), (3, 2)]


def test_candidate_order_for_max_6_is_hfs():
    assert target_ratios(1, 6) == HF_ORDER_MAX_6


def test_candidates_are_every_grid_in_bounds_once_sorted_by_product():
    ratios = target_ratios(2, 12)
    expected = {(i, j) for i in range(1, 13) for j in range(1, 13) if 2 <= i * j <= 12}
    assert len(ratios) == len(set(ratios)) and set(ratios) == expected
    assert [i * j for i, j in ratios] == sorted(i * j for i, j in ratios)


# Candidates (cols/rows) for max 6 in HF order: (1,1)=1, (1,2)=.5, (2,1)=2, (3,1)=3, (1,3)=.333,
# (4,1)=4, (1,4)=.25, (2,2)=1, (1,5)=.2, (5,1)=5, (6,1)=6, (2,3)=.667, (1,6)=.167, (3,2)=1.5.
# Ties: a later candidate with the same |aspect - ratio| wins iff w*h > 0.5 * 448^2 * cols*rows.
GRID_CASES = [
    # (w, h, expected (cols, rows), tiles incl. thumbnail, reasoning)
    (448, 448, (1, 1), 1, "aspect 1: (1,1) exact; tie with (2,2) but 200704 <= 0.5*448^2*4 = 401408"),
    (1, 1, (1, 1), 1, "aspect 1: tie with (2,2) loses, area 1; one tile, no thumbnail"),
    (633, 633, (1, 1), 1, "aspect 1: 633^2 = 400689 <= 401408, tie keeps (1,1)"),
    (634, 634, (2, 2), 5, "aspect 1: 634^2 = 401956 > 401408, tie switches to (2,2)"),
    (1000, 1000, (2, 2), 5, "aspect 1: 1e6 > 401408 -> (2,2)"),
    (896, 448, (2, 1), 3, "aspect 2: only (2,1) has ratio 2 (4x2 > 6)"),
    (500, 200, (2, 1), 3, "aspect 2.5: (2,1) and (3,1) both 0.5 away; 1e5 <= 0.5*448^2*3 = 301056 keeps (2,1)"),
    (1000, 400, (3, 1), 4, "aspect 2.5: same tie, 4e5 > 301056 switches to (3,1)"),
    (700, 400, (2, 1), 3, "aspect 1.75: (2,1) and (3,2) both 0.25 away; 280000 <= 0.5*448^2*6 = 602112"),
    (1750, 1000, (3, 2), 7, "aspect 1.75: same tie, 1.75e6 > 602112 switches to (3,2)"),
    (800, 600, (3, 2), 7, "aspect 1.333: (1,1)/(2,2) tie at .333 (area wins (2,2)), then (3,2) at .167 is closer"),
    (300, 200, (3, 2), 7, "aspect 1.5: (3,2) exact, no other candidate at 1.5"),
    (500, 100, (5, 1), 6, "aspect 5: (5,1) exact"),
    (400, 1000, (1, 3), 4, "aspect .4: (1,3) .067 away beats (1,2) .1 and (1,4) .15"),
    (300, 1000, (1, 3), 4, "aspect .3: (1,3) .033 away beats (1,4) .05"),
    (10000, 50, (6, 1), 7, "aspect 200: the widest candidate (6,1) is closest"),
    (50, 10000, (1, 6), 7, "aspect .005: the tallest candidate (1,6) is closest"),
]


@pytest.mark.parametrize("width, height, grid, tiles, reason", GRID_CASES,
                         ids=[f"{w}x{h}" for w, h, *_ in GRID_CASES])
def test_tile_grid_follows_hf_rules(width, height, grid, tiles, reason):
    assert tile_grid(width, height, image_size=S, min_num=1, max_num=6) == grid, reason
    assert num_tiles(width, height, image_size=S, min_num=1, max_num=6, use_thumbnail=True) == tiles, reason


def test_tie_rule_is_strict_greater():
    # Called directly as HF does (aspect passed apart from the size): tie (1,1)/(2,2) at aspect 1
    # with image_size 2 has threshold 0.5*2*2*4 = 8. Area 8 keeps (1,1); area 9 switches.
    ratios = target_ratios(1, 6)
    assert find_closest_aspect_ratio(1.0, ratios, width=2, height=4, image_size=2) == (1, 1)
    assert find_closest_aspect_ratio(1.0, ratios, width=3, height=3, image_size=2) == (2, 2)


def test_max_one_tile_is_a_plain_resize():
    assert tile_grid(10000, 50, image_size=S, min_num=1, max_num=1) == (1, 1)
    image = _noise(300, 200)
    (tile,) = dynamic_tiles(image, image_size=S, min_num=1, max_num=1, use_thumbnail=True)
    np.testing.assert_array_equal(np.asarray(tile), np.asarray(image.resize((S, S), Image.BICUBIC)))


def test_tiles_are_cut_row_major():
    # 3x2 grid of solid blocks at exactly the tile size: the resize is the identity, so tile k is block k.
    colors = [(10 * k, 255 - 10 * k, 7 * k) for k in range(6)]
    blocks = np.zeros((2 * S, 3 * S, 3), dtype=np.uint8)
    for k, color in enumerate(colors):
        row, col = divmod(k, 3)
        blocks[row * S:(row + 1) * S, col * S:(col + 1) * S] = color
    tiles = dynamic_tiles(Image.fromarray(blocks), image_size=S, min_num=1, max_num=6, use_thumbnail=True)
    assert len(tiles) == 7
    for tile, color in zip(tiles[:6], colors):
        assert tile.size == (S, S)
        assert (np.asarray(tile) == color).all()


def test_tiles_and_thumbnail_equal_pil_resizes_done_by_hand():
    image = _noise(333, 222)  # aspect 1.5 -> (3,2)
    tiles = dynamic_tiles(image, image_size=S, min_num=1, max_num=6, use_thumbnail=True)
    whole = np.asarray(image.resize((3 * S, 2 * S), Image.BICUBIC))  # [2S, 3S, 3]
    hand = [whole[r * S:(r + 1) * S, c * S:(c + 1) * S] for r in range(2) for c in range(3)]
    hand.append(np.asarray(image.resize((S, S), Image.BICUBIC)))  # thumbnail, last
    assert len(tiles) == len(hand) == 7
    for tile, expected in zip(tiles, hand):
        np.testing.assert_array_equal(np.asarray(tile), expected)
    # and through normalization: the thumbnail's pixel values are bit-identical to the formula
    values = normalize(tiles)
    np.testing.assert_array_equal(values[-1], _formula(hand[-1]))


def test_no_thumbnail_when_disabled_or_single_tile():
    assert len(dynamic_tiles(_noise(300, 200), image_size=S, min_num=1, max_num=6, use_thumbnail=False)) == 6
    assert len(dynamic_tiles(_noise(50, 50), image_size=S, min_num=1, max_num=6, use_thumbnail=True)) == 1


def test_normalize_solid_color_equals_formula():
    color = (200, 100, 30)
    values = normalize([Image.new("RGB", (S, S), color)] * 2)
    assert values.shape == (2, 3, S, S) and values.dtype == np.float32
    for c in range(3):
        expected = (np.float32(color[c]) / np.float32(255) - np.float32(IMAGENET_MEAN[c])) / np.float32(IMAGENET_STD[c])
        assert (values[:, c] == expected).all()
        assert abs(float(expected) - (color[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]) < 1e-6


def test_normalize_is_bit_identical_to_torchvision_ops():
    # torchvision ToTensor: uint8 HWC -> CHW, .to(float32).div(255); Normalize: .sub_(mean).div_(std)
    # with mean/std as float32 tensors. Same torch ops here (torchvision itself is not installed).
    tiles = [_noise(S, S), _noise(S, S).rotate(90)]
    expected = []
    for tile in tiles:
        x = torch.from_numpy(np.array(tile, dtype=np.uint8)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32).view(-1, 1, 1)
        std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32).view(-1, 1, 1)
        expected.append(x.sub_(mean).div_(std).numpy())
    np.testing.assert_array_equal(normalize(tiles), np.stack(expected))


def _formula(pixels: np.ndarray) -> np.ndarray:
    """(x/255 - mean) / std in float32, channel first: [S, S, 3] uint8 -> [3, S, S]."""
    x = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean = np.float32(IMAGENET_MEAN).reshape(3, 1, 1)
    std = np.float32(IMAGENET_STD).reshape(3, 1, 1)
    return (x - mean) / std


def _noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 7919 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _torchvision_ops(pixels: np.ndarray) -> np.ndarray:
    """ToTensor + Normalize as torchvision runs them, on uint8 [..., S, S, 3] -> float32 [..., 3, S, S]."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).movedim(-1, -3).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(mean).div_(std).numpy()


def test_lookup_table_is_bit_identical_for_every_byte_and_channel():
    # a pixel's normalized value depends on its byte and channel only: all 3 x 256 cases, bit for bit
    every = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], (256, 1, 3))  # [H=256, W=1, 3]
    expected = _torchvision_ops(every)[:, :, 0]  # [3, 256]
    assert NORMALIZED.dtype == np.float32
    assert NORMALIZED.view(np.uint32).tobytes() == expected.view(np.uint32).tobytes()


@pytest.mark.parametrize("width, height", [(333, 222), (1920, 1080), (1000, 1000), (50, 10000), (448, 448), (7, 5)])
def test_tile_pixel_values_are_bit_identical_to_the_hf_algorithm(width, height):
    # HF: dynamic_preprocess (PIL tiles) then build_transform per tile; here: resize once, look values up in place
    image = _noise(width, height)
    tiles = dynamic_tiles(image, image_size=S, min_num=1, max_num=6, use_thumbnail=True)
    expected = _torchvision_ops(np.stack([np.asarray(t) for t in tiles]))
    got = tile_pixel_values(image, image_size=S, min_num=1, max_num=6, use_thumbnail=True)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == expected.shape
    assert got.view(np.uint32).tobytes() == expected.view(np.uint32).tobytes()


def test_tile_pixel_values_fills_a_slice_of_a_larger_array():
    image = _noise(896, 448)  # (2,1) + thumbnail
    out = np.full((5, 3, S, S), 7.0, dtype=np.float32)
    tile_pixel_values(image, image_size=S, min_num=1, max_num=6, use_thumbnail=True, out=out[1:4])
    np.testing.assert_array_equal(out[1:4], normalize(dynamic_tiles(image, image_size=S, min_num=1, max_num=6,
                                                                    use_thumbnail=True)))
    assert (out[0] == 7).all() and (out[4] == 7).all()
    with pytest.raises(ValueError, match=r"out must be float32 \[3, 3, 448, 448\]"):
        tile_pixel_values(image, image_size=S, min_num=1, max_num=6, use_thumbnail=True, out=out[:2])
