"""TensorRT-LLM checkpoint -> decoder engine with a prompt table, through `trtllm-build`.

Flags are those of TensorRT-LLM 1.2's `tensorrt_llm/commands/build.py` and `plugin/plugin.py`
(checked against the source): `--kv_cache_type paged` (`--paged_kv_cache` is deprecated),
`--max_prompt_embedding_table_size` (alias `--max_multimodal_len`), plugin switches taking
`enable`/`disable` and plugin dtypes taking `auto`. The engine-build flow exists up to TensorRT-LLM
1.2.x (removed from its main branch in 2026), hence the pinned range.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from nvlm_deploy.errors import DeployError

ENGINE_DIR = "llm"
DEFAULT_MAX_NUM_TOKENS = 8192  # trtllm-build's BuildConfig default
SUPPORTED_TRTLLM = ((1, 0), (1, 2))  # inclusive (major, minor) range with the trtllm-build flow
INSTALL = ("pip install 'tensorrt-llm>=1.0,<1.3' --extra-index-url https://pypi.nvidia.com "
           "(on a machine with an NVIDIA GPU), or use NVIDIA's Triton TensorRT-LLM container")
CPU_HINT = ("Without TensorRT-LLM, `nvlm-deploy package --runtime cpu` serves the same model repository "
            "from the TensorRT-LLM checkpoint through the CPU runtime.")


@dataclass(frozen=True)
class LlmBuildLimits:
    """Request limits an engine is built for; every engine size follows from them."""

    max_batch_size: int = 8
    max_images: int = 1          # images per request
    max_tiles: int = 7           # tiles per image, thumbnail included (NVLM-D: 6 + 1)
    tokens_per_tile: int = 256   # image tokens per tile (NVLM-D: 1024 patches / 4)
    max_text_len: int = 1024     # prompt tokens other than image tokens
    max_output_len: int = 1024
    max_num_tokens: int | None = None  # None: trtllm-build's 8192, raised to fit one full prompt

    def __post_init__(self):
        for field, value in asdict(self).items():
            if value is not None and (not isinstance(value, int) or value < (0 if field == "max_images" else 1)):
                raise DeployError(f"build limit {field} must be a positive integer, got {value!r}.")

    @property
    def image_tokens_per_request(self) -> int:
        return self.max_images * self.max_tiles * self.tokens_per_tile

    @property
    def max_prompt_embedding_table_size(self) -> int:
        """max_batch_size x max_images x max_tiles x tokens_per_tile (the README's rule for multimodal)."""
        return self.max_batch_size * self.image_tokens_per_request

    @property
    def max_input_len(self) -> int:
        return self.max_text_len + self.image_tokens_per_request

    @property
    def max_seq_len(self) -> int:
        return self.max_input_len + self.max_output_len

    @property
    def num_tokens(self) -> int:
        # Without chunked context a whole prompt is one context step, so never below max_input_len.
        return max(self.max_num_tokens or DEFAULT_MAX_NUM_TOKENS, self.max_input_len)

    def as_dict(self) -> dict:
        return {**asdict(self), "max_num_tokens": self.num_tokens, "max_input_len": self.max_input_len,
                "max_seq_len": self.max_seq_len,
                "max_prompt_embedding_table_size": self.max_prompt_embedding_table_size}


def read_checkpoint_mapping(checkpoint_dir: Path) -> dict:
    path = checkpoint_dir / "config.json"
    if not path.is_file():
        raise DeployError(f"{path} does not exist: --checkpoint must be a trtllm_checkpoint/ directory "
                          "written by `nvlm-deploy convert llm` (or the target directory holding one).")
    config = json.loads(path.read_text())
    mapping = config.get("mapping") or {}
    world = mapping.get("world_size", mapping.get("tp_size", 1) * mapping.get("pp_size", 1))
    missing = [f"rank{r}.safetensors" for r in range(world) if not (checkpoint_dir / f"rank{r}.safetensors").is_file()]
    if missing:
        raise DeployError(f"{checkpoint_dir} lacks {missing} for its world_size {world}: "
                          "re-run `nvlm-deploy convert llm`.")
    return {"world_size": world, "tp_size": mapping.get("tp_size", 1), "pp_size": mapping.get("pp_size", 1),
            "dtype": config.get("dtype")}


def trtllm_build_command(checkpoint_dir: Path, output_dir: Path, limits: LlmBuildLimits, *, workers: int,
                         executable: list[str] | None = None, extra: list[str] = ()) -> list[str]:
    """The exact `trtllm-build` argument list.

    Args:
        checkpoint_dir: the TensorRT-LLM checkpoint.
        output_dir: where trtllm-build writes config.json and rank{N}.engine.
        limits: request limits.
        workers: parallel build workers (one per rank).
        executable: the command that starts trtllm-build (default ["trtllm-build"]).
        extra: further flags passed through unchanged.
    """
    return [*(executable or ["trtllm-build"]),
            "--checkpoint_dir", str(checkpoint_dir),
            "--output_dir", str(output_dir),
            "--max_batch_size", str(limits.max_batch_size),
            "--max_input_len", str(limits.max_input_len),
            "--max_seq_len", str(limits.max_seq_len),
            "--max_num_tokens", str(limits.num_tokens),
            "--max_beam_width", "1",
            "--max_prompt_embedding_table_size", str(limits.max_prompt_embedding_table_size),
            "--kv_cache_type", "paged",
            "--gpt_attention_plugin", "auto",
            "--gemm_plugin", "auto",
            "--context_fmha", "enable",
            "--remove_input_padding", "enable",
            "--use_paged_context_fmha", "enable",
            "--workers", str(workers),
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


def build_llm_engine(checkpoint_dir: str | Path, out_dir: str | Path, *, limits: LlmBuildLimits | None = None,
                     workers: int | None = None, force: bool = False, extra: list[str] = ()) -> Path:
    """Run trtllm-build into `<out_dir>/llm/` (atomically) and describe it in a manifest.

    Args:
        checkpoint_dir: TensorRT-LLM checkpoint (or a target directory with trtllm_checkpoint/).
        out_dir: the target directory; this stage owns its llm/.
        limits: request limits (defaults: LlmBuildLimits()).
        workers: build workers; None means one per rank.
        force: replace an existing llm/.
        extra: more trtllm-build flags, passed through.
    """
    from nvlm_deploy.artifacts import atomic_output_dir, input_hashes, write_manifest
    from nvlm_deploy.build.gpu import describe_local_gpu

    checkpoint_dir = resolve_checkpoint_dir(checkpoint_dir)
    limits = limits or LlmBuildLimits()
    mapping = read_checkpoint_mapping(checkpoint_dir)
    version = require_trtllm()
    workers = workers or mapping["world_size"]
    with atomic_output_dir(Path(out_dir) / ENGINE_DIR, force=force) as tmp:
        command = trtllm_build_command(checkpoint_dir.resolve(), tmp.resolve(), limits, workers=workers,
                                       executable=trtllm_build_executable(), extra=list(extra))
        result = subprocess.run(command)
        if result.returncode != 0:
            raise DeployError(f"trtllm-build failed (exit {result.returncode}); its log is above. Command:\n"
                              + " ".join(command))
        engines = [f"rank{r}.engine" for r in range(mapping["world_size"])]
        missing = [f for f in [*engines, "config.json"] if not (tmp / f).is_file()]
        if missing:
            raise DeployError(f"trtllm-build exited 0 but did not write {missing}.")
        write_manifest(tmp, stage="llm_engine", settings={"limits": limits.as_dict(), "workers": workers, **mapping},
                       inputs={"checkpoint_dir": str(checkpoint_dir.resolve()), "files": input_hashes(checkpoint_dir)},
                       tools=("tensorrt", "tensorrt-llm"),
                       extra={"gpu": describe_local_gpu().as_dict(), "tensorrt_llm": version,
                              "command": command, "engines": engines})
    return Path(out_dir) / ENGINE_DIR


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept the trtllm_checkpoint/ directory itself or the target directory that holds it."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "trtllm_checkpoint" / "config.json").is_file():
        return path / "trtllm_checkpoint"
    return path
