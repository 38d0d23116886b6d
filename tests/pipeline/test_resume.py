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
