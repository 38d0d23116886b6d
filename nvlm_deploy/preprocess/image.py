"""Image decoding: bytes, a path or a PIL image -> an RGB PIL image, as HF NVLM-D's `load_image`.

HF does `Image.open(f).convert('RGB')`: the first frame of animations, alpha dropped (not
composited), no EXIF rotation. This module does exactly that, plus the checks a server needs: a
pixel limit read from the header before any pixel is decoded, and a clear error for anything
Pillow cannot decode.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from PIL import Image

from nvlm_deploy.errors import DeployError

DEFAULT_MAX_PIXELS = 64_000_000  # 64 megapixels: an 8000x8000 photo; raise with max_pixels=
ImageInput = bytes | bytearray | memoryview | str | os.PathLike | Image.Image

# What Pillow raises on undecodable data: UnidentifiedImageError/OSError (unknown format,
# truncated file), SyntaxError/ValueError/EOFError/struct.error from some format plugins.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


def load_image(source: ImageInput, *, max_pixels: int | None = None, name: str | None = None) -> Image.Image:
    """Decode `source` and convert it to RGB, refusing empty and over-large images.

    Args:
        source: encoded image bytes, a file path, or a PIL image.
        max_pixels: largest width*height accepted (default DEFAULT_MAX_PIXELS).
        name: how errors call the image (e.g. "image #2 of the request"); a path is added to it.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(source, Image.Image):
        label = name or "the image"
        check_size(source.size, max_pixels=limit, label=label)
        return _to_rgb(source, label=label)
    fp, label = _open_source(source, name=name)
    try:
        image = Image.open(fp)  # reads the header only
    except Image.DecompressionBombError as exc:
        raise DeployError(f"{label} is larger than Pillow's decompression-bomb limit ({exc}); "
                          "send a smaller image.") from None
    except _DECODE_ERRORS as exc:
        empty = _png_header_size(fp)
        if empty is not None and 0 in empty:  # Pillow refuses 0-pixel headers as "unidentified"
            check_size(empty, max_pixels=limit, label=label)
        raise DeployError(f"{label} is not an image Pillow can read ({_reason(exc)}); "
                          "send PNG, JPEG, WebP, GIF, BMP or TIFF data.") from None
    with image:
        check_size(image.size, max_pixels=limit, label=label)
        return _to_rgb(image, label=label)


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


def _open_source(source: ImageInput, *, name: str | None) -> tuple[io.BytesIO | Path, str]:
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


def _to_rgb(image: Image.Image, *, label: str) -> Image.Image:
    """HF's `.convert('RGB')`; decoding happens here, so corrupt data surfaces here."""
    try:
        return image.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise DeployError(f"{label} is corrupt or truncated ({_reason(exc)}); send the complete file.") from None


def _png_header_size(fp: io.BytesIO | Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None for anything else."""
    if isinstance(fp, io.BytesIO):
        head = fp.getvalue()[:24]
    else:
        with fp.open("rb") as f:
            head = f.read(24)
    if len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
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
    if max_bytes is not None and len(payload) * 3 // 4 > max_bytes:
        raise DeployError(f"the image is larger than the limit of {max_bytes} bytes.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DeployError(f"the data: URL is not valid base64 ({exc}).") from None
