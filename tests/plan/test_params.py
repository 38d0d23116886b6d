import dataclasses

import pytest

from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.errors import DeployError
from nvlm_deploy.model.checkpoint import CheckpointIndex
from nvlm_deploy.plan.params import hf_tensor_shapes, load_model, sizes_from_checkpoint, sizes_from_shapes
from tests.plan import nvlm_d_72b_config, write_config_only

GB = 10**9

# Hand counts for NVLM-D-72B (shared/reference/nvlm-d.md §2, §3, §8):
# InternViT layer, 32 heads x 128 (25 real + 7 dummy) = E 4096, D 3200, F 12800:
#   qkv 3*4096*3200 = 39,321,600; q/k norm 2*4096 = 8,192; proj 3200*4096 + 3200 = 13,110,400;
#   ls1/ls2 6,400; norm1/norm2 6,400; fc1 3200*12800 + 12800 = 40,972,800; fc2 12800*3200 + 3200 = 40,963,200
#   = 134,388,992 per layer, x 45 = 6,047,504,640
# embeddings: class 3,200 + patch 3200*3*14*14 + 3200 = 1,884,800 + position 1025*3200 = 3,280,000 -> 5,168,000
VIT_WITH_DUMMIES = 45 * (39_321_600 + 8_192 + 13_110_400 + 6_400 + 6_400 + 40_972_800 + 40_963_200) + 5_168_000
# without the dummies (E = 3200): qkv 30,720,000; norms 6,400; proj 10,243,200
VIT_REAL = 45 * (30_720_000 + 6_400 + 10_243_200 + 6_400 + 6_400 + 40_972_800 + 40_963_200) + 5_168_000
# mlp1: LayerNorm(12800) weight + bias, Linear(12800 -> 29568), Linear(29568 -> 8192), no biases
MLP1 = 2 * 12_800 + 12_800 * 29_568 + 29_568 * 8_192
# Qwen2-72B layer: q 8192*8192 + 8192, k and v 1024*8192 + 1024 each, o 8192*8192, gate/up/down 3*29568*8192, norms 2*8192
LLM_LAYER = (8192 * 8192 + 8192) + 2 * (1024 * 8192 + 1024) + 8192 * 8192 + 3 * 29568 * 8192 + 2 * 8192
EMBED = 152_064 * 8_192
LLM = 80 * LLM_LAYER + 2 * EMBED + 8192


def test_hand_counts_match_the_reference_table():
    assert VIT_WITH_DUMMIES == 6_052_672_640 and VIT_REAL == 5_536_496_000
    assert MLP1 == 620_717_056 and LLM == 72_706_203_648


def test_nvlm_d_72b_counts_from_config_only(tmp_path):
    model = load_model(write_config_only(tmp_path / "m"))
    s = model.sizes
    assert (s.vision_params, s.vision_real_params, s.projector_params, s.llm_params) == (
        VIT_WITH_DUMMIES, VIT_REAL, MLP1, LLM)
    assert (s.embedding_params, s.lm_head_params) == (EMBED, EMBED)
    # nvlm-d.md §8: 6.053 B with dummy heads (12.1 GB bf16), 5.536 B without (11.1 GB), mlp1 0.621 B
    assert s.vision_params == pytest.approx(6.053e9, rel=0.01) and 2 * s.vision_params / GB == pytest.approx(12.1, rel=0.01)
    assert 2 * s.vision_real_params / GB == pytest.approx(11.1, rel=0.01)
    assert s.projector_params == pytest.approx(0.621e9, rel=0.01)
    assert s.total_params == pytest.approx(79.38e9, rel=0.01)
    assert s.stored_bytes is None and "config.json" in s.source
    assert model.config.vision.num_dummy_heads == 7
    assert len(model.assumptions) == 1 and "assumed 7 zero heads" in model.assumptions[0]


def test_dummy_heads_stated_in_vision_config_need_no_assumption(tmp_path):
    raw = nvlm_d_72b_config()
    raw["vision_config"]["num_dummy_heads"] = 7
    model = load_model(write_config_only(tmp_path / "m", raw))
    assert model.assumptions == () and model.sizes.vision_params == VIT_WITH_DUMMIES


def test_internvl_gets_no_dummy_heads(tmp_path):
    raw = nvlm_d_72b_config()
    raw["architectures"] = ["InternVLChatModel"]
    model = load_model(write_config_only(tmp_path / "m", raw))
    assert model.assumptions == () and model.sizes.vision_params == VIT_REAL


def test_tiny_checkpoint_headers_equal_the_config_counts(tiny_checkpoint):
    config = NvlmConfig.from_hf(tiny_checkpoint)  # dummy heads read from the weights
    index = CheckpointIndex.open(tiny_checkpoint)
    shapes = hf_tensor_shapes(config)
    assert set(shapes) == set(index.weight_map)
    assert all(tuple(index.shape(n)) == s for n, s in shapes.items())
    from_index = sizes_from_checkpoint(config, index)
    from_config = sizes_from_shapes(shapes, config, source="config")
    fields = ("vision_params", "vision_real_params", "projector_params", "llm_params", "embedding_params", "lm_head_params")
    assert all(getattr(from_index, f) == getattr(from_config, f) for f in fields)
    assert from_index.stored_bytes == sum(index.nbytes(n) for n in shapes)  # qkv in fp32, the rest bf16
    assert "safetensors headers" in from_index.source
    assert config.vision.num_dummy_heads == 7 and load_model(tiny_checkpoint).assumptions == ()


def test_config_disagreeing_with_the_weights_is_refused(tiny_checkpoint):
    config = NvlmConfig.from_hf(tiny_checkpoint)
    wrong = dataclasses.replace(config, llm=dataclasses.replace(config.llm, intermediate_size=512))
    with pytest.raises(DeployError, match="mlp.gate_proj.weight"):
        sizes_from_checkpoint(wrong, CheckpointIndex.open(tiny_checkpoint))
