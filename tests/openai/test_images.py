import asyncio
import base64
import re

import pytest

from nvlm_deploy.openai.images import ImagePolicy, check_image, decode_data_url, load_images
from nvlm_deploy.openai.protocol import ImagePart, OpenAIError
from tests.serving import png_bytes

PNG = png_bytes((64, 48))


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def test_data_urls_decode_to_the_file():
    assert decode_data_url(data_url(PNG), param="p") == PNG
    assert check_image(PNG, param="p") == PNG


@pytest.mark.parametrize("url, words", [
    ("data:image/png,rawtext", "must be base64"),
    ("data:text/plain;base64,aGk=", "media type"),
    ("data:image/png;base64,@@not base64@@", "not valid base64"),
])
def test_bad_data_urls_are_400(url, words):
    with pytest.raises(OpenAIError, match=words) as info:
        decode_data_url(url, param="messages[0].content[0].image_url")
    assert info.value.status == 400 and info.value.param == "messages[0].content[0].image_url"


def test_a_data_url_over_the_limit_is_refused_before_decoding():
    with pytest.raises(OpenAIError, match="limit of 100 bytes"):
        decode_data_url(data_url(b"x" * 200), param="p", max_bytes=100)


def test_bytes_that_are_not_an_image_are_400_invalid_image():
    with pytest.raises(OpenAIError, match="not an image") as info:
        check_image(b"just some text, base64-encoded", param="p")
    assert info.value.code == "invalid_image"


def test_remote_urls_are_refused_unless_allowed():
    parts = [ImagePart(data_url(PNG), "a"), ImagePart("https://example.com/cat.png", "b")]
    with pytest.raises(OpenAIError, match="--allow-remote-images") as info:
        asyncio.run(load_images(parts, policy=ImagePolicy()))
    assert (info.value.status, info.value.param, info.value.code) == (400, "b", "remote_images_disabled")


async def _with_image_server(policy: ImagePolicy, paths: list[str]) -> list:
    """Fetch each path from a local HTTP server: /png, /big, /slow, /text, anything else is 404."""
    import aiohttp
    from aiohttp import web

    async def png(request):
        return web.Response(body=PNG, content_type="image/png")

    async def big(request):  # no Content-Length: the limit is enforced while reading
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"\0" * 4096)
        return response

    async def slow(request):
        await asyncio.sleep(5)
        return web.Response(body=PNG)

    async def text(request):
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/png", png)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/text", text)
    runner = web.AppRunner(app, handler_cancellation=True)  # /slow ends when the client gives up
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    results = []
    try:
        async with aiohttp.ClientSession() as session:
            for path in paths:
                try:
                    parts = [ImagePart(f"http://127.0.0.1:{port}{path}", path)]
                    results.append(await load_images(parts, policy=policy, session=session))
                except OpenAIError as exc:
                    results.append(exc)
    finally:
        await runner.cleanup()
    return results


def test_remote_images_are_fetched_with_a_size_limit_and_a_timeout():
    policy = ImagePolicy(allow_remote=True, max_bytes=100_000, timeout=0.5)
    ok, big, slow, missing, text = asyncio.run(_with_image_server(policy, ["/png", "/big", "/slow", "/nope", "/text"]))
    assert ok == (PNG,)
    assert isinstance(big, OpenAIError) and big.code == "image_too_large" and big.param == "/big"
    assert isinstance(slow, OpenAIError) and "longer than 0.5s" in slow.message
    assert isinstance(missing, OpenAIError) and "HTTP 404" in missing.message
    assert isinstance(text, OpenAIError) and text.code == "invalid_image"


# ---- the server's image rules, applied before the request leaves the front-end (issue 14) ----

@pytest.mark.parametrize("data, words", [
    (b"%!PS-Adobe-3.0 EPSF-3.0\nshowpage\n", "is a PostScript/EPS file, which this server does not decode"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "is an SVG drawing"),
    (b"%PDF-1.4\n", "is a PDF document"),
    (b"", r"is empty \(0 bytes\)"),
])
def test_files_the_server_would_refuse_are_400_invalid_image_naming_the_part(data, words):
    param = "messages[1].content[2].image_url"
    with pytest.raises(OpenAIError, match=rf"^{re.escape(param)} {words}") as info:
        check_image(data, param=param)
    assert (info.value.status, info.value.code, info.value.param) == (400, "invalid_image", param)


def test_an_over_large_header_is_refused_before_decoding():
    with pytest.raises(OpenAIError, match=r"64x48 = 3,072 pixels, over the limit of 1,000 pixels"):
        check_image(PNG, param="p", max_pixels=1000)


@pytest.mark.parametrize("url, words", [
    ("data:image/png;base64,", r"holds no data \(0 bytes\)"),
    ("data:image/svg+xml;base64,PHN2Zy8+", "holds an SVG drawing"),
])
def test_empty_and_svg_data_urls_are_400(url, words):
    with pytest.raises(OpenAIError, match=words) as info:
        decode_data_url(url, param="messages[0].content[0].image_url")
    assert info.value.status == 400
