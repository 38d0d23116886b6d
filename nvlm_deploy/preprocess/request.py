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
from nvlm_deploy.errors import DeployError
from nvlm_deploy.preprocess.image import ImageInput, load_image
from nvlm_deploy.preprocess.prompt import build_prompt
from nvlm_deploy.preprocess.tiling import dynamic_tiles, normalize
from nvlm_deploy.preprocess.tokenizer import Tokenizer

DEFAULT_MAX_IMAGES = 8  # 8 images x 7 tiles x 261 tokens ~ 14.6k prompt tokens


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
        max_images: most images per request; None: DEFAULT_MAX_IMAGES.
        system_message: None: "Answer the questions.".
    """

    def __init__(self, config: NvlmConfig, tokenizer: Tokenizer, *, max_tiles: int | None = None,
                 max_pixels: int | None = None, max_images: int | None = None,
                 system_message: str | None = None):
        self.config = config
        self.tokenizer = tokenizer
        self.min_tiles = config.min_dynamic_patch if config.dynamic_image_size else 1
        self.max_tiles = _resolve_max_tiles(config, max_tiles)
        self.max_pixels = max_pixels
        self.max_images = DEFAULT_MAX_IMAGES if max_images is None else max_images
        self.system_message = system_message
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
        tiles = [self.tiles(image, name=f"image #{k + 1} of the request") for k, image in enumerate(images)]
        tiles_per_image = tuple(len(t) for t in tiles)
        text = build_prompt(prompt, tiles_per_image, tokens_per_tile=self.tokens_per_tile,
                            system_message=self.system_message, history=history)
        num_image_tokens = sum(tiles_per_image) * self.tokens_per_tile
        input_ids = self._image_slots(self.tokenizer.encode(text), num_image_tokens)
        size = self.config.image_size
        pixel_values = (normalize([tile for image_tiles in tiles for tile in image_tiles]) if tiles
                        else np.zeros((0, 3, size, size), dtype=np.float32))  # [T_total, 3, S, S]
        return PreparedRequest(input_ids=input_ids, pixel_values=pixel_values,
                               tiles_per_image=tiles_per_image, num_image_tokens=num_image_tokens)

    def tiles(self, image: ImageInput, *, name: str | None = None) -> list[Image.Image]:
        """Decode one image and cut it into PIL tiles (thumbnail last)."""
        rgb = load_image(image, max_pixels=self.max_pixels, name=name)
        return dynamic_tiles(rgb, image_size=self.config.image_size, min_num=self.min_tiles,
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
                f"({self.tokens_per_tile} per tile); the prompt text must not contain <|vision_pad|> itself, "
                "and the tokenizer must keep <|vision_pad|> as one special token."
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
