"""THE target directory (`engines/<model>/<target>/`) and the registry of its stages.

    <target>/manifest.json      TargetManifest: the model and the target's one DeploymentLimits
    <target>/onnx/              convert vision      OnnxManifest
    <target>/trtllm_checkpoint/ convert llm         TrtllmCheckpointManifest
    <target>/vision/            build vision        VisionEngineManifest
    <target>/llm/               build llm           LlmEngineManifest
    <target>/model_repository/  package             RepositoryManifest (default place; any --out)

`Target.of(path, stage)` accepts the target directory or one of its stage folders, once for
every command. Stages that build for the limits settle them through `Target.settle_limits`: a
change that an already-built engine cannot serve is refused, naming both limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.contracts.manifest import (MANIFEST, LlmEngineManifest, OnnxManifest, RepositoryManifest,
                                            TargetManifest, TrtllmCheckpointManifest, VisionEngineManifest, now,
                                            read_manifest, tool_versions, verify_manifest_files, write_manifest)
from nvlm_deploy.errors import DeployError

if TYPE_CHECKING:
    from nvlm_deploy.config import NvlmConfig


@dataclass(frozen=True)
class Stage:
    folder: str  # under the target directory
    manifest: type
    command: str  # the command that writes it


STAGES: dict[str, Stage] = {
    "onnx": Stage("onnx", OnnxManifest, "nvlm-deploy convert vision"),
    "trtllm_checkpoint": Stage("trtllm_checkpoint", TrtllmCheckpointManifest, "nvlm-deploy convert llm"),
    "vision": Stage("vision", VisionEngineManifest, "nvlm-deploy build vision"),
    "llm": Stage("llm", LlmEngineManifest, "nvlm-deploy build llm"),
    "model_repository": Stage("model_repository", RepositoryManifest, "nvlm-deploy package"),
}
ENGINE_STAGES = ("vision", "llm")  # tied to a GPU architecture and library versions


class Target:
    """Args: root: the target directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def of(cls, path: str | Path, *, stage: str | None = None) -> "Target":
        """The target of `path`, which is the target directory or its `stage` folder."""
        path = Path(path)
        if stage is not None and path.name == STAGES[stage].folder and (path / MANIFEST).is_file() \
                and not (path / STAGES[stage].folder).is_dir():
            return cls(path.parent)
        return cls(path)

    def __repr__(self) -> str:
        return f"Target({str(self.root)!r})"

    def dir(self, stage: str) -> Path:
        return self.root / STAGES[stage].folder

    def has(self, stage: str) -> bool:
        return (self.dir(stage) / MANIFEST).is_file()

    def manifest(self, stage: str, *, hashes: bool = False):
        """The stage's typed manifest; a DeployError naming the command when the stage is missing or
        its files are not the ones its manifest records (sizes always, digests with `hashes`), and
        for an engine that does not fit the GPU or TensorRT-LLM version the target manifest records."""
        from nvlm_deploy.artifacts import missing_stage_message

        spec = STAGES[stage]
        if not self.dir(stage).is_dir():
            raise DeployError(missing_stage_message(self.dir(stage), spec.command))
        manifest = read_manifest(self.dir(stage), spec.manifest, writer=spec.command)
        verify_manifest_files(self.dir(stage), manifest, hashes=hashes, writer=f"{spec.command} ... --out {self.root}")
        if stage in ENGINE_STAGES:
            problems = self.hardware_mismatches(stage, {**manifest.gpu, "hardware_compat": getattr(
                manifest, "hardware_compat", "none")}, tensorrt_llm=getattr(manifest, "tensorrt_llm", None))
            if problems:
                raise DeployError(f"{self.dir(stage)} does not belong to this target:\n  - " + "\n  - ".join(problems)
                                  + f"\nFix: {self.rebuild_command()}.")
        return manifest

    def verify(self, stages: tuple[str, ...], *, hashes: bool = True, log=print) -> None:
        """Check `stages`' files against their manifests (digests with `hashes`); DeployError on the first bad one."""
        for stage in stages:
            manifest = self.manifest(stage, hashes=hashes)
            total = sum(r.get("bytes", 0) for r in (manifest.files or {}).values())
            log(f"  verified {self.dir(stage)}: {len(manifest.files or {})} file(s), {total / 1e6:.1f} MB"
                + (", digests match" if hashes else ", sizes match"))

    # ---- what `nvlm-deploy build` records: the target's GPU and library versions ----

    def record(self, **fields) -> TargetManifest:
        """Update the target manifest's build record (TargetManifest fields besides the limits)."""
        existing = self.target_manifest()
        if existing is None:
            raise DeployError(f"{self.root / MANIFEST} does not exist: store the target's limits first.")
        updated = dataclasses.replace(existing, **fields)
        if updated != existing:
            write_manifest(self.root, updated)
        return updated

    def rebuild_command(self) -> str:
        """How to rebuild this target: `nvlm-deploy build` when it made it, else the stage commands."""
        manifest = self.target_manifest()
        if manifest is None or manifest.target is None:
            return (f"rebuild the engines with `nvlm-deploy build vision` and `nvlm-deploy build llm` "
                    f"(--out {self.root}) on the GPU they are for")
        return (f"rebuild the target on {manifest.gpu.get('name', 'its')} GPUs: `nvlm-deploy build --model "
                f"{manifest.model_dir} --target {manifest.target} --out {self.root.parent.parent}`")

    def hardware_mismatches(self, stage: str, built: dict, *, tensorrt_llm: str | None = None,
                            runs_on: Callable[[dict, str], bool] | None = None) -> list[str]:
        """Why an engine built on `built` does not fit the GPU and library versions the target manifest
        records; [] when it fits, or the target records none (made by the stage commands alone).

        Args:
            stage: "vision" or "llm", for the message.
            built: the engine's GPU facts + hardware_compat, as its manifest (or the repository's
                engines_gpu) says.
            tensorrt_llm: the TensorRT-LLM version the engine was built with, where known.
            runs_on: serve.launch.runs_on (TensorRT's hardware compatibility levels). None: only an
                engine for exactly its build GPU's SM (hardware_compat "none", the default) is judged.
        """
        manifest = self.target_manifest()
        if manifest is None or not manifest.gpu:
            return []
        here = f"this target ({manifest.target}, {self.root / MANIFEST})"
        want, have = manifest.gpu.get("compute_capability"), built.get("compute_capability")
        compat = built.get("hardware_compat") or "none"
        fits = runs_on(built, want) if runs_on else compat != "none" or have == want
        problems = [] if not have or fits else [
            f"{stage}/ engine was built for {built.get('name')} (SM {have}, hardware compatibility {compat}); "
            f"{here} is for {manifest.gpu.get('name')} (SM {want})"]
        for tool, version, recorded in (("TensorRT", built.get("tensorrt"), manifest.tensorrt),
                                        ("TensorRT-LLM", tensorrt_llm, manifest.tensorrt_llm)):
            if version and recorded and version != recorded:
                problems.append(f"{stage}/ engine was built with {tool} {version}; {here} was built with {recorded}")
        return problems

    # ---- limits ----

    def target_manifest(self) -> TargetManifest | None:
        if not (self.root / MANIFEST).is_file():
            return None
        return read_manifest(self.root, TargetManifest, writer="the first stage command on this target")

    def limits(self) -> DeploymentLimits:
        manifest = self.target_manifest()
        if manifest is None:
            raise DeployError(f"{self.root / MANIFEST} does not exist: {self.root} has no limits yet; "
                              "run `nvlm-deploy convert vision` or `convert llm` on it first.")
        return DeploymentLimits.from_dict(manifest.limits, source=str(self.root / MANIFEST))

    def requested_limits(self, config: "NvlmConfig", choices: dict[str, int | None]) -> DeploymentLimits:
        """The target's limits with `choices` applied (the model's defaults on a new target)."""
        if self.target_manifest() is None:
            return DeploymentLimits.for_model(config, **choices)
        current = self.limits()
        if current.tokens_per_tile != config.tokens_per_tile:
            raise DeployError(f"{self.root} was set up for a model with {current.tokens_per_tile} image tokens "
                              f"per tile; this model has {config.tokens_per_tile}. Use another --out per model.")
        return current.replace(**choices).within_model(config)

    def settle_limits(self, config: "NvlmConfig", *, model_dir: str | Path, choices: dict[str, int | None],
                      rebuilding: str | None = None, store: bool = True) -> DeploymentLimits:
        """The target's limits with `choices` applied, stored; refuse what a built engine cannot serve.

        Args:
            config: the model.
            model_dir: the HF checkpoint, recorded in the target manifest.
            choices: limit flags (None: keep).
            rebuilding: the stage being (re)built now, whose old engine does not count.
            store: write them now; a build passes False and calls `store_limits` once it succeeded.
        """
        wanted = self.requested_limits(config, choices)
        problems = self.engines_not_serving(wanted, skip=rebuilding)
        if problems:
            raise DeployError(f"these limits cannot be used with {self.root}:\n  - " + "\n  - ".join(problems))
        if store:
            self.store_limits(wanted, model_dir=model_dir)
        return wanted

    def store_limits(self, limits: DeploymentLimits, *, model_dir: str | Path) -> None:
        existing = self.target_manifest()
        if existing is not None and existing.limits == limits.as_dict():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeployError(f"cannot create the target directory {self.root} ({exc.strerror}); choose another --out.") \
                from None
        model_dir, limits_dict = str(Path(model_dir).resolve()), limits.as_dict()
        write_manifest(self.root, TargetManifest(model_dir=model_dir, limits=limits_dict) if existing is None else
                       dataclasses.replace(existing, model_dir=model_dir, limits=limits_dict, created=now(),
                                           tools=tool_versions()))  # the build record stays

    def engines_not_serving(self, limits: DeploymentLimits, *, skip: str | None = None,
                            stages: tuple[str, ...] = ("vision", "llm")) -> list[str]:
        """Why the built engines of `stages` cannot serve `limits` (one line each, with the fix)."""
        problems = []
        if "vision" in stages and skip != "vision" and self.has("vision"):
            built = self.manifest("vision")
            most = built.profile["max"]
            if most < limits.max_tiles_per_request:
                problems.append(
                    f"{limits.max_images} image(s) x {limits.max_tiles_per_image} tiles = "
                    f"{limits.max_tiles_per_request} tiles per request (--max-images {limits.max_images}, "
                    f"--max-tiles-before-thumbnail {limits.max_tiles_before_thumbnail}), but the vision engine in "
                    f"{self.dir('vision')} was built for at most {most} tiles per call; rebuild it with "
                    f"`nvlm-deploy build vision --onnx {self.root} --out {self.root} --force` and these limits, "
                    "or lower them")
        if "llm" in stages and skip != "llm" and self.has("llm"):
            built_limits = DeploymentLimits.from_dict(self.manifest("llm").limits, source=str(self.dir("llm")))
            beyond = built_limits.covers(limits)
            if beyond:
                problems.append(f"the decoder engine in {self.dir('llm')} was built for smaller limits "
                                f"({', '.join(beyond)}); rebuild it with `nvlm-deploy build llm --checkpoint "
                                f"{self.root} --out {self.root} --force` and these limits, or lower them")
        return problems


