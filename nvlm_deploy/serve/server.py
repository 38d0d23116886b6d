"""Start and stop `tritonserver`: the system one (NVIDIA's container) or the nvidia-pytriton wheel's.

The wheel's server needs a workspace copy of its backends with the Python stub next to
`libtriton_python.so`, `LD_LIBRARY_PATH` pointing at `nvidia_pytriton.libs` (the copied libraries'
RPATH no longer resolves) and the venv's `bin` first on PATH so Python models import this venv's
packages (shared/reference/toolchain.md §6). The workspace is never named `triton`: a folder of
that name on sys.path shadows OpenAI Triton and breaks torch dynamo.

Process control (issue 14): the server runs in its own process group and gets SIGTERM when the
thread that started it dies (Linux PR_SET_PDEATHSIG), so a SIGKILLed `nvlm-deploy serve` or test
run never leaves it serving. `TritonServer.fault()` says when the server or one of its Python
stubs died: tritonserver 2.51's Python backend never restarts a dead stub and keeps answering 200
on the ready endpoints (checked here: "Stub process '<model>_0_0' is not healthy" on every request),
so `serve.supervisor` restarts the whole server. `stop()` ends the whole process group and removes
the Python backend's shared-memory regions that dead stubs leave in /dev/shm.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nvlm_deploy.errors import DeployError
from nvlm_deploy.serve.processes import alive, live_group_members, python_stubs, remove_shm_regions

SYSTEM_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
WORKSPACE_ENV = "NVLM_DEPLOY_CACHE"


@dataclass(frozen=True)
class TritonDist:
    """Where a runnable tritonserver is, and how to run it."""

    binary: Path
    backend_dir: Path | None  # None: the server's built-in default
    cache_dir: Path | None
    env: dict = field(default_factory=dict)  # extra environment
    kind: str = "system"  # "system" | "pytriton"


def find_tritonserver(*, workspace: str | Path | None = None) -> TritonDist:
    """The system tritonserver when there is one, else the nvidia-pytriton wheel's (prepared once).

    Args:
        workspace: where to lay out the wheel's backends (default ~/.cache/nvlm-deploy).
    """
    system = shutil.which("tritonserver") or (str(SYSTEM_TRITONSERVER) if SYSTEM_TRITONSERVER.is_file() else None)
    if system:
        return TritonDist(binary=Path(system), backend_dir=None, cache_dir=None, kind="system")
    return _pytriton_dist(workspace)


def _pytriton_dist(workspace: str | Path | None) -> TritonDist:
    try:
        import pytriton
    except ImportError:
        raise DeployError("no tritonserver found: not on PATH, not at /opt/tritonserver, and the nvidia-pytriton "
                          "wheel is not installed. Install it with: pip install nvidia-pytriton "
                          "(or run inside NVIDIA's tritonserver container).") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    binary = root / "bin" / "tritonserver"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not binary.is_file() or not stub.is_file():
        raise DeployError(f"the nvidia-pytriton wheel at {root} has no tritonserver binary or no Python {py} "
                          "backend stub; reinstall it: pip install --force-reinstall nvidia-pytriton")
    version = _dist_version("nvidia-pytriton")
    base = Path(workspace or os.environ.get(WORKSPACE_ENV) or Path.home() / ".cache" / "nvlm-deploy")
    backends = base / f"tritonserver-backends-pytriton-{version}-py{py}"
    if not (backends / "python" / "triton_python_backend_stub").is_file():
        tmp = backends.with_name(backends.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(root / "backends", tmp)
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        if backends.exists() and not (backends / "python" / "triton_python_backend_stub").is_file():
            shutil.rmtree(backends)  # an incomplete copy
        try:
            tmp.rename(backends)
        except OSError:  # another process finished the same copy first; a running server may use it
            shutil.rmtree(tmp, ignore_errors=True)
    libs = root.parent.parent / "nvidia_pytriton.libs"
    # libpython of the interpreter that runs this venv, so the stub's Python matches ours
    pylib = sysconfig.get_config_var("LIBDIR") or ""
    ld = os.pathsep.join(p for p in (str(libs), pylib, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    return TritonDist(binary=binary, backend_dir=backends, cache_dir=root / "caches",
                      env={"LD_LIBRARY_PATH": ld}, kind="pytriton")


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1", *, taken=()) -> list[int]:
    """`count` distinct TCP ports free right now on `host`, none of them in `taken`.

    All are held open until every one is chosen: asked one at a time, the kernel may hand out a port
    it just gave (tritonserver then refuses gRPC and HTTP "at the same address and port").
    """
    sockets, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((host, 0))
            if s.getsockname()[1] not in taken:
                ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


EXIT_TIMEOUT_S = 10  # tritonserver --exit-timeout-secs: in-flight requests get this long on SIGTERM (its default: 30)


def metrics_args(host: str, metrics_port: int | None) -> list[str]:
    """Prometheus metrics: off unless a port is given; then bound to `host` like the other endpoints."""
    if metrics_port is None:
        return ["--allow-metrics", "false"]
    return ["--allow-metrics", "true", "--allow-gpu-metrics", "false", "--metrics-address", host,
            "--metrics-port", str(metrics_port)]


def server_args(dist: TritonDist, repo: str | Path, *, grpc_port: int, http_port: int,
                host: str = "127.0.0.1", log_verbose: int = 0, metrics_port: int | None = None,
                exit_timeout_s: int = EXIT_TIMEOUT_S) -> list[str]:
    """tritonserver arguments shared by every rank (no binary, no per-process shm prefix).

    Every endpoint binds `host` (127.0.0.1 unless the user asks); metrics are off unless `metrics_port`.
    tritonserver 2.51 has no flag capping a request's size (no --grpc/--http max message or input size;
    checked with its --help), so the Python models check their inputs' sizes themselves.
    """
    args = ["--model-repository", str(Path(repo).resolve()),
            "--grpc-address", host, "--grpc-port", str(grpc_port),
            "--http-address", host, "--http-port", str(http_port),
            *metrics_args(host, metrics_port), "--allow-sagemaker", "false", "--allow-vertex-ai", "false",
            "--exit-timeout-secs", str(exit_timeout_s),
            "--disable-auto-complete-config", "--log-verbose", str(log_verbose)]
    if dist.backend_dir:
        args += ["--backend-directory", str(dist.backend_dir)]
    if dist.cache_dir:
        args += ["--cache-directory", str(dist.cache_dir)]
    return args


def default_shm_prefix(grpc_port: int) -> str:
    """Unique per server on one machine (this process and the port); stop() removes /dev/shm/<prefix>*."""
    return f"nvlmd{os.getpid()}_{grpc_port}_"


def server_command(dist: TritonDist, repo: str | Path, *, grpc_port: int, http_port: int,
                   host: str = "127.0.0.1", shm_prefix: str | None = None, log_verbose: int = 0,
                   metrics_port: int | None = None) -> list[str]:
    """The tritonserver command line for one server process.

    Args:
        dist: from find_tritonserver().
        repo: the model repository.
        grpc_port, http_port: ports on `host`.
        host: address to bind (127.0.0.1 unless told otherwise).
        shm_prefix: Python-backend shared-memory prefix; unique per server on one machine.
    """
    prefix = shm_prefix or default_shm_prefix(grpc_port)
    return [str(dist.binary), *server_args(dist, repo, grpc_port=grpc_port, http_port=http_port, host=host,
                                           log_verbose=log_verbose, metrics_port=metrics_port),
            "--backend-config", f"python,shm-region-prefix-name={prefix}"]


def launch_command(repo: str | Path, *, grpc_port: int, http_port: int, host: str = "127.0.0.1",
                   world_size: int = 1, dist: TritonDist | None = None, metrics_port: int | None = None) -> list[str]:
    """One tritonserver, or for world_size > 1 the mpirun leader-mode line (one rank per GPU)."""
    dist = dist or find_tritonserver()
    if world_size == 1:
        return server_command(dist, repo, grpc_port=grpc_port, http_port=http_port, host=host,
                              metrics_port=metrics_port)
    from nvlm_deploy.serve.launch import leader_mode_command

    return leader_mode_command(server_args(dist, repo, grpc_port=grpc_port, http_port=http_port, host=host,
                                           metrics_port=metrics_port),
                               world_size=world_size, binary=str(dist.binary), shm_prefix=leader_shm_prefix(grpc_port))


def leader_shm_prefix(grpc_port: int) -> str:
    """Leader mode: each rank's prefix is this + its rank + "_"."""
    return f"nvlmd{grpc_port}r"


