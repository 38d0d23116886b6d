"""scripts/quickstart.sh: checkpoint -> ONNX + TRT-LLM checkpoint -> CPU repository -> server -> one answer."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "quickstart.sh"


def test_quickstart_goes_all_the_way(tiny_checkpoint, images, tmp_path):
    image = tmp_path / "picture.png"
    image.write_bytes(images[0])
    cli = Path(sys.executable).parent / "nvlm-deploy"
    result = subprocess.run(["bash", str(SCRIPT), str(tiny_checkpoint), str(image), "What color is the shape?"],
                            env={"PATH": f"{cli.parent}:/usr/bin:/bin", "WORK": str(tmp_path / "work"),
                                 "NVLM_DEPLOY": str(cli), "MAX_TOKENS": "8", "HOME": str(Path.home())},
                            capture_output=True, text=True, timeout=900)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    stages = [line for line in out.splitlines() if line.startswith("==> [")]
    assert [s[5:8] for s in stages] == [f"{k}/6" for k in range(1, 7)]
    assert "\nready: gRPC 127.0.0.1:" in out and "answer:\n" in out and "server stopped" in out
    repo = tmp_path / "work" / tiny_checkpoint.name / "cpu-fp32" / "model_repository"
    assert (repo / "manifest.json").is_file()
    from nvlm_deploy.model.generate import ReferencePipeline
    from nvlm_deploy.backend.bls import make_decode

    reference = ReferencePipeline.from_model_dir(tiny_checkpoint, dtype="fp32")  # the package's default limits
    want = reference.generate_ids(reference.preprocessor.prepare("What color is the shape?", [images[0]]), max_new_tokens=8)
    answer = out.split("answer:\n", 1)[1].split("\nserver stopped", 1)[0]
    assert answer == make_decode(reference.tokenizer)(want)
