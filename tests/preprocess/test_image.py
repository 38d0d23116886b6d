"""Image decoding: every input form gives HF's `Image.open(...).convert('RGB')`; bad input is a DeployError."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nvlm_deploy.errors import DeployError
from nvlm_deploy.preprocess.image import DEFAULT_MAX_PIXELS, OPEN_FORMATS, load_image


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
    with pytest.raises(DeployError, match=r"image #1 of the request is not an image this server reads"):
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
    with pytest.raises(DeployError, match=r"decompression bomb\), over the limit of 1,000,000,000 pixels"):
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


# ---- hostile images (issue 14): refused by name before any external decoder, or read as HF reads them ----

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
REFUSED = {
    "eps": (EPS, "a PostScript/EPS file"),
    "binary eps": (b"\xc5\xd0\xd3\xc6" + bytes(28), "an EPS file"),
    "pdf": (b"%PDF-1.7\n1 0 obj <<>> endobj\n", "a PDF document"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "an SVG drawing"),
    "xml svg": (b'\xef\xbb\xbf  <?xml version="1.0"?>\n<svg/>', "an XML (SVG) document"),
}


@pytest.fixture
def no_ghostscript(monkeypatch):
    """Fail the test if Pillow's EPS plugin (the Ghostscript path) is consulted at all."""
    from PIL import EpsImagePlugin

    def reached(*args, **kwargs):
        raise AssertionError("Pillow's EPS/Ghostscript path was reached")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", reached)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", reached)


@pytest.mark.parametrize("kind", list(REFUSED))
def test_vector_and_document_formats_are_refused_by_name(kind, no_ghostscript):
    data, what = REFUSED[kind]
    with pytest.raises(DeployError, match=rf"image #2 of the request is {re.escape(what)}, which this server does "
                                          r"not decode; send a raster image \(PNG, JPEG"):
        load_image(data, name="image #2 of the request")


def test_only_accepted_formats_are_ever_tried(no_ghostscript, monkeypatch):
    # without the signature table's early refusal, an EPS file still never reaches Pillow's EPS plugin
    from nvlm_deploy.preprocess import image as image_module

    monkeypatch.setattr(image_module, "REFUSED_SIGNATURES", ())
    with pytest.raises(DeployError, match="is not an image this server reads"):
        load_image(EPS)
    assert set(OPEN_FORMATS) == {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"}


def test_pil_image_of_a_refused_format_is_refused(tmp_path):
    image = _noise()
    image.format = "EPS"  # as Image.open would have set it
    with pytest.raises(DeployError, match="is in EPS format; only PNG, JPEG"):
        load_image(image)


def test_zero_byte_image():
    with pytest.raises(DeployError, match=r"image #1 of the request is empty \(0 bytes\); send the image file"):
        load_image(b"", name="image #1 of the request")


def _png_rows(width: int, height: int, rows: int) -> bytes:
    """An 8-bit RGB PNG whose header says width x height and whose (valid, complete) zlib data holds `rows` rows."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    raw = b"".join(b"\x00" + bytes(range(256)) * (width * 3 // 256) + bytes(width * 3 % 256) for _ in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_png_with_fewer_rows_than_its_header_is_refused_not_padded():
    # issue 14's case: the header says 8000x8000, the data holds 10 rows (Pillow pads the rest with black)
    with pytest.raises(DeployError, match=r"image #1 of the request is truncated: its header says 8000x8000 pixels "
                                          r"but its data holds only 240,010 of the 192,008,000 bytes"):
        load_image(_png_rows(8000, 8000, 10), name="image #1 of the request")
    with pytest.raises(DeployError, match="truncated"):
        load_image(_png_rows(300, 200, 199))
    assert load_image(_png_rows(300, 200, 200)).size == (300, 200)  # complete, and its last row is black


def test_decompression_bomb_is_our_error_without_pillows_warning():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DeployError, match=r"10000x10000 = 100,000,000 pixels, over the limit of 64,000,000"):
            load_image(_png_claiming_size(10000, 10000))  # over Pillow's warning threshold (89 MP)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def _hf(data: bytes) -> np.ndarray:
    """HF NVLM-D's load_image: Image.open(...).convert('RGB')."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_modes_convert_as_hf_does():
    rgba = _noise(mode="RGBA")
    palette_alpha = _noise().convert("P")
    palette_alpha.info["transparency"] = 3
    cases = {
        "la": _encode(rgba.convert("LA")),
        "palette+alpha": _encode(palette_alpha),
        "cmyk jpeg": _encode(_noise().convert("CMYK"), "JPEG"),
        "rgba webp": _encode(rgba, "WEBP"),
        "bmp": _encode(_noise(), "BMP"),
        "tiff": _encode(_noise(), "TIFF"),
    }
    for kind, data in cases.items():
        image = load_image(data)
        assert image.mode == "RGB", kind
        np.testing.assert_array_equal(np.asarray(image), _hf(data), err_msg=kind)


def test_sixteen_bit_images_keep_their_high_byte():
    values = (np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) * 53 % 65536).astype(np.uint16)
    gray16 = _encode(Image.fromarray(values))  # 16-bit grayscale PNG: Pillow mode I;16
    assert Image.open(io.BytesIO(gray16)).mode.startswith("I;16")
    got = np.asarray(load_image(gray16))
    np.testing.assert_array_equal(got, np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2))


