import math

import pytest

from nvlm_deploy.errors import DeployError
from nvlm_deploy.plan.params import load_model
from nvlm_deploy.plan.planner import candidates, plan_deployment
from nvlm_deploy.plan.recipes import recipe
from tests.plan import write_config_only

GB, GIB = 10**9, 1 << 30
REFUSED = None

# (GPU, GPUs available, recipe) -> tp chosen (pp 1), or REFUSED. Reasons, by hand (GB = 10^9 bytes):
# decoder weights 145.4 GB bf16, 75.2 GB fp8, 41.2 GB int4_awq; GPU 0 adds the 13.3 GB vision engine,
# 3.6 GB of its activations + prompt tables, ~1-2 GB decoder activations and 1.07 GB CUDA context.
EXPECTED = {
    ("h100-sxm", 1, "bf16"): REFUSED,  # 145.4 > 80
    ("h100-sxm", 1, "fp8"): REFUSED,  # 75.2 + 13.3 + 3.6 + 1.7 + 1.1 = 94.9 > 80
    ("h100-sxm", 1, "int4_awq"): 1,  # 41.2 + 13.3 + 3.6 + 1.7 + 1.1 = 60.9 < 80
    ("h100-sxm", 2, "bf16"): REFUSED,  # tp 2: half the layers and lm_head + the whole 2.5 GB embedding = 74.0, + 13.3 > 80
    ("h100-sxm", 2, "fp8"): 2,
    ("h100-sxm", 2, "int4_awq"): 1,
    ("h100-sxm", 4, "bf16"): 4,  # 38.2 + 13.3 + 3.6 + 0.8 + 1.1 = 57.0 < 80
    ("h100-sxm", 4, "fp8"): 2,
    ("h100-sxm", 4, "int4_awq"): 1,
    ("h100-sxm", 8, "bf16"): 4,  # the smallest tp that fits, 4 GPUs left
    ("h100-sxm", 8, "fp8"): 2,
    ("h100-sxm", 8, "int4_awq"): 1,
    ("h200", 1, "bf16"): REFUSED,  # 145.4 + 13.3 = 158.8 > 141
    ("h200", 1, "fp8"): 1,
    ("h200", 1, "int4_awq"): 1,
    ("h200", 2, "bf16"): 2,
    ("h200", 2, "fp8"): 1,
    ("h200", 2, "int4_awq"): 1,
    ("a100-sxm-80gb", 4, "bf16"): 4,
    ("a100-sxm-80gb", 4, "fp8"): REFUSED,  # no FP8 Tensor Cores (SM 8.0)
    ("a100-sxm-80gb", 4, "int4_awq"): 1,
    ("l40s", 4, "bf16"): REFUSED,  # tp 4: 38.2 + 13.3 + 3.6 + 0.8 + 1.1 = 57.0 > 48
    ("l40s", 4, "fp8"): 4,  # 20.7 + 13.3 + 3.6 + 0.8 + 1.1 = 39.5 < 48
    ("l40s", 4, "int4_awq"): 2,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_config_only(tmp_path_factory.mktemp("nvlm") / "NVLM-D-72B")


@pytest.mark.parametrize(("gpu", "gpus", "rec"), list(EXPECTED))
def test_plan_matrix(model_dir, gpu, gpus, rec):
    expected = EXPECTED[(gpu, gpus, rec)]
    if expected is REFUSED:
        with pytest.raises(DeployError):
            plan_deployment(model_dir, gpu=gpu, gpus=gpus, recipe=rec)
        return
    plan = plan_deployment(model_dir, gpu=gpu, gpus=gpus, recipe=rec)
    assert (plan.tp, plan.pp) == (expected, 1)
    for r in plan.ranks:  # everything placed fits, and the KV cache was sized by the computed fraction
        assert r.static + r.kv_cache <= r.memory
        assert r.kv_cache == int(plan.kv.fraction * r.free_after_decoder)
    assert plan.kv.how == "computed" and 0.05 <= plan.kv.fraction <= 0.9
    assert plan.kv_capacity_tokens >= plan.limits.max_seq_len
    assert plan.max_batch == min(plan.limits.max_batch_size, plan.kv_capacity_tokens // plan.limits.max_seq_len)
    assert plan.limits.max_prompt_embedding_table_size == 8 * 7 * 256


def test_h100x2_fp8_by_hand(model_dir):
    plan = plan_deployment(model_dir, gpu="h100-sxm", gpus=2, recipe="fp8")
    # rank 0's decoder weights: per layer 877,658,112 / 2 fp8 weights + 7 x 8 scale bytes + 5,120 bf16 biases
    # + 2 x 8192 bf16 norms; 80 layers; + embedding 2,491,416,576 + lm_head 76,032 x 8192 x 2 + final norm 16,384
    weights = 80 * (877_658_112 // 2 + 56 + 5_120 * 2 + 16_384 * 2) + 2_491_416_576 + 76_032 * 8192 * 2 + 16_384
    assert plan.ranks[0].decoder_weights == weights == 38_846_910_848
    # activations: 8192 tokens x (4 x 8192 + (32 + 2 x 4) x 128 + 2 x 29568 / 2) x 2 + 8 x 76,032 x 4 fp32 logits
    activations = 8192 * (4 * 8192 + 40 * 128 + 29568) * 2 + 8 * 76_032 * 4
    assert plan.ranks[0].activations == activations
    free = 80 * GB - weights - activations - GIB  # what the fraction applies to
    vision = (6_052_672_640 + 620_717_056) * 2  # ViT with dummy heads + mlp1, bf16
    reserve = vision + vision // 4 + 8 * 1792 * 8192 * 2  # plan + its activations + prompt tables
    fraction = math.floor((1 - reserve / free) * 100) / 100
    assert plan.kv.fraction == fraction == 0.56
    kv_per_token_rank = 2 * 80 * 4 * 128 * 1  # 4 KV heads per rank, fp8
    assert plan.kv_capacity_tokens == int(fraction * free) // kv_per_token_rank == 266_408
    assert plan.kv_bytes_per_token == 160 * 1024
    assert plan.full_length_requests == 266_408 // (2816 + 1024) == 69 and plan.max_batch == 8


def test_impossible_plans_say_why_and_what_would_fit(model_dir):
    with pytest.raises(DeployError) as err:
        plan_deployment(model_dir, gpu="h100-sxm", gpus=1, recipe="bf16")
    msg = str(err.value)
    assert "does not fit on 1 x NVIDIA H100 80GB SXM" in msg and "decoder weights 145.4" in msg
    assert "more GPUs: 4 x h100-sxm (tp 4, pp 1)" in msg and "--recipe int4_awq on 1 GPU" in msg
    assert "lower limits cannot help" in msg
    with pytest.raises(DeployError) as err:
        plan_deployment(model_dir, gpu="h200", gpus=1, recipe="bf16")
    assert "more GPUs: 2 x h200" in str(err.value) and "--recipe fp8 on 1 GPU" in str(err.value)
    with pytest.raises(DeployError) as err:
        plan_deployment(model_dir, gpu="a100-sxm-80gb", gpus=4, recipe="fp8")
    msg = str(err.value)
    assert "SM 8.9" in msg and "no FP8 Tensor Cores" in msg and "int4_awq" in msg and "h100-sxm" in msg


def test_pipeline_stages_when_tensor_parallelism_is_not_enough(model_dir):
    long = dict(max_input_len=30_000, max_output_len=2_000, max_batch_size=48)
    plan = plan_deployment(model_dir, gpu="h100-sxm", gpus=16, recipe="bf16", limits=long, concurrency=48)
    assert (plan.tp, plan.pp, plan.nodes) == (8, 2, 2)
    assert plan.kv_capacity_tokens >= 48 * 32_000
    with pytest.raises(DeployError) as err:  # one node: the KV cache is too small for 48 x 32,000 tokens
        plan_deployment(model_dir, gpu="h100-sxm", gpus=8, recipe="bf16", limits=long, concurrency=48)
    msg = str(err.value)
    assert "fewer than 48 request(s) x max_seq_len 32000" in msg
    assert "more GPUs: 16 x h100-sxm (tp 8, pp 2)" in msg and "--max-input-len + --max-output-len <=" in msg


def test_tp_splits_the_heads_and_stays_in_a_node(model_dir):
    model = load_model(model_dir)
    layouts = candidates(model, recipe("bf16"), max_gpus=16)
    assert {tp for tp, _ in layouts} == {1, 2, 4, 8}  # 64 query heads, 8 KV heads (trtllm.splits.valid_tp_sizes)
    assert all(tp * pp <= 16 for tp, pp in layouts) and layouts[:4] == [(1, 1), (2, 1), (4, 1), (8, 1)]
    plan = plan_deployment(model_dir, gpu="h100-sxm", gpus=6, recipe="bf16")
    assert (plan.tp, plan.pp, plan.gpus_used) == (4, 1, 4)


def test_nvidia_smi_name_and_bad_arguments(model_dir):
    assert plan_deployment(model_dir, gpu="NVIDIA H100 80GB HBM3", gpus=2, recipe="fp8").gpu.slug == "h100-sxm"
    with pytest.raises(DeployError, match="exceeds --max-batch-size 8"):
        plan_deployment(model_dir, gpu="h200", concurrency=9)
    with pytest.raises(DeployError, match="unknown GPU"):
        plan_deployment(model_dir, gpu="tpu-v5")
