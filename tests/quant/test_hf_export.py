"""modelopt's unified HF export as a complete NVLM-D directory, read back by the project's loader."""

import json

import pytest
import torch

from nvlm_deploy.quant.quantize import QuantizeOptions, quantize_checkpoint

pytest.importorskip("modelopt.torch.quantization")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["fp8", "int4_awq"])
def test_unified_hf_export_loads_back_and_generates(tiny_checkpoint, tmp_path, recipe):
    from nvlm_deploy.model.checkpoint import CheckpointIndex
    from nvlm_deploy.model.generate import ReferencePipeline
    from nvlm_deploy.runtime.decoder import TrtllmCheckpointRuntime

    hf = tmp_path / "hf"
    opts = QuantizeOptions(recipe=recipe, group_size=64, calib_size=2, dtype="fp32")
    trtllm = quantize_checkpoint(tiny_checkpoint, tmp_path / "target", opts, hf_out=hf)
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["NVLM_D"]
    assert config["quantization_config"]["quant_method"] == "modelopt"
    assert config["quantization_config"]["quant_algo"] == {"fp8": "FP8", "int4_awq": "W4A16_AWQ"}[recipe]
    assert (hf / "hf_quant_config.json").is_file() and (hf / "tokenizer.json").is_file()
    index = CheckpointIndex.open(hf)
    source = CheckpointIndex.open(tiny_checkpoint)
    name = "vision_model.encoder.layers.0.attn.qkv.weight"
    assert torch.equal(index.get(name), source.get(name))  # vision tower copied unquantized
    # the decoder's linears read back as float weights equal to the TensorRT-LLM checkpoint's dequantized ones
    rt = TrtllmCheckpointRuntime.load(trtllm)
    down = index.get("language_model.model.layers.1.mlp.down_proj.weight").float()
    assert torch.allclose(down, rt.w["transformer.layers.1.mlp.proj.weight"], atol=1e-6, rtol=1e-5)
    answer = ReferencePipeline.from_model_dir(hf).generate("Describe the image.", max_new_tokens=4)
    assert isinstance(answer, str)
