import pytest

from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.plan.memory import (decoder_rank_bytes, kv_bytes_per_token, padded_intermediate, prompt_table_bytes,
                                     rank_loads, stage_layers, vision_plan_bytes)
from nvlm_deploy.plan.params import load_model
from nvlm_deploy.plan.recipes import recipe
from tests.plan import write_config_only

KIB, GB = 1024, 10**9
EMBED_BYTES = 152_064 * 8_192 * 2  # [vocab, hidden] bf16, also lm_head's size
# One Qwen2-72B layer: weights of q, k, v, o, gate, up, down = 8192*8192 + 2*1024*8192 + 8192*8192 + 3*29568*8192
LINEAR_WEIGHTS = 877_658_112
BIASES = 8192 + 1024 + 1024  # q, k, v biases (bf16 in every recipe)
NORMS = 2 * 8192  # input / post-attention RMSNorm (bf16)


@pytest.fixture(scope="module")
def nvlm(tmp_path_factory):
    return load_model(write_config_only(tmp_path_factory.mktemp("nvlm") / "NVLM-D-72B"))


def test_decoder_weight_bytes_per_recipe(nvlm):
    c = nvlm.config
    # bf16: 2 bytes per parameter, 72,706,203,648 parameters
    assert decoder_rank_bytes(c, recipe("bf16"), tp=1) == 2 * 72_706_203_648 == 145_412_407_296
    # fp8: 1 byte per linear weight + 2 fp32 per-tensor scales (8 bytes) per linear; biases, norms, embed, lm_head bf16
    fp8_layer = LINEAR_WEIGHTS * 1 + 7 * 8 + 2 * BIASES + 2 * NORMS
    assert fp8_layer == 877_711_416
    assert decoder_rank_bytes(c, recipe("fp8"), tp=1) == 80 * fp8_layer + 2 * EMBED_BYTES + 2 * 8192 == 75_199_762_816
    # int4_awq: 0.5 byte per weight + bf16 group scales (one per 128 inputs) + bf16 pre_quant_scale [in] per linear
    # pre_quant_scale inputs: q, k, v, gate, up, o read 8192 features, down 29568
    int4_layer = LINEAR_WEIGHTS // 2 + LINEAR_WEIGHTS // 128 * 2 + (6 * 8192 + 29568) * 2 + 2 * BIASES + 2 * NORMS
    assert int4_layer == 452_753_152
    assert decoder_rank_bytes(c, recipe("int4_awq"), tp=1) == 80 * int4_layer + 2 * EMBED_BYTES + 2 * 8192 == 41_203_101_696


def test_tensor_parallel_rank_bytes(nvlm):
    c = nvlm.config
    # bf16 tp 8: linears and q/k/v biases split 8 ways; norms and the embedding whole on every rank;
    # lm_head 152064 / 8 = 19008 rows; final norm on the (single) last stage
    layer = LINEAR_WEIGHTS * 2 // 8 + BIASES * 2 // 8 + NORMS * 2
    expected = 80 * layer + EMBED_BYTES + 19_008 * 8192 * 2 + 8192 * 2
    assert decoder_rank_bytes(c, recipe("bf16"), tp=8) == expected == 20_358_848_512


def test_awq_pads_the_mlp_for_tensor_parallelism(nvlm):
    c, awq = nvlm.config, recipe("int4_awq")
    assert padded_intermediate(c, awq, tp=1) == 29568  # 231 groups of 128
    assert [padded_intermediate(c, awq, tp=tp) for tp in (2, 4, 8)] == [29696] * 3  # DESIGN.md
    assert padded_intermediate(c, recipe("fp8"), tp=8) == 29568


def test_pipeline_stages_partition_the_decoder(nvlm):
    c, bf16 = nvlm.config, recipe("bf16")
    assert [stage_layers(c, pp=3, pp_rank=r) for r in range(3)] == [27, 27, 26]
    stages = [decoder_rank_bytes(c, bf16, tp=1, pp=3, pp_rank=r) for r in range(3)]
    assert sum(stages) == decoder_rank_bytes(c, bf16, tp=1)  # embedding on stage 0, lm_head + norm on stage 2
    assert stages[0] - stages[1] == EMBED_BYTES


def test_kv_cache_bytes_per_token(nvlm):
    c = nvlm.config
    # 2 (K, V) x 80 layers x 8 KV heads x 128 x 2 bytes = 320 KiB; fp8 KV cache: 1 byte, 160 KiB
    assert kv_bytes_per_token(c, recipe("bf16")) == 2 * 80 * 8 * 128 * 2 == 320 * KIB
    assert kv_bytes_per_token(c, recipe("fp8")) == 160 * KIB
    assert kv_bytes_per_token(c, recipe("int4_awq")) == 320 * KIB
    assert kv_bytes_per_token(c, recipe("bf16"), tp=2) == 160 * KIB  # 4 KV heads per rank
    assert kv_bytes_per_token(c, recipe("bf16"), tp=16, layers=40) == 2 * 40 * 1 * 128 * 2  # a copied head per rank


def test_vision_engine_and_prompt_tables_on_gpu0(nvlm):
    c = nvlm.config
    limits = DeploymentLimits.for_model(c)
    # ViT with its 7 dummy heads + mlp1, bf16: (6,052,672,640 + 620,717,056) x 2
    assert vision_plan_bytes(c, nvlm.sizes) == (6_052_672_640 + 620_717_056) * 2 == 13_346_779_392
    # 8 requests x 1 image x 7 tiles x 256 rows, hidden 8192, bf16
    assert limits.max_prompt_embedding_table_size == 8 * 1792
    assert prompt_table_bytes(c, limits) == 8 * 1792 * 8192 * 2
    loads = rank_loads(c, nvlm.sizes, recipe("fp8"), limits, memory=80 * GB, tp=2, pp=1)
    assert [r.ranks for r in loads] == ["0", "1"]
    assert loads[0].vision_engine == 13_346_779_392 and loads[1].vision_engine == 0
    # vision activations: max(1 GiB, plan / 4) + the prompt tables (serve/gpu_memory.vision_reserve_bytes)
    assert loads[0].vision_reserve == 13_346_779_392 // 4 + 8 * 1792 * 8192 * 2
    loads = rank_loads(c, nvlm.sizes, recipe("bf16"), limits, memory=80 * GB, tp=8, pp=2)
    assert [r.ranks for r in loads] == ["0", "1-7", "8-15"]
