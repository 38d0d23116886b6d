"""The stages of one target as `nvlm-deploy build` runs them: what each reads, when its output is
reused, how it is (re)built, and the command that builds it by hand.

A stage's output is reused when its manifest exists and matches what it would be built from now:
the HF checkpoint's input hashes, the target's settings (precision, tp, pp; limits for engines and
repository), the output of the stages it reads, its GPU, and the tool versions it recorded (where
the tool is installed here: engines built elsewhere are not judged by this machine's lack of
TensorRT). `changes` returns why not, one phrase each; [] means reuse.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nvlm_deploy.build.targets import TargetSpec
from nvlm_deploy.contracts.limits import CHOICE_FIELDS, DeploymentLimits
from nvlm_deploy.contracts.manifest import MANIFEST, read_manifest
from nvlm_deploy.contracts.target import STAGES, Target
from nvlm_deploy.errors import DeployError

REPOSITORY = "model_repository"


@dataclass(frozen=True)
class TargetBuild:
    """What one target's stages are built from."""

    spec: TargetSpec
    target: Target
    model_dir: Path
    limits: DeploymentLimits
    input_hashes: dict[str, str]  # the HF checkpoint's (artifacts.input_hashes)

    @property
    def stages(self) -> tuple[str, ...]:
        """The runtime's stages in build order, the repository last."""
        return (*runtime_stages(self.spec.runtime), REPOSITORY)

    def manifest(self, stage: str):
        """The stage's manifest as written, without the target-level checks of Target.manifest; a stage whose
        files no longer match its manifest (sizes) is unusable, so it is rebuilt rather than reused."""
        from nvlm_deploy.contracts.manifest import verify_manifest_files

        manifest = read_manifest(self.target.dir(stage), STAGES[stage].manifest, writer=STAGES[stage].command)
        verify_manifest_files(self.target.dir(stage), manifest, writer=STAGES[stage].command)
        return manifest


@dataclass(frozen=True)
class StageStep:
    changes: Callable[[TargetBuild], list[str]]  # why the existing output cannot be reused
    build: Callable[[TargetBuild], object]  # (re)build it, replacing what is there
    gpu: bool = False  # builds only with TensorRT(-LLM) on the target's GPU


def runtime_stages(runtime: str) -> tuple[str, ...]:
    from nvlm_deploy.serve.package import RUNTIMES

    return RUNTIMES[runtime].stages


def needs(stage: str, runtime: str) -> tuple[str, ...]:
    """The stages whose output `stage` reads."""
    return {"vision": ("onnx",), "llm": ("trtllm_checkpoint",), REPOSITORY: runtime_stages(runtime)}.get(stage, ())


def stage_changes(build: TargetBuild, stage: str) -> list[str]:
    """Why `stage`'s existing output cannot be reused (an unreadable manifest is one reason)."""
    try:
        return STEPS[stage].changes(build)
    except DeployError as exc:
        return [f"its manifest is unusable ({exc})"]


# ---- comparisons, one phrase per difference ----

def differs(what: str, built, wanted) -> list[str]:
    return [] if built == wanted else [f"{what} {built} -> {wanted}"]


def hash_changes(built: dict[str, str], wanted: dict[str, str], *, of: str = "the checkpoint's") -> list[str]:
    changed = sorted(name for name in set(built) | set(wanted) if built.get(name) != wanted.get(name))
    return [f"{of} {', '.join(changed)} changed"] if changed else []


def limit_changes(built: dict, wanted: DeploymentLimits) -> list[str]:
    if built == wanted.as_dict():
        return []
    changed = [f"{n} {built.get(n)} -> {getattr(wanted, n)}" for n in CHOICE_FIELDS
               if built.get(n) != getattr(wanted, n)]
    return [f"limits {', '.join(changed) or 'changed'}"]


def tool_changes(recorded: dict[str, str]) -> list[str]:
    """Recorded tool versions (public part: torch 2.13.0+cu128 is 2.13.0) that differ from the installed ones."""
    from nvlm_deploy.contracts.manifest import tool_versions

    def public(version: str) -> str:
        return version.split("+")[0]

    base = tool_versions()  # python, nvlm-deploy
    here = {**tool_versions(*(name for name in recorded if name not in base)), **base}
    return [f"{name} {version} -> {here[name]}" for name, version in recorded.items()
            if public(here[name]) != public(version)]


def engine_changes(build: TargetBuild, stage: str, manifest) -> list[str]:
    """The engine's GPU against the target's; its TensorRT (and TensorRT-LLM) against the installed ones, where
    installed: engines built elsewhere are not judged by this machine's lack of TensorRT."""
    from nvlm_deploy.build.gpu import describe_local_gpu
    from nvlm_deploy.serve.launch import runs_on

    here = describe_local_gpu()
    built = {**manifest.gpu, "hardware_compat": getattr(manifest, "hardware_compat", "none")}
    versions = [("TensorRT", manifest.gpu.get("tensorrt"), here.tensorrt)]
    if stage == "llm":
        versions.append(("TensorRT-LLM", manifest.tensorrt_llm, here.tensorrt_llm))
    return [*build.target.hardware_mismatches(stage, built, runs_on=runs_on),
            *(change for library, was, now in versions if now for change in differs(library, was, now))]


