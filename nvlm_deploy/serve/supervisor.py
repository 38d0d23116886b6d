"""Keep one tritonserver serving: restart it when it or one of its Python stubs dies.

Why the whole server: tritonserver 2.51's Python backend never restarts a stub that died (SIGKILL,
OOM, a segfault in a native library). Every later request to that model fails with "Stub process
'<model>_0_0' is not healthy", in-flight streams hang, and /v2/health/ready and the model's ready
endpoint keep answering 200 (all checked here against the nvidia-pytriton wheel's server). A model
reload through the repository API would wait for the dead stub's in-flight requests, so the
supervisor SIGKILLs the server's process group (in-flight clients get a broken stream at once),
removes the shared memory the stubs left, and starts the server again on the same ports. Until it
is ready again the endpoints refuse connections: they never claim a model is ready that cannot serve.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from nvlm_deploy.errors import DeployError
from nvlm_deploy.serve.server import TritonServer

POLL_S = 0.5  # how often the server's processes are checked (reads /proc; costs microseconds)
DEFAULT_MAX_RESTARTS = 5
RETRY_S = 1.0  # after a restart that failed (e.g. a file being replaced), before the next one


class Supervisor:
    """Runs a server until asked to stop; restarts it after a fault, at most `max_restarts` times.

    Args:
        start: starts a server and waits until it is ready (takes `append_log` and `cancelled`).
        log: where progress lines go (serve prints them).
        max_restarts: faults survived by restarting; one more ends `run` with exit code 1.
    """

    def __init__(self, start: Callable[..., TritonServer], *, log: Callable[[str], None] = print,
                 max_restarts: int = DEFAULT_MAX_RESTARTS, poll_s: float = POLL_S):
        self.start, self.log, self.max_restarts, self.poll_s = start, log, max_restarts, poll_s
        self.restarts = 0
        self.server: TritonServer | None = None

    def run(self, stop: list) -> int:
        """Serve until `stop` is non-empty (a signal handler appends to it); returns the exit code."""
        self.server = self.start(append_log=False, cancelled=lambda: bool(stop))
        self.log(f"ready: gRPC {self.server.grpc_url}, HTTP {self.server.host}:{self.server.http_port}"
                 f"{self._metrics()} (pid {self.server.pid}, log {self.server.log_path}); Ctrl-C stops it")
        while not stop:
            time.sleep(self.poll_s)
            fault = self.server.fault()
            if fault is None:
                continue
            if not self._recover(fault, stop):
                return 1
        return self.shutdown(stop[0])

    def _recover(self, fault: str, stop: list) -> bool:
        """Report the fault, take the broken server down and start a new one; False when giving up."""
        server = self.server
        exited = server.process.poll() is not None
        code = server.kill()
        tail = f"; its log ({server.log_path}) ends with:\n{server.log_tail(20)}" if exited else ""
        self.log(f"FAULT: {fault}{tail}")
        if server.removed_shm:
            self.log(f"removed {len(server.removed_shm)} shared-memory region(s) the dead processes left in /dev/shm")
        while self.restarts < self.max_restarts:
            self.restarts += 1
            self.log(f"restarting tritonserver (restart {self.restarts} of at most {self.max_restarts}) ...")
            t0 = time.monotonic()
            try:
                self.server = self.start(append_log=True, cancelled=lambda: bool(stop))
            except DeployError as exc:
                if stop:
                    return True  # a stop signal arrived during the restart; the loop ends cleanly
                self.log(f"restart failed: {exc}")
                time.sleep(RETRY_S)
                continue
            self.log(f"restarted: ready again after {time.monotonic() - t0:.1f} s (pid {self.server.pid})")
            return True
        self.log(f"not restarting: {self.restarts} restart(s) already (--max-restarts {self.max_restarts}); "
                 f"tritonserver's last exit code {code}")
        return False

    def shutdown(self, reason: str) -> int:
        self.log(f"stopping tritonserver ({reason}) ...")
        server = self.server
        code = server.stop()
        left = (f"; removed {len(server.removed_shm)} shared-memory region(s) left in /dev/shm"
                if server.removed_shm else "")
        self.log(f"stopped (exit {code}){left}")
        return 0

    def _metrics(self) -> str:
        port = self.server.metrics_port
        return f", metrics {self.server.host}:{port}" if port else ""
