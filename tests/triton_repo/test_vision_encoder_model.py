"""triton_repo/vision_encoder/1/model.py in-process (pb_utils stand-in): the CPU runtime end to end, the
prompt-table dtype matrix, and the GPU runtime's checks with a stand-in TensorRT engine."""

import shutil

import numpy as np
import pytest
import torch

from nvlm_deploy.backend.request_inputs import RequestError
from nvlm_deploy.backend.vision import ENCODERS, VisionHandler
from nvlm_deploy.backend.vision_trt import TrtPlanVisionEncoder
from nvlm_deploy.contracts.precision import PRECISIONS
from nvlm_deploy.errors import DeployError
from tests.triton_repo import pb_utils_standin as pb
from tests.triton_repo.in_process import error_message, load_model, model_config, outputs, request, write_model_config
from tests.triton_repo.tensorrt_standin import (STANDIN_TENSORRT, StandInVisionEngine, UntouchableTorch,
                                                trt_dtype)

HIDDEN = 128  # the tiny checkpoint's LLM width
SIZE = 448  # its tile size
MAX_TILES = 6  # the repository's tiles per request: 2 images x (2 tiles + thumbnail)


def tiles(n: int, size: int = SIZE) -> np.ndarray:
    return np.zeros((1, n, 3, size, size), np.float32)  # [1, T, 3, S, S]


def pixels_request(pixel_values: np.ndarray):
    return request(pixel_values=pixel_values)


@pytest.fixture(scope="module")
def prepared(reference, images):
    return reference.preprocessor.prepare("<image><image>", images)


@pytest.fixture(scope="module")
def onnx_table(engines, prepared) -> np.ndarray:
    """The ONNX graph's float32 output for `prepared`'s tiles, [T * tokens, hidden]."""
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    return OnnxVisionEncoder(engines / "onnx").encode(prepared.pixel_values).reshape(-1, HIDDEN)


@pytest.fixture(scope="module")
def cpu_model(cpu_repo):
    return load_model(cpu_repo, "vision_encoder")


def test_tiles_become_the_onnx_table_and_its_size(cpu_model, prepared, onnx_table, reference):
    (response,) = cpu_model.execute([pixels_request(prepared.pixel_values[None])])
    got = outputs(response)
    table = got["prompt_embedding_table"].as_numpy()
    assert table.dtype == np.float32 and table.shape == (1, prepared.num_image_tokens, HIDDEN)
    np.testing.assert_array_equal(table[0], onnx_table)
    np.testing.assert_allclose(table[0], reference.image_features(prepared.pixel_values).numpy(), atol=1e-4)
    assert got["prompt_vocab_size"].as_numpy().tolist() == [[prepared.num_image_tokens]]


def test_zero_tiles_give_an_empty_table(cpu_model):
    (response,) = cpu_model.execute([pixels_request(tiles(0))])
    got = outputs(response)
    assert got["prompt_embedding_table"].as_numpy().shape == (1, 0, HIDDEN)
    assert got["prompt_vocab_size"].as_numpy().tolist() == [[0]]


def test_too_many_tiles_get_an_error_and_the_others_are_served(cpu_model, prepared, onnx_table):
    bad, good = cpu_model.execute([pixels_request(tiles(MAX_TILES + 1)), pixels_request(prepared.pixel_values[None])])
    assert f"got {MAX_TILES + 1} tiles in one request" in error_message(bad)
    assert f"at most {MAX_TILES}" in error_message(bad)
    np.testing.assert_array_equal(outputs(good)["prompt_embedding_table"].as_numpy()[0], onnx_table)
    (after,) = cpu_model.execute([pixels_request(prepared.pixel_values[None])])
    np.testing.assert_array_equal(outputs(after)["prompt_embedding_table"].as_numpy()[0], onnx_table)


# ---- the prompt-table dtype matrix: the table leaves in the config's precision ----


def repository_with_table(cpu_repo, tmp_path, data_type: str, **parameters: str):
    """A copy of the CPU repository whose vision_encoder declares its table as `data_type`.

    A GPU repository writes the decoder checkpoint's precision there (tests/serve/test_package.py::
    test_gpu_prompt_table_type_is_the_decoder_checkpoints); the CPU runtime always writes TYPE_FP32,
    so the other precisions are set here.
    """
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "repo"
    shutil.copytree(cpu_repo, repo)
    config = model_config(repo, "vision_encoder")
    (table,) = [o for o in config.output if o.name == "prompt_embedding_table"]
    table.data_type = model_config_pb2.DataType.Value(data_type)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    write_model_config(repo, "vision_encoder", config)
    return repo


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_the_table_has_the_config_precision(cpu_repo, tmp_path, prepared, onnx_table, precision):
    """bf16 leaves through dlpack (NumPy has no bf16), fp16 / fp32 as NumPy; values are the float32
    ONNX output rounded to that precision."""
    p = PRECISIONS[precision]
    model = load_model(repository_with_table(cpu_repo, tmp_path, p.triton), "vision_encoder")
    (response,) = model.execute([pixels_request(prepared.pixel_values[None])])
    table = outputs(response)["prompt_embedding_table"]
    got = torch.from_dlpack(table.to_dlpack())
    want = torch.from_numpy(onnx_table).to(p.torch_dtype())[None]
    assert got.dtype == p.torch_dtype() and torch.equal(got, want)
    if p.numpy is None:
        with pytest.raises(pb.TritonModelException, match="BF16"):  # what the real pb_utils does too
            table.as_numpy()
    else:
        assert table.as_numpy().dtype == p.numpy_dtype()
        np.testing.assert_array_equal(table.as_numpy()[0], onnx_table.astype(p.numpy_dtype()))
    (empty,) = model.execute([pixels_request(tiles(0))])
    empty_table = torch.from_dlpack(outputs(empty)["prompt_embedding_table"].to_dlpack())
    assert empty_table.dtype == p.torch_dtype() and tuple(empty_table.shape) == (1, 0, HIDDEN)


