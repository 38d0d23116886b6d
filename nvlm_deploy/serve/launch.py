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


def read_repository(repo: str | Path) -> dict:
    from nvlm_deploy.artifacts import read_manifest

    repo = Path(repo)
    if not (repo / "manifest.json").is_file():
        raise DeployError(f"{repo}/manifest.json does not exist: {repo} is not a repository written by "
                          "`nvlm-deploy package` (write one with `nvlm-deploy package --engines DIR --out REPO`).")
    return read_manifest(repo, stage="model_repository")


def engine_mismatches(manifest: dict, local) -> list[str]:
    """What differs between the engines' build machine(s) and `local` (a GpuInfo); [] when they fit."""
    problems = []
    for stage, built in (manifest.get("engines_gpu") or {}).items():
        if not built:
            continue
        if local.compute_capability is None:
            problems.append(f"{stage}/ engine was built for {built.get('name')} (SM {built.get('compute_capability')}) "
                            "but this machine has no NVIDIA GPU")
        elif built.get("compute_capability") != local.compute_capability:
            problems.append(f"{stage}/ engine was built for {built.get('name')} (SM {built.get('compute_capability')}); "
                            f"this GPU is {local.name} (SM {local.compute_capability})")
        if built.get("tensorrt") and local.tensorrt and built["tensorrt"] != local.tensorrt:
            problems.append(f"{stage}/ engine was built with TensorRT {built['tensorrt']}; this machine has {local.tensorrt}")
    built_llm = manifest.get("tensorrt_llm")
    if built_llm and built_llm != local.tensorrt_llm:
        problems.append(f"llm/ engine was built with TensorRT-LLM {built_llm}; this machine has "
                        f"{local.tensorrt_llm or 'no TensorRT-LLM'} (the tritonserver container's TensorRT-LLM must match)")
    return problems


def check_repository(repo: str | Path, *, local=None) -> dict:
    """Raise DeployError when a GPU repository's engines do not fit this machine; return the manifest."""
    manifest = read_repository(repo)
    if manifest["settings"]["runtime"] != "gpu":
        return manifest
    if local is None:
        from nvlm_deploy.build.gpu import describe_local_gpu

        local = describe_local_gpu()
    problems = engine_mismatches(manifest, local)
    if problems:
        engines = manifest.get("inputs", {}).get("engines", "<target dir>")
        raise DeployError(f"the engines in {repo} do not fit this machine:\n  - " + "\n  - ".join(problems)
                          + "\nFix: " + REBUILD.format(engines=engines) + ".")
    return manifest


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
