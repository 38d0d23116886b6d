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
