"""Run every benchmark module, each in a fresh Python process, and collect their results.

Why a fresh process per module: peak-memory figures (`ru_maxrss`) and thread pools must not leak
from one measurement into the next, and a module that crashes or hangs must not take the suite with
it. A module that is missing, raises, times out or returns something that is not a result is
recorded as failed with its error; the suite always finishes and always writes its report.

Module interface (shared rules, "Performance"): `benchmarks/<name>.py` with
`run(workdir: Path, quick: bool = False) -> dict` returning name, title, goal, met, rows, samples, notes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The measurements issue 12 asks for, in report order; a module of these that does not exist yet is
# reported as missing. Other modules found in the directory run after them.
EXPECTED = ("preprocess", "serving_overhead", "inflight_batching", "throughput", "embedding_cache",
            "vision_batching", "llm_convert_speed", "llm_convert_memory", "quantize_memory", "soak")

# Modules left out of a default run (the reason is printed and reported); `--only NAME` or `--full` runs them.
HEAVY = {"vision_export_6b": "peaks near 11 GiB RAM and takes several minutes per dtype"}

RESULT_KEYS = ("name", "title", "goal", "met", "rows")
DEFAULT_TIMEOUT_S = 420.0  # one module in quick mode; the whole default suite stays under 15 minutes
CHILD_FLAG = "--child"


@dataclass
class Outcome:
    """One module's run: its result dict (status "ok") or why there is none."""

    name: str
    status: str  # ok | failed | missing | skipped
    wall_s: float = 0.0
    result: dict = field(default_factory=dict)
    error: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "wall_s": round(self.wall_s, 2),
                "error": self.error, "result": self.result}


def discover(bench_dir: Path) -> list[str]:
    """Module names in report order: EXPECTED first (present or not), then the rest alphabetically."""
    found = sorted(p.stem for p in bench_dir.glob("*.py") if not p.stem.startswith("_"))
    return list(EXPECTED) + [name for name in found if name not in EXPECTED]


def validate(result: object, name: str) -> dict:
    """The module's return value if it is a result dict; else ValueError saying what is wrong."""
    if not isinstance(result, dict):
        raise ValueError(f"run() returned {type(result).__name__}, not a dict")
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:
        raise ValueError(f"run() result lacks {missing}")
    if not isinstance(result["rows"], list) or not all(isinstance(r, dict) for r in result["rows"]):
        raise ValueError("run() result 'rows' must be a list of dicts")
    if result["met"] not in (True, False, None):
        raise ValueError(f"run() result 'met' is {result['met']!r}; expected true, false or null")
    samples = result.get("samples") or {}
    if not isinstance(samples, dict):
        raise ValueError("run() result 'samples' must be a dict of name -> list of numbers")
    return {**result, "name": result.get("name") or name, "samples": samples, "notes": result.get("notes", "")}


def child_main(argv: Sequence[str]) -> int:
    """In the fresh process: import `benchmarks.<name>` from the directory's parent, run it, write JSON."""
    bench_dir, name, workdir, quick, out = Path(argv[0]), argv[1], Path(argv[2]), argv[3] == "1", Path(argv[4])
    sys.path.insert(0, str(bench_dir.parent))
    import importlib

    package = bench_dir.name
    module = importlib.import_module(f"{package}.{name}")
    if not callable(getattr(module, "run", None)):
        raise SystemExit(f"{package}/{name}.py has no run(workdir, quick=False) function "
                         "(the benchmark interface in the shared rules)")
    workdir.mkdir(parents=True, exist_ok=True)
    result = validate(module.run(workdir, quick=quick), name)
    out.write_text(json.dumps(result, indent=2, default=_jsonable), encoding="utf-8")
    return 0


