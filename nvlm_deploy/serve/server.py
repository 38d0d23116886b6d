"""Start and stop `tritonserver`: the system one (NVIDIA's container) or the nvidia-pytriton wheel's.

The wheel's server needs a workspace copy of its backends with the Python stub next to
`libtriton_python.so`, `LD_LIBRARY_PATH` pointing at `nvidia_pytriton.libs` (the copied libraries'
RPATH no longer resolves) and the venv's `bin` first on PATH so Python models import this venv's
packages (shared/reference/toolchain.md §6). The workspace is never named `triton`: a folder of
that name on sys.path shadows OpenAI Triton and breaks torch dynamo.
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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_args(dist: TritonDist, repo: str | Path, *, grpc_port: int, http_port: int,
                host: str = "127.0.0.1", log_verbose: int = 0) -> list[str]:
    """tritonserver arguments shared by every rank (no binary, no per-process shm prefix)."""
    args = ["--model-repository", str(Path(repo).resolve()),
            "--grpc-address", host, "--grpc-port", str(grpc_port),
            "--http-address", host, "--http-port", str(http_port),
            "--allow-metrics", "false", "--allow-sagemaker", "false", "--allow-vertex-ai", "false",
            "--disable-auto-complete-config", "--log-verbose", str(log_verbose)]
    if dist.backend_dir:
        args += ["--backend-directory", str(dist.backend_dir)]
    if dist.cache_dir:
        args += ["--cache-directory", str(dist.cache_dir)]
    return args


def server_command(dist: TritonDist, repo: str | Path, *, grpc_port: int, http_port: int,
                   host: str = "127.0.0.1", shm_prefix: str | None = None, log_verbose: int = 0) -> list[str]:
    """The tritonserver command line for one server process.

    Args:
        dist: from find_tritonserver().
        repo: the model repository.
        grpc_port, http_port: ports on `host`.
        host: address to bind (127.0.0.1 unless told otherwise).
        shm_prefix: Python-backend shared-memory prefix; unique per server on one machine.
    """
    prefix = shm_prefix or f"nvlmd{os.getpid()}_{grpc_port}_"
    return [str(dist.binary), *server_args(dist, repo, grpc_port=grpc_port, http_port=http_port, host=host,
                                           log_verbose=log_verbose),
            "--backend-config", f"python,shm-region-prefix-name={prefix}"]


def launch_command(repo: str | Path, *, grpc_port: int, http_port: int, host: str = "127.0.0.1",
                   world_size: int = 1, dist: TritonDist | None = None) -> list[str]:
    """One tritonserver, or for world_size > 1 the mpirun leader-mode line (one rank per GPU)."""
    dist = dist or find_tritonserver()
    if world_size == 1:
        return server_command(dist, repo, grpc_port=grpc_port, http_port=http_port, host=host)
    from nvlm_deploy.serve.launch import leader_mode_command

    return leader_mode_command(server_args(dist, repo, grpc_port=grpc_port, http_port=http_port, host=host),
                               world_size=world_size, binary=str(dist.binary), shm_prefix=f"nvlmd{grpc_port}r")


def server_env(dist: TritonDist) -> dict[str, str]:
    """Environment for tritonserver: this venv's bin first on PATH (Python models find our packages)."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, str(Path(sys.exec_prefix) / "bin"), env.get("PATH", "")])
    env.setdefault("PYTHONUTF8", "1")  # the stub's Python otherwise reads files as ASCII under a C locale
    env.update(dist.env)
    return env


class TritonServer:
    """A running tritonserver started by us; stop() ends it by PID."""

    def __init__(self, process: subprocess.Popen, *, grpc_port: int, http_port: int, host: str, log_path: Path):
        self.process = process
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.host = host
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, *, timeout: float = 300.0) -> None:
        """Poll /v2/health/ready until the server and all its models are ready."""
        url = f"http://{self.host}:{self.http_port}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DeployError(f"tritonserver exited with code {self.process.returncode} before it was ready; "
                                  f"its log ({self.log_path}) ends with:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise DeployError(f"tritonserver was not ready after {timeout:.0f}s; its log ({self.log_path}) ends with:\n"
                          f"{self.log_tail()}")

    def stop(self, *, timeout: float = 30.0) -> int | None:
        """SIGTERM the server (it stops its Python stubs), SIGKILL after `timeout`; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def start_server(repo: str | Path, *, grpc_port: int | None = None, http_port: int | None = None,
                 host: str = "127.0.0.1", log_path: str | Path | None = None, wait: bool = True,
                 timeout: float = 300.0, dist: TritonDist | None = None, world_size: int = 1) -> TritonServer:
    """Start tritonserver on `repo` bound to `host`; by default wait until it is ready.

    Args:
        repo: a model repository written by `nvlm-deploy package`.
        grpc_port, http_port: None picks free ports.
        host: bind address; 127.0.0.1 unless the user asks for more.
        log_path: server log file (default <repo>/../<repo name>.tritonserver.log).
        wait: block until /v2/health/ready answers 200.
        world_size: ranks of the engines; above 1 the server runs under mpirun (leader mode).
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise DeployError(f"{repo} is not a directory: pass a model repository written by `nvlm-deploy package`.")
    dist = dist or find_tritonserver()
    grpc_port = grpc_port or free_port(host)
    http_port = http_port or free_port(host)
    log_path = Path(log_path or repo.resolve().parent / f"{repo.resolve().name}.tritonserver-{grpc_port}.log")
    cmd = launch_command(repo, grpc_port=grpc_port, http_port=http_port, host=host, world_size=world_size, dist=dist)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(dist),
                                   start_new_session=True, cwd=str(repo.resolve().parent))
    server = TritonServer(process, grpc_port=grpc_port, http_port=http_port, host=host, log_path=log_path)
    if wait:
        server.wait_ready(timeout=timeout)
    return server
