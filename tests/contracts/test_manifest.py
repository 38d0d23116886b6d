"""Typed manifests: written whole, read back typed, and every broken one refused with the file named."""

import json

import pytest

from nvlm_deploy.contracts.manifest import MANIFEST, TargetManifest, TrtllmCheckpointManifest, read_manifest, write_manifest
from nvlm_deploy.contracts.target import STAGES
from nvlm_deploy.errors import DeployError


def test_round_trip(tmp_path):
    written = TargetManifest(model_dir="/m", limits={"max_images": 1})
    write_manifest(tmp_path, written)
    assert json.loads((tmp_path / MANIFEST).read_text())["stage"] == "target"
    assert read_manifest(tmp_path, TargetManifest) == written
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ('{"stage": "target", "model_dir": "/m"', "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"stage": "onnx"}', "describes a 'onnx' artifact, not 'target'"),
    ('{"stage": "target", "model_dir": "/m"}', r"lacks field\(s\) \['limits'\]"),
])
def test_broken_manifests_are_named_with_the_fix(tmp_path, content, message):
    if content is not None:
        (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(DeployError, match=message) as exc:
        read_manifest(tmp_path, TargetManifest, writer="nvlm-deploy convert llm")
    assert str(tmp_path / MANIFEST) in str(exc.value) and "nvlm-deploy convert llm" in str(exc.value)


def test_every_stage_has_a_typed_manifest_and_its_command():
    assert set(STAGES) == {"onnx", "trtllm_checkpoint", "vision", "llm", "model_repository"}
    for name, stage in STAGES.items():
        assert stage.manifest.STAGE == name and stage.command.startswith("nvlm-deploy ")
    assert STAGES["trtllm_checkpoint"].manifest is TrtllmCheckpointManifest


# ---- file records: written with every stage manifest, checked by package, serve and loaders ----

def test_stage_manifests_record_their_files_and_the_target_manifest_does_not(tmp_path):
    import blake3

    from nvlm_deploy.contracts.manifest import OnnxManifest

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"weights")
    onnx = OnnxManifest(model_dir="/m", input_hashes={}, precision="fp32", image_size=448, tokens_per_tile=256,
                        hidden_size=64, opset=18, exporter="x", compute="fp32", onnx_file="x.onnx",
                        external_data_file=None, weight_bytes=7, nodes=1, export_seconds=0.0,
                        tensorrt_onnx_ops={}, check={})
    write_manifest(tmp_path, onnx)
    assert read_manifest(tmp_path, OnnxManifest).files == {
        "sub/w.bin": {"bytes": 7, "blake3": blake3.blake3(b"weights").hexdigest()}}
    write_manifest(tmp_path, TargetManifest(model_dir="/m", limits={}))
    assert "files" not in json.loads((tmp_path / MANIFEST).read_text())


@pytest.fixture()
def served_copy(engines, cpu_repo, tmp_path):
    """A copy of the session's target with its packaged repository, to damage."""
    import shutil

    return shutil.copytree(engines, tmp_path / "tiny-cpu") / "model_repository"


def test_serve_refuses_a_truncated_rank_file_before_starting_and_verify_checks_hashes(served_copy, capsys):
    from nvlm_deploy.cli import main
    from nvlm_deploy.contracts.target import verify_repository

    target = served_copy.parent
    checked = verify_repository(served_copy, hashes=True)
    assert set(checked) == {served_copy, (target / "onnx").resolve(), (target / "trtllm_checkpoint").resolve()}
    graph = target / "onnx" / "vision_encoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only --verify sees it
    graph.write_bytes(bytes(data))
    assert main(["serve", str(served_copy), "--print-command"]) == 0
    assert main(["serve", str(served_copy), "--verify", "--print-command"]) == 1
    err = capsys.readouterr().err
    assert f"{graph} differs from what was written (blake3 mismatch)" in err and "Traceback" not in err
    rank0 = target / "trtllm_checkpoint" / "rank0.safetensors"
    rank0.write_bytes(rank0.read_bytes()[:-64])
    assert main(["serve", str(served_copy)]) == 1
    err = capsys.readouterr().err
    assert f"{rank0} has" in err and "(truncated)" in err and "nvlm-deploy convert llm" in err


def test_relocation_keeps_the_repository_records_true(served_copy, tmp_path):
    import shutil

    from nvlm_deploy.contracts.target import verify_repository
    from nvlm_deploy.serve.repository_paths import relocate_repository

    moved = shutil.move(served_copy.parent, tmp_path / "moved") / "model_repository"
    changed = relocate_repository(moved)  # rewrites every config.pbtxt's absolute paths
    assert changed and verify_repository(moved, hashes=True)
