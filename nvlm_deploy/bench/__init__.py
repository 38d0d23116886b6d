"""Performance tooling: the benchmark suite runner and its report (`suite`, `report`, `plots`, `machine`)
and a gRPC load generator (`loadgen`) usable against any served repository.

The benchmark modules themselves live in the checkout's `benchmarks/` directory (not in the wheel);
each exposes `run(workdir, quick=False) -> dict` (shared rules, "Performance").
"""
