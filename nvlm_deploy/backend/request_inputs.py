"""Reading one Triton request's tensors: scalars sent `[[x]]`, strings, image bytes; checks against the
repository's limits (DeploymentLimits, read from the repository manifest).

Shapes follow tensorrtllm_backend clients: every scalar arrives as `[1, 1]` (batch dim + dims [1]),
`text_input` as a `[1, 1]` object array of UTF-8 bytes, `image_bytes_input` as uint8
`[1, num_images, max_bytes]` (each image's encoded file, right-padded with zeros) with optional
`image_bytes_lengths` int32 `[1, num_images]`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.errors import DeployError


class RequestError(DeployError):
    """A bad request: the message goes back to the client as is; the server keeps serving."""


def repository_limits(root: Path) -> DeploymentLimits:
    """The limits of the repository at `root`, from its manifest (written by `nvlm-deploy package`)."""
    from nvlm_deploy.contracts.manifest import RepositoryManifest, read_manifest

    manifest = read_manifest(root, RepositoryManifest, writer="nvlm-deploy package")
    return DeploymentLimits.from_dict(manifest.limits, source=str(root / "manifest.json"))


def first(array: np.ndarray | None, default=None):
    """The single value of a `[[x]]` tensor, or `default` when the input is absent."""
    if array is None:
        return default
    flat = np.asarray(array).reshape(-1)
    if flat.size == 0:
        return default
    if flat.size != 1:
        raise RequestError(f"expected one value per request (shape [1, 1]), got shape {list(np.shape(array))}; "
                           "send one prompt per request (concurrent requests are batched by the server).")
    return flat[0].item() if hasattr(flat[0], "item") else flat[0]


def text(array: np.ndarray | None, *, name: str = "text_input") -> str:
    value = first(array)
    if value is None:
        raise RequestError(f"{name} is missing; send the prompt as a [1, 1] BYTES tensor.")
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"{name} is not valid UTF-8 ({exc}).") from None
    return str(value)


def chat_history(array: np.ndarray | None) -> list[tuple[str, str]]:
    """`chat_history`: JSON [[role, content], ...] or [{"role": .., "content": ..}, ...] -> (role, content) pairs."""
    import json

    from nvlm_deploy.preprocess.prompt import ROLES

    if array is None:
        return []
    raw = text(array, name="chat_history")
    try:
        turns = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestError(f"chat_history is not valid JSON ({exc}); send [[role, content], ...].") from None
    out = []
    for k, turn in enumerate(turns if isinstance(turns, list) else [None]):
        pair = (turn.get("role"), turn.get("content")) if isinstance(turn, dict) else turn
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and pair[0] in ROLES and isinstance(pair[1], str)):
            raise RequestError(f"chat_history entry {k} is {turn!r}; each entry is [role, content] with role one of "
                               f"{list(ROLES)} and content a string.")
        out.append((pair[0], pair[1]))
    return out


def images(array: np.ndarray | None, lengths: np.ndarray | None = None) -> list[bytes]:
    """Encoded image files from `image_bytes_input` [1, n, max_bytes] (+ `image_bytes_lengths` [1, n])."""
    if array is None or np.asarray(array).size == 0:
        return []
    data = np.asarray(array, dtype=np.uint8)
    if data.ndim == 3:
        if data.shape[0] != 1:
            raise RequestError(f"image_bytes_input has batch size {data.shape[0]}; send one request at a time.")
        data = data[0]
    if data.ndim != 2:
        raise RequestError(f"image_bytes_input must be uint8 [1, num_images, num_bytes], got shape {list(array.shape)}.")
    sizes = [data.shape[1]] * data.shape[0]
    if lengths is not None and np.asarray(lengths).size:
        sizes = [int(n) for n in np.asarray(lengths).reshape(-1)]
        if len(sizes) != data.shape[0] or min(sizes) < 0 or max(sizes) > data.shape[1]:
            raise RequestError(f"image_bytes_lengths {sizes} does not fit image_bytes_input of shape "
                               f"{list(data.shape)} (one length per image, each at most the row width).")
    return [data[k, :n].tobytes() for k, n in enumerate(sizes)]


def max_tokens(value, limits: DeploymentLimits) -> int:
    if value is None:
        raise RequestError("max_tokens is missing; send it as a [1, 1] INT32 tensor.")
    n = int(value)
    if n < 1 or n > limits.max_output_len:
        raise RequestError(f"max_tokens is {n}; it must be between 1 and {limits.max_output_len} "
                           "(this repository's max_output_len; re-package with a larger --max-output-len).")
    return n


def check_prompt(num_ids: int, num_image_tokens: int, limits: DeploymentLimits) -> None:
    if num_ids > limits.max_input_len:
        raise RequestError(f"the prompt is {num_ids} tokens long (image tokens included), more than this "
                           f"repository's max_input_len of {limits.max_input_len}; shorten the text, send fewer "
                           "or smaller images, or re-package with a larger --max-input-len.")
    if num_image_tokens > limits.prompt_table_rows_per_request:
        raise RequestError(f"the images need {num_image_tokens} image tokens, more than this repository's "
                           f"prompt table of {limits.prompt_table_rows_per_request} rows per request; send fewer "
                           "or smaller images.")
