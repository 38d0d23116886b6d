"""TensorRT-LLM checkpoint -> decoder engine with a prompt table, through `trtllm-build`.

Flags are those of TensorRT-LLM 1.2's `tensorrt_llm/commands/build.py` and `plugin/plugin.py`
(checked against the source): `--kv_cache_type paged` (`--paged_kv_cache` is deprecated),
`--max_prompt_embedding_table_size` (alias `--max_multimodal_len`), plugin switches taking
`enable`/`disable` and plugin dtypes taking `auto`. The engine-build flow exists up to TensorRT-LLM
1.2.x (removed from its main branch in 2026), hence the pinned range. Every size comes from the
target's DeploymentLimits.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from nvlm_deploy.contracts.limits import MAX_BEAM_WIDTH, DeploymentLimits
from nvlm_deploy.errors import DeployError
from nvlm_deploy.trtllm.config import TrtllmConfig

ENGINE_STAGE = "llm"
SUPPORTED_TRTLLM = ((1, 0), (1, 2))  # inclusive (major, minor) range with the trtllm-build flow
INSTALL = ("pip install 'tensorrt-llm>=1.0,<1.3' --extra-index-url https://pypi.nvidia.com "
           "(on a machine with an NVIDIA GPU), or use NVIDIA's Triton TensorRT-LLM container")
CPU_HINT = ("Without TensorRT-LLM, `nvlm-deploy package --runtime cpu` serves the same model repository "
            "from the TensorRT-LLM checkpoint through the CPU runtime.")


def engine_file(rank: int) -> str:
    return f"rank{rank}.engine"


def read_checkpoint(checkpoint_dir: Path) -> TrtllmConfig:
    """The checkpoint's config, after checking that every rank file its mapping names is there."""
    from nvlm_deploy.trtllm.config import CONFIG_FILE
    from nvlm_deploy.trtllm.rank_files import rank_file

    config = TrtllmConfig.from_json(checkpoint_dir / CONFIG_FILE)
    missing = [rank_file(r) for r in range(config.mapping.world_size) if not (checkpoint_dir / rank_file(r)).is_file()]
    if missing:
        raise DeployError(f"{checkpoint_dir} lacks {missing} for its world_size {config.mapping.world_size}: "
                          "re-run `nvlm-deploy convert llm`.")
    return config


# Flags each quantized checkpoint gets, keyed by its config.json `quant_algo` (null: unquantized).
# trtllm-build reads the quantization from the checkpoint itself; these make the plugin choices
# explicit and match what TensorRT-LLM 1.2 would otherwise force with a warning. Sources
# (NVIDIA/TensorRT-LLM, read at commit 008b2b8d): tensorrt_llm/builder.py `build()` turns
# use_fp8_context_fmha off unless quant_algo is FP8 / W4A8_AWQ / NVFP4, turns it on with an FP8 KV
# cache and paged context FMHA, and sets weight_only_groupwise_quant_matmul_plugin to the model
# dtype for per-group weight-only checkpoints (W4A16_AWQ) by itself; tensorrt_llm/commands/build.py
# `main()` forces use_fused_mlp off for every quant_algo but FP8 (examples/quantization README: "do
# not use --use_fused_mlp=enable" with AWQ). docs/quantization-formats.md has the notes.
RECIPE_FLAGS: dict[str | None, tuple[str, ...]] = {
    None: (),
    "FP8": ("--use_fp8_context_fmha", "enable"),
    "W4A16_AWQ": ("--use_fp8_context_fmha", "disable", "--use_fused_mlp", "disable"),
}


def recipe_flags(quantization) -> list[str]:
    """trtllm-build flags for a checkpoint's `QuantConfig`; an unknown quant_algo is refused."""
    algo = None if quantization is None else quantization.quant_algo
    if algo not in RECIPE_FLAGS:
        raise DeployError(f"checkpoint quant_algo {algo!r} has no build recipe here; known: "
                          f"{[a for a in RECIPE_FLAGS if a]} (or null).")
    return list(RECIPE_FLAGS[algo])


def trtllm_build_command(checkpoint_dir: Path, output_dir: Path, limits: DeploymentLimits, *, workers: int,
                         executable: list[str] | None = None, extra: list[str] = (),
                         quantization=None) -> list[str]:
    """The exact `trtllm-build` argument list.

    Args:
        checkpoint_dir: the TensorRT-LLM checkpoint.
        output_dir: where trtllm-build writes config.json and rank{N}.engine.
        limits: the target's limits.
        workers: parallel build workers (one per rank).
        executable: the command that starts trtllm-build (default ["trtllm-build"]).
        extra: further flags passed through unchanged.
        quantization: the checkpoint's QuantConfig; None reads it from checkpoint_dir/config.json when there.
    """
    from nvlm_deploy.trtllm.config import CONFIG_FILE

    if quantization is None and (Path(checkpoint_dir) / CONFIG_FILE).is_file():
        quantization = TrtllmConfig.from_json(Path(checkpoint_dir) / CONFIG_FILE).quantization
    return [*(executable or ["trtllm-build"]),
            "--checkpoint_dir", str(checkpoint_dir),
            "--output_dir", str(output_dir),
            "--max_batch_size", str(limits.max_batch_size),
            "--max_input_len", str(limits.max_input_len),
            "--max_seq_len", str(limits.max_seq_len),
            "--max_num_tokens", str(limits.max_num_tokens),
            "--max_beam_width", str(MAX_BEAM_WIDTH),
            "--max_prompt_embedding_table_size", str(limits.max_prompt_embedding_table_size),
            "--kv_cache_type", "paged",
            "--gpt_attention_plugin", "auto",
            "--gemm_plugin", "auto",
            "--context_fmha", "enable",
            "--remove_input_padding", "enable",
            "--use_paged_context_fmha", "enable",
            "--workers", str(workers),
            *recipe_flags(quantization),
            *extra]


