"""Quantized checkpoints served by the CPU Triton deployment: fp8 (+ FP8 KV cache) and int4_awq (group 64),
each at tp 1, tp 2 and tp 2 x pp 2, answer over gRPC exactly what TrtllmCheckpointRuntime computes.

Cost: each recipe is calibrated once per session (tests/quant/conftest.py, shared with test_quantize) and written at the three layouts;
every target shares the session's vision ONNX (`engines`, hardlinked: nothing writes to it) and
its limits (the target manifest, as `cpu_repo_tp` does). A repository serves one decoder under
fixed model names (`serve.package.MODELS`), so each layout is its own repository and tritonserver
start: 6 starts, one at a time.
"""

import dataclasses
import os
import shutil

import pytest

from tests.quant.conftest import LAYOUTS, RECIPES
from tests.serving import LIMITS

pytestmark = [pytest.mark.server, pytest.mark.slow]
pytest.importorskip("modelopt.torch.quantization")

QUANT_ALGO = {"fp8": "FP8", "int4_awq": "W4A16_AWQ"}  # TensorRT-LLM's QuantConfig.quant_algo per recipe
PROMPTS = [("What is in the picture?", 1), ("Hello, how are you?", 0)]  # (text, images)


def write_target(target, base, tiny_checkpoint, calibration, options):
    """A target directory: `base`'s vision ONNX (hardlinked) and limits, and the calibrated decoder
    written at options.tp x options.pp as `<target>/trtllm_checkpoint/` with its manifest (what
    `quantize_checkpoint` writes, without calibrating again)."""
    from nvlm_deploy.contracts.precision import precision
    from nvlm_deploy.quant.quantize import CHECKPOINT_STAGE, write_checkpoint, write_checkpoint_manifest

    model, decoder, padded = calibration
    target.mkdir()
    shutil.copytree(base / "onnx", target / "onnx", copy_function=os.link)
    shutil.copy2(base / "manifest.json", target / "manifest.json")
    checkpoint = target / CHECKPOINT_STAGE
    checkpoint.mkdir()
    prec = precision(options.dtype)
    write_checkpoint(checkpoint, model, decoder, options, padded=padded, dtype=prec)
    write_checkpoint_manifest(checkpoint, tiny_checkpoint, options, prec=prec, llm=model.config.llm, padded=padded)
    return target


# recipe-major, so that the one parametrized fixture starts each server once and a recipe's layouts follow
# each other (two parametrized module fixtures let pytest interleave recipes: 4 calibrations instead of 2)
CASES = [(name, layout) for name in sorted(RECIPES) for layout in LAYOUTS]


@pytest.fixture(scope="module")
def quantized_targets(engines, tiny_checkpoint, tmp_path_factory, whole_model_calibration):
    """recipe -> {(tp, pp): target dir}: each recipe's session calibration written at the three layouts."""
    made = {}

    def targets(name):
        if name not in made:
            options = RECIPES[name]
            calibration = whole_model_calibration(name)  # no padding: group 64 divides every rank's width
            root = tmp_path_factory.mktemp(f"served-{name}")
            made[name] = {(tp, pp): write_target(root / f"tp{tp}pp{pp}", engines, tiny_checkpoint, calibration,
                                                 dataclasses.replace(options, tp=tp, pp=pp)) for tp, pp in LAYOUTS}
        return made[name]
    return targets


@pytest.fixture(scope="module", params=CASES, ids=[f"{name}-tp{tp}pp{pp}" for name, (tp, pp) in CASES])
def quantized_server(request, quantized_targets):
    """(recipe, (tp, pp), server, target): one tritonserver over that layout's repository."""
    from nvlm_deploy.serve.package import PackageOptions, package_repository
    from nvlm_deploy.serve.server import start_server

    name, layout = request.param
    target = quantized_targets(name)[layout]
    repo = package_repository(target, target / "model_repository", runtime="cpu",
                              options=PackageOptions(limits=LIMITS), log=lambda line: None)
    srv = start_server(repo, timeout=600)
    yield name, layout, srv, target
    srv.stop()


@pytest.mark.parametrize("prompt,n", PROMPTS, ids=["image", "text"])
def test_quantized_checkpoint_answers_over_grpc_as_the_runtime_computes(quantized_server, reference, images,
                                                                        prompt, n):
    from nvlm_deploy.backend.bls import make_decode
    from nvlm_deploy.client.sync import NvlmClient
    from nvlm_deploy.contracts.manifest import RepositoryManifest, read_manifest
    from nvlm_deploy.runtime.decoder import GenerationRequest, TrtllmCheckpointRuntime

    name, (tp, pp), srv, target = quantized_server
    rt = TrtllmCheckpointRuntime.load(target)
    quantization, mapping = rt.config.quantization, rt.config.mapping
    assert quantization.quant_algo == QUANT_ALGO[name]
    assert quantization.kv_cache_quant_algo == ("FP8" if RECIPES[name].kv_cache == "fp8" else None)
    assert (mapping.tp_size, mapping.pp_size) == (tp, pp)
    served = read_manifest(target / "model_repository", RepositoryManifest, writer="nvlm-deploy package")
    assert served.world_size == tp * pp

    prepared = reference.preprocessor.prepare(prompt, images[:n])
    table = reference.image_features(prepared.pixel_values) if n else None
    want = rt.generate([GenerationRequest(list(prepared.input_ids), prompt_table=None if table is None else table.numpy(),
                                          max_new_tokens=16, end_id=reference.tokenizer.eos_id)])[0]
    assert want
    with NvlmClient(srv.grpc_url, model="tensorrt_llm_bls", timeout=300) as c:
        assert c.chat(prompt, images[:n], max_tokens=16) == make_decode(reference.tokenizer)(want)
