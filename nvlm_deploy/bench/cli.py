"""Arguments and entry of the suite, shared by `python -m benchmarks` and `nvlm-deploy bench`."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from nvlm_deploy.errors import DeployError


def checkout_benchmarks() -> Path | None:
    """The checkout's benchmarks/ directory (next to the nvlm_deploy package), if there is one."""
    candidate = Path(__file__).resolve().parents[2] / "benchmarks"
    return candidate if candidate.is_dir() else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this module (benchmarks/NAME.py); repeatable")
    parser.add_argument("--full", action="store_true",
                        help="run every module without quick=True, heavy ones included (well over 15 minutes)")
    parser.add_argument("--benchmarks", type=Path, default=None,
                        help="the benchmarks/ directory (default: the checkout's)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch directory (default: a new one under the system temp directory)")
    parser.add_argument("--results", type=Path, default=None,
                        help="where <name>.json and plots/ go (default: BENCHMARKS/results; RESULTS.md beside it)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per module before it counts as failed")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: redraw RESULTS.md and the plots from results/suite.json")


def run(args: argparse.Namespace, *, command: str | None = None) -> int:
    from nvlm_deploy.bench.suite import DEFAULT_TIMEOUT_S, run_suite

    bench_dir = args.benchmarks or checkout_benchmarks()
    if bench_dir is None or not Path(bench_dir).is_dir():
        raise DeployError("no benchmarks/ directory: the suite runs from a checkout of nvlm-deploy "
                          "(pass --benchmarks DIR to point at one).")
    bench_dir = Path(bench_dir).resolve()
    if args.render_only:
        from nvlm_deploy.bench.suite import render_again

        render_again(args.results or bench_dir / "results")
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nvlm-bench-"))
    outcomes = run_suite(bench_dir, workdir=Path(workdir), results_dir=args.results or bench_dir / "results",
                         only=args.only, full=args.full, timeout_s=args.timeout or DEFAULT_TIMEOUT_S,
                         command=command or shlex.join(sys.argv))
    failed = [o.name for o in outcomes if o.status in ("failed", "missing") and (not args.only or o.name in args.only)]
    print(f"{len(outcomes)} modules: " + ", ".join(f"{o.name}={o.status}" for o in outcomes))
    # a whole-suite run reports failures in RESULTS.md and succeeds; asking for one module that fails is an error
    return 1 if failed and args.only else 0
