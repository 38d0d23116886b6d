"""Shared by the benchmark modules: the demo model's CPU target (nvlm_deploy.bench.deployment), a
packaged repository with optional config edits, a tritonserver around a block, and the script-mode
output (`script_main`)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

# small enough to keep requests quick; long enough for a long request next to short ones
LIMITS = dict(max_images=2, max_tiles_before_thumbnail=2, max_input_len=1024, max_output_len=512, max_batch_size=8)
RESULTS = Path(__file__).resolve().parent / "results"
# the demo model's CPU target: one owner (nvlm_deploy.bench.deployment), re-exported for the serving benchmarks
from nvlm_deploy.bench.deployment import demo_target  # noqa: E402,F401


def demo_repository(target: Path, name: str, *, edits: dict[str, list[tuple[str, str]]] | None = None,
                    bls_decoder: str | None = None) -> Path:
    """A CPU repository target/<name>; edits: model -> [(old text, new text)] applied to its config.pbtxt;
    bls_decoder: package --bls-decoder (None: the CPU default, local)."""
    from nvlm_deploy.serve.package import PackageOptions, package_repository

    repo = package_repository(target, target / name, runtime="cpu",
                              options=PackageOptions(limits=LIMITS, bls_decoder=bls_decoder),
                              log=lambda line: None, force=True)
    for model, changes in (edits or {}).items():
        config = repo / model / "config.pbtxt"
        text = config.read_text(encoding="utf-8")
        for old, new in changes:
            if old not in text:
                raise RuntimeError(f"{config} has no {old!r} to replace")
            text = text.replace(old, new)
        config.write_text(text, encoding="utf-8")
    return repo


@contextlib.contextmanager
def serving(repo: Path):
    from nvlm_deploy.serve.server import start_server

    server = start_server(repo, timeout=600)
    try:
        yield server
    finally:
        server.stop()


def script_main(run, name: str) -> None:
    """`python benchmarks/<name>.py [--quick] [--workdir DIR]`: run, print the table, write results/<name>.json."""
    import argparse

    parser = argparse.ArgumentParser(description=run.__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp") / f"nvlm-bench-{name}")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report_result(run(args.workdir, quick=args.quick), name)


def report_result(result: dict, name: str) -> None:
    """Script mode's output: the result's markdown table, goal and notes printed; results/<name>.json written."""
    from nvlm_deploy.bench.report import markdown_table

    print(f"## {result['title']}\n\n{markdown_table(result['rows'])}\n\ngoal: {result['goal']} -> met: {result['met']}\n"
          f"\n{result['notes']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def add_repo_root_to_path() -> None:
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
