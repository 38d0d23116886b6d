"""Quantized TensorRT-LLM checkpoints: the runtime computes what modelopt's fake-quantized decoder computes.

One calibration per recipe on the tiny model (demo-task requests with images), written at
tp 1, tp 2 and tp 2 x pp 2; the CPU runtime (which dequantizes the stored weights and emulates FP8
activation / KV quantization with the stored scales) must give the fake-quantized model's logits.
"""

import dataclasses

import numpy as np
import pytest
import torch

from nvlm_deploy.quant.quantize import QuantizeOptions, calibrate, write_checkpoint
from nvlm_deploy.runtime.decoder import GenerationRequest, TrtllmCheckpointRuntime

pytest.importorskip("modelopt.torch.quantization")

from tests.quant.conftest import LAYOUTS, RECIPES  # noqa: E402


def _request(vocab: int, hidden: int):
    table = torch.from_numpy(np.random.default_rng(0).standard_normal((6, hidden)).astype(np.float32))
    return [11, 40, vocab, vocab + 1, vocab + 2, 7, vocab + 3, vocab + 4, vocab + 5, 99, 3], table


def _runtime_logits(rt, ids, table):
    h = rt.embed(torch.tensor([ids]), table)
    return rt.forward(h, torch.arange(len(ids))[None], rt.new_cache(1, len(ids)))[0]


def _fake_quant_logits(model, ids, table, rt):
    """The modelopt model's logits; its K and V quantizers set to the one stored KV scale (a checkpoint
    holds max(k, v) floored at 1.0, modelopt's get_kv_cache_scaling_factor, not the two calibrated amaxes)."""
    from nvlm_deploy.quant.formats import FP8_MAX
    from nvlm_deploy.trtllm import names

    for i, layer in enumerate(model.language_model.model.layers):
        scale = rt.w.get(names.layer_tensor(i, names.KV_CACHE_SCALING_FACTOR))
        if scale is not None:
            for quantizer in (layer.self_attn.k_bmm_quantizer, layer.self_attn.v_bmm_quantizer):
                quantizer.amax = (scale * FP8_MAX).reshape(quantizer.amax.shape)
    with torch.no_grad():
        return model(torch.tensor([ids]), table)[0, -1].float()


@pytest.fixture(scope="module", params=sorted(RECIPES))
def quantized(request, tmp_path_factory, whole_model_calibration):
    """(recipe, calibrated model, {(tp, pp): checkpoint dir}) from modelopt's whole-model calibration."""
    from nvlm_deploy.contracts.precision import precision

    options = RECIPES[request.param]
    root = tmp_path_factory.mktemp(f"quant-{request.param}")
    dirs = {}
    model, decoder, padded = whole_model_calibration(request.param)  # no padding: group 64 divides every rank's width
    for tp, pp in LAYOUTS:
        opts = dataclasses.replace(options, tp=tp, pp=pp)
        out = root / f"tp{tp}pp{pp}"
        out.mkdir()
        write_checkpoint(out, model, decoder, opts, padded=padded, dtype=precision("fp32"))
        dirs[(tp, pp)] = out
    return request.param, model, dirs


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_runtime_matches_the_fake_quantized_model(quantized, tp, pp):
    name, model, dirs = quantized
    rt = TrtllmCheckpointRuntime.load(dirs[(tp, pp)])
    assert rt.config.quantization.quant_algo == {"fp8": "FP8", "int4_awq": "W4A16_AWQ"}[name]
    ids, table = _request(model.vocab_size, model.config.llm.hidden_size)
    got, want = _runtime_logits(rt, ids, table), _fake_quant_logits(model, ids, table, rt)
    assert torch.allclose(got, want, atol=2e-4 * want.abs().max(), rtol=0), (got - want).abs().max()


@pytest.mark.slow
def test_greedy_tokens_equal_across_layouts(quantized):
    _, model, dirs = quantized
    ids, table = _request(model.vocab_size, model.config.llm.hidden_size)
    outs = {layout: TrtllmCheckpointRuntime.load(d).generate(
        [GenerationRequest(ids, prompt_table=table.numpy(), max_new_tokens=6)])[0] for layout, d in dirs.items()}
    assert len(set(map(tuple, outs.values()))) == 1, outs


