"""`pip install .` (not editable) into a fresh venv, then the CPU path end to end with that venv's CLI.

The full install, dependencies included, is what a user runs and takes about 55 s here with pip's
cache warm (CI's setup.sh fills it just before the tests). The shortcut of a .pth file onto
.venv's site-packages plus `--no-deps` saves most of that but would not catch a dependency missing
from pyproject.toml, so the test pays for the honest install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.server]

REPO = Path(__file__).resolve().parents[1]
MARKER = Path("triton_repo") / "ensemble" / "config.pbtxt.template"
PROBE = ("import json, nvlm_deploy, nvlm_deploy.resources as r; "
         "print(json.dumps({'file': nvlm_deploy.__file__, 'templates': str(r.templates_dir())}))")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(venv: Path, cache: Path) -> dict[str, str]:
    """The fresh venv first on PATH; nothing that could point Python back at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", VIRTUAL_ENV=str(venv),
               PYTHONNOUSERSITE="1", NVLM_DEPLOY_CACHE=str(cache))
    return env


def _run(cmd: list, *, cwd: Path, env: dict, timeout: float) -> str:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _install(venv: Path, *, cwd: Path, env: dict) -> None:
    _run([sys.executable, "-m", "venv", venv], cwd=cwd, env=env, timeout=120)
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", REPO],
         cwd=cwd, env=env, timeout=900)


def _wait_ready(proc: subprocess.Popen, log: Path, http_port: int, *, timeout: float) -> int:
    """Poll /v2/health/ready; returns tritonserver's PID from serve's "ready:" line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log.read_text(errors='replace')}"
        ready = re.search(r"^ready: .*\(pid (\d+),", log.read_text(errors="replace"), re.M)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200 and ready:
                    return int(ready.group(1))
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout:.0f}s:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen, triton_pid: int | None) -> None:
    """SIGTERM serve (it stops tritonserver); SIGKILL both after a timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if triton_pid is not None:  # serve was killed or died: its server runs in a session of its own
        try:
            os.kill(triton_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_wheel_install_packages_and_serves_an_answer(tmp_path):
    venv, work, cwd = tmp_path / "venv", tmp_path / "work", tmp_path / "cwd"
    cwd.mkdir()  # every command runs outside the checkout, so nothing imports from it
    env = _env(venv, tmp_path / "cache")
    try:
        _install(venv, cwd=cwd, env=env)
        found = json.loads(_run([venv / "bin" / "python", "-c", PROBE], cwd=cwd, env=env, timeout=120))
        package = Path(found["file"]).resolve().parent
        assert package.is_relative_to(venv.resolve()), f"nvlm_deploy imported from {package}, not the fresh venv"
        assert (package / MARKER).is_file()
        assert Path(found["templates"]).resolve() == package / "triton_repo"

        cli, ckpt, target = venv / "bin" / "nvlm-deploy", work / "ckpt", work / "target"
        repo = target / "model_repository"
        _run([cli, "tiny", "--out", ckpt], cwd=cwd, env=env, timeout=300)
        for stage in ("vision", "llm"):
            _run([cli, "convert", stage, "--model", ckpt, "--out", target, "--dtype", "fp32"],
                 cwd=cwd, env=env, timeout=600)
        _run([cli, "package", "--engines", target, "--runtime", "cpu", "--out", repo], cwd=cwd, env=env, timeout=300)
        assert (repo / "tensorrt_llm_bls" / "1" / "model.py").is_file()
        want = _run([cli, "generate", "--model", ckpt, "--prompt", "Hello", "--max-new-tokens", "8"],
                    cwd=cwd, env=env, timeout=300)

        grpc_port, http_port = _free_port(), _free_port()
        log, proc, triton_pid = work / "serve.log", None, None
        try:
            with open(log, "wb") as out:
                proc = subprocess.Popen([str(cli), "serve", str(repo), "--grpc-port", str(grpc_port),
                                         "--http-port", str(http_port), "--log", str(work / "tritonserver.log")],
                                        cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
            triton_pid = _wait_ready(proc, log, http_port, timeout=300)
            answer = _run([cli, "chat", "--url", f"127.0.0.1:{grpc_port}", "--max-tokens", "8", "Hello"],
                          cwd=cwd, env=env, timeout=300)
        finally:
            if proc is not None:
                _stop(proc, triton_pid)
        assert answer.strip(), "the served answer is empty"
        # generate strips its answer as HF chat() does; the server sends the text exactly as decoded
        assert answer.strip() == want.strip(), "the served answer differs from `nvlm-deploy generate`'s"
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # 1.6 GB; the artifacts under work/ stay for a look
