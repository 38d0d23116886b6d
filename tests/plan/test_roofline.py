import pytest

from nvlm_deploy.plan.planner import plan_deployment
from tests.plan import write_config_only

VIT, MLP1, LLM, EMBED = 6_052_672_640, 620_717_056, 72_706_203_648, 152_064 * 8192


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return plan_deployment(write_config_only(tmp_path_factory.mktemp("nvlm") / "NVLM-D-72B"),
                           gpu="h100-sxm", gpus=2, recipe="fp8")


def test_decode_is_bandwidth_bound(plan):
    roof = plan.roofline
    # mean context over a generation: 2816 input + 1024 / 2 output tokens
    assert roof.decode_context_tokens == 2816 + 512
    # one rank reads its weights except the embedding table (38,846,910,848 - 2,491,416,576 bytes)
    # + the KV cache: context x 81,920 bytes (80 layers x 4 KV heads x 128 x 2 (K, V) x 1 byte)
    step1 = 38_846_910_848 - 2_491_416_576 + 3328 * 81_920
    assert roof.decode_step_bytes_batch1 == step1
    assert roof.decode_tokens_per_s_batch1 == pytest.approx(3.35e12 / step1)  # H100 SXM 3.35 TB/s
    assert roof.decode_tokens_per_s_batch1 == pytest.approx(91.5, abs=0.1)
    step8 = 38_846_910_848 - 2_491_416_576 + 8 * 3328 * 81_920
    assert roof.decode_batch == 8 and roof.decode_tokens_per_s_max_batch == pytest.approx(8 * 3.35e12 / step8)


def test_vision_and_prefill_are_compute_bound(plan):
    roof = plan.roofline
    # 7 tiles x (2 x ViT params x 1025 tokens + 4 x 45 layers x 1025² x 4096 (32 heads x 128) + 2 x mlp1 x 256)
    vision = 7 * (2 * VIT * 1025 + 4 * 45 * 1025**2 * 4096 + 2 * MLP1 * 256)
    assert roof.vision_tiles == 7 and roof.vision_flops == vision
    assert roof.vision_ms == pytest.approx(vision / 989.5e12 * 1e3)  # bf16 engine on GPU 0, dense 989.5 TFLOP/s
    # 1792 image tokens: 2 x (decoder - embedding - lm_head) x tokens + causal attention 2 x 80 x 1792² x 8192
    # + lm_head on the last token; over tp 2 GPUs at dense FP8 1979 TFLOP/s
    prefill = 2 * (LLM - 2 * EMBED) * 1792 + 2 * 80 * 1792**2 * 8192 + 2 * EMBED
    assert roof.prefill_tokens == 1792 and roof.prefill_flops == prefill
    assert roof.prefill_ms == pytest.approx(prefill / (2 * 1979e12) * 1e3)
    assert 50 < roof.prefill_ms < 80 and 80 < roof.vision_ms < 110


def test_unknown_tflops_gives_no_compute_estimate(tiny_checkpoint):
    from nvlm_deploy.plan.render import render

    plan = plan_deployment(tiny_checkpoint, gpu="a10g", gpus=1)  # A10G: dense BF16 TFLOP/s not confirmed
    assert plan.roofline.vision_ms is None and plan.roofline.prefill_ms is None
    assert plan.roofline.decode_tokens_per_s_batch1 > 0  # bandwidth (600 GB/s) is known
    assert "unknown (no confirmed TFLOP/s for this GPU)" in render(plan)
