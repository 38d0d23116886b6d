import subprocess
import sys

from nvlm_deploy.cli import main


def test_help_imports_no_heavy_library():
    code = ("import sys, nvlm_deploy.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'tensorrt', 'tensorrt_llm', 'modelopt', 'onnxruntime', 'transformers')"
            " if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "tiny" in out and "generate" in out


def test_user_error_exits_1_without_traceback(tmp_path, capsys):
    rc = main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "config.json does not exist" in err and "Traceback" not in err


def test_cli_as_subprocess_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nvlm_deploy", "generate", "--model", str(tmp_path),
                           "--prompt", "hi"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