@pytest.mark.slow
def test_int4_padding_keeps_the_function_when_groups_per_rank_are_odd(tmp_path):
    """intermediate 384 / group 128 = 3 groups: not splittable over tp 2, so the MLP is padded to 512."""
    from safetensors import safe_open

    from nvlm_deploy.contracts.precision import precision
    from nvlm_deploy.model.tiny import preset_config, write_tiny_checkpoint

    base = preset_config("tiny")
    config = dataclasses.replace(base, llm=dataclasses.replace(base.llm, hidden_size=256, intermediate_size=384))
    ckpt = write_tiny_checkpoint(tmp_path / "wide", config=config)
    opts = QuantizeOptions(recipe="int4_awq", group_size=128, tp=2, calib_size=4, dtype="fp32")
    model, decoder, padded = calibrate(ckpt, opts)
    assert padded == 512
    write_checkpoint(tmp_path, model, decoder, opts, padded=padded, dtype=precision("fp32"))
    rt = TrtllmCheckpointRuntime.load(tmp_path)
    assert rt.config.intermediate_size == 512
    with safe_open(str(tmp_path / "rank1.safetensors"), "pt") as f:
        assert f.get_slice("transformer.layers.0.mlp.proj.weights_scaling_factor").get_shape() == [256, 2]  # 2 groups per rank
        assert f.get_slice("transformer.layers.0.mlp.fc.weight").get_shape() == [128, 256]  # 256 rows packed in pairs
    ids, table = _request(model.vocab_size, 256)
    got, want = _runtime_logits(rt, ids, table), _fake_quant_logits(model, ids, table, rt)
    assert torch.allclose(got, want, atol=2e-4 * want.abs().max(), rtol=0), (got - want).abs().max()
    from nvlm_deploy.quant.layerwise import write_layerwise

    (tmp_path / "layerwise").mkdir()  # layer by layer, padded as each layer finishes: the same files
    assert write_layerwise(ckpt, tmp_path / "layerwise", opts, dtype=precision("fp32")) == 512
    for f in ("config.json", "rank0.safetensors", "rank1.safetensors"):
        assert (tmp_path / "layerwise" / f).read_bytes() == (tmp_path / f).read_bytes(), f


@pytest.mark.slow
def test_layerwise_calibration_writes_the_whole_model_flows_checkpoint(quantized, tiny_checkpoint, tmp_path):
    """One layer at a time, each written as it finishes (quant.layerwise): the same rank files, byte for byte."""
    from nvlm_deploy.contracts.precision import precision
    from nvlm_deploy.quant.layerwise import write_layerwise

    name, model, dirs = quantized
    opts = dataclasses.replace(RECIPES[name], tp=2, pp=2)
    assert write_layerwise(tiny_checkpoint, tmp_path, opts, dtype=precision("fp32")) == model.config.llm.intermediate_size
    for f in ["config.json"] + [f"rank{rank}.safetensors" for rank in range(4)]:
        assert (tmp_path / f).read_bytes() == (dirs[(2, 2)] / f).read_bytes(), f


def test_padding_a_compacted_linear_stores_what_padding_the_float_weight_stores():
    from nvlm_deploy.quant import formats
    from nvlm_deploy.quant.linears import CalibratedDecoder, CalibratedLinear, pad_intermediate

    def decoder(compact):
        lins = {}
        for name, (n, k) in {"gate_proj": (384, 128), "up_proj": (384, 128), "down_proj": (128, 384)}.items():
            gen = torch.Generator().manual_seed(n + k + len(name))
            w = torch.randn(n, k, generator=gen)
            lin = CalibratedLinear(w, formats.int4_group_scales(w, 64), None, torch.rand(k, generator=gen) + 0.5)
            if compact:
                lin.compact(int4=True, group_size=64)
            lins[f"language_model.model.layers.0.mlp.{name}.weight"] = lin
        return CalibratedDecoder(lins, {})

    plain, compacted = decoder(False), decoder(True)
    for d in (plain, compacted):
        pad_intermediate(d, num_layers=1, intermediate=384, padded=512, group_size=64)
    for name, lin in plain.linears.items():
        other = compacted.linears[name]
        assert torch.equal(lin.stored_values(int4=True, group_size=64), other.values), name
        assert torch.equal(lin.weight_scale, other.weight_scale) and torch.equal(lin.pre_quant_scale, other.pre_quant_scale)
    assert compacted.linears["language_model.model.layers.0.mlp.down_proj.weight"].values.shape == (128, 512)
