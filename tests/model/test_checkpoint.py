import json
import shutil

import pytest
import torch

from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.errors import DeployError
from nvlm_deploy.model.checkpoint import INDEX_NAME, CheckpointIndex, save_checkpoint
from nvlm_deploy.model.nvlm import NvlmModel


@pytest.fixture
def ckpt_copy(tiny_checkpoint, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, dst)
    return dst


def _index(path):
    return json.loads((path / INDEX_NAME).read_text())


def test_loaded_and_saved_again_gives_identical_logits(tiny_checkpoint, tiny_model, tmp_path):
    out = tmp_path / "resaved"
    out.mkdir()
    index = CheckpointIndex.open(tiny_checkpoint)
    tensors = dict(index.tensors(index.names()))
    save_checkpoint(tensors, out, config=json.loads((tiny_checkpoint / "config.json").read_text()),
                    max_shard_bytes=300_000)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoint / name, out / name)
    again = NvlmModel.from_pretrained(out, dtype="fp32")
    ids = torch.tensor([[5, 17, 300, 1030, 1031, 42]])
    table = torch.randn(2, 128)
    with torch.no_grad():
        assert torch.equal(tiny_model(ids, table), again(ids, table))
    assert len(set(_index(out)["weight_map"].values())) > 1  # really sharded


def test_mixed_fp32_bf16_tensors_are_kept(tiny_checkpoint):
    index = CheckpointIndex.open(tiny_checkpoint)
    assert index.dtype_name("vision_model.encoder.layers.0.attn.qkv.weight") == "F32"
    assert index.dtype_name("language_model.model.layers.0.self_attn.q_proj.bias") == "F32"
    assert index.dtype_name("language_model.model.layers.0.mlp.up_proj.weight") == "BF16"
    assert index.dtype_name("mlp1.1.weight") == "BF16"


def test_missing_shard_is_named(ckpt_copy):
    shard = sorted(ckpt_copy.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(DeployError, match=shard.name):
        CheckpointIndex.open(ckpt_copy)


def test_corrupt_shard_is_named(ckpt_copy):
    shard = sorted(ckpt_copy.glob("model-*.safetensors"))[0]
    shard.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DeployError, match=f"{shard.name}.*not a readable safetensors"):
        NvlmModel.from_pretrained(ckpt_copy, dtype="fp32")


def test_missing_and_unexpected_tensors_reported_by_name(ckpt_copy):
    index = _index(ckpt_copy)
    wm = index["weight_map"]
    wm["vision_model.extra.weight"] = wm.pop("mlp1.3.weight")
    (ckpt_copy / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(DeployError) as err:
        NvlmModel.from_pretrained(ckpt_copy, dtype="fp32")
    assert "Missing (1): mlp1.3.weight" in str(err.value)
    assert "Unexpected (1): vision_model.extra.weight" in str(err.value)


def test_index_naming_tensor_absent_from_shard(ckpt_copy):
    index = _index(ckpt_copy)
    index["weight_map"]["language_model.model.norm.weight"] = sorted(set(index["weight_map"].values()))[-1]
    (ckpt_copy / INDEX_NAME).write_text(json.dumps(index))
    idx = CheckpointIndex.open(ckpt_copy)
    with pytest.raises(DeployError, match="does not contain tensor 'language_model.model.norm.weight'"):
        idx.get("language_model.model.norm.weight")


def test_no_weights_at_all(tmp_path):
    with pytest.raises(DeployError, match="holds no model.safetensors.index.json"):
        CheckpointIndex.open(tmp_path)


def test_unsupported_llm_architecture_names_the_field(ckpt_copy):
    cfg = json.loads((ckpt_copy / "config.json").read_text())
    cfg["llm_config"]["architectures"] = ["LlamaForCausalLM"]
    (ckpt_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DeployError, match="llm_config.architectures"):
        NvlmConfig.from_hf(ckpt_copy)


def test_structure_is_read_from_shapes_not_names(tiny_checkpoint):
    config = NvlmConfig.from_hf(tiny_checkpoint)
    assert config.vision.num_dummy_heads == 7
    assert config.projector_hidden_size == config.llm.intermediate_size
    assert config.projector_bias is False
    assert config.vision.norm_type == "rms_norm"


def test_internvl_style_checkpoint_loads_with_biases_and_layernorm(tmp_path):
    """InternVL variant: LayerNorm, qkv bias, no dummy heads, mlp1 with biases of LLM-hidden width."""
    import dataclasses

    from nvlm_deploy.model.tiny import preset_config, random_state_dict, write_tiny_checkpoint

    base = preset_config("tiny")
    vision = dataclasses.replace(base.vision, num_dummy_heads=0, qkv_bias=True, norm_type="layer_norm",
                                 qk_normalization=False)
    config = dataclasses.replace(base, vision=vision, projector_hidden_size=base.llm.hidden_size,
                                 projector_bias=True)
    write_tiny_checkpoint(tmp_path / "internvl", config=config, state=random_state_dict(config, seed=1))
    loaded = NvlmConfig.from_hf(tmp_path / "internvl")
    assert (loaded.vision.num_dummy_heads, loaded.vision.qkv_bias, loaded.vision.norm_type) == (0, True, "layer_norm")
    assert (loaded.projector_hidden_size, loaded.projector_bias) == (128, True)
    model = NvlmModel.from_pretrained(tmp_path / "internvl", dtype="fp32")
    assert isinstance(model.vision_model.encoder.layers[0].norm1, torch.nn.LayerNorm)
    with torch.no_grad():
        assert model.extract_feature(torch.randn(1, 3, 448, 448)).shape == (1, 256, 128)
