"""`nvlm-deploy build` (no subcommand): every stage of each target into `<out>/<model>/<target>/`, reusing
what matches.

Per target, in order: remove what an interrupted run left (pipeline.resume); settle the target's limits
(flags over the stored ones) and record the target in its manifest.json (name, recipe, tp/pp, the
registry's GPU, the checkpoint's input hashes); find every stage whose output is missing or out of
date (pipeline.stages; a stage whose input is rebuilt is out of date too) and remove the out-of-date
ones, so no engine built for other limits blocks the rebuild of its sibling; then build them in
order. Engine stages build only with TensorRT(-LLM) on the target's GPU: elsewhere they, and the
repository that needs them, are reported as needing a GPU, with the commands that finish them.
When every stage is done the target manifest records the stage manifests' hashes and the engines'
library versions. Names are all checked before any stage runs; the first error stops the build.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nvlm_deploy.build.detect import gpu_blocker
from nvlm_deploy.build.targets import AUTO, TargetSpec, check_parallelism, gpu_facts, parse_target
from nvlm_deploy.pipeline.stages import (REPOSITORY, STEPS, TargetBuild, gpu_command, manifest_hashes, needs,
                                         stage_changes)
from nvlm_deploy.contracts.target import Target
from nvlm_deploy.errors import DeployError


@dataclass(frozen=True)
class TargetResult:
    build: TargetBuild
    waiting: tuple[str, ...]  # stages left for a machine with the target's GPU
    blocker: str | None  # why this machine cannot build them

    @property
    def done(self) -> bool:
        return not self.waiting


def resolve_targets(names: list[str], llm) -> list[TargetSpec]:
    """Parse every name (`auto`: this machine's GPUs) and check that the decoder splits into it."""
    from nvlm_deploy.build.detect import local_targets

    specs: list[TargetSpec] = []
    for name in names:
        for spec in (local_targets(llm) if name == AUTO else [parse_target(name)]):
            check_parallelism(spec, llm)
            if spec not in specs:
                specs.append(spec)
    return specs


def build_targets(model_dir: str | Path, names: list[str], *, out: str | Path = "engines",
                  limits: dict[str, int | None] | None = None,
                  log: Callable[[str], None] = print) -> list[TargetResult]:
    """Build every stage of each target (or reuse it) into `<out>/<model dir name>/<target>/`.

    Args:
        model_dir: the HF NVLM-D checkpoint.
        names: target names (build.targets), or "auto".
        out: the engines root.
        limits: limit choices applied to every target (None: each target's stored ones, else defaults).
        log: receives one line per stage per target.
    """
    from nvlm_deploy.artifacts import input_hashes
    from nvlm_deploy.config import NvlmConfig

    model_dir = Path(model_dir)
    config = NvlmConfig.from_hf(model_dir)
    specs = resolve_targets(names, config.llm)
    hashes = input_hashes(model_dir)
    root = Path(out) / model_dir.resolve().name
    results = []
    for spec in specs:
        target = Target(root / spec.name)
        wanted = prepare_target(spec, target, config=config, model_dir=model_dir, hashes=hashes, limits=limits or {},
                                log=log)
        results.append(build_target(TargetBuild(spec=spec, target=target, model_dir=model_dir, limits=wanted,
                                                 input_hashes=hashes), log=log))
    return results


def prepare_target(spec: TargetSpec, target: Target, *, config, model_dir: Path, hashes: dict[str, str],
                   limits: dict[str, int | None], log: Callable[[str], None]):
    """Clear an interrupted run's leftovers, store the limits, record the target; returns its limits."""
    from nvlm_deploy.pipeline.resume import remove_interrupted

    for name in remove_interrupted(target.root):
        log(f"[{spec.name}] removed {name} (left by an interrupted run)")
    wanted = target.requested_limits(config, limits)
    target.store_limits(wanted, model_dir=model_dir)
    plan = plan_for(spec, model_dir, wanted)
    if plan:
        log(f"[{spec.name}] plan: " + (f"fits on {spec.world_size} x {spec.gpu} (the smallest layout that fits: "
                                      f"tp {plan['tp']} pp {plan['pp']})" if plan["fits"] else
                                      f"does not fit ({plan['reason'].splitlines()[0]}; see manifest.json)"))
    target.record(target=spec.name, runtime=spec.runtime, recipe=spec.recipe, tp=spec.tp, pp=spec.pp,
                  gpu=gpu_facts(spec), input_hashes=hashes, plan=plan)
    return wanted


def plan_for(spec: TargetSpec, model_dir: Path, limits) -> dict:
    """nvlm_deploy.plan's verdict for the target's GPUs: {"fits": True, **Plan.as_dict()} (the smallest
    layout that fits on tp x pp of them) or {"fits": False, "reason": ...}; {} for the CPU runtime."""
    from nvlm_deploy.plan.planner import plan_deployment

    if spec.gpu is None:
        return {}
    try:
        plan = plan_deployment(model_dir, gpu=spec.gpu, recipe=spec.recipe, gpus=spec.world_size,
                               limits=limits.choices())
    except DeployError as exc:  # an estimate, recorded: the build goes on (engines are the final word)
        return {"fits": False, "reason": str(exc)}
    return {"fits": True, **plan.as_dict()}


def out_of_date(build: TargetBuild) -> dict[str, list[str]]:
    """stage -> why it is (re)built ([]: it is missing), for every stage that is not reused."""
    stale: dict[str, list[str]] = {}
    for stage in build.stages:
        if not build.target.has(stage):
            stale[stage] = []
            continue
        rebuilt = [n for n in needs(stage, build.spec.runtime) if n in stale]
        reasons = [f"{', '.join(rebuilt)} rebuilt"] if rebuilt else stage_changes(build, stage)
        if reasons:
            stale[stage] = reasons
    return stale


def build_target(build: TargetBuild, *, log: Callable[[str], None]) -> TargetResult:
    """Reuse, build or defer (needs a GPU) each stage of one prepared target."""
    spec, target = build.spec, build.target

    def say(text: str) -> None:
        log(f"[{spec.name}] {text}")

    stale = out_of_date(build)
    if stale:  # the record of the last complete build no longer describes the target
        target.record(stages={}, tensorrt=None, tensorrt_llm=None)
    for stage, reasons in stale.items():
        if target.dir(stage).exists():
            shutil.rmtree(target.dir(stage))
            say(f"{stage}: out of date ({'; '.join(reasons) or 'no manifest.json'}); removed")
    blocker = gpu_blocker(spec) if any(STEPS[s].gpu for s in stale) else None
    waiting: list[str] = []
    for stage in build.stages:
        waits = [n for n in needs(stage, spec.runtime) if n in waiting]
        if stage not in stale:
            say(f"{stage}: reused")
        elif (STEPS[stage].gpu and blocker) or waits:
            waiting.append(stage)
            say(f"{stage}: needs a GPU ({blocker if STEPS[stage].gpu else 'waits for ' + ', '.join(waits)})")
        else:
            start = time.perf_counter()
            try:
                STEPS[stage].build(build)
            except DeployError as exc:
                raise DeployError(f"[{spec.name}] {stage}: {exc}") from None
            say(f"{stage}: built in {time.perf_counter() - start:.1f} s")
    if not waiting:
        record_complete(build)
    return TargetResult(build=build, waiting=tuple(waiting), blocker=blocker)


def record_complete(build: TargetBuild) -> None:
    """The stage manifests' hashes (what the repository was packaged from) and the engines' versions."""
    target = build.target
    vision = build.manifest("vision") if build.spec.runtime == "gpu" else None
    llm = build.manifest("llm") if build.spec.runtime == "gpu" else None
    target.record(stages=manifest_hashes(target, build.stages),
                  tensorrt=vision.gpu.get("tensorrt") if vision else None,
                  tensorrt_llm=llm.tensorrt_llm if llm else None)


def summary(result: TargetResult) -> list[str]:
    """What to do next with one target: serve it, or the commands left for its GPU machine."""
    from nvlm_deploy.build.llm_engine import SUPPORTED_TRTLLM

    build = result.build
    name, repo = build.spec.name, build.target.dir(REPOSITORY)
    if result.done:
        where = "" if build.spec.runtime == "cpu" else f" (on {gpu_facts(build.spec)['name']} GPUs)"
        return [f"[{name}] ready: nvlm-deploy serve {repo}{where}"]
    gpu = gpu_facts(build.spec)
    (low_major, low_minor), (high_major, high_minor) = SUPPORTED_TRTLLM
    return [f"[{name}] every CPU stage is done; {', '.join(result.waiting)} remain for a machine with "
            f"{gpu['name']} GPUs (SM {gpu['compute_capability']}), TensorRT 10 and TensorRT-LLM "
            f"{low_major}.{low_minor}-{high_major}.{high_minor}.x ({result.blocker}). There, run:",
            *(f"  {gpu_command(build, stage)}" for stage in result.waiting),
            "  or the same build: " + shlex.join(["nvlm-deploy", "build", "--model", str(build.model_dir), "--target",
                                                  name, "--out", str(build.target.root.parent.parent)])
            + " (it reuses the stages done here)"]