def _jsonable(value):
    """numpy scalars and paths in results become plain JSON."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def run_module(bench_dir: Path, name: str, *, workdir: Path, quick: bool, timeout_s: float,
               python: str = sys.executable) -> Outcome:
    """Run one module in a fresh interpreter; never raises for the module's own failures."""
    if not (bench_dir / f"{name}.py").is_file():
        return Outcome(name, "missing", error=f"{bench_dir.name}/{name}.py does not exist (not written yet)")
    out = workdir / f"{name}.result.json"
    out.unlink(missing_ok=True)
    cmd = [python, "-m", "nvlm_deploy.bench.suite", CHILD_FLAG, str(bench_dir), name, str(workdir / name),
           "1" if quick else "0", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(bench_dir.parent), env.get("PYTHONPATH", "")]))
    start = time.monotonic()
    log = workdir / f"{name}.log"
    try:
        with open(log, "wb") as sink:
            proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout_s, env=env,
                                  cwd=str(bench_dir.parent), start_new_session=True)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        return Outcome(name, "failed", time.monotonic() - start,
                       error=f"timed out after {timeout_s:.0f} s (log: {log})\n" + _tail(log))
    wall = time.monotonic() - start
    if code != 0 or not out.is_file():
        return Outcome(name, "failed", wall, error=f"exit status {code} (log: {log})\n" + _tail(log))
    return Outcome(name, "ok", wall, result=json.loads(out.read_text(encoding="utf-8")))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_suite(bench_dir: Path, *, workdir: Path, results_dir: Path, only: Sequence[str] = (), full: bool = False,
              timeout_s: float = DEFAULT_TIMEOUT_S, command: str = "", log: Callable[[str], None] = print,
              python: str = sys.executable) -> list[Outcome]:
    """Run the modules (all, or `only`), write results_dir/<name>.json, RESULTS.md and plots; return outcomes.

    Args:
        bench_dir: the benchmarks/ directory (its parent goes on the children's import path).
        workdir: scratch space; each module gets workdir/<name>/.
        results_dir: where <name>.json, suite.json and plots/*.png go; RESULTS.md goes next to it.
        only: module names to run (default: every module, heavy ones left out unless `full`).
        full: quick=False for every module and heavy modules included.
    """
    from nvlm_deploy.bench.machine import describe_machine
    from nvlm_deploy.bench.plots import write_plots
    from nvlm_deploy.bench.report import write_report

    names = list(only) or discover(bench_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    outcomes, started = [], time.time()
    for k, name in enumerate(names, 1):
        if name in HEAVY and not (full or only):
            outcomes.append(Outcome(name, "skipped", error=f"left out of the default run: {HEAVY[name]} "
                                                           f"(run it with --only {name} or --full)"))
            log(f"[{k}/{len(names)}] {name}: skipped ({HEAVY[name]})")
            continue
        log(f"[{k}/{len(names)}] {name}: running{' (quick)' if not full else ''} ...")
        outcome = run_module(bench_dir, name, workdir=workdir, quick=not full, timeout_s=timeout_s, python=python)
        outcomes.append(outcome)
        verdict = outcome.status if outcome.status != "ok" else f"met={outcome.result.get('met')}"
        log(f"[{k}/{len(names)}] {name}: {verdict} in {outcome.wall_s:.1f} s"
            + (f"\n    {outcome.error.splitlines()[0]}" if outcome.error else ""))
        if outcome.status == "ok":
            (results_dir / f"{name}.json").write_text(json.dumps(outcome.result, indent=2), encoding="utf-8")
    machine = describe_machine()
    meta = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
            "wall_s": round(time.time() - started, 1), "quick": not full, "machine": machine}
    if only:  # a partial run updates those modules in the last full report instead of replacing it
        outcomes, meta = _merge_previous(results_dir / "suite.json", outcomes, meta)
    try:
        plots = write_plots(outcomes, results_dir / "plots")
    except Exception:  # a plotting problem must not cost the numbers
        plots = {}
        log("plots failed:\n" + traceback.format_exc())
    (results_dir / "suite.json").write_text(json.dumps({**meta, "outcomes": [o.as_dict() for o in outcomes]},
                                                       indent=2), encoding="utf-8")
    write_report(outcomes, meta, plots, results_dir.parent / "RESULTS.md", results_dir=results_dir)
    log(f"wrote {results_dir.parent / 'RESULTS.md'} ({meta['wall_s']} s)")
    return outcomes


def _merge_previous(saved: Path, outcomes: list[Outcome], meta: dict) -> tuple[list[Outcome], dict]:
    """The previous suite.json's outcomes with those just run replaced (others keep their earlier numbers)."""
    if not saved.is_file():
        return outcomes, meta
    data = json.loads(saved.read_text(encoding="utf-8"))
    fresh = {o.name: o for o in outcomes}
    merged = [fresh.pop(o["name"], None) or Outcome(o["name"], o["status"], o["wall_s"], o["result"], o["error"])
              for o in data.get("outcomes", [])]
    merged += list(fresh.values())
    base = data.get("base") or {"started": data.get("started", "?"), "command": data.get("command", "")}
    note = f"{meta['command']} (re-ran {', '.join(o.name for o in outcomes)}; the other modules from the run of " \
           f"{base['started']}: {base['command']})"
    return merged, {**meta, "command": note, "base": base}


def render_again(results_dir: Path, *, log: Callable[[str], None] = print) -> Path:
    """RESULTS.md and plots again from results_dir/suite.json (after a change to the report or the plots;
    nothing is measured)."""
    from nvlm_deploy.bench.plots import write_plots
    from nvlm_deploy.bench.report import write_report
    from nvlm_deploy.errors import DeployError

    saved = results_dir / "suite.json"
    if not saved.is_file():
        raise DeployError(f"{saved} does not exist: run the suite first (python -m benchmarks).")
    data = json.loads(saved.read_text(encoding="utf-8"))
    outcomes = [Outcome(o["name"], o["status"], o["wall_s"], o["result"], o["error"]) for o in data.pop("outcomes")]
    plots = write_plots(outcomes, results_dir / "plots")
    out = write_report(outcomes, data, plots, results_dir.parent / "RESULTS.md", results_dir=results_dir)
    log(f"wrote {out} from {saved}")
    return out


if __name__ == "__main__":  # the fresh per-module process (run_module)
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        raise SystemExit(child_main(sys.argv[2:]))
    raise SystemExit("use `python -m benchmarks` or `nvlm-deploy bench`")
