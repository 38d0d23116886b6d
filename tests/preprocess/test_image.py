"""Image decoding: every input form gives HF's `Image.open(...).convert('RGB')`; bad input is a DeployError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nvlm_deploy.errors import DeployError
from nvlm_deploy.preprocess.image import DEFAULT_MAX_PIXELS, load_image


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _noise(width: int = 40, height: int = 30, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode)


def _png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR says width x height (CRC fixed): the header lies, the pixels are absent."""
    data = bytearray(_encode(Image.new("RGB", (1, 1))))
    data[16:24] = struct.pack(">II", width, height)  # IHDR payload starts at byte 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_bytes_path_and_pil_give_the_same_rgb_pixels(tmp_path, mode):
    original = _noise(mode=mode)
    data = _encode(original)
    path = tmp_path / "noise.png"
    path.write_bytes(data)
    expected = np.asarray(original.convert("RGB"))  # HF: .convert('RGB'), alpha dropped
    for source in (data, bytearray(data), str(path), path, original):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (40, 30)
        np.testing.assert_array_equal(np.asarray(image), expected)


def test_palette_and_gray_images_convert_like_pil():
    gray = _noise().convert("L")
    palette = _noise().convert("P")
    for image in (gray, palette):
        np.testing.assert_array_equal(np.asarray(load_image(_encode(image))), np.asarray(image.convert("RGB")))


def test_jpeg_decodes_like_pil_open():
    data = _encode(_noise(64, 48), "JPEG")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(data)), expected)


def test_not_an_image_bytes():
    with pytest.raises(DeployError, match=r"image #1 of the request is not an image Pillow can read"):
        load_image(b"hello, this is text", name="image #1 of the request")


def test_truncated_png():
    data = _encode(_noise(64, 64))
    with pytest.raises(DeployError, match=r"image #2 of the request is corrupt or truncated"):
        load_image(data[: len(data) // 2], name="image #2 of the request")


def test_zero_pixel_image():
    with pytest.raises(DeployError, match=r"has no pixels \(size 0x5\)"):
        load_image(Image.new("RGB", (0, 5)))


def test_zero_width_png_header_is_rejected():
    # Pillow itself refuses a 0-width PNG header ("cannot identify"); the error still says why.
    with pytest.raises(DeployError, match=r"has no pixels \(size 0x5\)"):
        load_image(_png_claiming_size(0, 5))


def test_over_limit_names_the_limit_and_how_to_raise_it():
    image = Image.new("RGB", (100, 60))
    with pytest.raises(DeployError, match=r"100x60 = 6,000 pixels, over the limit of 5,000 pixels") as info:
        load_image(_encode(image), max_pixels=5000)
    assert "max_pixels" in str(info.value) and "--max-pixels" in str(info.value)
    assert load_image(_encode(image), max_pixels=6000).size == (100, 60)  # at the limit is fine


def test_limit_is_checked_from_the_header_before_decoding():
    # 9000x9000 = 81 MP > 64 MP default; the file holds no such pixels, so only a header check can say so.
    assert 9000 * 9000 > DEFAULT_MAX_PIXELS
    with pytest.raises(DeployError, match=r"9000x9000 = 81,000,000 pixels, over the limit of 64,000,000"):
        load_image(_png_claiming_size(9000, 9000))


def test_pillow_decompression_bomb_is_a_deploy_error():
    # 20000x20000 = 400 MP is over twice Pillow's MAX_IMAGE_PIXELS: Image.open itself refuses it.
    with pytest.raises(DeployError, match=r"decompression-bomb limit"):
        load_image(_png_claiming_size(20000, 20000), max_pixels=10**9)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(DeployError, match=r"nope\.png does not exist"):
        load_image(missing)
    with pytest.raises(DeployError, match=r"image #3 of the request \(.*nope\.png\)"):
        load_image(str(missing), name="image #3 of the request")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(DeployError, match=r"is a directory"):
        load_image(tmp_path)


def test_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"not int"):
        load_image(3)
