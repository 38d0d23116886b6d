"""Image decoding: bytes, a path or a PIL image -> an RGB PIL image, as HF NVLM-D's `load_image`.

HF does `Image.open(f).convert('RGB')`: the first frame of animations, alpha dropped (not
composited), palettes and CMYK converted by Pillow, no EXIF rotation. This module does exactly
that, plus what a server needs before any pixel is decoded:

- only raster formats we accept are ever opened (`OPEN_FORMATS`; `Image.open(formats=...)`),
  so SVG, EPS/PostScript and PDF are refused by name and Pillow's Ghostscript path is unreachable;
- a pixel limit read from the header (`max_pixels`), one clear error instead of Pillow's
  decompression-bomb warning;
- empty files, and PNGs whose data holds fewer rows than their header says (Pillow pads those
  with black without a word), are refused.

Deviations from HF, both documented in README.md: 16-bit grayscale (`I;16`) keeps its high byte
(HF's convert clips every value above 255 to white; 16-bit RGB already keeps the high byte), and
`exif_transpose=True` (off by default, as HF) applies the EXIF orientation.

An image that is already RGB is returned as decoded, without `convert`'s full-size copy.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from nvlm_deploy.errors import DeployError

DEFAULT_MAX_PIXELS = 64_000_000  # 64 megapixels: an 8000x8000 photo; raise with max_pixels=
ImageInput = bytes | bytearray | memoryview | str | os.PathLike | Image.Image

# Pillow format ids Image.open may try; every other plugin (EPS via Ghostscript, PDF, ICNS, ...) is
# never consulted. JPEG's opener returns "MPO" for the JPEGs of many cameras (several pictures in one file).
OPEN_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ACCEPTED_FORMATS = (*OPEN_FORMATS, "MPO")
ACCEPTED_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"
# leading bytes -> the kind of file, to name what was refused (these never reach a decoder)
REFUSED_SIGNATURES = (
    (b"%!PS", "a PostScript/EPS file"),
    (b"\xc5\xd0\xd3\xc6", "an EPS file"),
    (b"%PDF", "a PDF document"),
    (b"<svg", "an SVG drawing"),
    (b"<?xml", "an XML (SVG) document"),
    (b"<!DOCTYPE svg", "an SVG drawing"),
)

# What Pillow raises on undecodable data: UnidentifiedImageError/OSError (unknown format,
# truncated file), SyntaxError/ValueError/EOFError/struct.error from some format plugins.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def load_image(source: ImageInput, *, max_pixels: int | None = None, name: str | None = None,
               exif_transpose: bool = False) -> Image.Image:
    """Decode `source` and convert it to RGB, refusing what a server must not decode.

    Args:
        source: encoded image bytes, a file path, or a PIL image.
        max_pixels: largest width*height accepted (default DEFAULT_MAX_PIXELS).
        name: how errors call the image (e.g. "image #2 of the request"); a path is added to it.
        exif_transpose: turn the image as its EXIF orientation says (HF does not: off by default).
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(source, Image.Image):
        label = name or "the image"
        if source.format is not None and source.format not in ACCEPTED_FORMATS:
            raise DeployError(f"{label} is in {source.format} format; only {ACCEPTED_NAMES} images are accepted.")
        check_size(source.size, max_pixels=limit, label=label)
        return _to_rgb(source, label=label, exif_transpose=exif_transpose, owned=False)
    image, label, fp = _open(source, max_pixels=limit, name=name)
    return _to_rgb(image, label=label, exif_transpose=exif_transpose, owned=True, encoded=fp)


def open_image(source: bytes | bytearray | memoryview | str | os.PathLike, *, max_pixels: int | None = None,
               name: str | None = None) -> tuple[Image.Image, str]:
    """Read the header only: (lazy PIL image, label for errors), or a DeployError naming the image and the fix.

    Only ACCEPTED_FORMATS are tried; the size is checked against `max_pixels` before any pixel is decoded.
    """
    image, label, _ = _open(source, max_pixels=max_pixels, name=name)
    return image, label


