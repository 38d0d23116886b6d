"""THE request limits of one deployment target, and every size derived from them.

One `DeploymentLimits` per target, stored in the target's `manifest.json`. The vision engine's
tile profile, the decoder engine's prompt table and lengths, preprocessing's checks and the
packaged Triton configs all read it; none of them re-derives a limit.

Tiles: `max_tiles_before_thumbnail` is HF NVLM-D's `max_num` (the dynamic tiling grid: 6 for
NVLM-D); `max_tiles_per_image` adds the thumbnail (7). Image tokens per tile come from the model
config (256 for NVLM-D, 16 for the demo model), never from a flag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nvlm_deploy.errors import DeployError

if TYPE_CHECKING:
    from nvlm_deploy.config import NvlmConfig

DEFAULT_MAX_IMAGES = 1
DEFAULT_TEXT_TOKENS = 1024  # prompt tokens besides image tokens, when max_input_len is not given
DEFAULT_MAX_OUTPUT_LEN = 1024
DEFAULT_MAX_BATCH_SIZE = 8
TRTLLM_DEFAULT_MAX_NUM_TOKENS = 8192  # trtllm-build's BuildConfig default (TensorRT-LLM 1.2)
MAX_BEAM_WIDTH = 1  # engines are built for one beam (trtllm-build --max_beam_width); the CPU runtime decodes one

# The limits a user chooses (CLI flag = field name with dashes); everything else is derived.
CHOICE_FIELDS = ("max_images", "max_tiles_before_thumbnail", "max_input_len", "max_output_len", "max_batch_size")


@dataclass(frozen=True)
class DeploymentLimits:
    tokens_per_tile: int  # from the model config
    thumbnail: bool  # model config use_thumbnail: a thumbnail follows the grid when the grid has > 1 tile
    max_images: int  # images per request
    max_tiles_before_thumbnail: int  # HF max_num: the dynamic tiling grid of one image
    max_input_len: int  # prompt tokens per request, image tokens included
    max_output_len: int  # generated tokens per request
    max_batch_size: int  # requests batched together

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "thumbnail":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DeployError(f"limit {field.name} must be a positive integer, got {value!r} "
                                  f"(--{field.name.replace('_', '-')}).")
        if self.max_input_len <= self.image_tokens_per_image:
            raise DeployError(
                f"--max-input-len {self.max_input_len} leaves no room for text beside one image at its most "
                f"tiles ({self.max_tiles_per_image} tiles x {self.tokens_per_tile} tokens = "
                f"{self.image_tokens_per_image} image tokens); raise --max-input-len or lower "
                "--max-tiles-before-thumbnail.")
        if self.max_images * self.tokens_per_tile >= self.max_input_len:
            raise DeployError(
                f"--max-images {self.max_images} can never be reached: even one-tile images take "
                f"{self.max_images} x {self.tokens_per_tile} = {self.max_images * self.tokens_per_tile} prompt "
                f"tokens, not below --max-input-len {self.max_input_len}; lower --max-images or raise "
                "--max-input-len.")

    @classmethod
    def for_model(cls, config: "NvlmConfig", **choices: int | None) -> "DeploymentLimits":
        """Limits for `config`'s model; a choice left None takes its default.

        Args:
            config: the model (tokens per tile, thumbnail, tiling grid, positions).
            choices: CHOICE_FIELDS values.
        """
        unknown = set(choices) - set(CHOICE_FIELDS)
        if unknown:
            raise TypeError(f"unknown limits {sorted(unknown)}")
        def chosen(name: str, default: int) -> int:
            value = choices.get(name)
            return default if value is None else value

        tiles = chosen("max_tiles_before_thumbnail", config.max_dynamic_patch)
        images = chosen("max_images", DEFAULT_MAX_IMAGES)
        per_image = (tiles + (1 if config.use_thumbnail and tiles > 1 else 0)) * config.tokens_per_tile
        return cls(tokens_per_tile=config.tokens_per_tile, thumbnail=config.use_thumbnail, max_images=images,
                   max_tiles_before_thumbnail=tiles,
                   max_input_len=chosen("max_input_len", images * per_image + DEFAULT_TEXT_TOKENS),
                   max_output_len=chosen("max_output_len", DEFAULT_MAX_OUTPUT_LEN),
                   max_batch_size=chosen("max_batch_size", DEFAULT_MAX_BATCH_SIZE)).within_model(config)

    def within_model(self, config: "NvlmConfig") -> "DeploymentLimits":
        """These limits, refused when one request's sequence (prompt + answer) would run past the decoder's
        positions: the decoder was trained on, and its RoPE is exact below, max_position_embeddings."""
        positions = config.llm.max_position_embeddings
        if self.max_seq_len > positions:
            raise DeployError(
                f"max_input_len {self.max_input_len} + max_output_len {self.max_output_len} = {self.max_seq_len} "
                f"positions, more than the model's max_position_embeddings {positions} (with --max-images "
                f"{self.max_images} x {self.image_tokens_per_image} image tokens per image); lower --max-images, "
                "--max-tiles-before-thumbnail, --max-input-len or --max-output-len.")
        return self

    # ---- derived sizes ----

    @property
    def max_tiles_per_image(self) -> int:
        """Tiles of one image, thumbnail included."""
        grid = self.max_tiles_before_thumbnail
        return grid + (1 if self.thumbnail and grid > 1 else 0)

    @property
    def image_tokens_per_image(self) -> int:
        return self.max_tiles_per_image * self.tokens_per_tile

    @property
    def max_tiles_per_request(self) -> int:
        """Tiles of one request's images together: what one vision-encoder call must take."""
        return self.max_images * self.max_tiles_per_image

    @property
    def prompt_table_rows_per_request(self) -> int:
        """Rows of one request's prompt table (= its image tokens, = prompt_vocab_size at most)."""
        return self.max_tiles_per_request * self.tokens_per_tile

    @property
    def max_prompt_embedding_table_size(self) -> int:
        """trtllm-build's flag: max_batch_size x rows per request (TensorRT-LLM splits it per request,
        batch_manager/promptTuningBuffers.cpp)."""
        return self.max_batch_size * self.prompt_table_rows_per_request

    def max_prompt_bytes(self, longest_token_bytes: int) -> int:
        """Bytes of request text beyond which it cannot tokenize within max_input_len (every token is at
        most `longest_token_bytes` long): refused before tokenizing, so a huge prompt costs no CPU time.
        tritonserver 2.51 has no request-size flag; this is the text's cap."""
        return self.max_input_len * longest_token_bytes

    @property
    def max_seq_len(self) -> int:
        return self.max_input_len + self.max_output_len

    @property
    def max_num_tokens(self) -> int:
        """Tokens per engine step: trtllm-build's default, raised so one whole prompt fits a step
        (without chunked context a prompt is one context step)."""
        return max(TRTLLM_DEFAULT_MAX_NUM_TOKENS, self.max_input_len)

    # ---- comparison and storage ----

    def choices(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in CHOICE_FIELDS}

    def covers(self, other: "DeploymentLimits") -> list[str]:
        """What `other` asks beyond these limits, one phrase each ([] when these limits cover it)."""
        return [f"{name} {getattr(other, name)} > {getattr(self, name)}" for name in CHOICE_FIELDS
                if getattr(other, name) > getattr(self, name)]

    def replace(self, **choices: int | None) -> "DeploymentLimits":
        """These limits with some choices changed (None keeps the current value)."""
        return dataclasses.replace(self, **{k: v for k, v in choices.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        derived = {name: getattr(self, name) for name in (
            "max_tiles_per_image", "max_tiles_per_request", "prompt_table_rows_per_request",
            "max_prompt_embedding_table_size", "max_seq_len", "max_num_tokens")}
        return {**dataclasses.asdict(self), "derived": derived}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "manifest") -> "DeploymentLimits":
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise DeployError(f"{source}: limits lack {missing}; re-run the stage that wrote it.")
        return cls(**{n: data[n] for n in names})


def add_limit_arguments(parser, *, note: str = "") -> None:
    """The limit flags, the same on every command that takes them (argparse group)."""
    group = parser.add_argument_group(
        "deployment limits (one set per target, stored in its manifest.json" + (f"; {note}" if note else "") + ")")
    group.add_argument("--max-images", type=int, default=None,
                       help=f"images per request (default: the target's, else {DEFAULT_MAX_IMAGES})")
    group.add_argument("--max-tiles-before-thumbnail", type=int, default=None,
                       help="tiling grid of one image, thumbnail not counted (HF max_num; default: the model's "
                            "max_dynamic_patch, 6 for NVLM-D)")
    group.add_argument("--max-input-len", type=int, default=None,
                       help=f"prompt tokens incl. image tokens (default: image tokens + {DEFAULT_TEXT_TOKENS})")
    group.add_argument("--max-output-len", type=int, default=None,
                       help=f"generated tokens per request (default {DEFAULT_MAX_OUTPUT_LEN})")
    group.add_argument("--max-batch-size", type=int, default=None,
                       help=f"requests batched together (default {DEFAULT_MAX_BATCH_SIZE})")


def limit_choices(args) -> dict[str, int | None]:
    """The limit flags of an argparse namespace (None where not given)."""
    return {name: getattr(args, name) for name in CHOICE_FIELDS}
