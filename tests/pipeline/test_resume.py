"""What an interrupted run leaves is removed by the next one, unless its process still runs."""

import os
import subprocess
import sys

from nvlm_deploy.pipeline.resume import remove_interrupted


def test_only_temporary_outputs_of_processes_that_are_gone_are_removed(tmp_path):
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    (tmp_path / f".onnx.tmp-{gone}").mkdir()
    (tmp_path / f".onnx.tmp-{gone}" / "vision_encoder.onnx").write_bytes(b"half")
    (tmp_path / f".manifest.json.tmp-{gone}").write_text("{")
    (tmp_path / f".llm.tmp-{os.getpid()}").mkdir()  # a build running now
    (tmp_path / "onnx").mkdir()
    assert remove_interrupted(tmp_path) == [f".manifest.json.tmp-{gone}", f".onnx.tmp-{gone}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".llm.tmp-{os.getpid()}", "onnx"]
    assert remove_interrupted(tmp_path / "missing") == []


# ---- a SIGKILL of a real stage, at several points: `package` takes a complete directory or refuses ----

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402

import pytest  # noqa: E402

from nvlm_deploy.artifacts import FAULT_ENV  # noqa: E402
from nvlm_deploy.cli import main  # noqa: E402
from nvlm_deploy.contracts.target import Target  # noqa: E402
from tests.serving import LIMITS  # noqa: E402


def _killed(point: str, *argv) -> None:
    """Run `nvlm-deploy argv` in a child that SIGKILLs itself at `point`."""
    run = subprocess.run([sys.executable, "-m", "nvlm_deploy", *map(str, argv)], capture_output=True, text=True,
                         env={**os.environ, FAULT_ENV: point})
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]


def _package(target, out, capsys) -> tuple[int, str]:
    limits = [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()]
    rc = main(["package", "--engines", str(target), "--runtime", "cpu", "--out", str(out), "--force", *limits])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.fixture()
def target(engines, tmp_path):
    """A copy of the session's fp32 target (tp 1) to kill stages in."""
    return Target(shutil.copytree(engines, tmp_path / "tiny-cpu", ignore=shutil.ignore_patterns("model_repository")))


@pytest.mark.slow
@pytest.mark.parametrize("point, tp_after", [
    ("convert-tensor:3", 1),  # mid-conversion: the old checkpoint stands
    ("old-aside", None),      # between the renames: no checkpoint, and package says why
    ("removing-old:2", 2),    # the reported case: killed while the old one is deleted
])
def test_convert_llm_force_killed_anywhere_leaves_package_a_complete_checkpoint_or_a_refusal(
        target, tiny_checkpoint, tmp_path, capsys, point, tp_after):
    _killed(point, "convert", "llm", "--model", tiny_checkpoint, "--out", target.root, "--tp", 2, "--dtype", "fp32",
            "--force")
    rc, err = _package(target.root, tmp_path / "repo", capsys)
    if tp_after is None:
        assert rc == 1 and "trtllm_checkpoint does not exist" in err and "An interrupted run left" in err
    else:
        assert rc == 0, err
        checkpoint = target.manifest("trtllm_checkpoint", hashes=True)  # every file as its manifest says
        assert checkpoint.tp == tp_after
        assert json.loads((target.dir("trtllm_checkpoint") / "config.json").read_text())["mapping"]["tp_size"] == tp_after
    # the next run cleans up after the killed one
    assert main(["convert", "llm", "--model", str(tiny_checkpoint), "--out", str(target.root), "--tp", "2",
                 "--dtype", "fp32", "--force"]) == 0
    assert [p.name for p in target.root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_a_damaged_stage_is_refused_by_package_sizes_always_hashes_on_request(target, tmp_path, capsys):
    rank0 = target.dir("trtllm_checkpoint") / "rank0.safetensors"
    data = bytearray(rank0.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    rank0.write_bytes(bytes(data))
    assert _package(target.root, tmp_path / "repo", capsys)[0] == 0  # sizes match
    rc = main(["package", "--engines", str(target.root), "--runtime", "cpu", "--out", str(tmp_path / "repo2"),
               "--verify"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{rank0} differs from what was written (blake3 mismatch)" in err and "--force" in err
    rank0.write_bytes(bytes(data[:-10]))
    rc, err = _package(target.root, tmp_path / "repo", capsys)
    assert rc == 1 and f"{rank0} has" in err and "(truncated)" in err and "nvlm-deploy convert llm" in err


@pytest.mark.slow
def test_package_refuses_a_config_edited_to_another_vocab_size_of_the_same_length(target, tmp_path, capsys):
    config = target.dir("trtllm_checkpoint") / "config.json"
    text = config.read_text()
    vocab = json.loads(text)["vocab_size"]
    config.write_text(text.replace(f'"vocab_size": {vocab}', f'"vocab_size": {vocab + 1}'))  # same size
    rc, err = _package(target.root, tmp_path / "repo", capsys)
    assert rc == 1 and "transformer.vocab_embedding.weight" in err and f"vocab_size {vocab + 1}" in err


@pytest.mark.slow
@pytest.mark.parametrize("point, old_survives", [("stage-written", True), ("removing-old:3", False)])
def test_package_force_killed_leaves_the_old_or_the_new_repository(target, tmp_path, capsys, point, old_survives):
    from nvlm_deploy.contracts.target import verify_repository

    repo = tmp_path / "repo"
    assert _package(target.root, repo, capsys)[0] == 0
    before = json.loads((repo / "manifest.json").read_text())["created"]
    (repo / "marker").write_text("old")  # a file only the old repository has
    limits = [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()]
    _killed(point, "package", "--engines", target.root, "--runtime", "cpu", "--out", repo, "--force", *limits)
    assert (repo / "marker").exists() == old_survives
    verify_repository(repo, hashes=True)  # complete, whichever it is
    if old_survives:
        assert json.loads((repo / "manifest.json").read_text())["created"] == before


@pytest.mark.slow
def test_convert_vision_force_killed_while_removing_the_old_graph_leaves_the_new_one_complete(
        target, tiny_checkpoint, tmp_path, capsys):
    """One point only (an export costs ~20 s); every point of the same swap is covered in tests/test_artifacts.py."""
    old = target.manifest("onnx").created
    _killed("removing-old:1", "convert", "vision", "--model", tiny_checkpoint, "--out", target.root, "--dtype",
            "fp32", "--force")
    assert _package(target.root, tmp_path / "repo", capsys)[0] == 0
    assert target.manifest("onnx", hashes=True).created != old
