"""One request's model inputs: prompt ids with image slots, and the tiles of every image.

Image slots follow TensorRT-LLM's prompt-table convention (DESIGN.md, "Image slots in the
prompt"): each `<|vision_pad|>` id becomes `vocab_size + k`, k counting the request's image
tokens from 0, so row k of the prompt table (the vision outputs of all images, concatenated in
order) fills slot k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.contracts.limits import DEFAULT_MAX_IMAGES
from nvlm_deploy.errors import DeployError
from nvlm_deploy.preprocess.image import ImageInput, load_image
from nvlm_deploy.preprocess.prompt import prompt_segments
from nvlm_deploy.preprocess.tiling import dynamic_tiles, num_tiles, tile_pixel_values
from nvlm_deploy.preprocess.tokenizer import DEFAULT_SPECIAL_TOKEN_POLICY, SPECIAL_TOKEN_POLICIES, Tokenizer


@dataclass(frozen=True)
class PreparedRequest:
    input_ids: list[int]  # prompt ids; image slots are vocab_size + k, k = 0.. across all images
    pixel_values: np.ndarray  # float32 [T_total, 3, S, S]: every image's tiles in order, thumbnail last
    tiles_per_image: tuple[int, ...]
    num_image_tokens: int  # T_total * tokens_per_tile (= prompt_vocab_size; 0 for text-only)


class Preprocessor:
    """Prompt + images -> PreparedRequest, numerically identical to HF NVLM-D `chat()`.

    Args:
        config: the model's config (tile size, tiling bounds, tokens per tile, vocab size).
        tokenizer: the model's tokenizer.
        max_tiles: most tiles per image before the thumbnail (HF `max_num`); None: the config's
            max_dynamic_patch (6 for NVLM-D).
        max_pixels: largest width*height per image; None: image.DEFAULT_MAX_PIXELS.
        max_images: most images per request; None: contracts.limits.DEFAULT_MAX_IMAGES.
        system_message: None: "Answer the questions.".
        exif_transpose: turn images as their EXIF orientation says (HF does not; off by default).
        special_tokens_in_text: "escape" (default: control tokens written in the request's text are
            tokenized as plain text) or "refuse" (such a request is an error); never obeyed.
    """

    def __init__(self, config: NvlmConfig, tokenizer: Tokenizer, *, max_tiles: int | None = None,
                 max_pixels: int | None = None, max_images: int | None = None,
                 system_message: str | None = None, exif_transpose: bool = False,
                 special_tokens_in_text: str | None = None):
        self.config = config
        self.tokenizer = tokenizer
        self.min_tiles = config.min_dynamic_patch if config.dynamic_image_size else 1
        self.max_tiles = _resolve_max_tiles(config, max_tiles)
        self.max_pixels = max_pixels
        self.max_images = DEFAULT_MAX_IMAGES if max_images is None else max_images
        self.system_message = system_message
        self.exif_transpose = exif_transpose
        self.special_tokens_in_text = special_tokens_in_text or DEFAULT_SPECIAL_TOKEN_POLICY
        if self.special_tokens_in_text not in SPECIAL_TOKEN_POLICIES:
            raise DeployError(f"special_tokens_in_text must be one of {list(SPECIAL_TOKEN_POLICIES)}, "
                              f"got {special_tokens_in_text!r}.")
        _check_positive(max_pixels=max_pixels, max_images=self.max_images)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, **kwargs) -> "Preprocessor":
        """Config and tokenizer from a HF NVLM-D checkpoint directory; kwargs as `__init__`."""
        return cls(NvlmConfig.from_hf(model_dir), Tokenizer.load(model_dir), **kwargs)

    @property
    def tokens_per_tile(self) -> int:
        return self.config.tokens_per_tile

    def prepare(self, prompt: str, images: Sequence[ImageInput] = (), *,
                history: Sequence[tuple[str, str]] = ()) -> PreparedRequest:
        """Tokenized prompt with image slots, and the normalized tiles of `images` in order.

        Args:
            prompt: the user's text; `<image>` marks where each image goes (see prompt.build_prompt).
            images: encoded bytes, paths or PIL images (of every turn, in order).
            history: earlier turns as (role, content) pairs (prompt.chatml).
        """
        images = self._check_request(prompt, images)
        rgbs = [self.load(image, name=f"image #{k + 1} of the request") for k, image in enumerate(images)]
        tiles_per_image = tuple(self.num_tiles(rgb) for rgb in rgbs)
        segments = prompt_segments(prompt, tiles_per_image, tokens_per_tile=self.tokens_per_tile,
                                   system_message=self.system_message, history=history)
        num_image_tokens = sum(tiles_per_image) * self.tokens_per_tile
        ids = self.tokenizer.encode_segments(segments, policy=self.special_tokens_in_text)
        input_ids = self._image_slots(ids, num_image_tokens)
        size = self.config.image_size
        pixel_values = np.empty((sum(tiles_per_image), 3, size, size), dtype=np.float32)  # [T_total, 3, S, S]
        start = 0
        for rgb, count in zip(rgbs, tiles_per_image):  # each image's tiles written in place, once
            tile_pixel_values(rgb, image_size=size, min_num=self.min_tiles, max_num=self.max_tiles,
                              use_thumbnail=self.config.use_thumbnail, out=pixel_values[start:start + count])
            start += count
        return PreparedRequest(input_ids=input_ids, pixel_values=pixel_values,
                               tiles_per_image=tiles_per_image, num_image_tokens=num_image_tokens)

    def load(self, image: ImageInput, *, name: str | None = None) -> Image.Image:
        """One image decoded to RGB with this preprocessor's checks (image.load_image)."""
        return load_image(image, max_pixels=self.max_pixels, name=name, exif_transpose=self.exif_transpose)

    def num_tiles(self, rgb: Image.Image) -> int:
        """Tiles of one decoded image, thumbnail included."""
        return num_tiles(*rgb.size, image_size=self.config.image_size, min_num=self.min_tiles,
                         max_num=self.max_tiles, use_thumbnail=self.config.use_thumbnail)

    def tiles(self, image: ImageInput, *, name: str | None = None) -> list[Image.Image]:
        """Decode one image and cut it into PIL tiles (thumbnail last); `prepare` skips the PIL tiles."""
        return dynamic_tiles(self.load(image, name=name), image_size=self.config.image_size, min_num=self.min_tiles,
                             max_num=self.max_tiles, use_thumbnail=self.config.use_thumbnail)

    def _check_request(self, prompt: str, images: Sequence[ImageInput]) -> list[ImageInput]:
        if not isinstance(prompt, str):
            raise TypeError(f"the prompt must be a str, not {type(prompt).__name__}")
        if not prompt.strip():
            raise DeployError("the prompt is empty; send the question as text (images go with `<image>` "
                              "markers or are put before the text).")
        if isinstance(images, (str, bytes, bytearray)) or not isinstance(images, Sequence):
            raise TypeError(f"images must be a sequence of images, not {type(images).__name__}")
        if len(images) > self.max_images:
            raise DeployError(f"the request has {len(images)} images, more than the limit of {self.max_images} "
                              "per request; send fewer images or raise the limit (max_images / --max-images).")
        return list(images)

    def _image_slots(self, ids: list[int], num_image_tokens: int) -> list[int]:
        """Replace the k-th `<|vision_pad|>` id by vocab_size + k."""
        pad = self.tokenizer.image_pad_id
        found = sum(1 for i in ids if i == pad)
        if found != num_image_tokens:
            raise DeployError(
                f"the tokenized prompt has {found} <|vision_pad|> tokens but the images need {num_image_tokens} "
                f"({self.tokens_per_tile} per tile); the tokenizer must keep <|vision_pad|> as one special token."
            )
        out, k = [], self.config.llm.vocab_size
        for i in ids:
            if i == pad:
                i, k = k, k + 1
            out.append(i)
        return out


def _resolve_max_tiles(config: NvlmConfig, max_tiles: int | None) -> int:
    if not config.dynamic_image_size:
        return 1  # HF without dynamic tiling: one S x S resize, which is the 1x1 grid
    value = config.max_dynamic_patch if max_tiles is None else max_tiles
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DeployError(f"max_tiles must be an integer >= 1 (tiles per image before the thumbnail), "
                          f"got {max_tiles!r}.")
    if value < config.min_dynamic_patch:
        raise DeployError(f"max_tiles {value} is below the model's min_dynamic_patch "
                          f"{config.min_dynamic_patch}; use max_tiles >= {config.min_dynamic_patch}.")
    return value


def _check_positive(**limits: int | None) -> None:
    for name, value in limits.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DeployError(f"{name} must be an integer >= 1, got {value!r}.")
