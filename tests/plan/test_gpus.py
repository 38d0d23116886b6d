import pytest

from nvlm_deploy.errors import DeployError
from nvlm_deploy.plan.gpus import GPUS, gpu_spec, match_gpu
from nvlm_deploy.plan.recipes import RECIPES, recipe, recipes_for, sm_tuple

REQUIRED = ("a100-sxm-40gb", "a100-sxm-80gb", "a100-pcie-40gb", "a100-pcie-80gb", "a10g", "l4", "l40s",
            "h100-pcie", "h100-sxm", "h100-nvl", "h200", "gh200", "b200")


def test_registry_has_the_gpus_users_deploy_on():
    assert set(REQUIRED) <= set(GPUS)
    for slug, g in GPUS.items():
        assert g.slug == slug and g.name and g.source
        assert g.memory_bytes >= 24 * 10**9 and g.bandwidth_bytes_per_s >= 300 * 10**9
        assert g.compute_capability in ("8.0", "8.6", "8.9", "9.0", "10.0")


def test_fp8_figures_and_recipes_follow_the_compute_capability():
    for g in GPUS.values():
        fp8_sm = sm_tuple(g.compute_capability) >= (8, 9)
        assert g.has_fp8 == fp8_sm, g.slug  # Ada, Hopper, Blackwell have FP8 Tensor Cores; Ampere has none
        assert ("fp8" in g.recipes) == fp8_sm
        assert {"bf16", "fp16", "int4_awq"} <= set(g.recipes)  # SM >= 8.0 everywhere
        if g.fp8_tflops is not None and g.bf16_tflops is not None:
            assert g.fp8_tflops == pytest.approx(2 * g.bf16_tflops, rel=0.02)  # FP8 = 2 x BF16 (L40S sheet: 733 vs 362.05)


def test_dense_rates_are_half_the_sparse_datasheet_figures():
    # H100 SXM datasheet: BF16 1,979 / FP8 3,958 TFLOP/s "with sparsity"; dense is half
    h100 = gpu_spec("h100-sxm")
    assert (h100.bf16_tflops, h100.fp8_tflops) == (989.5, 1979.0)
    assert (h100.memory_bytes, h100.bandwidth_bytes_per_s) == (80 * 10**9, 3350 * 10**9)
    assert gpu_spec("a100-sxm-80gb").bf16_tflops == 312.0  # A100: 312 dense, 624 with sparsity
    assert gpu_spec("l40s").fp8_tflops == 733.0  # L40S: 733 dense, 1,466 with sparsity


def test_unconfirmed_figures_are_marked_not_guessed():
    a10g = gpu_spec("a10g")
    assert a10g.bf16_tflops is None and "not confirmed" in a10g.note
    for slug in ("h100-nvl", "gh200", "gh200-144gb"):
        assert "not confirmed" in gpu_spec(slug).note.lower()


def test_unknown_slug_lists_the_valid_ones():
    with pytest.raises(DeployError) as err:
        gpu_spec("v100")
    assert "h100-sxm" in str(err.value) and "a100-sxm-80gb" in str(err.value)


@pytest.mark.parametrize(("name", "memory_gib", "slug"), [
    ("NVIDIA H100 80GB HBM3", 79.6, "h100-sxm"),
    ("NVIDIA H100 PCIe", 79.6, "h100-pcie"),
    ("NVIDIA H100 NVL", 93.6, "h100-nvl"),
    ("NVIDIA A100-SXM4-80GB", 80.0, "a100-sxm-80gb"),
    ("NVIDIA A100-SXM4-40GB", 40.0, "a100-sxm-40gb"),
    ("NVIDIA A100-PCIE-40GB", 40.0, "a100-pcie-40gb"),
    ("NVIDIA A100 80GB PCIe", 80.0, "a100-pcie-80gb"),
    ("NVIDIA A100-SXM4", 80.0, "a100-sxm-80gb"),  # no size in the name: memory decides
    ("NVIDIA L40S", 44.4, "l40s"),
    ("NVIDIA L40", 44.4, "l40"),
    ("NVIDIA L4", 22.5, "l4"),
    ("NVIDIA H200", 140.4, "h200"),
    ("NVIDIA H200 NVL", 140.4, "h200-nvl"),
    ("NVIDIA A10G", 22.5, "a10g"),
    ("NVIDIA A10", 22.5, "a10"),
    ("NVIDIA GH200 480GB", 95.0, "gh200"),
    ("NVIDIA GH200 144G HBM3e", 139.8, "gh200-144gb"),
    ("NVIDIA B200", 179.1, "b200"),
    ("h100-sxm", None, "h100-sxm"),
])
def test_match_gpu_maps_nvidia_smi_names(name, memory_gib, slug):
    assert match_gpu(name, memory_gib).slug == slug


def test_match_gpu_unknown_or_ambiguous_is_none():
    assert match_gpu("Tesla T4", 15.0) is None
    assert match_gpu("NVIDIA A100-SXM4", None) is None  # 40 or 80 GB: cannot tell


def test_recipe_registry():
    assert recipes_for("8.0") == ("bf16", "fp16", "int4_awq")
    assert recipes_for("8.9") == tuple(RECIPES)
    assert (recipe("fp8").linear_weight_bytes, recipe("int4_awq").linear_weight_bytes) == (1, 0.5)
    with pytest.raises(DeployError, match="not one of"):
        recipe("int8")