# ---- loaders and serve: a stage directory, or a repository and the stages it serves, against their manifests ----

def verify_stage_dir(directory: str | Path, *, hashes: bool = False) -> object | None:
    """Check a stage directory a loader is about to use against its own manifest (sizes always, digests
    with `hashes`); returns the typed manifest, or None where there is none (artifacts of other tools)."""
    from nvlm_deploy.jsonfile import read_json_object

    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        return None
    raw = read_json_object(directory / MANIFEST, fix=f"re-run the command that wrote {directory}")
    if raw.get("stage") not in STAGES:
        return None
    kind, writer = STAGES[raw["stage"]].manifest, STAGES[raw["stage"]].command
    manifest = read_manifest(directory, kind, writer=writer)
    verify_manifest_files(directory, manifest, hashes=hashes, writer=writer)
    return manifest


def verify_repository(repo: str | Path, *, hashes: bool = False, log=None) -> list[Path]:
    """A packaged repository and every stage directory its configs point at, against their manifests.

    Sizes always (a stat per file), digests with `hashes` (`serve --verify`: reads every byte once).
    Paths are the manifest's, relative to the repository (so a moved repository is checked where
    it is); those that do not exist here (a container mount) are left to `serve`'s own path check.
    Returns the directories checked.
    """
    repo = Path(repo)
    manifest = read_manifest(repo, RepositoryManifest, writer="nvlm-deploy package")
    verify_manifest_files(repo, manifest, hashes=hashes, writer="nvlm-deploy package")
    checked = [repo]
    for params in manifest.paths.values():
        for relative in params.values():
            directory = (repo / relative).resolve()
            if directory in checked or not directory.is_dir() or directory.is_relative_to(repo.resolve()):
                continue
            if verify_stage_dir(directory, hashes=hashes) is not None:
                checked.append(directory)
    if log:
        log(f"verified {len(checked)} director{'y' if len(checked) == 1 else 'ies'} against their manifests ("
            + ("sizes and digests" if hashes else "sizes") + "): " + ", ".join(str(d) for d in checked))
    return checked
