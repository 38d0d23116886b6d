import dataclasses

import pytest
import torch

from nvlm_deploy.model.internvit import InternRMSNorm
from nvlm_deploy.model.nvlm import NvlmModel
from nvlm_deploy.model.tiny import preset_config, random_state_dict


def _without_dummy_heads(state, config):
    """The same weights with the dummy heads cut out: real q/k/v rows, norm entries, proj columns."""
    v = config.vision
    real, inner = v.hidden_size, v.total_heads * v.head_dim
    out = dict(state)
    for i in range(v.num_hidden_layers):
        p = f"vision_model.encoder.layers.{i}.attn."
        qkv = state[p + "qkv.weight"]
        out[p + "qkv.weight"] = torch.cat([qkv[s * inner:s * inner + real] for s in range(3)])
        out[p + "q_norm.weight"] = state[p + "q_norm.weight"][:real]
        out[p + "k_norm.weight"] = state[p + "k_norm.weight"][:real]
        out[p + "proj.weight"] = state[p + "proj.weight"][:, :real]
    return out


def test_seven_zero_dummy_heads_change_nothing():
    config = preset_config("tiny")
    assert config.vision.num_dummy_heads == 7
    state = random_state_dict(config, seed=3)
    with_dummy = NvlmModel(config).eval()
    with_dummy.load_state_dict(state)
    plain_config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, num_dummy_heads=0))
    plain = NvlmModel(plain_config).eval()
    plain.load_state_dict(_without_dummy_heads(state, config))
    x = torch.randn(2, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = with_dummy.extract_feature(x), plain.extract_feature(x)
    assert a.shape == (2, config.tokens_per_tile, config.llm.hidden_size)
    assert (a - b).abs().max().item() <= 1e-6


def test_dummy_heads_are_not_free_if_nonzero():
    """Guard against a test that cannot fail: non-zero dummy weights do change the output."""
    config = preset_config("tiny")
    state = random_state_dict(config, seed=3)
    model = NvlmModel(config).eval()
    model.load_state_dict(state)
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        before = model.extract_feature(x)
        qkv = model.vision_model.encoder.layers[0].attn.qkv.weight
        inner = config.vision.total_heads * config.vision.head_dim
        qkv[2 * inner + config.vision.hidden_size:].normal_()  # dummy v rows
        model.vision_model.encoder.layers[0].attn.proj.weight[:, config.vision.hidden_size:].normal_()
        after = model.extract_feature(x)
    assert (before - after).abs().max().item() > 1e-3


def test_qk_norm_variance_covers_real_heads_only():
    norm = InternRMSNorm(8, eps=0.0, var_features=4)
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0, 100.0, 100.0, 100.0, 100.0]])
    out = norm(x)
    # variance of the first 4 features is 1, so they pass unchanged; the dummy part is scaled the same
    assert torch.allclose(out, x)


def test_rms_norm_computes_in_fp32_and_returns_input_dtype():
    norm = InternRMSNorm(4, eps=1e-6).to(torch.bfloat16)  # a bf16 model: weights in bf16 too
    x = torch.tensor([[3e-3, 4e-3, 0.0, 0.0]], dtype=torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = x.float() / torch.sqrt((x.float() ** 2).mean() + 1e-6)
    assert torch.allclose(out.float(), expected, atol=1e-2)


@pytest.mark.parametrize("select_layer, layers_run", [(-1, 2), (-2, 1), (1, 1)])
def test_select_layer_picks_hf_hidden_state(select_layer, layers_run):
    config = preset_config("tiny")
    model = NvlmModel(config).eval()
    vit = model.vision_model
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        h = vit.embeddings(x)
        for layer in vit.encoder.layers[:layers_run]:
            h = layer(h)
        assert torch.equal(vit(x, select_layer=select_layer), h)
