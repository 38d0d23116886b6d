"""The checkpoint loader on quantized checkpoints: every rank dequantized with its own scales, then merged.

The checkpoints here are written from a synthetic calibration (scales = amax / maxbound, no
modelopt), so the loader's format handling is tested without the optional extra.
"""

import pytest
import torch

from nvlm_deploy.contracts.precision import precision
from nvlm_deploy.errors import DeployError
from nvlm_deploy.quant import formats
from nvlm_deploy.quant.linears import LINEARS, CalibratedDecoder, CalibratedLinear
from nvlm_deploy.quant.quantize import QuantizeOptions, write_checkpoint
from nvlm_deploy.trtllm import names
from nvlm_deploy.trtllm.rank_files import load_trtllm_checkpoint

GROUP = 64


def synthetic(model, *, int4: bool) -> CalibratedDecoder:
    linears, kv = {}, {}
    for i, layer in enumerate(model.language_model.model.layers):
        for name in LINEARS:
            w = layer.get_submodule(name).weight.detach().float()
            if int4:
                lin = CalibratedLinear(w, formats.int4_group_scales(w, GROUP), None,
                                       torch.linspace(0.5, 2.0, w.shape[1]))
            else:
                lin = CalibratedLinear(w, w.abs().max() / formats.FP8_MAX, torch.tensor(0.01), None)
            linears[f"language_model.model.layers.{i}.{name}.weight"] = lin
        if not int4:
            kv[i] = torch.tensor(1.0)
    return CalibratedDecoder(linears, kv)


@pytest.mark.parametrize("recipe", ["fp8", "int4_awq"])
def test_tp2_pp2_loads_back_to_the_dequantized_tp1_weights(tiny_model, tmp_path, recipe):
    int4 = recipe == "int4_awq"
    decoder = synthetic(tiny_model, int4=int4)
    for tp, pp in ((1, 1), (2, 2)):
        opts = QuantizeOptions(recipe=recipe, kv_cache="none" if int4 else "fp8", group_size=GROUP, tp=tp, pp=pp)
        (tmp_path / f"{tp}{pp}").mkdir()
        write_checkpoint(tmp_path / f"{tp}{pp}", tiny_model, decoder, opts, padded=384, dtype=precision("fp32"))
    config, one = load_trtllm_checkpoint(tmp_path / "11")
    _, four = load_trtllm_checkpoint(tmp_path / "22")
    assert config.quantization.quant_algo == ("W4A16_AWQ" if int4 else "FP8")
    assert one.keys() == four.keys() and all(torch.equal(one[k], four[k]) for k in one)
    lin = decoder.linears["language_model.model.layers.1.mlp.down_proj.weight"]
    if int4:
        q = formats.int4_quantize(lin.weight, lin.weight_scale, GROUP)
        want = formats.int4_dequantize(q, lin.weight_scale, GROUP) * lin.pre_quant_scale[None, :]
    else:
        want = formats.fp8_dequantize(formats.fp8_quantize(lin.weight, lin.weight_scale), lin.weight_scale)
        assert one[names.layer_tensor(1, names.KV_CACHE_SCALING_FACTOR)].item() == 1.0
        assert one[names.scale_name(names.layer_tensor(0, names.DENSE), names.ACTIVATION_SCALING_FACTOR)].item() == \
            pytest.approx(0.01)
    assert torch.equal(one[names.layer_tensor(1, names.MLP_PROJ)], want)
    assert not any(k.endswith((names.WEIGHTS_SCALING_FACTOR, names.PREQUANT_SCALING_FACTOR)) for k in one)


def test_a_missing_scale_tensor_is_named(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    write_checkpoint(tmp_path, tiny_model, synthetic(tiny_model, int4=False),
                     QuantizeOptions(recipe="fp8"), padded=384, dtype=precision("fp32"))
    tensors = load_file(str(tmp_path / "rank0.safetensors"))
    missing = names.scale_name(names.layer_tensor(0, names.MLP_FC), names.WEIGHTS_SCALING_FACTOR)
    del tensors[missing]
    save_file(tensors, str(tmp_path / "rank0.safetensors"))
    with pytest.raises(DeployError, match=missing.replace(".", r"\.")):
        load_trtllm_checkpoint(tmp_path)


def test_an_unknown_quant_algo_is_refused(tiny_model, tmp_path):
    import json

    write_checkpoint(tmp_path, tiny_model, synthetic(tiny_model, int4=False),
                     QuantizeOptions(recipe="fp8"), padded=384, dtype=precision("fp32"))
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization"]["quant_algo"] = "NVFP4"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DeployError, match="NVFP4"):
        load_trtllm_checkpoint(tmp_path)
