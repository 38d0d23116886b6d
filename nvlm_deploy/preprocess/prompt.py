"""Prompt text as HF NVLM-D `chat()` builds it (shared/reference/nvlm-d.md §5).

    <|im_start|>system\\n{system}<|im_end|><|im_start|>user\\n{query}<|im_end|><|im_start|>assistant\\n

(chatml, MPT separator style: no newline between turns). `<image>` markers in the text are then
replaced in order, the k-th by the k-th image's placeholder

    <Image><tile_1>{pad x N}<tile_2>{pad x N}...<tile_global_thumbnail>{pad x N}</Image>

with N = tokens_per_tile. The tile tags are plain text; only the pads become image slots.

`prompt_segments` gives the same text cut into pieces that say which are the template's control
tokens (`<|im_start|>`, `<|im_end|>`, the pads) and which are text from the request (system
message, history, query), so the tokenizer never reads control tokens out of the request's text
(`Tokenizer.encode_segments`: user text containing `<|im_end|><|im_start|>system` cannot forge a turn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from nvlm_deploy.errors import DeployError
from nvlm_deploy.preprocess.tokenizer import IMAGE_PAD

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

IMAGE_MARKER = "<image>"
DEFAULT_SYSTEM_MESSAGE = "Answer the questions."
THUMBNAIL_TAG = "<tile_global_thumbnail>"
ROLES = ("system", "user", "assistant")


class Segment(NamedTuple):
    text: str
    control: bool = False  # the template's special tokens, never text from the request
    source: str | None = None  # where request text came from, for errors ("the prompt", "chat_history entry 2")


def tile_tags(num_tiles: int) -> list[str]:
    """`<tile_1>`..`<tile_{T-1}>` then the thumbnail tag; one tile has the thumbnail tag only."""
    return [f"<tile_{i}>" for i in range(1, num_tiles)] + [THUMBNAIL_TAG]


def image_placeholder(num_tiles: int, *, tokens_per_tile: int) -> str:
    """The text one image becomes: `<Image>` + (tag + pad x tokens_per_tile) per tile + `</Image>`."""
    return "".join(segment.text for segment in _placeholder_segments(num_tiles, tokens_per_tile=tokens_per_tile))


def chatml(query: str, *, system_message: str | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
    """The conversation in NVLM-D's chatml template (HF `chat()` with `history`), ready for the answer.

    Args:
        query: the last user message.
        system_message: None means "Answer the questions."; a ("system", text) entry of `history` wins.
        history: earlier turns as (role, content), roles "user" / "assistant" (and "system").
    """
    return "".join(segment.text for segment in _chat_segments(_turns(query, system_message, history), None))


def build_prompt(
    query: str,
    tiles_per_image: Sequence[int],
    *,
    tokens_per_tile: int,
    system_message: str | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> str:
    """The full prompt text of one request, image placeholders included (`prompt_segments` joined).

    Args:
        query: the user's text; `<image>` marks where each image goes. Without any marker,
            one `"<image>\\n"` per image is put in front (HF: a single image goes first).
        tiles_per_image: tiles of each image, thumbnail included, in request order.
        tokens_per_tile: image tokens per tile (256 for NVLM-D).
        system_message: None means "Answer the questions.".
        history: earlier turns (role, content); their `<image>` markers take the first images.
    """
    return "".join(segment.text for segment in prompt_segments(
        query, tiles_per_image, tokens_per_tile=tokens_per_tile, system_message=system_message, history=history))


def prompt_segments(
    query: str,
    tiles_per_image: Sequence[int],
    *,
    tokens_per_tile: int,
    system_message: str | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> list[Segment]:
    """`build_prompt`'s text as segments: control tokens of the template apart from the request's text.

    Args: as build_prompt.
    """
    if tiles_per_image and IMAGE_MARKER not in query and not any(IMAGE_MARKER in c for _, c in history):
        query = (IMAGE_MARKER + "\n") * len(tiles_per_image) + query
    turns = _turns(query, system_message, history)
    markers = sum(content.count(IMAGE_MARKER) for _, content, _ in turns)
    if markers != len(tiles_per_image):
        raise DeployError(
            f"the prompt has {markers} {IMAGE_MARKER} marker(s) but the request has {len(tiles_per_image)} "
            f"image(s); put exactly one {IMAGE_MARKER} where each image goes, or none at all to put the "
            "images before the text."
        )
    placeholders = (_placeholder_segments(n, tokens_per_tile=tokens_per_tile) for n in tiles_per_image)
    return _chat_segments(turns, placeholders)


def _turns(query: str, system_message: str | None,
           history: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(role, content, source) of every turn in template order: system, history, the query."""
    system = (DEFAULT_SYSTEM_MESSAGE if system_message is None else system_message, "the system message")
    turns = []
    for k, (role, content) in enumerate(history):
        if role not in ROLES:
            raise DeployError(f"chat history role {role!r} is not one of {list(ROLES)}.")
        if role == "system":
            system = (content, f"chat_history entry {k}")
        else:
            turns.append((role, content, f"chat_history entry {k}"))
    return [("system", *system), *turns, ("user", query, "the prompt")]


def _chat_segments(turns: list[tuple[str, str, str]], placeholders) -> list[Segment]:
    """chatml (MPT separators) over `turns`; the k-th `<image>` marker becomes the k-th of `placeholders`
    (None: markers stay as they are)."""
    out = []
    for role, content, source in turns:
        out += [Segment(IM_START, True), Segment(f"{role}\n")]
        first, *rest = content.split(IMAGE_MARKER) if placeholders is not None else (content,)
        out.append(Segment(first, source=source))
        for piece in rest:
            out += next(placeholders)
            out.append(Segment(piece, source=source))
        out.append(Segment(IM_END, True))
    return out + [Segment(IM_START, True), Segment("assistant\n")]


def _placeholder_segments(num_tiles: int, *, tokens_per_tile: int) -> list[Segment]:
    """`image_placeholder` as segments: tags and `<Image>` are text (as in HF), the pads control tokens."""
    out = [Segment("<Image>")]
    for tag in tile_tags(num_tiles):
        out += [Segment(tag), Segment(IMAGE_PAD * tokens_per_tile, True)]
    return out + [Segment("</Image>")]
