"""Demo evaluation: batched greedy decoding equals the reference path; the shipped model scores."""

import json

import pytest

from nvlm_deploy.demo.ask import SHIPPED_MODEL
from nvlm_deploy.demo.evaluate import Scored, evaluate, greedy_batch, load_for_eval, markdown_table, report
from nvlm_deploy.demo.tasks import TASKS, make_sample
from nvlm_deploy.demo.train import encode_example


@pytest.fixture(scope="module")
def random_demo_checkpoint(tmp_path_factory):
    from nvlm_deploy.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("demo") / "random", preset="demo", seed=1)


def test_batched_greedy_equals_the_reference_pipeline(random_demo_checkpoint):
    from nvlm_deploy.model.generate import ReferencePipeline

    model, pre = load_for_eval(random_demo_checkpoint)
    pipeline = ReferencePipeline(model, pre, pre.tokenizer)
    samples = [make_sample("striped", split="eval", seed=0, index=i) for i in (1, 3, 5)]  # equal lengths
    examples = [encode_example(pre, s, with_answer=False) for s in samples]
    batched = greedy_batch(model, examples, tokens_per_tile=16, end_id=pre.tokenizer.eos_id, max_new_tokens=4)
    for sample, ids in zip(samples, batched):
        assert ids == pipeline.generate_ids(pre.prepare(sample.question, [sample.image]), max_new_tokens=4)


def test_ablation_gives_one_tile_without_tile_tags(random_demo_checkpoint):
    _, pre = load_for_eval(random_demo_checkpoint, ablate_tiles=True)
    example = encode_example(pre, make_sample("striped", split="eval", seed=0, index=1), with_answer=False)
    text = pre.tokenizer.decode([i for i in example.input_ids if i < 1030], skip_special_tokens=False)
    assert example.pixel_values.shape[0] == 1 and "<tile_1>" not in text


def test_report_counts_accuracy_chance_and_errors():
    scored = [Scored("color", "red", "red", 1 / 6), Scored("color", "red", "blue", 1 / 6),
              Scored("striped", "left", "left", 1 / 2), Scored("striped", "middle", "left", 1 / 3)]
    result = report(scored, names=["color", "striped"], model_dir="m", per_task=2, seed=0, ablate_tiles=False)
    assert result["tasks"]["color"]["accuracy"] == 0.5 and result["tasks"]["color"]["chance"] == round(1 / 6, 4)
    assert result["tasks"]["striped"]["chance"] == round((1 / 2 + 1 / 3) / 2, 4)
    assert result["tasks"]["striped"]["top_errors"] == {"middle -> left": 1}
    assert "| striped | 1/2 | 50.0 % | 41.7 % |" in markdown_table(result)


BAR = list(TASKS)


@pytest.fixture(scope="module")
def shipped_result():
    return evaluate(SHIPPED_MODEL, per_task=24, seed=1)


@pytest.mark.parametrize("task", BAR)
def test_shipped_checkpoint_scores_at_least_90_percent(shipped_result, task):
    assert shipped_result["tasks"][task]["accuracy"] >= 0.9, shipped_result["tasks"][task]


def test_tiling_task_falls_to_chance_without_the_tiles():
    result = evaluate(SHIPPED_MODEL, tasks=["striped"], per_task=48, seed=1, ablate_tiles=True)
    r = result["tasks"]["striped"]
    assert r["accuracy"] <= r["chance"] + 0.2, r  # with tiles it is >= 0.9


@pytest.mark.parametrize("task", BAR)
def test_committed_eval_json_meets_the_bar(task):
    committed = json.loads((SHIPPED_MODEL / "eval.json").read_text())
    assert committed["per_task"] >= 300 and not committed["ablate_tiles"]
    r = committed["tasks"][task]
    assert r["total"] >= 300 and r["accuracy"] >= 0.9, r


def test_committed_ablation_json_shows_the_tiles_matter():
    full = json.loads((SHIPPED_MODEL / "eval.json").read_text())["tasks"]["striped"]
    ablated = json.loads((SHIPPED_MODEL / "eval_ablate_tiles.json").read_text())
    r = ablated["tasks"]["striped"]
    assert ablated["ablate_tiles"] and r["total"] >= 300
    assert r["accuracy"] <= r["chance"] + 0.1 and full["accuracy"] >= 0.9
