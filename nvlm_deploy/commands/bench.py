"""`nvlm-deploy bench`: the benchmark suite (same as `python -m benchmarks` in a checkout)."""

from __future__ import annotations

import argparse

HELP = "run the benchmark suite: every benchmarks/*.py beside its baseline -> RESULTS.md, JSON, plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nvlm_deploy.bench.cli import add_arguments as suite_arguments

    suite_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.bench.cli import run as run_suite

    return run_suite(args)
