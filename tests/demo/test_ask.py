"""Asking the shipped demo model: library call and the `nvlm-deploy demo` command."""

import pytest

from nvlm_deploy.cli import main
from nvlm_deploy.demo.ask import SAMPLES, ask, default_model_dir, sample_path, sample_question
from nvlm_deploy.demo.tasks import make_sample
from nvlm_deploy.errors import DeployError


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.file)
def test_shipped_model_answers_the_bundled_samples(sample):
    expected = make_sample(sample.task, split="sample", seed=0, index=sample.index).answer
    assert ask(sample_question(sample_path(sample.file)), [sample_path(sample.file)]) == expected


def test_demo_command_prints_question_and_answer(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "question: Which side has the striped square?" in out and "answer:   middle" in out


def test_demo_command_with_image_and_question(capsys):
    assert main(["demo", "--image", str(sample_path("count.png")), "-q", "How many shapes are there?"]) == 0
    out = capsys.readouterr().out
    assert "question: How many shapes are there?" in out and "answer:   three" in out


def test_demo_command_missing_image_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--image", str(tmp_path / "nope.png")]) == 1
    assert "nope.png does not exist" in capsys.readouterr().err


def test_model_dir_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(DeployError, match="no config.json"):
        default_model_dir(tmp_path)


def test_demo_eval_command_writes_json(tmp_path, capsys):
    path = tmp_path / "eval.json"
    assert main(["demo", "eval", "--tasks", "color", "--per-task", "4", "--json", str(path)]) == 0
    assert "| color |" in capsys.readouterr().out and path.is_file()
