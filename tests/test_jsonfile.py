"""Every JSON reader (manifests, TensorRT-LLM config.json) turns each kind of damage into a named error."""

import json

import pytest

from nvlm_deploy.contracts.manifest import TrtllmCheckpointManifest, read_manifest
from nvlm_deploy.errors import DeployError
from nvlm_deploy.trtllm.config import TrtllmConfig

CONFIG = {"dtype": "float32", "vocab_size": 1030, "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_size": 16, "intermediate_size": 128,
          "norm_epsilon": 1e-6, "max_position_embeddings": 512, "rotary_base": 10000.0,
          "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1}}
GOOD = json.dumps(CONFIG)

DAMAGE = [
    ("", "is empty"),
    ("   \n", "is empty"),
    (GOOD[: len(GOOD) // 2], "ends mid-document"),
    ("not json at all", "is not valid JSON"),
    ("[1, 2]", "is not a JSON object"),
    (b"\xff\xfe{", "not UTF-8"),
    (json.dumps({k: v for k, v in CONFIG.items() if k != "vocab_size"}), r"lacks field\(s\) \['vocab_size'\]"),
    (json.dumps({**CONFIG, "vocab_size": "1030"}), "vocab_size: expected an integer, found str"),
    (json.dumps({**CONFIG, "hidden_size": 64.5}), "hidden_size: expected an integer"),
    (json.dumps({**CONFIG, "mapping": [1, 1, 1]}), "mapping: expected"),
    (json.dumps({**CONFIG, "mapping": {"tp_size": 1, "pp_size": 1}}), "mapping.world_size: missing"),
    (json.dumps({**CONFIG, "mapping": {**CONFIG["mapping"], "tp_size": "1"}}), "mapping.tp_size: expected an integer"),
    (json.dumps({**CONFIG, "quantization": "fp8"}), "quantization: expected"),
    (json.dumps({**CONFIG, "rotary_scaling": 3}), "rotary_scaling: expected an object or null"),
]


@pytest.mark.parametrize("content, message", DAMAGE)
def test_trtllm_config_damage_is_named_with_the_fix(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DeployError, match=message) as exc:
        TrtllmConfig.from_json(path)
    assert str(path) in str(exc.value) and "convert llm" in str(exc.value)


def test_a_good_config_and_a_null_quantization_still_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG, "quantization": None}))
    config = TrtllmConfig.from_json(tmp_path / "config.json")
    assert config.vocab_size == 1030 and config.quantization.quant_algo is None


@pytest.mark.parametrize("change, message", [
    ({"tp": "2"}, "tp: expected an integer, found str"),
    ({"ranks": []}, "ranks: expected an object"),
    ({"self_check": "all"}, "self_check: expected a list"),
    ({"files": {"rank0.safetensors": 5}}, "files: expected"),
])
def test_manifest_fields_of_the_wrong_type_are_named(tmp_path, change, message):
    raw = {"stage": "trtllm_checkpoint", "model_dir": "/m", "input_hashes": {}, "precision": "fp32", "tp": 1,
           "pp": 1, "world_size": 1, "ranks": {}, "rotary_scaling": None, "rotary_scaling_reason": "",
           "source_rope_scaling": None, "self_check": [], "files": {}}
    (tmp_path / "manifest.json").write_text(json.dumps({**raw, **change}))
    with pytest.raises(DeployError, match=message) as exc:
        read_manifest(tmp_path, TrtllmCheckpointManifest, writer="nvlm-deploy convert llm")
    assert str(tmp_path / "manifest.json") in str(exc.value) and "nvlm-deploy convert llm" in str(exc.value)
