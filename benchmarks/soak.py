"""Soak: 64 concurrent streaming clients against the CPU deployment, in three patterns (issue 14 item 5).

Patterns, each for a fixed time against one tritonserver (the same one, in this order):
  fresh       every request on a fresh gRPC connection (a new NvlmClient per request)
  long-lived  one gRPC stream per client, kept open, requests one after another on it
  bad-every-4 one connection per client, every 4th request bad (an SVG image, max_tokens 0, a NaN
              temperature, top_p 1.5, in turn): the bad ones must be refused, the good ones answered
Every good answer is compared with the PyTorch reference's greedy answer. The server's RSS
(tritonserver + every Python stub, from /proc) is sampled twice a second: start, end and max per
pattern, after a 5 s warm-up. Goal: 0 errors on good requests, every answer right, every bad request refused, and RSS
flat (end within 10 % + 32 MiB of start in every pattern).

    .venv/bin/python benchmarks/soak.py [--quick] [--workdir DIR]    # 60 s per pattern (--quick: 10 s)
"""

from __future__ import annotations

import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CLIENTS = 64
SECONDS = 60.0
QUICK_SECONDS = 10.0
WARMUP_SECONDS = 5.0
MAX_TOKENS = 8
PATTERNS = ("fresh", "long-lived", "bad-every-4")
RSS_GROWTH = (1.10, 32 << 20)  # flat: end <= start * 1.10 + 32 MiB
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'


@dataclass
class Tally:
    good: int = 0
    right: int = 0
    wrong: list = field(default_factory=list)  # (expected, got) of the first few
    errors: list = field(default_factory=list)  # messages of good requests that failed
    bad: int = 0
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, expected: str, got: str) -> None:
        with self.lock:
            self.good += 1
            if got == expected:
                self.right += 1
            elif len(self.wrong) < 5:
                self.wrong.append((expected, got))
            else:
                self.wrong.append(None)

    def failed(self, message: str) -> None:
        with self.lock:
            self.good += 1
            self.errors.append(message[:300])

    def bad_result(self, refused: bool) -> None:
        with self.lock:
            self.bad += 1
            self.refused += refused


def bad_requests():
    from nvlm_deploy.client.tensors import ChatRequest

    return [ChatRequest(prompt="What is it?", images=(SVG,), max_tokens=MAX_TOKENS, stream=True),
            ChatRequest(prompt="Hello", max_tokens=0, stream=True),
            ChatRequest(prompt="Hello", max_tokens=MAX_TOKENS, temperature=math.nan, stream=True),
            ChatRequest(prompt="Hello", max_tokens=MAX_TOKENS, top_p=1.5, stream=True)]


# ---- the three client loops (one thread each) ----

def _fresh(url, work, deadline, tally, index):
    from nvlm_deploy.client import NvlmClient
    from nvlm_deploy.errors import DeployError

    k = index
    while time.monotonic() < deadline[0]:
        request, expected = work[k % len(work)]
        k += 1
        try:
            with NvlmClient(url, timeout=120) as client:
                tally.answered(expected, "".join(client.responses(request)))
        except DeployError as exc:
            tally.failed(str(exc))


