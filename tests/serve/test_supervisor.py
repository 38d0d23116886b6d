"""Process-level faults against `nvlm-deploy serve` run as a user runs it, on tp 2 / tp 4 CPU repositories.

A SIGKILLed Python stub (mid-stream or idle) -> the in-flight client gets an error within 10 s, serve
reports it and restarts the server, the next request is answered right; the ready endpoints stop
answering 200 meanwhile; SIGTERM stops everything and leaves no shared memory; SIGKILL of serve
takes tritonserver down. The CPU runtime serves tp 2 and tp 4 checkpoints in one process (no MPI),
token for token equal to the tp 1 reference.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time

import pytest

from nvlm_deploy.backend.bls import make_decode
from nvlm_deploy.errors import DeployError
from nvlm_deploy.serve.processes import SHM_DIR, live_group_members
from tests.serve.serve_cli import ServeCommand

PROMPT = "Hello there"
# the model whose stub decodes in a CPU repository: the BLS (package --bls-decoder local, the default)
DECODING_MODEL = "tensorrt_llm_bls"
# issue 14's bound for the in-flight client's error; not a performance figure: the failure it guards
# against is a stream that hangs for minutes (measured here: 0.4 s)
ERROR_WITHIN_S = 10.0


def answer(serve: ServeCommand, prompt: str = PROMPT, images=(), max_tokens: int = 16) -> str:
    from nvlm_deploy.client import NvlmClient

    with NvlmClient(serve.grpc_url, timeout=120) as client:
        return client.chat(prompt, list(images), max_tokens=max_tokens)


def expected(reference, prompt: str = PROMPT, images=(), max_tokens: int = 16) -> str:
    ids = reference.generate_ids(reference.preprocessor.prepare(prompt, list(images)), max_new_tokens=max_tokens)
    return make_decode(reference.tokenizer)(ids)


def kill_stub_mid_stream(serve: ServeCommand, model: str) -> tuple[DeployError, float]:
    """Stream a long answer; at its first chunk freeze `model`'s stub (SIGSTOP), then SIGKILL it while the
    answer is unfinished. Returns the client's error and the seconds from the kill to that error."""
    from nvlm_deploy.client import NvlmClient

    for _ in range(5):
        events: queue.Queue = queue.Queue()

        def consume():
            try:
                with NvlmClient(serve.grpc_url, timeout=60) as client:
                    for _ in client.stream(PROMPT, max_tokens=64):
                        events.put(("chunk", time.monotonic()))
                events.put(("done", time.monotonic()))
            except DeployError as exc:
                events.put((exc, time.monotonic()))

        threading.Thread(target=consume, daemon=True).start()
        stub = serve.stub_pid(model)
        assert events.get(timeout=120)[0] == "chunk"
        os.kill(stub, signal.SIGSTOP)
        time.sleep(0.3)
        seen = [events.get_nowait()[0] for _ in range(events.qsize())]
        if "done" in seen:  # finished before the freeze: try again
            os.kill(stub, signal.SIGCONT)
            continue
        os.kill(stub, signal.SIGKILL)
        killed = time.monotonic()
        while True:
            what, when = events.get(timeout=60)
            if what != "chunk":
                break
        assert what != "done", "the stream finished although its decoder stub was killed"
        return what, when - killed
    pytest.fail("every stream finished before its stub could be frozen")


