"""`nvlm-deploy quantize` refusals: exit 1, a message naming the problem and the fix, nothing written."""

import pytest

from nvlm_deploy.cli import main

pytest.importorskip("modelopt.torch.quantization")


@pytest.mark.parametrize("extra,message", [
    (["--recipe", "int8_magic"], "unknown quantization recipe 'int8_magic'"),
    (["--recipe", "int4_awq", "--group-size", "96"], "--group-size 96 does not divide the decoder's hidden size 128"),
    (["--recipe", "int4_awq", "--tp", "2"], "does not divide attention.dense's 64 inputs per rank at --tp 2"),
    (["--recipe", "fp8", "--calib", "{missing}"], "does not exist or is not a folder"),
    (["--recipe", "fp8", "--calib", "{empty}"], "has no prompts"),
    (["--recipe", "fp8", "--calib-size", "0"], "--calib-size must be at least 1"),
    (["--recipe", "fp8", "--gpu", "a100-sxm-80gb"], "has no FP8 Tensor Cores"),
    (["--recipe", "int4_awq", "--group-size", "64", "--kv-cache", "fp8", "--gpu", "a100-sxm-80gb"], "has no FP8 Tensor Cores"),
])
def test_bad_input_exits_1_and_writes_nothing(tiny_checkpoint, tmp_path, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    extra = [e.format(missing=tmp_path / "nope", empty=tmp_path / "empty") for e in extra]
    out = tmp_path / "target"
    assert main(["quantize", "--model", str(tiny_checkpoint), "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
