"""`eval` metrics: an unquantized checkpoint agrees with the reference everywhere; reports render."""

import pytest

from nvlm_deploy.quant.evaluate import bar_chart, build_prompts, markdown, reference_accuracy, score_checkpoint


@pytest.fixture(scope="module")
def prompts(tiny_model, tiny_checkpoint):
    from nvlm_deploy.preprocess.request import Preprocessor

    preprocessor = Preprocessor.from_model_dir(tiny_checkpoint)
    return preprocessor, build_prompts(tiny_model, preprocessor, tasks=["color", "striped"], per_task=2)


def test_unquantized_checkpoint_scores_full_agreement_and_zero_kl(tiny_checkpoint, prompts, tmp_path):
    from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint
    from nvlm_deploy.runtime.decoder import TrtllmCheckpointRuntime

    preprocessor, rows = prompts
    assert all(p.ref_logprobs.shape[0] == len(p.ref_tokens) + 1 for p in rows)
    rt = TrtllmCheckpointRuntime.load(convert_llm_checkpoint(tiny_checkpoint, tmp_path, dtype="fp32"))
    score = score_checkpoint(rt, rows, tokenizer=preprocessor.tokenizer).as_dict()
    assert score["top1_agreement"] == 1.0 and score["greedy_exact_match"] == 1.0
    assert abs(score["mean_kl"]) < 1e-6
    assert score["task_accuracy"] == reference_accuracy(rows, tokenizer=preprocessor.tokenizer)


def test_report_renders_markdown_and_png(tmp_path):
    report = {"model": "m", "seed": 0, "per_task": 2, "reference": {"task_accuracy": {"color": 1.0, "count": 0.5}},
              "checkpoints": [{"name": "t-fp8", "recipe": "fp8", "top1_agreement": 0.99, "mean_kl": 1e-3,
                               "greedy_exact_match": 0.9, "task_accuracy": {"color": 0.5, "count": 0.5}}]}
    table = markdown(report)
    assert "| t-fp8 | fp8 | 99.00 % | 1.00e-03 | 90.0 % | 50.0 % (+50.0) | 50.0 % (+0.0) |" in table
    bar_chart(report, tmp_path / "chart.png")
    from PIL import Image

    assert Image.open(tmp_path / "chart.png").size[0] > 300


@pytest.mark.slow
def test_quantized_demo_model_meets_the_agreement_targets(tmp_path):
    """The trained demo model (2 layers, hidden 192): fp8 top-1 >= 99 %, int4_awq >= 95 %, AWQ's KL below RTN's.

    A random-weight model cannot show this: its argmax flips under any perturbation of a few percent,
    whatever the logit scale (docs/quantization-formats.md, "Agreement on random weights").
    """
    pytest.importorskip("modelopt.torch.quantization")
    from nvlm_deploy.demo.ask import SHIPPED_MODEL as DEMO_MODEL_DIR
    from nvlm_deploy.quant.evaluate import evaluate
    from nvlm_deploy.quant.quantize import QuantizeOptions, quantize_checkpoint

    targets = []
    for recipe in ("fp8", "int4_awq", "int4_rtn"):
        options = QuantizeOptions(recipe=recipe, calib_size=8, dtype="fp32", group_size=64)
        quantize_checkpoint(DEMO_MODEL_DIR, tmp_path / recipe, options)
        targets.append(tmp_path / recipe)
    rows = {row["recipe"]: row for row in evaluate(DEMO_MODEL_DIR, targets, per_task=10)["checkpoints"]}
    assert rows["fp8"]["top1_agreement"] >= 0.99, rows["fp8"]
    assert rows["int4_awq"]["top1_agreement"] >= 0.95, rows["int4_awq"]
    assert rows["int4_awq"]["mean_kl"] < rows["int4_rtn"]["mean_kl"], (rows["int4_awq"], rows["int4_rtn"])
