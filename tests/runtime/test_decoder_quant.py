"""The decoder's quantization hooks: FP8 inputs and the FP8 KV cache use the checkpoint's stored scales."""

import torch

from nvlm_deploy.quant import emulate, formats
from nvlm_deploy.trtllm import names

W = names.layer_tensor(0, names.DENSE)


def test_fp8_linear_quantizes_its_input_with_the_stored_scale():
    x = torch.tensor([[0.30, -1.7, 500.0]])
    weights = {W: torch.eye(3), names.scale_name(W, names.ACTIVATION_SCALING_FACTOR): torch.tensor([0.5])}
    out = emulate.linear(x, weights, W)
    # x / 0.5 = [0.6, -3.4, 1000] -> e4m3 [0.625, -3.5, 448 (saturated)] -> * 0.5
    assert out.tolist() == [[0.3125, -1.75, 224.0]]
    assert torch.equal(emulate.linear(x, {W: torch.eye(3)}, W), x)  # no scale: a plain linear


def test_kv_cache_values_are_what_an_fp8_cache_holds():
    k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    scale = torch.tensor([1.0])
    qk, qv = emulate.kv_fake_quant({names.layer_tensor(3, names.KV_CACHE_SCALING_FACTOR): scale}, 3, k, v)
    assert torch.equal(qk, formats.fp8_fake_quant(k, scale)) and not torch.equal(qk, k)
    assert torch.equal(qv.to(torch.float8_e4m3fn).float(), qv)  # exactly representable in e4m3
    assert emulate.kv_fake_quant({}, 3, k, v) == (k, v)