def wait_not_ready(serve: ServeCommand, path: str, *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while serve.status(path) == 200:
        assert time.monotonic() < deadline, f"{path} kept answering 200 for {timeout} s after a stub died"
        time.sleep(0.05)


@pytest.mark.server
@pytest.mark.slow
def test_killed_stubs_are_recovered_and_serve_stops_clean(cpu_repo_tp, reference, tmp_path):
    serve = ServeCommand(cpu_repo_tp[2], log_path=tmp_path / "server.log")
    try:
        serve.wait_for("ready:")
        want = expected(reference)
        assert answer(serve) == want  # tp 2 in one process, equal to the tp 1 reference
        tritonserver = serve.tritonserver_pid()
        from nvlm_deploy.client import NvlmClient

        kept = NvlmClient(serve.grpc_url, timeout=120)  # its stream stays open across the restart below
        assert kept.chat(PROMPT, max_tokens=16) == want and kept.stream_open

        # 1. the decoder's stub killed mid-stream: on CPU the BLS decodes in its own process (contracts.bls_decoder)
        error, seconds = kill_stub_mid_stream(serve, DECODING_MODEL)
        print(f"in-flight client's error {seconds:.2f} s after the kill: {error}")
        assert seconds < ERROR_WITHIN_S, f"the in-flight client waited {seconds:.1f} s for its error"
        assert "went away" in str(error) or "not healthy" in str(error), error
        wait_not_ready(serve, f"/v2/models/{DECODING_MODEL}/ready")
        serve.wait_for("restarted:", timeout=120)
        # the stub's death is reported as such; or, now and then under load, tritonserver 2.51's python backend
        # aborts on it (a C++ exception in libtriton_python.so; 2 of 17 runs on 2026-12-01 when the tensorrt_llm
        # stub was killed under a BLS calling it): reported and restarted the same way
        assert (f"FAULT: the Python stub of model {DECODING_MODEL}" in serve.output
                or "exited with signal SIGABRT" in serve.output), serve.output
        assert answer(serve) == want
        assert kept.chat(PROMPT, max_tokens=16) == want  # its old stream died with the server: a new one, no error
        kept.close()
        assert serve.tritonserver_pid() != tritonserver

        # 2. an idle stub killed
        os.kill(serve.stub_pid("preprocessing"), signal.SIGKILL)
        wait_not_ready(serve, "/v2/health/ready")
        serve.wait_for("restarted:", count=2, timeout=120)
        assert answer(serve) == want

        # 3. tritonserver itself dies: reported with its exit and its log's last lines, then restarted
        os.kill(serve.tritonserver_pid(), signal.SIGKILL)
        serve.wait_for("restarted:", count=3, timeout=120)
        assert "exited with signal SIGKILL; its log" in serve.output
        assert answer(serve) == want

        # 4. SIGTERM: clean exit, every process gone, no shared memory left
        last = serve.tritonserver_pid()
        prefix = f"nvlmd{serve.process.pid}_{serve.grpc_port}_"
        assert list(SHM_DIR.glob(f"{prefix}*")), "the running server has no shared memory under the expected prefix"
        assert serve.stop(signal.SIGTERM) == 0, serve.output
        assert "stopped (exit 0)" in serve.output
        assert not live_group_members(last)
        assert not list(SHM_DIR.glob(f"{prefix}*"))
    finally:
        serve.stop(signal.SIGKILL)


@pytest.mark.server
@pytest.mark.slow
def test_sigkill_of_serve_takes_tritonserver_down(cpu_repo_tp, reference, images, tmp_path):
    serve = ServeCommand(cpu_repo_tp[4], log_path=tmp_path / "server.log")
    try:
        serve.wait_for("ready:")
        assert answer(serve, "What is in the picture?", images[:1]) == expected(reference, "What is in the picture?",
                                                                               images[:1])
        tritonserver = serve.tritonserver_pid()
        serve.stop(signal.SIGKILL)
        deadline = time.monotonic() + 40  # tritonserver's SIGTERM shutdown: --exit-timeout-secs 10 at most
        while live_group_members(tritonserver):
            assert time.monotonic() < deadline, "tritonserver outlived the SIGKILLed serve"
            time.sleep(0.2)
        assert not list(SHM_DIR.glob(f"nvlmd{serve.process.pid}_{serve.grpc_port}_*"))
    finally:
        serve.stop(signal.SIGKILL)


# ---- the supervisor's decisions, with stand-in servers (no tritonserver) ----

class FakeServer:
    def __init__(self, faults):
        self.faults = list(faults)  # what fault() returns, call by call (then None)
        self.process = type("P", (), {"poll": lambda self: None})()
        self.pid, self.grpc_url, self.host, self.http_port, self.metrics_port = 1, "h:1", "h", 2, None
        self.log_path, self.removed_shm, self.killed, self.stopped = "log", [], False, False

    def fault(self):
        return self.faults.pop(0) if self.faults else None

    def kill(self):
        self.killed = True
        self.removed_shm = ["nvlmd1_2_x"]
        return -9

    def stop(self):
        self.stopped = True
        return 0

    def log_tail(self, lines=40):
        return ""


def supervise(servers, *, max_restarts, stop_after_polls):
    from nvlm_deploy.serve.supervisor import Supervisor

    started, lines, stop, polls = [], [], [], [0]

    def start(**kwargs):
        started.append(kwargs)
        server = servers[len(started) - 1]
        if isinstance(server, Exception):
            raise server
        return server

    supervisor = Supervisor(start, log=lines.append, max_restarts=max_restarts, poll_s=0)
    servers_only = [s for s in servers if not isinstance(s, Exception)]
    for server, fault in zip(servers_only, [s.fault for s in servers_only]):
        def counted(fault=fault):
            polls[0] += 1
            if polls[0] >= stop_after_polls:
                stop.append("SIGTERM")
            return fault()
        server.fault = counted
    return supervisor.run(stop), started, lines


def test_a_fault_restarts_the_server_and_says_so():
    first, second = FakeServer(["the Python stub of model tensorrt_llm (pid 7) died"]), FakeServer([])
    code, started, lines = supervise([first, second], max_restarts=2, stop_after_polls=4)
    assert code == 0 and first.killed and second.stopped and not second.killed
    assert [s["append_log"] for s in started] == [False, True]  # the restart appends to the same log
    text = "\n".join(lines)
    assert "FAULT: the Python stub of model tensorrt_llm (pid 7) died" in text
    assert "removed 1 shared-memory region(s)" in text and "restarted: ready again" in text


def test_gives_up_after_max_restarts_with_exit_1():
    servers = [FakeServer(["tritonserver (pid 1) exited with signal SIGSEGV"]) for _ in range(3)]
    code, started, lines = supervise(servers, max_restarts=1, stop_after_polls=100)
    assert code == 1 and len(started) == 2
    assert "not restarting: 1 restart(s) already (--max-restarts 1)" in "\n".join(lines)


def test_a_failed_restart_is_retried(monkeypatch):
    from nvlm_deploy.errors import DeployError
    from nvlm_deploy.serve import supervisor

    monkeypatch.setattr(supervisor, "RETRY_S", 0)
    first, last = FakeServer(["tritonserver (pid 1) exited with signal SIGKILL"]), FakeServer([])
    code, started, lines = supervise([first, DeployError("tritonserver exited with code 1 before it was ready"), last],
                                     max_restarts=3, stop_after_polls=4)
    assert code == 0 and len(started) == 3 and last.stopped
    text = "\n".join(lines)
    assert "restart failed: tritonserver exited with code 1" in text and "restart 2 of at most 3" in text
