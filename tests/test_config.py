import dataclasses

import pytest

from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.errors import DeployError
from nvlm_deploy.model.tiny import preset_config

NVLM_D_72B = {  # the fields of nvidia/NVLM-D-72B config.json that matter (shared/reference/nvlm-d.md §1)
    "architectures": ["NVLM_D"], "model_type": "NVLM_D", "downsample_ratio": 0.5, "dynamic_image_size": True,
    "force_image_size": 448, "max_dynamic_patch": 6, "min_dynamic_patch": 1, "ps_version": "v2",
    "select_layer": -1, "template": "chatml", "use_thumbnail": True, "use_backbone_lora": 0,
    "use_llm_lora": 0, "torch_dtype": "bfloat16",
    "vision_config": {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": 3200,
                      "intermediate_size": 12800, "num_hidden_layers": 45, "num_attention_heads": 25,
                      "num_channels": 3, "image_size": 448, "patch_size": 14, "qk_normalization": True,
                      "qkv_bias": False, "norm_type": "rms_norm", "layer_norm_eps": 1e-6, "hidden_act": "gelu",
                      "use_flash_attn": True, "drop_path_rate": 0.0, "initializer_factor": 0.1},
    "llm_config": {"_name_or_path": "Qwen/Qwen2-72B-Instruct", "architectures": ["Qwen2ForCausalLM"],
                   "model_type": "llama", "hidden_size": 8192, "intermediate_size": 29568,
                   "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                   "attention_bias": True, "mlp_bias": False, "hidden_act": "silu", "rms_norm_eps": 1e-6,
                   "rope_theta": 1000000.0, "rope_scaling": {"factor": 3.0, "type": "dynamic"},
                   "max_position_embeddings": 32768, "vocab_size": 152064, "tie_word_embeddings": False,
                   "bos_token_id": 151643, "eos_token_id": 151645},
}


def test_nvlm_d_72b_config_reads():
    c = NvlmConfig.from_hf_dict(NVLM_D_72B)
    assert c.tokens_per_tile == 256
    assert c.projector_hidden_size == 29568  # default: LLM intermediate (NVLM-D's mlp1)
    assert c.vision.head_dim == 128 and c.llm.head_dim == 128
    from nvlm_deploy.contracts.limits import DeploymentLimits

    assert DeploymentLimits.for_model(c).max_tiles_per_image == 7  # tiles per image: contracts.limits
    assert c.extra["use_backbone_lora"] == 0


def test_round_trip_through_hf_dict():
    c = preset_config("tiny")
    again = NvlmConfig.from_hf_dict(c.to_hf_dict())
    # dummy heads are not a config key: they come back from the weights' shapes
    assert again == dataclasses.replace(c, vision=dataclasses.replace(c.vision, num_dummy_heads=0))


def test_missing_llm_config_is_named():
    raw = {k: v for k, v in NVLM_D_72B.items() if k != "llm_config"}
    with pytest.raises(DeployError, match="'llm_config' is missing"):
        NvlmConfig.from_hf_dict(raw)


def test_bad_ps_version_is_named():
    with pytest.raises(DeployError, match="ps_version 'v3'"):
        NvlmConfig.from_hf_dict({**NVLM_D_72B, "ps_version": "v3"})


def test_transformers5_rope_parameters_layout_is_accepted():
    llm = dict(NVLM_D_72B["llm_config"])
    del llm["rope_theta"]
    llm["rope_parameters"] = {"rope_theta": 5e5, "rope_type": "default"}
    assert NvlmConfig.from_hf_dict({**NVLM_D_72B, "llm_config": llm}).llm.rope_theta == 5e5
