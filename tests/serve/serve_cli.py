"""`nvlm-deploy serve` run as users run it (a subprocess), for the fault-recovery and catalogue tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from nvlm_deploy.serve.processes import python_stubs
from nvlm_deploy.serve.server import free_ports


class ServeCommand:
    """`python -m nvlm_deploy serve REPO` on free ports; its output lines are collected by a thread."""

    def __init__(self, repo: Path, *, log_path: Path, extra: tuple[str, ...] = ()):
        self.grpc_port, self.http_port = free_ports(2)
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nvlm_deploy", "serve", str(repo), "--grpc-port", str(self.grpc_port),
             "--http-port", str(self.http_port), "--log", str(log_path), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 300.0) -> None:
        """Until `text` appeared in `count` output lines; fails with the output when serve exits first."""
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < count:
            if self.process.poll() is not None and sum(text in line for line in self.lines) < count:
                time.sleep(0.2)  # the reader thread may still be draining
                if sum(text in line for line in self.lines) >= count:
                    return
                raise AssertionError(f"serve exited ({self.process.returncode}) before {text!r}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} (x{count}) after {timeout:.0f} s:\n{self.output}")
            time.sleep(0.1)

    def tritonserver_pid(self) -> int:
        """The tritonserver serve started most recently (its child)."""
        out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(self.process.pid)], capture_output=True,
                             text=True).stdout
        pids = [int(line.split()[0]) for line in out.splitlines() if "tritonserver" in line.split()[1]]
        assert pids, f"serve (pid {self.process.pid}) has no tritonserver child:\n{self.output}"
        return pids[-1]

    def stub_pid(self, model: str) -> int:
        stubs = {name: pid for pid, name in python_stubs(self.tritonserver_pid()).items()}
        return stubs[model]

    def status(self, path: str) -> int | None:
        """HTTP status of GET `path` on the server; None when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
