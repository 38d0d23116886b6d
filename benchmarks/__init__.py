"""Benchmark modules (each `run(workdir, quick=False) -> dict`); `python -m benchmarks` runs them all."""
