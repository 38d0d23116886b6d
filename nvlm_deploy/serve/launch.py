"""Before starting: do the engines fit this machine? And the multi-GPU (leader mode) command line.

Engines are tied to the GPU architecture and to the TensorRT / TensorRT-LLM versions they were
built with; loading them elsewhere fails with serialization errors that do not say so
(shared/reference/triton.md §8). The repository manifest records what the engines were built
for; `check_repository` compares it with `describe_local_gpu()` and says how to rebuild.
"""

from __future__ import annotations

from pathlib import Path

from nvlm_deploy.errors import DeployError

REBUILD = ("rebuild the engines on this machine (`nvlm-deploy build vision` and `nvlm-deploy build llm` "
           "with --out {engines}, then `nvlm-deploy package --runtime gpu`), or package --runtime cpu")


def read_repository(repo: str | Path):
    """The repository's typed manifest (RepositoryManifest)."""
    from nvlm_deploy.contracts.manifest import RepositoryManifest, read_manifest

    repo = Path(repo)
    if not (repo / "manifest.json").is_file():
        raise DeployError(f"{repo}/manifest.json does not exist: {repo} is not a repository written by "
                          "`nvlm-deploy package` (write one with `nvlm-deploy package --engines DIR --out REPO`).")
    return read_manifest(repo, RepositoryManifest, writer="nvlm-deploy package")


def _sm(value: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in str(value).split(".")) if value else None
    except ValueError:
        return None


def runs_on(built: dict, local_cc: str) -> bool:
    """Whether an engine built on `built` (GPU + hardware_compat) runs on compute capability `local_cc`.

    hardware_compat "none": the build GPU's SM only; "ampere+": TensorRT 10's AMPERE_PLUS, any SM >= 8.0
    (build.vision_engine.HARDWARE_COMPAT).
    """
    from nvlm_deploy.build.vision_engine import HARDWARE_COMPAT

    _, lowest = HARDWARE_COMPAT.get(built.get("hardware_compat") or "none", ("NONE", None))
    if lowest is not None:
        local = _sm(local_cc)
        return local is not None and local >= _sm(lowest)
    return built.get("compute_capability") == local_cc


def engine_mismatches(manifest, local) -> list[str]:
    """What differs between the engines' build machine(s) and `local` (a GpuInfo); [] when they fit."""
    problems = []
    for stage, built in (manifest.engines_gpu or {}).items():
        if not built:
            continue
        if local.compute_capability is None:
            problems.append(f"{stage}/ engine was built for {built.get('name')} (SM {built.get('compute_capability')}) "
                            "but this machine has no NVIDIA GPU")
        elif not runs_on(built, local.compute_capability):
            compat = built.get("hardware_compat") or "none"
            problems.append(f"{stage}/ engine was built for {built.get('name')} (SM {built.get('compute_capability')}, "
                            f"hardware compatibility {compat}); this GPU is {local.name} (SM {local.compute_capability})")
        if built.get("tensorrt") and local.tensorrt and built["tensorrt"] != local.tensorrt:
            problems.append(f"{stage}/ engine was built with TensorRT {built['tensorrt']}; this machine has {local.tensorrt}")
    built_llm = manifest.tensorrt_llm
    if built_llm and built_llm != local.tensorrt_llm:
        problems.append(f"llm/ engine was built with TensorRT-LLM {built_llm}; this machine has "
                        f"{local.tensorrt_llm or 'no TensorRT-LLM'} (the tritonserver container's TensorRT-LLM must match)")
    return problems


def check_repository(repo: str | Path, *, local=None):
    """Raise DeployError when a GPU repository's engines do not fit this machine; return the manifest."""
    manifest = read_repository(repo)
    if manifest.runtime != "gpu":
        return manifest
    if local is None:
        from nvlm_deploy.build.gpu import describe_local_gpu

        local = describe_local_gpu()
    problems = engine_mismatches(manifest, local)
    if problems:
        raise DeployError(f"the engines in {repo} do not fit this machine:\n  - " + "\n  - ".join(problems)
                          + "\nFix: " + REBUILD.format(engines=manifest.target) + ".")
    disagree = target_mismatches(manifest)
    if disagree:
        from nvlm_deploy.contracts.target import Target

        raise DeployError(f"{Path(repo) / 'manifest.json'} does not match the target it was packaged from:\n  - "
                          + "\n  - ".join(disagree) + f"\nFix: {Target(manifest.target).rebuild_command()}.")
    return manifest


def target_mismatches(manifest) -> list[str]:
    """Where the repository's engines (GPU, TensorRT, TensorRT-LLM) disagree with its target's manifest.json;
    [] when they agree, or the target is not here or records no GPU (made by the stage commands alone)."""
    from nvlm_deploy.contracts.target import Target

    target = Target(manifest.target)
    problems = []
    for stage, built in (manifest.engines_gpu or {}).items():
        problems += target.hardware_mismatches(stage, built or {}, runs_on=runs_on,
                                               tensorrt_llm=manifest.tensorrt_llm if stage == "llm" else None)
    return problems


def check_paths(repo: str | Path, *, log=print):
    """Every path in every config must exist; when the repository moved, relocate it (and say so)."""
    from nvlm_deploy.serve.repository_paths import missing_paths, relocate_repository

    repo = Path(repo)
    manifest = read_repository(repo)
    missing = missing_paths(repo, manifest)
    if not missing:
        return manifest
    relocate_repository(repo)  # raises, naming the path, when the relative layout does not hold either
    log(f"relocated {repo}: its configs named paths that do not exist here ({missing[0]}"
        + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + "); rewrote them from the repository's place")
    return manifest


def check_no_strays(repo: str | Path, manifest) -> None:
    """Refuse folders that are not the repository's models (`.ipynb_checkpoints/`, a copy, a backup).

    Triton loads every top-level folder of a model repository as a model, hidden ones included, and a
    folder without a config stops the server with a message that does not say which folder is stray."""
    repo = Path(repo)
    strays = sorted(p.name for p in repo.iterdir() if p.is_dir() and p.name not in manifest.models)
    if strays:
        raise DeployError(f"{repo} holds folders that are not models of this repository: "
                          + ", ".join(f"{name}/" for name in strays)
                          + f" (its models: {', '.join(manifest.models)}). Triton would load each as a model; "
                          "move them out of the repository (or re-package it).")


def leader_mode_command(server_args: list[str], *, world_size: int, binary: str = "tritonserver",
                        llm_model: str = "tensorrt_llm", shm_prefix: str = "nvlmd") -> list[str]:
    """`mpirun` line with one tritonserver per rank (tensorrtllm_backend leader mode).

    Rank 0 serves every model; the other ranks load only the LLM, whose instance never returns
    from initialization there and works as an MPI worker of rank 0.

    Args:
        server_args: tritonserver arguments shared by all ranks (repository, ports, addresses).
        world_size: tp x pp of the engines.
    """
    if world_size < 1:
        raise DeployError(f"world_size must be >= 1, got {world_size}.")
    cmd = ["mpirun", "--allow-run-as-root"]
    for rank in range(world_size):
        if rank:
            cmd.append(":")
        cmd += ["-n", "1", binary, *server_args, "--backend-config", f"python,shm-region-prefix-name={shm_prefix}{rank}_"]
        if rank:
            cmd += ["--model-control-mode", "explicit", "--load-model", llm_model]
    return cmd
