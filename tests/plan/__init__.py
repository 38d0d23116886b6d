"""Planner tests. NVLM-D-72B's config.json, rebuilt from shared/reference/nvlm-d.md §1."""

from __future__ import annotations

import json
from pathlib import Path


def nvlm_d_72b_config() -> dict:
    """NVLM-D-72B's config.json (nvlm-d.md §1); no weights, so no dummy-head count."""
    return {
        "architectures": ["NVLM_D"], "model_type": "NVLM_D", "downsample_ratio": 0.5, "dynamic_image_size": True,
        "force_image_size": 448, "max_dynamic_patch": 6, "min_dynamic_patch": 1, "ps_version": "v2",
        "select_layer": -1, "template": "chatml", "use_thumbnail": True, "torch_dtype": "bfloat16",
        "use_backbone_lora": 0, "use_llm_lora": 0,
        "vision_config": {
            "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": 3200,
            "intermediate_size": 12800, "num_hidden_layers": 45, "num_attention_heads": 25, "num_channels": 3,
            "image_size": 448, "patch_size": 14, "qk_normalization": True, "qkv_bias": False,
            "norm_type": "rms_norm", "layer_norm_eps": 1e-06, "hidden_act": "gelu", "use_flash_attn": True,
            "drop_path_rate": 0.0, "dropout": 0.0, "attention_dropout": 0.0, "initializer_factor": 0.1,
            "initializer_range": 1e-10},
        "llm_config": {
            "_name_or_path": "Qwen/Qwen2-72B-Instruct", "architectures": ["Qwen2ForCausalLM"], "model_type": "llama",
            "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80, "num_attention_heads": 64,
            "num_key_value_heads": 8, "attention_bias": True, "mlp_bias": False, "hidden_act": "silu",
            "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "rope_scaling": {"factor": 3.0, "type": "dynamic"},
            "max_position_embeddings": 32768, "vocab_size": 152064, "tie_word_embeddings": False,
            "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": None},
    }


def write_config_only(directory: Path, config: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or nvlm_d_72b_config()), encoding="utf-8")
    return directory