def _bad_every_4(url, work, deadline, tally, index):
    from nvlm_deploy.client import NvlmClient, ServerError
    from nvlm_deploy.errors import DeployError

    bad = bad_requests()
    k = index
    with NvlmClient(url, timeout=120) as client:
        while time.monotonic() < deadline[0]:
            k += 1
            if k % 4 == 0:
                try:
                    "".join(client.responses(bad[(k // 4) % len(bad)]))
                    tally.bad_result(refused=False)
                except ServerError:
                    tally.bad_result(refused=True)
                except DeployError as exc:  # the connection, not the request, failed
                    tally.failed(f"(bad request's connection) {exc}")
                continue
            request, expected = work[k % len(work)]
            try:
                tally.answered(expected, "".join(client.responses(request)))
            except DeployError as exc:
                tally.failed(str(exc))


def _long_lived(url, work, deadline, tally, index):
    """One gRPC stream for the client's whole life; one request in flight on it at a time."""
    import tritonclient.grpc as grpcclient

    from nvlm_deploy.client.tensors import DEFAULT_MODEL, chunk, infer_inputs

    client = grpcclient.InferenceServerClient(url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    k = index
    try:
        while time.monotonic() < deadline[0]:
            request, expected = work[k % len(work)]
            k += 1
            client.async_stream_infer(DEFAULT_MODEL, infer_inputs(grpcclient, request), request_id=uuid.uuid4().hex,
                                      enable_empty_final_response=True)
            text = []
            try:
                while True:
                    result, error = results.get(timeout=120)
                    if error is not None:
                        tally.failed(error.message() if hasattr(error, "message") else str(error))
                        break
                    piece = chunk(result)
                    text.append(piece.text)
                    if piece.final:
                        tally.answered(expected, "".join(text))
                        break
            except queue.Empty:
                tally.failed("stream stalled for 120 s")
                return
    finally:
        client.stop_stream()
        client.close()


LOOPS = {"fresh": _fresh, "long-lived": _long_lived, "bad-every-4": _bad_every_4}


# ---- memory ----

def server_rss(server_pid: int) -> int:
    """Bytes resident in tritonserver and its Python stubs."""
    from nvlm_deploy.serve.processes import python_stubs

    total = 0
    for pid in (server_pid, *python_stubs(server_pid)):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def soak_pattern(url: str, server_pid: int, work, *, pattern: str, seconds: float, clients: int = CLIENTS,
                 server=None) -> dict:
    """Run one pattern; returns its row (counts, requests/s, RSS start/end/max in MiB) and RSS samples.

    Args:
        work: [(ChatRequest, expected text)] cycled through by every client.
        server: the TritonServer, watched for a dead stub or server (TritonServer.fault()); on one the
            server is killed, so clients waiting on it fail at once, and the row says what died.
    """
    tally, samples, fault = Tally(), [], None
    deadline = [time.monotonic() + seconds]  # the clients' end; set to now when the server fails
    threads = [threading.Thread(target=LOOPS[pattern], args=(url, work, deadline, tally, i), daemon=True)
               for i in range(clients)]
    t0 = time.monotonic()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        samples.append(server_rss(server_pid))
        if server is not None and fault is None:
            fault = server.fault()
            if fault:
                print(f"FAULT during {pattern}: {fault}", flush=True)
                deadline[0] = 0.0
                server.kill()
        time.sleep(0.5)
    samples.append(server_rss(server_pid))
    wall = time.monotonic() - t0
    mib = [s / 2**20 for s in samples]
    growth, slack = RSS_GROWTH
    row = {"pattern": pattern, "clients": clients, "seconds": round(wall, 1), "good requests": tally.good,
           "answered right": tally.right, "wrong": len(tally.wrong), "errors": len(tally.errors),
           "bad sent": tally.bad, "bad refused": tally.refused, "good req/s": round(tally.good / wall, 2),
           "RSS start MiB": round(mib[0], 1), "RSS end MiB": round(mib[-1], 1), "RSS max MiB": round(max(mib), 1),
           "RSS flat": samples[-1] <= samples[0] * growth + slack, "fault": fault or ""}
    row["ok"] = (not fault and row["errors"] == 0 and row["wrong"] == 0 and tally.good > 0 and tally.refused == tally.bad
                 and row["RSS flat"])
    return {"row": row, "rss_mib": mib, "first_errors": tally.errors[:3], "first_wrong": tally.wrong[:3]}


def warm_up(server, work, seconds: float = WARMUP_SECONDS) -> dict:
    """All clients for a few seconds, not counted: the server's first batches allocate what it keeps
    (batch buffers, ONNX Runtime's arena), which is growth but not a leak."""
    print(f"warm-up: {CLIENTS} clients, {seconds:.0f} s ...", flush=True)
    row = soak_pattern(server.grpc_url, server.pid, work, pattern="fresh", seconds=seconds, server=server)["row"]
    return {**row, "pattern": "warm-up (fresh, not counted)"}


def expected_work(model_dir: Path, limits, prompts) -> list:
    """[(ChatRequest, the reference's greedy text)] for [(prompt, [image bytes])]."""
    from nvlm_deploy.backend.bls import make_decode
    from nvlm_deploy.client.tensors import ChatRequest
    from nvlm_deploy.model.generate import ReferencePipeline

    reference = ReferencePipeline.from_model_dir(model_dir, dtype="fp32", max_tiles=limits.max_tiles_before_thumbnail,
                                                 max_images=limits.max_images)
    decode = make_decode(reference.tokenizer)
    work = []
    for prompt, images in prompts:
        ids = reference.generate_ids(reference.preprocessor.prepare(prompt, list(images)), max_new_tokens=MAX_TOKENS)
        work.append((ChatRequest(prompt=prompt, images=tuple(images), max_tokens=MAX_TOKENS, stream=True),
                     decode(ids)))
    return work


def run(workdir: Path, quick: bool = False) -> dict:
    from nvlm_deploy.bench.deployment import DEMO_IMAGE, DEMO_QUESTION, package_demo, served
    from nvlm_deploy.contracts.manifest import RepositoryManifest, read_manifest
    from nvlm_deploy.contracts.limits import DeploymentLimits
    from nvlm_deploy.demo.ask import SHIPPED_MODEL

    seconds = QUICK_SECONDS if quick else SECONDS
    repo = package_demo(Path(workdir), "soak")
    limits = DeploymentLimits.from_dict(read_manifest(repo, RepositoryManifest).limits)
    work = expected_work(SHIPPED_MODEL, limits, [(DEMO_QUESTION, [DEMO_IMAGE.read_bytes()]),
                                                 ("What color is the shape?", [DEMO_IMAGE.read_bytes()]),
                                                 ("Hello, who are you?", [])])
    rows, samples, notes = [], {}, []
    with served(repo) as server:
        rows.append(warm_up(server, work))
        for pattern in PATTERNS if not rows[0]["fault"] else ():
            print(f"{pattern}: {CLIENTS} clients, {seconds:.0f} s ...", flush=True)
            result = soak_pattern(server.grpc_url, server.pid, work, pattern=pattern, seconds=seconds, server=server)
            rows.append(result["row"])
            samples[f"rss_mib_{pattern}"] = result["rss_mib"]
            if result["first_errors"] or result["first_wrong"]:
                notes.append(f"{pattern}: errors {result['first_errors']}, wrong {result['first_wrong']}")
            if result["row"]["fault"]:
                notes.append(f"during {pattern}: {result['row']['fault']} (the server was stopped there)")
                break
    if rows[0]["fault"]:
        notes.append(f"during the warm-up: {rows[0]['fault']} (the server was stopped there)")
    met = len(rows) == len(PATTERNS) + 1 and all(row["ok"] for row in rows[1:]) and not rows[0]["fault"]
    return {"name": "soak", "title": "Soak: 64 streaming clients, three patterns, CPU deployment (demo model)",
            "goal": "0 errors on good requests, every answer equal to the reference, every bad request refused, "
                    "server RSS flat (end <= 1.10 x start + 32 MiB) in each pattern",
            "met": met, "rows": rows, "samples": samples,
            "notes": "; ".join(notes) or (f"{seconds:.0f} s per pattern, {MAX_TOKENS} tokens per answer; RSS is "
                                          "tritonserver + every Python stub (VmRSS), sampled every 0.5 s")}


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find `benchmarks`
    from benchmarks._serving import script_main

    script_main(run, "soak")
