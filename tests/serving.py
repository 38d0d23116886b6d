"""Constants and helpers of the serving tests (the fixtures are in tests/conftest.py)."""

from __future__ import annotations

import io

# small limits so image requests stay quick: <= 2 tiles + thumbnail per image, <= 2 images
LIMITS = dict(max_images=2, max_tiles_before_thumbnail=2, max_input_len=2048, max_output_len=64, max_batch_size=8)


def png_bytes(size=(640, 480), color=(200, 30, 30), *, shape_color=(20, 200, 40)) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).ellipse([size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2], fill=shape_color)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


MULTIBYTE_TEXT = "日🙂é"  # E6 97 A5 | F0 9F 99 82 | C3 A9: nine distinct bytes, each its own token


def byte_token_ids(tokenizer, text: str) -> list[int]:
    """One byte-level token per UTF-8 byte of `text` (every multi-byte character split across tokens)."""
    from nvlm_deploy.backend.detokenize import _byte_level_alphabet

    char_of = {b: c for c, b in _byte_level_alphabet().items()}
    return [tokenizer.token_id(char_of[b]) for b in text.encode("utf-8")]