# ---- the GPU runtime (TensorRT plan) with a stand-in engine: its checks, never a faked result ----

PROFILE = ((1, 3, SIZE, SIZE), (2, 3, SIZE, SIZE), (4, 3, SIZE, SIZE))  # (min, opt, max): at most 4 tiles


def standin_encoder(*, input_precision="bf16", output_precision="bf16", torch_module=None):
    engine = StandInVisionEngine(trt_dtype(input_precision), trt_dtype(output_precision), PROFILE)
    encoder = TrtPlanVisionEncoder("unused: the engine is given", engine=engine, trt=STANDIN_TENSORRT,
                                   torch=torch_module or UntouchableTorch())
    return encoder, engine


@pytest.mark.parametrize("inp, out", [("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32"), ("fp32", "bf16")])
def test_plan_io_dtypes_come_from_the_engine(inp, out):
    encoder, _ = standin_encoder(input_precision=inp, output_precision=out)
    assert (encoder.input_dtype, encoder.output_dtype) == (PRECISIONS[inp].torch_dtype(), PRECISIONS[out].torch_dtype())


def test_the_profile_max_is_the_encoders_tile_limit():
    encoder, engine = standin_encoder()
    assert encoder.max_tiles == 4 and len(engine.contexts) == 1
    assert VisionHandler(encoder, hidden_size=HIDDEN, max_tiles=MAX_TILES).max_tiles == 4  # the profile is lower
    assert VisionHandler(encoder, hidden_size=HIDDEN, max_tiles=3).max_tiles == 3  # the repository is lower


def test_tiles_over_the_profile_are_refused_before_torch_or_cuda():
    encoder, engine = standin_encoder()
    with pytest.raises(RequestError, match="got 5 tiles in one request; this repository takes at most 4"):
        VisionHandler(encoder, hidden_size=HIDDEN, max_tiles=MAX_TILES).run(tiles(5))
    with pytest.raises(DeployError, match=r"5 tiles exceed the vision engine's profile \(at most 4 per call\)"):
        encoder.encode(tiles(5)[0])
    assert engine.contexts[0].calls == []  # nothing reached the engine; UntouchableTorch shows torch was not used


def test_a_missing_plan_says_how_to_build_it(tmp_path):
    with pytest.raises(DeployError, match="no TensorRT plan at .*nvlm-deploy build vision"):
        TrtPlanVisionEncoder(tmp_path, trt=STANDIN_TENSORRT, torch=UntouchableTorch())


@pytest.fixture()
def gpu_model(cpu_repo, tmp_path, monkeypatch):
    """vision_encoder/1/model.py configured as a GPU repository (runtime gpu, bf16 table), whose plan
    is the stand-in engine: the registry's gpu factory is replaced for this test only."""
    engines = []

    def plan_encoder(path, params):
        encoder, engine = standin_encoder()
        engines.append((path, engine))
        return encoder

    monkeypatch.setitem(ENCODERS, "gpu", plan_encoder)
    repo = repository_with_table(cpu_repo, tmp_path, "TYPE_BF16", runtime="gpu", model_path=str(tmp_path / "vision"))
    return load_model(repo, "vision_encoder"), engines


def test_gpu_model_refuses_tiles_over_the_profile_and_serves_bf16_tables(gpu_model, tmp_path):
    model, engines = gpu_model
    ((path, engine),) = engines
    assert path == tmp_path / "vision"
    empty, bad, after = model.execute([pixels_request(tiles(0)), pixels_request(tiles(5)), pixels_request(tiles(0))])
    assert "this repository takes at most 4" in error_message(bad)
    for response in (empty, after):  # text-only requests through the ensemble: no encoder run, a bf16 table
        got = outputs(response)
        table = torch.from_dlpack(got["prompt_embedding_table"].to_dlpack())
        assert table.dtype == torch.bfloat16 and tuple(table.shape) == (1, 0, HIDDEN)
        assert got["prompt_vocab_size"].as_numpy().tolist() == [[0]]
    assert engine.contexts[0].calls == []


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs CUDA torch (the engine is a stand-in, the tensors are real)")
def test_a_shape_outside_the_profile_is_refused_by_the_context():
    encoder, engine = standin_encoder(torch_module=torch)
    with pytest.raises(DeployError, match=r"refused input shape \[2, 3, 224, 224\]"):
        encoder.encode(tiles(2, size=224)[0])
    assert engine.contexts[0].calls == [("set_input_shape", "pixel_values", (2, 3, 224, 224))]
