"""Reading one Triton request's tensors: scalars sent `[[x]]`, strings, image bytes; checks against the
repository's limits (DeploymentLimits, read from the repository manifest).

Shapes follow tensorrtllm_backend clients: every scalar arrives as `[1, 1]` (batch dim + dims [1]),
`text_input` as a `[1, 1]` object array of UTF-8 bytes, `image_bytes_input` as decoded RGB pixels
uint8 `[1, N, H, W, 3]`, `image_url_input` as strings, and our `image_files_input` as uint8
`[1, num_images, max_bytes]` (each image's encoded file, right-padded with zeros) with optional
`image_files_lengths` int32 `[1, num_images]` (contracts/client_tensors.py).
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


def text(array: np.ndarray | None, *, name: str = "text_input", max_bytes: int | None = None) -> str:
    value = first(array)
    if value is None:
        raise RequestError(f"{name} is missing; send the prompt as a [1, 1] BYTES tensor.")
    if max_bytes is not None and len(value) > max_bytes:  # before decoding or tokenizing it
        raise RequestError(f"{name} is {len(value):,} bytes, more than can fit this repository's max_input_len "
                           f"(at most {max_bytes:,} bytes); shorten the text.")
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


def image_files(array: np.ndarray | None, lengths: np.ndarray | None = None) -> list[bytes]:
    """Encoded image files from `image_files_input` [1, n, max_bytes] (+ `image_files_lengths` [1, n]).

    n = 0 means no images; an image of 0 bytes (max_bytes 0, or a length 0) is kept, and refused by name
    when it is decoded ("image #k of the request is empty"), never dropped.
    """
    if array is None:
        return []
    data = np.asarray(array, dtype=np.uint8)
    if data.size == 0 and (data.ndim < 2 or data.shape[-2] == 0):
        return []  # no images (an image of 0 bytes still has its row)
    if data.ndim == 3:
        if data.shape[0] != 1:
            raise RequestError(f"image_files_input has batch size {data.shape[0]}; one request per row.")
        data = data[0]
    if data.ndim != 2:
        raise RequestError(f"image_files_input must be uint8 [1, num_images, num_bytes], got shape {list(array.shape)}.")
    sizes = [data.shape[1]] * data.shape[0]
    if lengths is not None and np.asarray(lengths).size:
        sizes = [int(n) for n in np.asarray(lengths).reshape(-1)]
        if len(sizes) != data.shape[0] or min(sizes) < 0 or max(sizes) > data.shape[1]:
            raise RequestError(f"image_files_lengths {sizes} does not fit image_files_input of shape "
                               f"{list(data.shape)} (one length per image, each at most the row width).")
    return [data[k, :n].tobytes() for k, n in enumerate(sizes)]


def pixel_images(array: np.ndarray | None) -> list:
    """Decoded RGB images from `image_bytes_input` (tensorrtllm_backend: uint8 [1, N, H, W, 3]) as PIL images."""
    from PIL import Image

    if array is None:
        return []
    data = np.asarray(array)
    if data.ndim == 4:  # [N, H, W, C] without the batch dimension
        data = data[None]
    if data.size == 0 and (data.ndim != 5 or data.shape[1] == 0):
        return []  # no images
    if data.ndim != 5 or data.shape[0] != 1 or data.shape[-1] != 3 or data.dtype != np.uint8:
        raise RequestError(f"image_bytes_input must be decoded RGB pixels, uint8 [1, num_images, height, width, 3] "
                           f"(tensorrtllm_backend's layout), got {data.dtype} {list(data.shape)}; send encoded "
                           "files (PNG, JPEG) as image_files_input instead.")
    if data.size == 0:
        raise RequestError(f"image_bytes_input holds {data.shape[1]} image(s) of {data.shape[3]}x{data.shape[2]} "
                           "pixels; send non-empty images.")
    return [Image.fromarray(np.ascontiguousarray(image), mode="RGB") for image in data[0]]


def url_images(array: np.ndarray | None, *, allow_remote: bool, max_bytes: int, timeout_s: float = 10.0) -> list[bytes]:
    """`image_url_input` strings -> encoded files: `data:` URLs always, http(s) only when allowed."""
    if array is None or np.asarray(array).size == 0:
        return []
    out = []
    for k, value in enumerate(np.asarray(array).reshape(-1)):
        url = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if url.startswith("data:"):
            out.append(_data_url(url, name=f"image_url_input #{k + 1}"))
        elif url.startswith(("http://", "https://")):
            if not allow_remote:
                raise RequestError(f"image_url_input {url[:80]!r}: this repository does not fetch remote images; "
                                   "send the image as a data: URL or as image_files_input, or re-package with "
                                   "--allow-image-urls.")
            out.append(_fetch(url, max_bytes=max_bytes, timeout_s=timeout_s))
        else:
            raise RequestError(f"image_url_input {url[:80]!r} is neither a data: URL nor http(s).")
    return out


def _data_url(url: str, *, name: str) -> bytes:
    from nvlm_deploy.preprocess.image import data_url_bytes

    try:
        return data_url_bytes(url)
    except DeployError as exc:
        raise RequestError(f"{name}: {exc}") from None


def _fetch(url: str, *, max_bytes: int, timeout_s: float) -> bytes:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RequestError(f"could not fetch image {url[:80]!r}: {exc}.") from None
    if len(data) > max_bytes:
        raise RequestError(f"image {url[:80]!r} is larger than {max_bytes} bytes.")
    return data


# preprocessing input -> why NVLM-D cannot use it (declared so that upstream clients' requests parse)
UNSUPPORTED_INPUTS = {
    "IMAGE_INPUT": "image_input carries pixels preprocessed for another model; NVLM-D tiles images itself: send "
                   "decoded pixels (image_bytes_input), encoded files (image_files_input) or image_url_input",
    "VIDEO_BYTES": "video_bytes_input: NVLM-D takes images, not video",
    "DECODER_QUERY": "decoder_text_input is for encoder-decoder models; NVLM-D is decoder-only",
    "EMBEDDING_BIAS_WORDS": "embedding_bias_words: the decoder runtime applies no embedding bias",
    "EMBEDDING_BIAS_WEIGHTS": "embedding_bias_weights: the decoder runtime applies no embedding bias",
}


def refuse_unsupported(inputs) -> None:
    for name, why in UNSUPPORTED_INPUTS.items():
        value = inputs.get(name)
        if value is not None and np.asarray(value).size:
            raise RequestError(f"{why}.")


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
