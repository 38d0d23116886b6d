import json

import torch

from nvlm_deploy.cli import main
from nvlm_deploy.model.checkpoint import CheckpointIndex
from nvlm_deploy.preprocess.tokenizer import SPECIAL_TOKENS, Tokenizer


def test_config_has_nvlm_d_keys(tiny_checkpoint):
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["architectures"] == ["NVLM_D"]
    for key in ("downsample_ratio", "ps_version", "select_layer", "force_image_size", "max_dynamic_patch",
                "min_dynamic_patch", "use_thumbnail", "template", "dynamic_image_size", "torch_dtype"):
        assert key in cfg, key
    assert cfg["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["llm_config"]["rope_scaling"] == {"factor": 3.0, "type": "dynamic"}
    assert cfg["vision_config"]["qk_normalization"] is True
    assert "num_dummy_heads" not in cfg["vision_config"]  # read from the weights, as with the real model


def test_structural_features_are_kept_small(tiny_checkpoint):
    index = CheckpointIndex.open(tiny_checkpoint)
    v_heads, hd, hidden = 9, 16, 144
    assert index.shape("vision_model.encoder.layers.0.attn.qkv.weight") == (3 * (v_heads + 7) * hd, hidden)
    assert index.shape("vision_model.encoder.layers.0.attn.q_norm.weight") == ((v_heads + 7) * hd,)
    assert index.shape("language_model.model.layers.0.self_attn.k_proj.weight") == (64, 128)  # GQA 2 of 4
    assert "language_model.model.layers.0.self_attn.q_proj.bias" in index
    assert "language_model.lm_head.weight" in index  # untied
    assert index.shape("mlp1.1.weight") == (384, 576)  # LLM intermediate width, no bias
    assert "mlp1.1.bias" not in index
    assert index.shape("vision_model.embeddings.position_embedding") == (1, 1025, 144)  # 448-px tiles


def test_dummy_heads_are_zero(tiny_checkpoint):
    index = CheckpointIndex.open(tiny_checkpoint)
    qkv = index.get("vision_model.encoder.layers.1.attn.qkv.weight")
    inner = 16 * 16
    for s in range(3):
        assert torch.count_nonzero(qkv[s * inner + 144:(s + 1) * inner]) == 0
        assert torch.count_nonzero(qkv[s * inner:s * inner + 144]) > 0


def test_tokenizer_has_qwen2_special_tokens(tiny_checkpoint):
    tok = Tokenizer.load(tiny_checkpoint)
    ids = [tok.token_id(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert max(ids) < json.loads((tiny_checkpoint / "config.json").read_text())["llm_config"]["vocab_size"]
    text = "<|im_start|>user\nWhat color? café 🙂<|im_end|>"
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    assert tok.encode("<|vision_pad|>") == [tok.image_pad_id]


def test_cli_writes_checkpoint_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tiny", "--out", str(out), "--seed", "1"]) == 0
    assert (out / "model.safetensors.index.json").is_file()
    assert main(["tiny", "--out", str(out)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert not list(tmp_path.glob(".t.tmp-*"))  # nothing half-written left behind
