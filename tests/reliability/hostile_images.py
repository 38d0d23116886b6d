"""Hostile and unusual image files for the catalogue, made in memory with Pillow (no files checked in)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def rgb(size=(320, 240), color=(200, 30, 30)) -> Image.Image:
    image = Image.new("RGB", size, color)
    image.paste((20, 200, 40), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    return image


def png(size=(320, 240)) -> bytes:
    return _save(rgb(size), "PNG")


def jpeg(size=(320, 240)) -> bytes:
    return _save(rgb(size), "JPEG", quality=90)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, rows: int = 10) -> bytes:
    """An 8-bit RGB PNG whose header says width x height but whose data holds `rows` rows."""
    raw = b"".join(b"\x00" + b"\x80" * (3 * width) for _ in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def decompression_bomb() -> bytes:
    """A PNG of a few hundred bytes that claims 100000 x 100000 pixels (10 gigapixels)."""
    return png_header_only(100_000, 100_000, rows=1)


def sixteen_bit_gray() -> bytes:
    return _save(Image.new("I;16", (200, 120), 40000), "PNG")


def sixteen_bit_rgb() -> bytes:
    """16-bit-per-channel RGB PNG written by hand (Pillow cannot write it)."""
    w, h = 64, 48
    raw = b"".join(b"\x00" + struct.pack(">HHH", 60000, 1000, 30000) * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def cmyk_jpeg() -> bytes:
    return _save(rgb().convert("CMYK"), "JPEG")


def palette_alpha_png() -> bytes:
    image = rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 0
    return _save(image, "PNG", transparency=0)


def rgba_png() -> bytes:
    image = rgb().convert("RGBA")
    image.putalpha(128)
    return _save(image, "PNG")


def animated_gif() -> bytes:
    frames = [rgb(color=c).convert("P") for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return _save(rgb((320, 160)), "JPEG", exif=exif.tobytes())


def webp() -> bytes:
    return _save(rgb(), "WEBP")


def bmp() -> bytes:
    return _save(rgb(), "BMP")


def tiff() -> bytes:
    return _save(rgb(), "TIFF")


def ico() -> bytes:
    return _save(rgb((64, 64)), "ICO")


def tiny_1x1() -> bytes:
    return _save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")


def very_wide() -> bytes:
    return _save(Image.new("RGB", (4000, 2), (9, 90, 9)), "PNG")


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
SVG_XML = b'<?xml version="1.0"?>\n' + SVG
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def truncated_jpeg() -> bytes:
    data = jpeg((640, 480))
    return data[: len(data) // 3]


def truncated_png() -> bytes:
    data = png((640, 480))
    return data[: len(data) // 2]


def garbage() -> bytes:
    return bytes(range(256)) * 8
