"""Image parts -> encoded image files: base64 `data:` URLs always, http(s) URLs only when allowed.

Every image is checked to be one (PIL reads its header, trying only the raster formats preprocessing
accepts) before the request goes to Triton, so a part that is not an image (SVG, EPS, PDF, an empty
or over-large file) is refused with its place in the request, by the same rules as the server. Remote images are fetched with
a byte limit and a timeout; fetching is off unless the operator turns it on, because it lets any
client make this server open URLs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from nvlm_deploy.openai.protocol import ImagePart, OpenAIError

DEFAULT_MAX_IMAGE_BYTES = 20 * 2**20
DEFAULT_FETCH_TIMEOUT = 10.0  # seconds for one remote image, connect to last byte


@dataclass(frozen=True)
class ImagePolicy:
    allow_remote: bool = False
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # of one image, decoded or fetched
    timeout: float = DEFAULT_FETCH_TIMEOUT


def decode_data_url(url: str, *, param: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """The bytes of `data:image/...;base64,...` (preprocess.image.data_url_bytes), errors OpenAI-shaped."""
    from nvlm_deploy.errors import DeployError
    from nvlm_deploy.preprocess.image import data_url_bytes

    try:
        return data_url_bytes(url, max_bytes=max_bytes)
    except DeployError as exc:
        raise OpenAIError(f"{param}: {exc}", param=param) from None


def check_image(data: bytes, *, param: str, max_pixels: int | None = None) -> bytes:
    """`data` if it is an image the server will decode (preprocess.image.open_image: only the header is
    read, only accepted raster formats are tried, empty files and over-large sizes are refused)."""
    from nvlm_deploy.errors import DeployError
    from nvlm_deploy.preprocess.image import open_image

    try:
        image, _ = open_image(data, max_pixels=max_pixels, name=param)
    except DeployError as exc:
        raise OpenAIError(str(exc), param=param, code="invalid_image") from None
    image.close()
    return data


async def fetch(session, url: str, *, param: str, policy: ImagePolicy) -> bytes:
    """GET `url` with `session` (aiohttp.ClientSession): at most policy.max_bytes within policy.timeout."""
    import aiohttp

    try:  # the total timeout covers connecting, the headers and the whole body
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=policy.timeout)) as response:
            if response.status != 200:
                raise OpenAIError(f"{param}: fetching {url} gave HTTP {response.status}.", param=param,
                                  code="invalid_image_url")
            if (response.content_length or 0) > policy.max_bytes:
                raise _too_large(param, url, policy.max_bytes)
            data = bytearray()
            async for block in response.content.iter_chunked(1 << 16):
                data += block
                if len(data) > policy.max_bytes:
                    raise _too_large(param, url, policy.max_bytes)
            return bytes(data)
    except asyncio.TimeoutError:  # TimeoutError from Python 3.11
        raise OpenAIError(f"{param}: fetching {url} took longer than {policy.timeout:g}s.", param=param,
                          code="invalid_image_url") from None
    except aiohttp.ClientError as exc:
        raise OpenAIError(f"{param}: could not fetch {url} ({exc}).", param=param, code="invalid_image_url") from None


async def load_images(parts: Sequence[ImagePart], *, policy: ImagePolicy, session=None) -> tuple[bytes, ...]:
    """The encoded files of `parts`, in order; `session` (aiohttp) fetches remote ones."""
    out = []
    for part in parts:
        if part.url.startswith("data:"):
            data = decode_data_url(part.url, param=part.param, max_bytes=policy.max_bytes)
        elif not policy.allow_remote:
            raise OpenAIError(f"{part.param}: this server does not fetch remote images; send the image as a base64 "
                              "data: URL (or start the server with --allow-remote-images).", param=part.param,
                              code="remote_images_disabled")
        else:
            data = await fetch(session, part.url, param=part.param, policy=policy)
        out.append(check_image(data, param=part.param))
    return tuple(out)


def _too_large(param: str, url: str, limit: int) -> OpenAIError:
    return OpenAIError(f"{param}: {url} is larger than this server's limit of {limit} bytes per image.", param=param,
                       code="image_too_large")

