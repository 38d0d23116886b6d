"""The demo NVLM-D as a served CPU deployment, for benchmarks that need a real tritonserver.

Converted once per work directory (fp32 ONNX vision encoder + TensorRT-LLM checkpoint of the bundled
`nvlm_deploy/demo/nvlm-d-demo`), then packaged per configuration, so benchmarks compare
configurations of the same artifacts side by side in one run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

DEMO_IMAGE = Path(__file__).resolve().parents[1] / "demo" / "samples" / "striped_wide.png"  # 2-3 tiles + thumbnail
DEMO_QUESTION = "Which side has the striped square?"


def demo_target(workdir: Path, *, log=print) -> Path:
    """workdir/demo-cpu with onnx/ and trtllm_checkpoint/ (fp32), reused when already there."""
    from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx
    from nvlm_deploy.demo.ask import SHIPPED_MODEL

    target = Path(workdir) / "demo-cpu"
    if not (target / "onnx" / "manifest.json").is_file():
        log("converting the demo vision encoder to ONNX ...")
        export_vision_onnx(SHIPPED_MODEL, target, dtype="fp32", force=True)
    if not (target / "trtllm_checkpoint" / "manifest.json").is_file():
        log("converting the demo decoder ...")
        convert_llm_checkpoint(SHIPPED_MODEL, target, dtype="fp32", force=True)
    return target


def package_demo(workdir: Path, name: str, **options) -> Path:
    """A CPU repository workdir/repos/<name> of the demo target with PackageOptions(**options)."""
    from nvlm_deploy.serve.package import PackageOptions, package_repository

    target = demo_target(workdir)
    return package_repository(target, Path(workdir) / "repos" / name, runtime="cpu", options=PackageOptions(**options),
                              force=True, log=lambda line: None)


@contextlib.contextmanager
def served(repo: Path, *, metrics: bool = False) -> Iterator[object]:
    """tritonserver on `repo` (free ports; metrics endpoint when asked), stopped on exit."""
    from nvlm_deploy.serve.server import free_port, start_server

    server = start_server(repo, timeout=600, metrics_port=free_port() if metrics else None)
    try:
        yield server
    finally:
        server.stop()


def scrape_metrics(port: int, prefix: str = "nvlm_") -> dict[str, float]:
    """Prometheus samples starting with `prefix` from the server's metrics endpoint, name -> value
    (label sets summed)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name = line.split("{")[0].split(" ")[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out
