"""Prompt text as HF NVLM-D `chat()` builds it (shared/reference/nvlm-d.md §5).

    <|im_start|>system\\n{system}<|im_end|><|im_start|>user\\n{query}<|im_end|><|im_start|>assistant\\n

(chatml, MPT separator style: no newline between turns). `<image>` markers in the text are then
replaced in order, the k-th by the k-th image's placeholder

    <Image><tile_1>{pad x N}<tile_2>{pad x N}...<tile_global_thumbnail>{pad x N}</Image>

with N = tokens_per_tile. The tile tags are plain text; only the pads become image slots.
"""

from __future__ import annotations

from collections.abc import Sequence

from nvlm_deploy.errors import DeployError
from nvlm_deploy.preprocess.tokenizer import IMAGE_PAD

IMAGE_MARKER = "<image>"
DEFAULT_SYSTEM_MESSAGE = "Answer the questions."
THUMBNAIL_TAG = "<tile_global_thumbnail>"
CHATML = ("<|im_start|>system\n{system_message}<|im_end|>"
          "<|im_start|>user\n{query}<|im_end|>"
          "<|im_start|>assistant\n")
TURN = "<|im_start|>{role}\n{content}<|im_end|>"
ROLES = ("system", "user", "assistant")


def tile_tags(num_tiles: int) -> list[str]:
    """`<tile_1>`..`<tile_{T-1}>` then the thumbnail tag; one tile has the thumbnail tag only."""
    return [f"<tile_{i}>" for i in range(1, num_tiles)] + [THUMBNAIL_TAG]


def image_placeholder(num_tiles: int, *, tokens_per_tile: int) -> str:
    """The text one image becomes: `<Image>` + (tag + pad x tokens_per_tile) per tile + `</Image>`."""
    pads = IMAGE_PAD * tokens_per_tile
    return "<Image>" + "".join(tag + pads for tag in tile_tags(num_tiles)) + "</Image>"


def chatml(query: str, *, system_message: str | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
    """The conversation in NVLM-D's chatml template (HF `chat()` with `history`), ready for the answer.

    Args:
        query: the last user message.
        system_message: None means "Answer the questions."; a ("system", text) entry of `history` wins.
        history: earlier turns as (role, content), roles "user" / "assistant" (and "system").
    """
    system = DEFAULT_SYSTEM_MESSAGE if system_message is None else system_message
    turns = []
    for role, content in history:
        if role not in ROLES:
            raise DeployError(f"chat history role {role!r} is not one of {list(ROLES)}.")
        if role == "system":
            system = content
        else:
            turns.append(TURN.format(role=role, content=content))
    head, tail = CHATML.split("<|im_start|>user", 1)
    return head.format(system_message=system) + "".join(turns) + "<|im_start|>user" + tail.format(query=query)


def build_prompt(
    query: str,
    tiles_per_image: Sequence[int],
    *,
    tokens_per_tile: int,
    system_message: str | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> str:
    """The full prompt text of one request, image placeholders included.

    Args:
        query: the user's text; `<image>` marks where each image goes. Without any marker,
            one `"<image>\\n"` per image is put in front (HF: a single image goes first).
        tiles_per_image: tiles of each image, thumbnail included, in request order.
        tokens_per_tile: image tokens per tile (256 for NVLM-D).
        system_message: None means "Answer the questions.".
        history: earlier turns (role, content); their `<image>` markers take the first images.
    """
    if tiles_per_image and IMAGE_MARKER not in query and not any(IMAGE_MARKER in c for _, c in history):
        query = (IMAGE_MARKER + "\n") * len(tiles_per_image) + query
    text = chatml(query, system_message=system_message, history=history)
    pieces = text.split(IMAGE_MARKER)  # markers sit between pieces
    markers = len(pieces) - 1
    if markers != len(tiles_per_image):
        raise DeployError(
            f"the prompt has {markers} {IMAGE_MARKER} marker(s) but the request has {len(tiles_per_image)} "
            f"image(s); put exactly one {IMAGE_MARKER} where each image goes, or none at all to put the "
            "images before the text."
        )
    out = [pieces[0]]
    for num_tiles, piece in zip(tiles_per_image, pieces[1:]):
        out += [image_placeholder(num_tiles, tokens_per_tile=tokens_per_tile), piece]
    return "".join(out)
