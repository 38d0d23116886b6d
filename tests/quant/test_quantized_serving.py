"""A quantized checkpoint (FP8 weights, activations and KV cache; tp 2 x pp 2) served by the CPU Triton deployment."""

import pytest

from tests.serving import LIMITS

pytestmark = [pytest.mark.server, pytest.mark.slow]
pytest.importorskip("modelopt.torch.quantization")


@pytest.fixture(scope="module")
def fp8_server(tiny_checkpoint, tmp_path_factory):
    """One tritonserver start over an fp8 + fp8-KV checkpoint at tp 2 x pp 2 (the most emulation in one repository)."""
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx
    from nvlm_deploy.quant.quantize import QuantizeOptions, quantize_checkpoint
    from nvlm_deploy.serve.package import PackageOptions, package_repository
    from nvlm_deploy.serve.server import start_server

    target = tmp_path_factory.mktemp("engines") / "tiny-cpu-fp8"
    export_vision_onnx(tiny_checkpoint, target, dtype="fp32")
    quantize_checkpoint(tiny_checkpoint, target, QuantizeOptions(recipe="fp8", kv_cache="fp8", tp=2, pp=2,
                                                                 calib_size=4, dtype="fp32"))
    repo = package_repository(target, target / "model_repository", runtime="cpu",
                              options=PackageOptions(limits=LIMITS), log=lambda line: None)
    srv = start_server(repo, timeout=600)
    yield srv, target
    srv.stop()


@pytest.mark.parametrize("prompt,n", [("What is in the picture?", 1), ("Hello, how are you?", 0)])
def test_quantized_checkpoint_answers_over_grpc_as_the_runtime_computes(fp8_server, reference, images, prompt, n):
    from nvlm_deploy.backend.bls import make_decode
    from nvlm_deploy.client.sync import NvlmClient
    from nvlm_deploy.runtime.decoder import GenerationRequest, TrtllmCheckpointRuntime

    srv, target = fp8_server
    prepared = reference.preprocessor.prepare(prompt, images[:n])
    table = reference.image_features(prepared.pixel_values) if n else None
    rt = TrtllmCheckpointRuntime.load(target)
    assert rt.config.quantization.quant_algo == "FP8" and rt.config.mapping.world_size == 4
    want = rt.generate([GenerationRequest(list(prepared.input_ids), prompt_table=None if table is None else table.numpy(),
                                          max_new_tokens=16, end_id=reference.tokenizer.eos_id)])[0]
    assert want
    with NvlmClient(srv.grpc_url, model="tensorrt_llm_bls", timeout=300) as c:
        assert c.chat(prompt, images[:n], max_tokens=16) == make_decode(reference.tokenizer)(want)
