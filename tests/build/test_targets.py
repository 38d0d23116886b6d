"""Target names and their refusals."""

import pytest

from nvlm_deploy.build.targets import TargetSpec, check_parallelism, parse_target
from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.errors import DeployError


@pytest.mark.parametrize("name, spec, canonical", [
    ("h100-sxm-bf16-tp2", TargetSpec("h100-sxm", "bf16", 2, 1), "h100-sxm-bf16-tp2"),
    ("h100-sxm-fp16-tp4pp2", TargetSpec("h100-sxm", "fp16", 4, 2), "h100-sxm-fp16-tp4pp2"),
    ("a100-sxm-80gb-bf16-tp8pp1", TargetSpec("a100-sxm-80gb", "bf16", 8, 1), "a100-sxm-80gb-bf16-tp8"),
    ("l40s-bf16-tp1", TargetSpec("l40s", "bf16", 1, 1), "l40s-bf16-tp1"),
    ("cpu-fp32", TargetSpec(None, "fp32", 1, 1), "cpu-fp32"),
    ("cpu-bf16-tp2", TargetSpec(None, "bf16", 2, 1), "cpu-bf16-tp2"),
])
def test_names_parse_and_name_their_directory(name, spec, canonical):
    assert parse_target(name) == spec
    assert spec.name == canonical and parse_target(canonical) == spec
    assert spec.runtime == ("cpu" if spec.gpu is None else "gpu")


def test_a_gpu_targets_precision_is_its_recipes_dtype():
    assert parse_target("h100-sxm-bf16-tp2").precision == "bf16"
    assert parse_target("h100-sxm-fp16-tp2").precision == "fp16"
    assert parse_target("cpu-fp32").precision == "fp32"


@pytest.mark.parametrize("name", ["h100", "h100-sxm-bf16", "h100-sxm-bf16-tp", "H100-SXM-bf16-tp2", "cpu"])
def test_other_shapes_are_refused_with_the_shape_to_write(name):
    with pytest.raises(DeployError, match=r"<gpu>-<recipe>-tp<N>\[pp<M>\].*cpu-<precision>.*auto"):
        parse_target(name)


def test_unknown_gpu_lists_the_known_ones():
    with pytest.raises(DeployError, match=r"unknown GPU 'h300'.*h100-sxm"):
        parse_target("h300-bf16-tp1")


@pytest.mark.parametrize("name, spec", [("h100-sxm-fp8-tp2", TargetSpec("h100-sxm", "fp8", 2, 1)),
                                        ("l40s-int4_awq-tp1", TargetSpec("l40s", "int4_awq", 1, 1)),
                                        ("cpu-fp8", TargetSpec(None, "fp8", 1, 1)),
                                        ("cpu-int4_awq-tp2", TargetSpec(None, "int4_awq", 2, 1))])
def test_quantization_recipes_are_targets_whose_unquantized_tensors_stay_bf16(name, spec):
    assert parse_target(name) == spec
    assert spec.quantized and spec.precision == "bf16"
    assert not parse_target("cpu-bf16").quantized and not parse_target("h100-sxm-bf16-tp1").quantized


def test_a_quantized_target_is_checked_as_quantize_checks_it(tiny_checkpoint):
    """Before any stage runs: heads that do not split over tp are refused, naming the target; int4's default
    group (128) fits the tiny decoder (hidden 128) at tp 1 but not at tp 2 (64 inputs per rank)."""
    llm = NvlmConfig.from_hf(tiny_checkpoint).llm
    with pytest.raises(DeployError, match=r"target 'cpu-fp8-tp7'"):
        check_parallelism(parse_target("cpu-fp8-tp7"), llm)
    check_parallelism(parse_target("cpu-int4_awq"), llm)
    with pytest.raises(DeployError, match=r"target 'cpu-int4_awq-tp2': --group-size 128 does not divide"):
        check_parallelism(parse_target("cpu-int4_awq-tp2"), llm)


def test_a_recipe_the_gpu_does_not_run_is_refused():
    with pytest.raises(DeployError, match=r"A100 80GB SXM does not run fp8 \(its recipes: bf16, fp16, int4_awq\)"):
        parse_target("a100-sxm-80gb-fp8-tp1")


def test_fp32_is_a_cpu_precision_not_a_gpu_recipe():
    with pytest.raises(DeployError, match=r"recipe 'fp32' is not one of .*cpu-fp32"):
        parse_target("h100-sxm-fp32-tp1")
    with pytest.raises(DeployError, match=r"recipe 'fp4' is not one of"):
        parse_target("cpu-fp4")


def test_the_decoder_must_split_into_the_targets_parallelism(tiny_checkpoint):
    llm = NvlmConfig.from_hf(tiny_checkpoint).llm  # 4 query heads, 2 KV heads, 2 layers
    check_parallelism(parse_target("h100-sxm-bf16-tp4pp2"), llm)
    with pytest.raises(DeployError, match=r"target 'h100-sxm-bf16-tp3'.*Values that work: \[1, 2, 4\]"):
        check_parallelism(parse_target("h100-sxm-bf16-tp3"), llm)
    with pytest.raises(DeployError, match=r"target 'cpu-fp32-tp1pp3'.*--pp 3 is not possible"):
        check_parallelism(parse_target("cpu-fp32-tp1pp3"), llm)
