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

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.contracts.manifest import (MANIFEST, LlmEngineManifest, OnnxManifest, RepositoryManifest,
                                            TargetManifest, TrtllmCheckpointManifest, VisionEngineManifest,
                                            read_manifest, write_manifest)
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

    def manifest(self, stage: str):
        """The stage's typed manifest; a DeployError naming the command when the stage is missing."""
        spec = STAGES[stage]
        if not self.dir(stage).is_dir():
            raise DeployError(f"{self.dir(stage)} does not exist: write it with `{spec.command} ... --out {self.root}`.")
        return read_manifest(self.dir(stage), spec.manifest, writer=spec.command)

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
        return current.replace(**choices)

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
        write_manifest(self.root, TargetManifest(model_dir=str(Path(model_dir).resolve()), limits=limits.as_dict()))

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