def test_animated_images_give_their_first_frame():
    frames = [Image.new("RGB", (20, 10), color) for color in ((250, 0, 0), (0, 250, 0))]
    for fmt in ("GIF", "PNG", "WEBP"):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **({"lossless": True} if fmt == "WEBP" else {}))
        assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2, fmt
        image = load_image(buf.getvalue())
        np.testing.assert_array_equal(np.asarray(image), _hf(buf.getvalue()), err_msg=fmt)
        assert tuple(np.asarray(image)[5, 5]) == (250, 0, 0) or fmt == "GIF" and np.asarray(image)[5, 5, 0] > 200


def _exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG, left half white, whose EXIF orientation 6 says: turn 90 degrees clockwise to view."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_exif_orientation_is_ignored_by_default_as_hf_and_applied_on_request():
    data = _exif_rotated_jpeg()
    as_hf = load_image(data)
    assert as_hf.size == (40, 20)
    np.testing.assert_array_equal(np.asarray(as_hf), _hf(data))
    turned = load_image(data, exif_transpose=True)
    assert turned.size == (20, 40)
    assert np.asarray(turned)[:20].mean() > 200 and np.asarray(turned)[20:].mean() < 50  # the white half is on top
    original = Image.open(io.BytesIO(data))
    load_image(original, exif_transpose=True)
    assert original.size == (40, 20)  # a caller's image is never turned in place


def test_rgb_files_are_returned_without_a_convert_copy():
    data = _encode(_noise(64, 48), "JPEG")
    image = load_image(data)
    assert image.format == "JPEG" and image.mode == "RGB"  # the decoded file itself, no convert() copy
    np.testing.assert_array_equal(np.asarray(image), _hf(data))
    pil = _noise()
    assert load_image(pil) is pil


def test_interlaced_png_row_count_follows_adam7():
    # Adam7 passes (first column, first row, column step, row step); a complete black image is not "truncated",
    # and the same file one byte of scanlines short is
    width, height = 13, 10
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b"".join(b"\x00" + bytes(3 * -(-(width - x0) // dx))
                   for x0, y0, dx, dy in passes for _ in range(-(-(height - y0) // dy)) if width > x0)

    def png(scanlines: bytes) -> bytes:
        def chunk(kind: bytes, payload: bytes) -> bytes:
            return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1))
                + chunk(b"IDAT", zlib.compress(scanlines)) + chunk(b"IEND", b""))

    assert not np.asarray(load_image(png(raw))).any()
    with pytest.raises(DeployError, match="truncated"):
        load_image(png(raw[:-1]))


def test_interlaced_png_cut_after_a_pass_that_fills_its_last_row_is_refused():
    # height 9: the last row (8) gets pixels from pass 1 onwards, so its pixels are non-zero even when
    # pass 7 (the odd rows) is missing; the data length still tells
    width, height = 16, 9
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2)]  # no pass 7
    raw = b"".join(b"\x00" + b"\xff" * (3 * -(-(width - x0) // dx))
                   for x0, y0, dx, dy in passes for _ in range(-(-(height - y0) // dy)))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.raises(DeployError, match="truncated"):
        load_image(data)