def require_trtllm() -> str:
    """Import tensorrt_llm (lazily) and check its version has trtllm-build; returns the version."""
    from nvlm_deploy.lazy import require

    try:
        module = require("tensorrt_llm", install=INSTALL, purpose="Building the decoder engine (trtllm-build)")
    except DeployError as exc:
        raise DeployError(f"{exc}\n{CPU_HINT}") from None
    version = str(getattr(module, "__version__", "0.0"))
    check_trtllm_version(version)
    return version


def check_trtllm_version(version: str) -> None:
    try:
        major_minor = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        raise DeployError(f"cannot read the TensorRT-LLM version {version!r}.") from None
    low, high = SUPPORTED_TRTLLM
    if not low <= major_minor <= high:
        raise DeployError(f"TensorRT-LLM {version} is installed; the engine flow (trtllm-build) is supported for "
                          f"{low[0]}.{low[1]} to {high[0]}.{high[1]}.x (it was removed after 1.2). Install: {INSTALL}")


def trtllm_build_executable() -> list[str]:
    found = shutil.which("trtllm-build")
    return [found] if found else [sys.executable, "-m", "tensorrt_llm.commands.build"]


def build_llm_engine(checkpoint_dir: str | Path, out_dir: str | Path, *, workers: int | None = None,
                     force: bool = False, limits: dict[str, int | None] | None = None, extra: list[str] = ()) -> Path:
    """Run trtllm-build into `<out_dir>/llm/` (atomically) and describe it in a manifest.

    Args:
        checkpoint_dir: TensorRT-LLM checkpoint (or a target directory with trtllm_checkpoint/).
        out_dir: the target directory; this stage owns its llm/.
        workers: build workers; None means one per rank.
        force: replace an existing llm/.
        limits: limit choices to settle on the target first (None: the target's).
        extra: more trtllm-build flags, passed through.
    """
    from nvlm_deploy.artifacts import atomic_output_dir, input_hashes
    from nvlm_deploy.build.gpu import describe_local_gpu
    from nvlm_deploy.config import NvlmConfig
    from nvlm_deploy.contracts.manifest import LlmEngineManifest, tool_versions, write_manifest
    from nvlm_deploy.contracts.target import Target

    source = resolve_checkpoint_dir(checkpoint_dir)
    checkpoint = read_checkpoint(source)
    model_dir = checkpoint_manifest(source).model_dir
    target = Target(out_dir)
    settled = target.settle_limits(NvlmConfig.from_hf(model_dir), model_dir=model_dir, choices=limits or {},
                                   rebuilding="llm", store=False)
    version = require_trtllm()
    workers = workers or checkpoint.mapping.world_size
    with atomic_output_dir(target.dir(ENGINE_STAGE), force=force) as tmp:
        command = trtllm_build_command(source.resolve(), tmp.resolve(), settled, workers=workers,
                                       executable=trtllm_build_executable(), extra=list(extra))
        result = subprocess.run(command)
        if result.returncode != 0:
            raise DeployError(f"trtllm-build failed (exit {result.returncode}); its log is above. Command:\n"
                              + " ".join(command))
        engines = [engine_file(r) for r in range(checkpoint.mapping.world_size)]
        missing = [f for f in [*engines, "config.json"] if not (tmp / f).is_file()]
        if missing:
            raise DeployError(f"trtllm-build exited 0 but did not write {missing}.")
        write_manifest(tmp, LlmEngineManifest(
            checkpoint_dir=str(source.resolve()), input_hashes=input_hashes(source), limits=settled.as_dict(),
            precision=checkpoint.precision.name, tp=checkpoint.tp, pp=checkpoint.pp,
            world_size=checkpoint.mapping.world_size, workers=workers, gpu=describe_local_gpu().as_dict(),
            tensorrt_llm=version, command=command, engine_bytes={f: (tmp / f).stat().st_size for f in engines},
            tools=tool_versions("tensorrt", "tensorrt-llm")))
    target.store_limits(settled, model_dir=model_dir)
    return target.dir(ENGINE_STAGE)


def checkpoint_manifest(checkpoint_dir: Path):
    from nvlm_deploy.contracts.manifest import TrtllmCheckpointManifest, read_manifest

    return read_manifest(checkpoint_dir, TrtllmCheckpointManifest, writer="nvlm-deploy convert llm")


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept the trtllm_checkpoint/ directory itself or the target directory that holds it."""
    from nvlm_deploy.contracts.target import Target

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    return Target(path).dir("trtllm_checkpoint")
