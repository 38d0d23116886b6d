import io

import pytest
import torch
from PIL import Image

from nvlm_deploy.cli import main
from nvlm_deploy.errors import DeployError
from nvlm_deploy.model.generate import ReferencePipeline, greedy_generate


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return ReferencePipeline.from_model_dir(tiny_checkpoint, max_tiles=2)


def _png(w, h, color):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def _no_cache_greedy(model, ids, table, n):
    """Recompute the whole sequence every step: what the KV-cached loop must reproduce."""
    ids = list(ids)
    out = []
    for _ in range(n):
        with torch.no_grad():
            token = int(model(torch.tensor([ids]), table)[0, -1].argmax())
        out.append(token)
        ids.append(token)
    return out


@pytest.mark.parametrize("with_image", [False, True])
def test_kv_cached_greedy_equals_full_recompute(pipeline, with_image):
    images = [_png(900, 400, (200, 30, 30))] if with_image else []
    prepared = pipeline.preprocessor.prepare("Describe it.", images)
    table = pipeline.image_features(prepared.pixel_values) if with_image else None
    got = greedy_generate(pipeline.model, prepared.input_ids, table, max_new_tokens=6, end_id=None)
    assert got == _no_cache_greedy(pipeline.model, prepared.input_ids, table, 6)
    assert prepared.num_image_tokens == (3 * 256 if with_image else 0)  # 2 tiles + thumbnail


def test_images_change_the_answer(pipeline):
    prepared_a = pipeline.preprocessor.prepare("What color?", [_png(448, 448, (255, 0, 0))])
    prepared_b = pipeline.preprocessor.prepare("What color?", [_png(448, 448, (0, 0, 255))])
    ta = pipeline.image_features(prepared_a.pixel_values)
    tb = pipeline.image_features(prepared_b.pixel_values)
    with torch.no_grad():
        la = pipeline.model(torch.tensor([prepared_a.input_ids]), ta)[0, -1]
        lb = pipeline.model(torch.tensor([prepared_b.input_ids]), tb)[0, -1]
    assert (la - lb).abs().max() > 1e-4


def test_stops_at_end_id_and_streams_tokens(pipeline):
    prepared = pipeline.preprocessor.prepare("Hello")
    first = greedy_generate(pipeline.model, prepared.input_ids, None, max_new_tokens=5, end_id=None)
    seen = []
    got = greedy_generate(pipeline.model, prepared.input_ids, None, max_new_tokens=5, end_id=first[2],
                          on_token=seen.append)
    assert got == first[:2] == seen


def test_image_slots_without_features_is_an_error(pipeline):
    prepared = pipeline.preprocessor.prepare("x", [_png(448, 448, "white")])
    with pytest.raises(DeployError, match="no image features"):
        greedy_generate(pipeline.model, prepared.input_ids, None, max_new_tokens=1, end_id=None)


def test_generate_cli_text_only_and_with_image(tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "red.png"
    image.write_bytes(_png(600, 300, "red"))
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt", "Hi", "--max-new-tokens", "3"]) == 0
    assert main(["generate", "--model", str(tiny_checkpoint), "--image", str(image), "--prompt", "What?",
                 "--max-new-tokens", "3"]) == 0
    not_image = tmp_path / "x.png"
    not_image.write_bytes(b"not an image")
    assert main(["generate", "--model", str(tiny_checkpoint), "--image", str(not_image), "--prompt", "What?"]) == 1
    assert "x.png" in capsys.readouterr().err


@pytest.mark.parametrize("size, limit, message", [((0, 0), None, "no pixels"), ((300, 200), 50_000, "limit")])
def test_generate_cli_rejects_empty_and_oversized_images(tiny_checkpoint, tmp_path, capsys, size, limit, message):
    image = tmp_path / "img.png"
    if size == (0, 0):
        image.write_bytes(_zero_pixel_png())
    else:
        image.write_bytes(_png(*size, "red"))
    extra = ["--max-pixels", str(limit)] if limit else []
    rc = main(["generate", "--model", str(tiny_checkpoint), "--image", str(image), "--prompt", "What?", *extra])
    err = capsys.readouterr().err
    assert rc == 1 and "img.png" in err and message in err and "Traceback" not in err


def _zero_pixel_png() -> bytes:
    """A syntactically valid PNG whose IHDR says 0 x 0 (Pillow refuses to write one)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
