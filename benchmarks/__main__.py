"""`python -m benchmarks [--only NAME] [--full]`: every benchmark module in a fresh process, side by
side with its baseline, then results/*.json, RESULTS.md and plots (nvlm_deploy.bench.suite)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from nvlm_deploy.bench.cli import add_arguments, run
    from nvlm_deploy.errors import DeployError

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.benchmarks = args.benchmarks or Path(__file__).resolve().parent
    try:
        return run(args, command=shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)]))
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
