"""The HF -> TensorRT-LLM name table: every tensor maps or raises; missing/extra named."""

import pytest

from nvlm_deploy.trtllm.names import (HF_PREFIX, expected_hf_names, plan_tensors, trtllm_name)
from nvlm_deploy.errors import DeployError


def test_every_decoder_tensor_of_the_reference_model_maps(tiny_model):
    names = [n for n in tiny_model.state_dict() if n.startswith(HF_PREFIX)]
    mapped = {trtllm_name(n)[0] for n in names}
    assert "transformer.layers.1.attention.qkv.weight" in mapped
    assert "transformer.vocab_embedding.weight" in mapped and "lm_head.weight" in mapped
    # 12 per-layer HF tensors fuse into 8 TensorRT-LLM tensors (q/k/v weights and biases fused).
    assert len(mapped) == 3 + 8 * tiny_model.config.llm.num_hidden_layers


def test_mlp_names_follow_tensorrt_llm_inversion():
    hf = "language_model.model.layers."
    assert trtllm_name(hf + "0.mlp.gate_proj.weight")[:2] == ("transformer.layers.0.mlp.fc.weight", "column")
    assert trtllm_name(hf + "0.mlp.up_proj.weight")[:2] == ("transformer.layers.0.mlp.gate.weight", "column")
    assert trtllm_name(hf + "7.mlp.down_proj.weight") == ("transformer.layers.7.mlp.proj.weight", "row", 7)
    assert trtllm_name(hf + "2.post_attention_layernorm.weight")[0] == "transformer.layers.2.post_layernorm.weight"


def test_unknown_tensor_raises_with_its_name():
    with pytest.raises(DeployError, match="model.layers.0.self_attn.rotary.inv_freq"):
        trtllm_name("language_model.model.layers.0.self_attn.rotary.inv_freq")
    with pytest.raises(DeployError, match="no 'language_model.' prefix"):
        trtllm_name("mlp1.1.weight")


def test_plan_reports_missing_and_unexpected_by_name():
    found = expected_hf_names(num_layers=2)
    found.remove("language_model.model.layers.1.mlp.up_proj.weight")
    found.append("language_model.model.layers.2.mlp.up_proj.weight")
    with pytest.raises(DeployError) as info:
        plan_tensors(found, num_layers=2, where="ckpt")
    message = str(info.value)
    assert "Missing (1): language_model.model.layers.1.mlp.up_proj.weight" in message
    assert "Unexpected (1): language_model.model.layers.2.mlp.up_proj.weight" in message


def test_plan_fuses_qkv_in_q_k_v_order_and_orders_the_file():
    targets = plan_tensors(expected_hf_names(num_layers=2), num_layers=2)
    by_name = {t.name: t for t in targets}
    qkv = by_name["transformer.layers.1.attention.qkv.bias"]
    assert [s.rsplit(".", 2)[-2] for s in qkv.sources] == ["q_proj", "k_proj", "v_proj"]
    assert targets[0].name == "transformer.vocab_embedding.weight"
    assert {t.name for t in targets[-2:]} == {"transformer.ln_f.weight", "lm_head.weight"}
    assert by_name["transformer.layers.1.mlp.fc.weight"].local_name(first_layer=1) == "transformer.layers.0.mlp.fc.weight"


def test_tied_embeddings_feed_lm_head_from_the_embedding():
    names = expected_hf_names(num_layers=1, tie_word_embeddings=True)
    assert HF_PREFIX + "lm_head.weight" not in names
    lm_head = next(t for t in plan_tensors(names, num_layers=1, tie_word_embeddings=True) if t.name == "lm_head.weight")
    assert lm_head.sources == (HF_PREFIX + "model.embed_tokens.weight",) and lm_head.split == "vocab"
