"""config.json's `quantization` (TensorRT-LLM's QuantConfig fields) written and read back."""

import dataclasses

from nvlm_deploy.config import LlmConfig
from nvlm_deploy.contracts.precision import precision
from nvlm_deploy.quant.recipes import padded_intermediate, recipe
from nvlm_deploy.trtllm.config import QuantConfig, TrtllmConfig


def test_quantization_round_trips_with_trtllm_field_names(tmp_path):
    import json

    llm = LlmConfig(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                    num_key_value_heads=8, vocab_size=152064)
    quant = recipe("int4_awq").quant_config(group_size=128, kv_cache="none")
    padded = padded_intermediate(llm.intermediate_size, group_size=128, tp=4)
    config = dataclasses.replace(TrtllmConfig.from_llm(llm, tp=4, pp=1, precision=precision("bf16")),
                                 quantization=quant, intermediate_size=padded)
    config.write(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())["quantization"]
    assert raw == {"quant_algo": "W4A16_AWQ", "kv_cache_quant_algo": None, "group_size": 128, "smoothquant_val": 0.5,
                   "clamp_val": None, "use_meta_recipe": False, "has_zero_point": False, "pre_quant_scale": True,
                   "exclude_modules": ["lm_head"]}
    back = TrtllmConfig.from_json(tmp_path / "config.json")
    assert back.quantization == quant and back.intermediate_size == 29696  # NVLM-D 29568 padded for tp 4
    assert TrtllmConfig.from_json(tmp_path / "config.json").quantization != QuantConfig()


def test_fp8_with_fp8_kv_cache():
    quant = recipe("fp8").quant_config(group_size=128, kv_cache="fp8")
    assert (quant.quant_algo, quant.kv_cache_quant_algo, quant.pre_quant_scale) == ("FP8", "FP8", False)
