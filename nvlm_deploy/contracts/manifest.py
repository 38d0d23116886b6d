"""THE manifests: one frozen dataclass per stage, written as `manifest.json` in the stage's folder.

A stage writes its manifest with `write_manifest` (stage name + `asdict`) and every later stage
reads it back typed with `read_manifest`; nobody indexes a manifest dict by position. A manifest
that is missing, not JSON, of another stage, lacking a field or holding a value of the wrong type
is a DeployError naming the file and the command that writes it.

Every stage manifest (those with a `files` field) records each file of its directory by size and
digest (`artifacts.HASH`, `artifacts.file_records`, filled in by `write_manifest`: the writer never lists them by
hand, so nothing it wrote can be left out); `verify_manifest_files` checks them, sizes always and
hashes on request.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from nvlm_deploy.artifacts import MANIFEST, file_records, verify_files
from nvlm_deploy.errors import DeployError

# relative path -> {"bytes": int, artifacts.HASH: hex}; None: written before file records existed
FileRecords = dict[str, dict[str, Any]]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def tool_versions(*packages: str) -> dict[str, str]:
    out = {"python": platform.python_version(), "nvlm-deploy": _version("nvlm-deploy")}
    out.update({name: _version(name) for name in packages})
    return out


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "nvlm-deploy":
            from nvlm_deploy import __version__

            return __version__
        return "not installed"


@dataclass(frozen=True)
class TargetManifest:
    """The target directory itself: which model, and its one set of limits (DeploymentLimits.as_dict)."""

    STAGE: ClassVar[str] = "target"
    model_dir: str
    limits: dict[str, Any]
    created: str = field(default_factory=now)
    tools: dict[str, str] = field(default_factory=tool_versions)
    # Written by `nvlm-deploy build` (nvlm_deploy.pipeline); the defaults mean "made by the stage commands alone".
    target: str | None = None  # the target's name, e.g. "h100-sxm-bf16-tp2" (build.targets)
    runtime: str | None = None  # "gpu" | "cpu": what serves its repository
    recipe: str | None = None  # plan.recipes key (GPU), or the precision of a CPU target
    tp: int | None = None
    pp: int | None = None
    gpu: dict[str, Any] = field(default_factory=dict)  # the GPU registry's slug, name, compute_capability, memory_bytes
    input_hashes: dict[str, str] = field(default_factory=dict)  # the HF checkpoint's (artifacts.input_hashes)
    tensorrt: str | None = None  # versions the engines were built with, recorded when every stage is done
    tensorrt_llm: str | None = None
    plan: dict[str, Any] = field(default_factory=dict)  # nvlm_deploy.plan's plan for the target, where it offers one
    stages: dict[str, str] = field(default_factory=dict)  # stage -> sha256 of its manifest.json, when all are built


@dataclass(frozen=True)
class OnnxManifest:
    STAGE: ClassVar[str] = "onnx"
    model_dir: str
    input_hashes: dict[str, str]
    precision: str
    image_size: int
    tokens_per_tile: int
    hidden_size: int  # the decoder's: the width of the prompt table
    opset: int
    exporter: str
    compute: str
    onnx_file: str
    external_data_file: str | None
    weight_bytes: int
    nodes: int
    export_seconds: float
    tensorrt_onnx_ops: dict[str, Any]
    check: dict[str, Any]  # onnx_check.CheckReport.as_dict()
    created: str = field(default_factory=now)
    tools: dict[str, str] = field(default_factory=dict)
    files: FileRecords | None = None  # every file of the directory (write_manifest fills it)


@dataclass(frozen=True)
class TrtllmCheckpointManifest:
    STAGE: ClassVar[str] = "trtllm_checkpoint"
    model_dir: str
    input_hashes: dict[str, str]
    precision: str
    tp: int
    pp: int
    world_size: int
    ranks: dict[str, dict[str, Any]]  # "rank{N}" -> tp_rank, pp_rank, layers [start, stop)
    rotary_scaling: dict | None
    rotary_scaling_reason: str
    source_rope_scaling: dict | None
    self_check: list[str]  # tensors merged back and compared with the source
    created: str = field(default_factory=now)
    tools: dict[str, str] = field(default_factory=dict)
    files: FileRecords | None = None  # every file of the directory (write_manifest fills it)
    quantization: dict[str, Any] | None = None  # quant recipe, calibration set, padding (nvlm_deploy.quant)


@dataclass(frozen=True)
class VisionEngineManifest:
    STAGE: ClassVar[str] = "vision"
    onnx_dir: str
    onnx_created: str
    precision: str
    hardware_compat: str  # build.vision_engine.HARDWARE_COMPAT key
    requests_per_call: int
    profile: dict[str, int]  # tiles: min, opt, max
    plan_bytes: int
    gpu: dict[str, Any]  # build.gpu.GpuInfo.as_dict()
    build_seconds: float
    created: str = field(default_factory=now)
    tools: dict[str, str] = field(default_factory=dict)
    files: FileRecords | None = None  # every file of the directory (write_manifest fills it)


@dataclass(frozen=True)
class LlmEngineManifest:
    STAGE: ClassVar[str] = "llm"
    checkpoint_dir: str
    input_hashes: dict[str, str]
    limits: dict[str, Any]  # DeploymentLimits.as_dict() the engine was built for
    precision: str
    tp: int
    pp: int
    world_size: int
    workers: int
    gpu: dict[str, Any]
    tensorrt_llm: str
    command: list[str]
    engine_bytes: dict[str, int]  # "rank{N}.engine" -> bytes
    created: str = field(default_factory=now)
    tools: dict[str, str] = field(default_factory=dict)
    files: FileRecords | None = None  # every file of the directory (write_manifest fills it)


@dataclass(frozen=True)
class RepositoryManifest:
    STAGE: ClassVar[str] = "model_repository"
    runtime: str
    target: str
    model_dir: str
    limits: dict[str, Any]
    world_size: int
    prompt_table_precision: str
    kv_cache: dict[str, Any]  # fraction and how it was computed (gpu)
    engines_gpu: dict[str, dict[str, Any]]  # stage -> GPU and hardware compatibility it was built for
    tensorrt_llm: str | None
    models: list[str]
    # model -> config parameter -> path relative to the repository (absolute in config.pbtxt)
    paths: dict[str, dict[str, str]]
    decoupled: bool = True  # package --decoupled-mode
    created: str = field(default_factory=now)
    tools: dict[str, str] = field(default_factory=dict)
    files: FileRecords | None = None  # every file of the directory (write_manifest fills it)


M = TypeVar("M")


def write_manifest(directory: str | Path, manifest) -> Path:
    """`<directory>/manifest.json` = {"stage": ..., **asdict(manifest)}, written whole or not at all.

    A stage manifest's `files` are (re)computed here from the directory as it is: the manifest is
    written last, so it describes exactly what the stage wrote.
    """
    path = Path(directory) / MANIFEST
    if "files" in {f.name for f in dataclasses.fields(manifest)}:
        manifest = dataclasses.replace(manifest, files=file_records(directory))
    tmp = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"stage": manifest.STAGE, **dataclasses.asdict(manifest)}, indent=2),
                   encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(directory: str | Path, kind: type[M], *, writer: str = "the stage that writes it") -> M:
    """The typed manifest of `directory`; DeployError naming the file and `writer` when it is unusable.

    Args:
        directory: the stage (or target) directory.
        kind: the manifest dataclass expected there.
        writer: the command that writes it, for the message.
    """
    from nvlm_deploy.jsonfile import dataclass_values, read_json_object

    path = Path(directory) / MANIFEST
    fix = f"{directory} is not a finished nvlm-deploy artifact; re-run `{writer}`"
    raw = read_json_object(path, fix=fix)
    if raw.get("stage") != kind.STAGE:
        raise DeployError(f"{path} describes a '{raw.get('stage')}' artifact, not '{kind.STAGE}'; "
                          f"point at the right directory or re-run `{writer}`.")
    return kind(**dataclass_values(kind, raw, path=path, fix=fix))


def verify_manifest_files(directory: str | Path, manifest, *, hashes: bool = False, writer: str,
                          names: list[str] | None = None) -> None:
    """Every file `manifest` records exists in `directory` with its size (and, with `hashes`, its digest);
    one DeployError naming each file that does not, and `writer` to re-run."""
    verify_files(directory, manifest.files, hashes=hashes, names=names,
                 fix=f"the artifact is incomplete or was changed after it was written; re-run `{writer}` "
                     f"with --force to write it again")


def refresh_file_records(directory: str | Path, kind: type, rel_paths: list[str], *, writer: str) -> None:
    """Re-record files that a later step rewrote on purpose (`relocate` rewrites config paths), keeping
    the other records: the manifest keeps describing the directory exactly."""
    from nvlm_deploy.artifacts import record_of

    manifest = read_manifest(directory, kind, writer=writer)
    if manifest.files is None:
        return
    files = dict(manifest.files)
    for rel in rel_paths:
        files[rel] = record_of(Path(directory) / rel).as_dict()
    path = Path(directory) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"stage": kind.STAGE, **dataclasses.asdict(dataclasses.replace(manifest, files=files))},
                              indent=2), encoding="utf-8")
    tmp.replace(path)