# ---- the stages ----

def onnx_changes(build: TargetBuild) -> list[str]:
    m = build.manifest("onnx")
    return [*hash_changes(m.input_hashes, build.input_hashes), *differs("precision", m.precision, build.spec.precision),
            *tool_changes(m.tools)]


def checkpoint_changes(build: TargetBuild) -> list[str]:
    m, spec = build.manifest("trtllm_checkpoint"), build.spec
    quantized = (m.quantization or {}).get("recipe")  # None: converted, not quantized
    return [*hash_changes(m.input_hashes, build.input_hashes), *differs("precision", m.precision, spec.precision),
            *differs("quantization", quantized or "none", spec.recipe if spec.quantized else "none"),
            *differs("tp", m.tp, spec.tp), *differs("pp", m.pp, spec.pp), *tool_changes(m.tools)]


def vision_changes(build: TargetBuild) -> list[str]:
    from nvlm_deploy.build.vision_engine import tile_profile

    m, onnx = build.manifest("vision"), build.manifest("onnx")
    profile = asdict(tile_profile(build.limits, requests_per_call=m.requests_per_call))
    return [*([] if m.onnx_created == onnx.created else ["onnx/ was exported again since"]),
            *differs("precision", m.precision, onnx.precision), *differs("tile profile", m.profile, profile),
            *engine_changes(build, "vision", m)]


def llm_changes(build: TargetBuild) -> list[str]:
    from nvlm_deploy.artifacts import input_hashes

    m = build.manifest("llm")
    checkpoint = input_hashes(build.target.dir("trtllm_checkpoint"))
    return [*hash_changes(m.input_hashes, checkpoint, of="trtllm_checkpoint/'s"),
            *limit_changes(m.limits, build.limits), *engine_changes(build, "llm", m)]


def repository_changes(build: TargetBuild) -> list[str]:
    """Settings, and the stage outputs it was packaged from: those the last complete build recorded."""
    m = build.manifest(REPOSITORY)
    recorded = build.target.target_manifest().stages
    outputs = [] if recorded == manifest_hashes(build.target, build.stages) else \
        ["not recorded as packaged by `nvlm-deploy build` from the stage outputs here"]
    return [*differs("runtime", m.runtime, build.spec.runtime), *limit_changes(m.limits, build.limits),
            *differs("world size", m.world_size, build.spec.world_size), *outputs]


def manifest_hashes(target: Target, stages: tuple[str, ...]) -> dict[str, str]:
    """stage -> sha256 of its manifest.json (what TargetManifest.stages records)."""
    from nvlm_deploy.artifacts import file_sha256

    return {stage: file_sha256(target.dir(stage) / MANIFEST) for stage in stages if target.has(stage)}


def _export(build: TargetBuild):
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx

    return export_vision_onnx(build.model_dir, build.target.root, dtype=build.spec.precision, force=True)


def _convert(build: TargetBuild):
    """`convert llm`, or for a quantized recipe `quantize` (calibrated on the demo task set)."""
    from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint

    if build.spec.quantized:
        from nvlm_deploy.build.targets import quantize_options
        from nvlm_deploy.quant.quantize import quantize_checkpoint

        return quantize_checkpoint(build.model_dir, build.target.root, quantize_options(build.spec), force=True)
    return convert_llm_checkpoint(build.model_dir, build.target.root, tp=build.spec.tp, pp=build.spec.pp,
                                  dtype=build.spec.precision, force=True)


def _vision_engine(build: TargetBuild):
    from nvlm_deploy.build.vision_engine import build_vision_engine

    return build_vision_engine(build.target.root, build.target.root, force=True)


def _llm_engine(build: TargetBuild):
    from nvlm_deploy.build.llm_engine import build_llm_engine

    return build_llm_engine(build.target.root, build.target.root, force=True)


def _package(build: TargetBuild):
    from nvlm_deploy.serve.package import package_repository

    return package_repository(build.target.root, build.target.dir(REPOSITORY), runtime=build.spec.runtime,
                              model_dir=build.model_dir, force=True, log=lambda line: None)


STEPS: dict[str, StageStep] = {
    "onnx": StageStep(onnx_changes, _export),
    "trtllm_checkpoint": StageStep(checkpoint_changes, _convert),
    "vision": StageStep(vision_changes, _vision_engine, gpu=True),
    "llm": StageStep(llm_changes, _llm_engine, gpu=True),
    REPOSITORY: StageStep(repository_changes, _package),
}


def gpu_command(build: TargetBuild, stage: str) -> str:
    """The command that does `stage` by hand on the GPU machine (limits: the target's, stored)."""
    root = str(build.target.root)
    words = {
        "vision": ["nvlm-deploy", "build", "vision", "--onnx", root, "--out", root],
        "llm": ["nvlm-deploy", "build", "llm", "--checkpoint", root, "--out", root],
        REPOSITORY: ["nvlm-deploy", "package", "--engines", root, "--runtime", build.spec.runtime, "--model",
                     str(build.model_dir), "--out", str(build.target.dir(REPOSITORY))],
    }[stage]
    return shlex.join(words)
