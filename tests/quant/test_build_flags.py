"""trtllm-build flags per recipe (TensorRT-LLM 1.2 plugin switches; builder.py / commands/build.py facts)."""

import pytest

from nvlm_deploy.build.llm_engine import recipe_flags, trtllm_build_command
from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.errors import DeployError
from nvlm_deploy.quant.recipes import recipe
from nvlm_deploy.trtllm.config import QuantConfig

PLUGIN_SWITCHES = {"--use_fp8_context_fmha", "--use_fused_mlp"}  # plugin.py: enable | disable


def _pairs(flags):
    return dict(zip(flags[::2], flags[1::2]))


def test_fp8_enables_fp8_context_fmha_and_awq_disables_it_and_the_fused_mlp():
    fp8 = _pairs(recipe_flags(recipe("fp8").quant_config(group_size=128, kv_cache="fp8")))
    awq = _pairs(recipe_flags(recipe("int4_awq").quant_config(group_size=128, kv_cache="none")))
    assert fp8 == {"--use_fp8_context_fmha": "enable"}
    assert awq == {"--use_fp8_context_fmha": "disable", "--use_fused_mlp": "disable"}
    assert set(fp8) | set(awq) <= PLUGIN_SWITCHES and set(fp8.values()) | set(awq.values()) <= {"enable", "disable"}
    assert recipe_flags(QuantConfig()) == []


def test_the_command_reads_the_recipe_from_the_checkpoint(tmp_path):
    from nvlm_deploy.config import LlmConfig
    from nvlm_deploy.contracts.precision import precision
    from nvlm_deploy.trtllm.config import TrtllmConfig

    llm = LlmConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=1030)
    config = TrtllmConfig.from_llm(llm, tp=1, pp=1, precision=precision("bf16"))
    import dataclasses

    dataclasses.replace(config, quantization=recipe("int4_awq").quant_config(group_size=64, kv_cache="none")).write(tmp_path)
    limits = DeploymentLimits(tokens_per_tile=16, thumbnail=True, max_tiles_before_thumbnail=6, max_images=1, max_input_len=512,
                              max_output_len=128, max_batch_size=4)
    cmd = trtllm_build_command(tmp_path, tmp_path / "llm", limits, workers=1)
    assert _pairs(cmd[1:])["--use_fused_mlp"] == "disable"
    with pytest.raises(DeployError, match="no build recipe"):
        recipe_flags(QuantConfig(quant_algo="NVFP4"))
