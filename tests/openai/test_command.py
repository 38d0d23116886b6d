"""`nvlm-deploy openai` as a process: it says when it is ready, answers, and stops cleanly on Ctrl-C."""

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from nvlm_deploy.serve.server import free_port


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nvlm_deploy", "openai", "--url", f"127.0.0.1:{free_port()}", *args]


def test_serves_until_ctrl_c_and_reports_an_unreachable_triton_on_health():
    port = free_port()
    proc = subprocess.Popen(command("--port", str(port), "--model-name", "mine"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"ready: http://127.0.0.1:{port}/v1 (model 'mine'"), line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as resp:
            assert [m["id"] for m in json.loads(resp.read())["data"]] == ["mine"]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30)
            raise AssertionError("health is 200 with no Triton server")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and json.loads(exc.read())["error"]["code"] == "triton_unavailable"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped" in out


def test_a_taken_port_is_a_user_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = subprocess.run(command("--port", str(taken.getsockname()[1])), capture_output=True, text=True,
                              timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot listen on 127.0.0.1:")
    assert "Traceback" not in proc.stderr
