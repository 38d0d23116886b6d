import numpy as np
import pytest

from nvlm_deploy.errors import DeployError
from nvlm_deploy.backend.vision import ENCODERS, VisionHandler


class Counting:
    """Wraps the real ONNX encoder and counts its runs."""

    def __init__(self, encoder):
        self.encoder, self.runs = encoder, 0

    def encode(self, pixels):
        self.runs += 1
        return self.encoder.encode(pixels)


@pytest.fixture(scope="module")
def handler(engines):
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    return VisionHandler(Counting(OnnxVisionEncoder(engines / "onnx")), hidden_size=128, max_tiles=6)


def test_more_tiles_than_the_limit_are_refused_before_the_encoder_runs(handler):
    from nvlm_deploy.backend.request_inputs import RequestError

    before = handler.encoder.runs
    with pytest.raises(RequestError, match="7 tiles in one request; this repository takes at most 6"):
        handler.run(np.zeros((1, 7, 3, 448, 448), np.float32))
    assert handler.encoder.runs == before


def test_zero_tiles_give_an_empty_table_without_running_the_encoder(handler):
    before = handler.encoder.runs
    table, vocab = handler.run(np.zeros((1, 0, 3, 448, 448), np.float32))
    assert table.shape == (1, 0, 128) and vocab.tolist() == [[0]] and handler.encoder.runs == before


def test_tiles_become_one_table_in_order(handler, reference, images):
    prepared = reference.preprocessor.prepare("<image><image>", images)
    table, vocab = handler.run(prepared.pixel_values[None])
    assert table.shape == (1, prepared.num_image_tokens, 128) and vocab[0, 0] == prepared.num_image_tokens
    want = reference.image_features(prepared.pixel_values).numpy()
    np.testing.assert_allclose(table[0], want, atol=1e-4)


def test_runtimes_are_registered_and_unknown_ones_refused(tmp_path):
    assert set(ENCODERS) == {"cpu", "gpu"}
    with pytest.raises(DeployError, match="not one of"):
        VisionHandler.from_parameters(tmp_path, {"runtime": "tpu", "model_path": "x", "hidden_size": "8"})