def server_env(dist: TritonDist) -> dict[str, str]:
    """Environment for tritonserver: this venv's bin first on PATH (Python models find our packages)."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, str(Path(sys.exec_prefix) / "bin"), env.get("PATH", "")])
    env.setdefault("PYTHONUTF8", "1")  # the stub's Python otherwise reads files as ASCII under a C locale
    env.update(dist.env)
    return env


def exit_description(code: int) -> str:
    """"code 1" or "signal SIGSEGV" (Popen's negative return codes are signals)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _die_with_parent(parent_pid: int):
    """preexec_fn: SIGTERM this child when the thread that started it dies (prctl PR_SET_PDEATHSIG)."""
    def preexec() -> None:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    return preexec


class TritonServer:
    """A running tritonserver started by us, in its own process group; stop() ends the group."""

    def __init__(self, process: subprocess.Popen, *, grpc_port: int, http_port: int, host: str, log_path: Path,
                 shm_prefixes: list[str] | None = None, metrics_port: int | None = None):
        self.process = process
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.host = host
        self.log_path = log_path
        self.shm_prefixes = list(shm_prefixes or [])
        self.metrics_port = metrics_port
        self.stubs: dict[int, str] = {}  # pid -> model, recorded when the server is ready
        self.removed_shm: list[str] = []  # regions stop() found left behind and removed

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def record_stubs(self) -> dict[int, str]:
        """Remember the Python stubs now running (every model's, once the server is ready)."""
        self.stubs = python_stubs(self.pid)
        return self.stubs

    def fault(self) -> str | None:
        """Why this server cannot serve as started ("tritonserver exited ...", "... stub ... died"), or None."""
        code = self.process.poll()
        if code is not None:
            return f"tritonserver (pid {self.pid}) exited with {exit_description(code)}"
        dead = [f"{model} (pid {pid})" for pid, model in self.stubs.items() if not alive(pid)]
        if dead:
            return (f"the Python stub of model {', '.join(dead)} died; tritonserver's Python backend does not "
                    "restart it and would answer every request to that model with 'Stub process is not healthy'")
        return None

    def wait_ready(self, *, timeout: float = 300.0, cancelled=lambda: False) -> None:
        """Poll /v2/health/ready until the server and all its models are ready, then record the stubs.

        Args:
            cancelled: returns True to give up (a stop signal): the server is stopped, DeployError raised.
        """
        url = f"{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise DeployError(f"tritonserver exited with code {code} before it was ready; "
                                  f"its log ({self.log_path}) ends with:\n{self.log_tail()}")
            if cancelled():
                self.stop()
                raise DeployError("stopped before tritonserver was ready.")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        self.record_stubs()
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise DeployError(f"tritonserver was not ready after {timeout:.0f}s; its log ({self.log_path}) ends with:\n"
                          f"{self.log_tail()}")

    def stop(self, *, timeout: float = EXIT_TIMEOUT_S + 10.0) -> int | None:
        """SIGTERM the server (it stops its stubs and frees their shared memory), SIGKILL its whole process
        group after `timeout`; then remove the shared-memory regions dead stubs left. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        return self._end_group()

    def kill(self) -> int | None:
        """SIGKILL the server and its stubs now (a server already broken: nothing to drain); clean up."""
        return self._end_group()

    def _end_group(self) -> int | None:
        for _ in range(100):  # stubs left in the group (a server that hung or was killed); 10 s at most
            if self.process.poll() is not None and not live_group_members(self.pid):
                break
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.1)
        self.process.wait(timeout=10)
        self.removed_shm += remove_shm_regions(self.shm_prefixes)
        return self.process.returncode


def start_server(repo: str | Path, *, grpc_port: int | None = None, http_port: int | None = None,
                 host: str = "127.0.0.1", log_path: str | Path | None = None, wait: bool = True,
                 timeout: float = 300.0, dist: TritonDist | None = None, world_size: int = 1,
                 metrics_port: int | None = None, die_with_parent: bool = True, append_log: bool = False,
                 cancelled=lambda: False) -> TritonServer:
    """Start tritonserver on `repo` bound to `host`; by default wait until it is ready.

    Args:
        repo: a model repository written by `nvlm-deploy package`.
        grpc_port, http_port: None picks free ports.
        host: bind address; 127.0.0.1 unless the user asks for more.
        log_path: server log file (default <repo>/../<repo name>.tritonserver.log).
        wait: block until /v2/health/ready answers 200.
        world_size: ranks of the engines; above 1 the server runs under mpirun (leader mode).
        metrics_port: serve Prometheus metrics there (on `host`); None: no metrics endpoint.
        die_with_parent: the server gets SIGTERM when the calling thread dies (call from a thread that
            lives as long as the server should: the main thread, or the one that stops it).
        append_log: append to `log_path` (a restart) instead of starting it afresh.
        cancelled: while waiting, returns True to give up (see TritonServer.wait_ready).
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise DeployError(f"{repo} is not a directory: pass a model repository written by `nvlm-deploy package`.")
    dist = dist or find_tritonserver()
    spare = free_ports(2, host, taken={grpc_port, http_port, metrics_port})
    grpc_port, http_port = grpc_port or spare[0], http_port or spare[1]
    log_path = Path(log_path or repo.resolve().parent / f"{repo.resolve().name}.tritonserver-{grpc_port}.log")
    cmd = launch_command(repo, grpc_port=grpc_port, http_port=http_port, host=host, world_size=world_size, dist=dist,
                         metrics_port=metrics_port)
    if cmd[0] == "mpirun" and not shutil.which("mpirun"):
        raise DeployError(f"this repository's engines have {world_size} ranks, which run one tritonserver per GPU "
                          "under mpirun (tensorrtllm_backend leader mode), and mpirun is not on PATH: run `serve` "
                          "inside NVIDIA's Triton TensorRT-LLM container, or package --runtime cpu (one process).")
    prefixes = [default_shm_prefix(grpc_port)] if world_size == 1 else [leader_shm_prefix(grpc_port)]
    with open(log_path, "ab" if append_log else "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(dist),
                                   start_new_session=True, cwd=str(repo.resolve().parent),
                                   preexec_fn=_die_with_parent(os.getpid()) if die_with_parent else None)
    server = TritonServer(process, grpc_port=grpc_port, http_port=http_port, host=host, log_path=log_path,
                          shm_prefixes=prefixes, metrics_port=metrics_port)
    if wait:
        server.wait_ready(timeout=timeout, cancelled=cancelled)
    return server