def _open(source, *, max_pixels: int | None, name: str | None) -> tuple[Image.Image, str, io.BytesIO | Path]:
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    fp, label = _open_source(source, name=name)
    head = _head(fp)
    if not head:
        raise DeployError(f"{label} is empty (0 bytes); send the image file's contents.")
    refused = _refused_kind(head)
    if refused:
        raise DeployError(f"{label} is {refused}, which this server does not decode; send a raster image "
                          f"({ACCEPTED_NAMES}), e.g. the drawing exported as PNG.")
    _register_accepted_plugins()
    try:
        with warnings.catch_warnings():  # our pixel limit below is the check; no warning beside it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=OPEN_FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise DeployError(f"{label} has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb), over "
                          f"the limit of {limit:,} pixels; downscale it.") from None
    except _DECODE_ERRORS as exc:
        empty = _png_header_size(head)
        if empty is not None and 0 in empty:  # Pillow refuses 0-pixel headers as "unidentified"
            check_size(empty, max_pixels=limit, label=label)
        raise DeployError(f"{label} is not an image this server reads ({_reason(exc)}); "
                          f"send {ACCEPTED_NAMES} data.") from None
    check_size(image.size, max_pixels=limit, label=label)
    return image, label, fp


def _register_accepted_plugins() -> None:
    """Import the accepted formats' Pillow plugins (importing registers them; Image.open(formats=...)
    finds only registered ones, and never the others)."""
    from PIL import (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin,  # noqa: F401
                     TiffImagePlugin, WebPImagePlugin)


