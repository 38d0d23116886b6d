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