def test_gpu_runtime_without_tensorrt_says_what_to_install(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(DeployError, match="tensorrt"):
        ENCODERS["gpu"](tmp_path, {})


@pytest.mark.gpu
def test_tensorrt_plan_matches_onnx_runtime(engines, tmp_path, reference, images):
    """The gpu runtime's encoder (TensorRT plan) against the cpu runtime's (ONNX Runtime), same tiles."""
    import shutil

    from nvlm_deploy.build.vision_engine import build_vision_engine
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder
    from nvlm_deploy.backend.vision_trt import TrtPlanVisionEncoder

    target = tmp_path / "target"
    shutil.copytree(engines / "onnx", target / "onnx")
    build_vision_engine(target / "onnx", target)
    pixels = reference.preprocessor.prepare("<image>", images[:1]).pixel_values
    got = TrtPlanVisionEncoder(target / "vision").encode(pixels)
    np.testing.assert_allclose(got, OnnxVisionEncoder(engines / "onnx").encode(pixels), atol=1e-3, rtol=1e-3)


# ---- per-tile embedding cache and cross-request batching (fake encoder: fast, counts every tile) ----

class FakeEncoder:
    """[T, 3, S, S] -> [T, 2, 4]: each tile's mean and max, repeated; records each call's tile count."""

    def __init__(self):
        self.calls: list[int] = []

    def encode(self, pixels):
        self.calls.append(pixels.shape[0])
        stats = np.stack([pixels.mean(axis=(1, 2, 3)), pixels.max(axis=(1, 2, 3))], axis=1)  # [T, 2]
        return np.repeat(stats[:, :, None], 4, axis=2).reshape(-1, 2, 4).astype(np.float32)


def fake_handler(cache_bytes=1 << 20, max_tiles=4):
    from nvlm_deploy.backend.tile_cache import TileEmbeddingCache

    return VisionHandler(FakeEncoder(), hidden_size=4, max_tiles=max_tiles,
                         cache=TileEmbeddingCache(cache_bytes) if cache_bytes else None, identity="enc-a")


def tiles(*seeds, size=8):
    if not seeds:
        return np.zeros((1, 0, 3, size, size), np.float32)
    return np.stack([np.random.default_rng(s).random((3, size, size), dtype=np.float32) for s in seeds])[None]


def test_a_repeated_image_skips_the_encoder_and_answers_identically():
    handler = fake_handler()
    first, vocab = handler.run(tiles(1, 2, 3))
    assert handler.encoder.calls == [3]
    again, vocab2 = handler.run(tiles(1, 2, 3))
    assert handler.encoder.calls == [3]  # no new call
    np.testing.assert_array_equal(first, again)
    assert vocab.tolist() == vocab2.tolist() == [[6]]
    stats = handler.cache_stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (3, 3, 3)


def test_a_shared_crop_runs_only_the_new_tiles_and_keeps_the_order():
    handler = fake_handler()
    handler.run(tiles(1, 2))
    table, _ = handler.run(tiles(2, 9, 1))
    assert handler.encoder.calls == [2, 1]
    uncached = fake_handler(cache_bytes=0).run(tiles(2, 9, 1))[0]
    np.testing.assert_array_equal(table, uncached)


def test_cache_off_runs_the_encoder_every_time():
    handler = fake_handler(cache_bytes=0)
    handler.run(tiles(1))
    handler.run(tiles(1))
    assert handler.encoder.calls == [1, 1] and handler.cache_stats()["hits"] == 0


def test_requests_batched_together_share_encoder_calls_capped_at_max_tiles():
    from nvlm_deploy.backend.request_inputs import RequestError

    handler = fake_handler(max_tiles=4)
    results = handler.run_many([tiles(1, 2, 3), tiles(4, 5, 6, 7, 8), tiles(), tiles(9, 10)])
    assert isinstance(results[1], RequestError) and "5 tiles in one request" in str(results[1])
    assert handler.encoder.calls == [4, 1]  # 5 uncached tiles of requests 0 and 3, at most 4 per call
    assert [r[1].tolist() for r in (results[0], results[2], results[3])] == [[[6]], [[0]], [[4]]]
    alone = fake_handler(cache_bytes=0).run(tiles(9, 10))[0]
    np.testing.assert_array_equal(results[3][0], alone)


def test_a_thousand_tiles_in_one_request_get_a_clear_error_without_encoding():
    from nvlm_deploy.backend.request_inputs import RequestError

    handler = fake_handler(max_tiles=12)
    with pytest.raises(RequestError, match="1024 tiles in one request; this repository takes at most 12"):
        handler.run(np.zeros((1, 1024, 3, 4, 4), np.float32))
    assert handler.encoder.calls == []


def test_onnx_encoder_without_spinning_gives_the_same_embeddings(engines, reference, images):
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    pixels = reference.preprocessor.prepare("<image>", images[:1]).pixel_values
    quiet = OnnxVisionEncoder(engines / "onnx").encode(pixels)
    spinning = OnnxVisionEncoder(engines / "onnx", spinning=True).encode(pixels)
    np.testing.assert_array_equal(quiet, spinning)


# ---- under tritonserver: metrics show the hit, answers identical, bytes within the bound ----

def scrape(port: int) -> dict[str, float]:
    """nvlm_vision_* samples of the server's Prometheus endpoint, name -> value."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("nvlm_vision_")}


@pytest.fixture(scope="module")
def small_cache_server(engines, tmp_path_factory):
    """The tiny CPU repository with a tile cache of 3 tiles (the tiny model: 256 tokens x 128 x fp32 = 128 KiB
    per tile) and metrics on; one tritonserver for the module."""
    from nvlm_deploy.serve.package import PackageOptions, package_repository
    from nvlm_deploy.serve.server import free_port, start_server
    from tests.serving import LIMITS

    repo = package_repository(engines, tmp_path_factory.mktemp("cache") / "repo", runtime="cpu",
                              options=PackageOptions(limits=LIMITS, vision_cache_bytes=3 * 128 * 1024),
                              log=lambda line: None)
    srv = start_server(repo, timeout=600, metrics_port=free_port())
    yield srv
    srv.stop()


@pytest.mark.server
@pytest.mark.slow
def test_server_cache_hit_skips_the_encoder_and_stays_within_its_bound(small_cache_server):
    from nvlm_deploy.client.sync import NvlmClient
    from tests.serving import png_bytes

    srv, port = small_cache_server, small_cache_server.metrics_port
    image = png_bytes((448, 448), (200, 30, 30))  # one tile + thumbnail... as the tiler decides
    with NvlmClient(srv.grpc_url) as client:
        first = client.chat("What is in the picture?", [image], max_tokens=8)
        before = scrape(port)
        assert before["nvlm_vision_tile_cache_misses"] >= 1 and before["nvlm_vision_tile_cache_hits"] == 0
        second = client.chat("What is in the picture?", [image], max_tokens=8)
        after = scrape(port)
        assert second == first
        assert after["nvlm_vision_tile_cache_hits"] == before["nvlm_vision_tile_cache_misses"]  # every tile hit
        assert after["nvlm_vision_tile_cache_misses"] == before["nvlm_vision_tile_cache_misses"]
        assert after["nvlm_vision_encoder_calls"] == before["nvlm_vision_encoder_calls"]  # the encoder did not run
        for k in range(4):  # distinct images: the cache fills, evicts, never exceeds its bound
            client.chat("What is in the picture?", [png_bytes((640, 480), (10 + 40 * k, 90, 200))], max_tokens=2)
            now = scrape(port)
            assert now["nvlm_vision_tile_cache_bytes"] <= now["nvlm_vision_tile_cache_capacity_bytes"] == 3 * 128 * 1024
        assert now["nvlm_vision_tile_cache_evictions"] > 0 and now["nvlm_vision_tile_cache_entries"] <= 3


def test_bls_sends_prompt_table_extra_ids_only_when_packaged_with_them():
    """BlsHandler(extra_ids=...) adds prompt_table_extra_ids to the decoder's inputs of image requests."""
    from nvlm_deploy.backend.bls import BlsHandler

    sent = []
    pre = {"INPUT_ID": np.array([[5, 100, 101]], np.int32), "REQUEST_INPUT_LEN": np.array([[3]], np.int32),
           "REQUEST_OUTPUT_LEN": np.array([[1]], np.int32), "OUT_END_ID": np.array([[0]], np.int32),
           "OUT_PAD_ID": np.array([[0]], np.int32), "STOP_WORDS_IDS": None, "BAD_WORDS_IDS": None,
           "PIXEL_VALUES": tiles(1)}

    def generate(inputs):
        sent.append(inputs)
        yield {"output_ids": np.array([[7]], np.int32)}

    common = dict(preprocess=lambda inputs: pre, encode=lambda px: (np.zeros((1, 2, 4), np.float32), np.array([[2]])),
                  generate=generate)
    for extra in (None, lambda ids, px: np.array([[0, 9, 9]], np.uint64)):
        BlsHandler(lambda ids: "x", extra_ids=extra, **common).run({"text_input": np.array([[b"hi"]], object)},
                                                                    lambda text, usage: None)
    assert "prompt_table_extra_ids" not in sent[0]
    assert sent[1]["prompt_table_extra_ids"].tolist() == [[0, 9, 9]]


def test_an_encoder_error_in_a_batch_fails_only_that_request():
    from nvlm_deploy.errors import DeployError

    class Picky(FakeEncoder):
        def encode(self, pixels):
            if (pixels < 0).any():
                raise DeployError("the encoder refused negative pixels")
            return super().encode(pixels)

    handler = VisionHandler(Picky(), hidden_size=4, max_tiles=8)
    results = handler.run_many([tiles(1), -tiles(2), tiles(3)])
    assert isinstance(results[1], DeployError) and "negative" in str(results[1])
    assert results[0][1].tolist() == results[2][1].tolist() == [[2]]
    with pytest.raises(DeployError, match="negative"):
        handler.run(-tiles(4))


def test_vision_model_returns_extra_ids_for_input_ids_and_batches_requests(cpu_repo, reference, images):
    """triton_repo/vision_encoder/1/model.py in-process: two requests in one execute (dynamic batching), the
    second repeating the first's image hits the cache; with input_ids (ensemble, --prompt-table-extra-ids)
    the image slots get their tiles' ids."""
    from nvlm_deploy.backend.tile_cache import token_extra_ids
    from nvlm_deploy.config import NvlmConfig
    from tests.triton_repo.in_process import load_model, outputs, request

    model = load_model(cpu_repo, "vision_encoder")
    prepared = reference.preprocessor.prepare("<image>", images[:1])
    pixels = prepared.pixel_values[None].astype(np.float32)
    ids = np.asarray(prepared.input_ids, np.int32)[None]
    first, second = model.execute([request(pixel_values=pixels), request(pixel_values=pixels, input_ids=ids)])
    a, b = outputs(first), outputs(second)
    np.testing.assert_array_equal(a["prompt_embedding_table"].as_numpy(), b["prompt_embedding_table"].as_numpy())
    assert "prompt_table_extra_ids" not in a
    vocab = NvlmConfig.from_hf(cpu_repo / "preprocessing" / "assets").llm.vocab_size
    got = b["prompt_table_extra_ids"].as_numpy()
    assert got.tolist() == token_extra_ids(ids, pixels, vocab_size=vocab).tolist()
    assert (got[ids >= vocab] > 0).all() and (got[ids < vocab] == 0).all()
    stats = model.handler.cache_stats()
    assert stats["hits"] >= pixels.shape[1] and stats["encoder_calls"] >= 1