def check_size(size: tuple[int, int], *, max_pixels: int, label: str) -> None:
    """Raise a DeployError for a 0-pixel image or one with more than `max_pixels` pixels."""
    width, height = size
    if width <= 0 or height <= 0:
        raise DeployError(f"{label} has no pixels (size {width}x{height}); send a non-empty image.")
    if width * height > max_pixels:
        raise DeployError(
            f"{label} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "pixels; downscale it, or raise the limit (Preprocessor(max_pixels=...), "
            "--max-pixels on the command line)."
        )


def _open_source(source, *, name: str | None) -> tuple[io.BytesIO | Path, str]:
    """A file object or path for Image.open, and the label errors use."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), name or "the image bytes"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = f"{name} ({path})" if name else str(path)
        if not path.is_file():
            what = "is a directory, not an image file" if path.is_dir() else "does not exist"
            raise DeployError(f"{label}: {path} {what}; give the path of an image file.")
        return path, label
    raise TypeError(f"an image must be bytes, a path or a PIL.Image.Image, not {type(source).__name__}")


def _head(fp: io.BytesIO | Path, size: int = 64) -> bytes:
    if isinstance(fp, io.BytesIO):
        head = fp.read(size)  # (getbuffer() would make the BytesIO copy the bytes it shares)
        fp.seek(0)
        return head
    with fp.open("rb") as f:
        return f.read(size)


def _refused_kind(head: bytes) -> str | None:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")  # UTF-8 BOM and whitespace before an XML/SVG root
    for signature, kind in REFUSED_SIGNATURES:
        if text[:len(signature)].lower() == signature.lower():
            return kind
    return None


def _to_rgb(image: Image.Image, *, label: str, exif_transpose: bool, owned: bool,
            encoded: io.BytesIO | Path | None = None) -> Image.Image:
    """HF's `.convert('RGB')` (first frame); decoding happens here, so corrupt data surfaces here.

    `owned`: the image came from open_image, so it may be turned in place and is closed after converting;
    `encoded`: its file, to check a PNG's data length.
    """
    opened = image
    try:
        image.load()
        _check_complete(image, encoded, label=label)
        if exif_transpose and owned:
            ImageOps.exif_transpose(image, in_place=True)
        elif exif_transpose:  # never turn the caller's image
            image = ImageOps.exif_transpose(image)
        if image.mode == "RGB" and not getattr(image, "is_animated", False):
            return image  # already what convert would copy; nothing downstream writes to it
        if image.mode.startswith("I;16"):  # 16-bit gray: its high byte, as Pillow reads 16-bit RGB
            image = _high_byte(image)
        rgb = image.convert("RGB")
    except DeployError:
        raise
    except _DECODE_ERRORS as exc:
        raise DeployError(f"{label} is corrupt or truncated ({_reason(exc)}); send the complete file.") from None
    if owned:
        opened.close()
    return rgb


def _high_byte(image: Image.Image) -> Image.Image:
    return Image.fromarray((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8), "L")


def _check_complete(image: Image.Image, encoded: io.BytesIO | Path | None, *, label: str) -> None:
    """Refuse a PNG whose data ends (with a valid zlib end) before its last row: Pillow pads it with zeros.

    A non-interlaced PNG whose last row decoded non-zero is complete (rows arrive in order), so only
    the others (rare) are inflated again; an interlaced one can end after a pass that filled part of it.
    """
    if image.format != "PNG" or encoded is None:
        return
    width, height = image.size
    if not image.info.get("interlace") and image.crop((0, height - 1, width, height)).tobytes().strip(b"\0"):
        return
    data = encoded.getvalue() if isinstance(encoded, io.BytesIO) else encoded.read_bytes()
    expected, got = _png_raw_sizes(data)
    if got < expected:
        raise DeployError(f"{label} is truncated: its header says {width}x{height} pixels but its data holds only "
                          f"{got:,} of the {expected:,} bytes they need; send the complete file.")


def _png_raw_sizes(data: bytes) -> tuple[int, int]:
    """(bytes the IHDR says the filtered scanlines take, bytes the IDAT chunks inflate to)."""
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", bytes(data[16:29]))
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color, 4)
    passes = ([(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
              if interlace else [(0, 0, 1, 1)])
    expected = 0
    for x0, y0, dx, dy in passes:  # Adam7 passes: (first column, first row, column step, row step)
        cols, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if cols > 0 and rows > 0:
            expected += rows * (1 + -(-(cols * channels * depth) // 8))
    inflater, got, pos = zlib.decompressobj(), 0, 8
    while pos + 8 <= len(data) and got < expected:
        length, kind = struct.unpack(">I4s", bytes(data[pos:pos + 8]))
        if kind == b"IDAT":
            chunk = data[pos + 8:pos + 8 + length]
            while chunk and got < expected:  # bounded output per call: memory stays small
                got += len(inflater.decompress(chunk, 1 << 20))
                chunk = inflater.unconsumed_tail
        pos += 12 + length
    return expected, got


def _png_header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None for anything else."""
    if len(head) >= 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "cannot identify image file" in text:  # Pillow's text names a BytesIO object; not useful
        return "unknown or invalid image format"
    return text or type(exc).__name__


def data_url_bytes(url: str, *, max_bytes: int | None = None) -> bytes:
    """The image file in a base64 `data:` URL (`data:image/png;base64,...`); DeployError naming what is wrong.

    Args:
        url: the URL.
        max_bytes: refuse a larger image (checked before decoding); None: no limit.
    """
    import base64
    import binascii

    header, sep, payload = url.partition(",")
    media, *flags = header.removeprefix("data:").split(";")
    if not sep or "base64" not in flags:
        raise DeployError("an image data: URL must be base64, like data:image/png;base64,iVBOR...")
    if media and not media.startswith("image/"):
        raise DeployError(f"the data: URL's media type is {media!r}; send an image (image/png, image/jpeg, ...).")
    if media in ("image/svg+xml", "image/svg"):
        raise DeployError(f"the data: URL holds an SVG drawing ({media}), which this server does not decode; "
                          f"send a raster image ({ACCEPTED_NAMES}), e.g. the drawing exported as PNG.")
    if max_bytes is not None and len(payload) * 3 // 4 > max_bytes:
        raise DeployError(f"the image is larger than the limit of {max_bytes} bytes.")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DeployError(f"the data: URL is not valid base64 ({exc}).") from None
    if not data:
        raise DeployError("the data: URL holds no data (0 bytes); put the base64 of the image file after the comma.")
    return data
