"""`nvlm-deploy package`: fill triton_repo/ templates from the artifacts' manifests into a model repository.

Layout written (REPO):

    ensemble/  tensorrt_llm_bls/  preprocessing/  vision_encoder/  tensorrt_llm/  postprocessing/
    preprocessing/assets/      tokenizer.json, tokenizer_config.json, config.json (the HF checkpoint's)
    manifest.json              runtime, limits, the engines' GPU / library versions, world size

The tokenizer and config live in `preprocessing/assets/` because Triton treats every top-level
directory as a model (hidden ones included) and ignores non-numeric directories inside a model.
Artifact paths in the configs (onnx/, trtllm_checkpoint/, vision/, llm/) are written relative to
the repository, so a target directory moves as a whole.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nvlm_deploy.errors import DeployError
from nvlm_deploy.serve.request_inputs import ServingLimits
from nvlm_deploy.serve.template import render_config

TEMPLATES = Path(__file__).resolve().parents[2] / "triton_repo"
MODELS = ("preprocessing", "vision_encoder", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls")
ASSETS = "preprocessing/assets"
ASSET_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json")
REQUIRED_ASSETS = ("tokenizer.json", "config.json")
TABLE_TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16", "bf16": "TYPE_BF16"}


@dataclass(frozen=True)
class PackageOptions:
    """What the user may choose; None means: from the manifests (gpu) or the default (cpu)."""

    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_output_len: int | None = None
    max_images: int | None = None
    max_tiles: int | None = None  # tiles per image before the thumbnail
    kv_cache_free_gpu_mem_fraction: float = 0.85
    max_queue_delay_microseconds: int = 2000
    preprocessing_instance_count: int = 1
    postprocessing_instance_count: int = 1
    bls_instance_count: int = 1


@dataclass(frozen=True)
class Artifacts:
    engines: Path
    model_dir: Path  # HF checkpoint: tokenizer + config
    manifests: dict  # stage dir name -> manifest


def find_artifacts(engines: str | Path, *, runtime: str, model_dir: str | Path | None = None) -> Artifacts:
    """Read the manifests of the stages `runtime` needs; find the HF checkpoint for the tokenizer."""
    from nvlm_deploy.artifacts import read_manifest

    engines = Path(engines)
    needed = {"cpu": ("onnx", "trtllm_checkpoint"), "gpu": ("onnx", "trtllm_checkpoint", "vision", "llm")}[runtime]
    manifests = {}
    for stage in needed:
        if not (engines / stage).is_dir():
            how = {"onnx": "nvlm-deploy convert vision", "trtllm_checkpoint": "nvlm-deploy convert llm",
                   "vision": "nvlm-deploy build vision", "llm": "nvlm-deploy build llm"}[stage]
            raise DeployError(f"{engines / stage} does not exist: --runtime {runtime} needs it; write it with "
                              f"`{how} ... --out {engines}`.")
        manifests[stage] = read_manifest(engines / stage)
    if model_dir is None:
        recorded = manifests["trtllm_checkpoint"].get("inputs", {}).get("model_dir")
        if not recorded or not Path(recorded).is_dir():
            raise DeployError(f"{engines / 'trtllm_checkpoint' / 'manifest.json'} names no existing HF checkpoint "
                              f"({recorded!r}); pass --model DIR (the checkpoint with tokenizer.json).")
        model_dir = recorded
    model_dir = Path(model_dir)
    for name in REQUIRED_ASSETS:
        if not (model_dir / name).is_file():
            raise DeployError(f"{model_dir / name} does not exist: --model must be the HF NVLM-D checkpoint "
                              "(its tokenizer.json and config.json go into the repository).")
    return Artifacts(engines=engines, model_dir=model_dir, manifests=manifests)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DeployError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
    return value


def cpu_limits(config, options: PackageOptions) -> tuple[int, ServingLimits]:
    """Limits of the CPU runtime: the options, else defaults that fit a few full-size images."""
    max_tiles = options.max_tiles or config.max_dynamic_patch
    max_images = options.max_images or 4
    tiles_per_image = max_tiles + (1 if config.use_thumbnail and max_tiles > 1 else 0)
    table = max_images * tiles_per_image * config.tokens_per_tile
    max_output = options.max_output_len or 512
    max_input = options.max_input_len or min(table + 1024, config.llm.max_position_embeddings - max_output)
    limits = ServingLimits(max_input_len=_positive("max_input_len", max_input),
                           max_output_len=_positive("max_output_len", max_output),
                           max_images=_positive("max_images", max_images), max_tiles=_positive("max_tiles", max_tiles),
                           max_prompt_table_size=table)
    return _positive("max_batch_size", options.max_batch_size or 8), limits


def gpu_limits(config, options: PackageOptions, llm_manifest: dict) -> tuple[int, ServingLimits]:
    """Limits of the GPU runtime: the engine's build limits; options may only lower them."""
    built = llm_manifest["settings"]["limits"]
    total_tiles = built["max_tiles"]  # build counts the thumbnail
    built_tiles = total_tiles - 1 if config.use_thumbnail and total_tiles > 1 else total_tiles
    chosen = {"max_batch_size": (options.max_batch_size, built["max_batch_size"]),
              "max_input_len": (options.max_input_len, built["max_input_len"]),
              "max_output_len": (options.max_output_len, built["max_output_len"]),
              "max_images": (options.max_images, built["max_images"]),
              "max_tiles": (options.max_tiles, built_tiles)}
    values = {}
    for name, (asked, limit) in chosen.items():
        if asked is not None and asked > limit:
            raise DeployError(f"--{name.replace('_', '-')} {asked} is above the engine's build limit {limit} "
                              f"(llm/manifest.json); rebuild with `nvlm-deploy build llm --{name.replace('_', '-')} {asked}`.")
        values[name] = asked or limit
    batch = values.pop("max_batch_size")
    table = built["max_prompt_embedding_table_size"] // built["max_batch_size"]
    return batch, ServingLimits(max_prompt_table_size=table, **values)


def template_values(artifacts: Artifacts, out: Path, *, runtime: str, options: PackageOptions) -> tuple[dict, dict]:
    """(values for every ${var}, manifest settings) of one repository."""
    from nvlm_deploy.config import NvlmConfig

    config = NvlmConfig.from_hf(artifacts.model_dir)
    ckpt = artifacts.manifests["trtllm_checkpoint"]["settings"]
    if runtime == "gpu":
        batch, limits = gpu_limits(config, options, artifacts.manifests["llm"])
        table_type = TABLE_TYPES.get(ckpt.get("dtype"), "TYPE_FP16")
    else:
        batch, limits = cpu_limits(config, options)
        table_type = "TYPE_FP32"  # the CPU runtime computes in float32

    def rel(stage: str) -> str:
        return os.path.relpath((artifacts.engines / stage).resolve(), out.resolve())

    values = {
        "triton_max_batch_size": batch, "assets_dir": ASSETS, "image_size": config.image_size,
        "hidden_size": config.llm.hidden_size, "pixel_values_data_type": "TYPE_FP32",
        "prompt_table_data_type": table_type, "runtime": runtime,
        "vision_model_path": rel("vision" if runtime == "gpu" else "onnx"), "vision_threads": 0,
        "vision_instance_count": 1, "checkpoint_dir": rel("trtllm_checkpoint"), "engine_dir": rel("llm"),
        "compute_dtype": "float32", "kv_cache_free_gpu_mem_fraction": options.kv_cache_free_gpu_mem_fraction,
        "max_queue_delay_microseconds": options.max_queue_delay_microseconds,
        "preprocessing_instance_count": options.preprocessing_instance_count,
        "postprocessing_instance_count": options.postprocessing_instance_count,
        "bls_instance_count": options.bls_instance_count,
        **asdict(limits),
    }
    world_size = int(ckpt.get("world_size", 1))
    settings = {"runtime": runtime, "max_batch_size": batch, "limits": asdict(limits), "world_size": world_size,
                "kv_cache_free_gpu_mem_fraction": options.kv_cache_free_gpu_mem_fraction,
                "prompt_table_data_type": table_type}
    return values, settings


def template_path(model: str, runtime: str) -> Path:
    specific = TEMPLATES / model / f"config.pbtxt.{runtime}.template"
    return specific if specific.is_file() else TEMPLATES / model / "config.pbtxt.template"


def render_repository(values: dict, *, runtime: str) -> dict[str, tuple[str, object]]:
    """model -> (config text, parsed ModelConfig); each template gets exactly the values it names."""
    from nvlm_deploy.serve.template import placeholders

    rendered = {}
    for model in MODELS:
        path = template_path(model, runtime)
        wanted = placeholders(path.read_text(encoding="utf-8"))
        rendered[model] = render_config(path, {k: v for k, v in values.items() if k in wanted})
    return rendered


def package_repository(engines: str | Path, out: str | Path, *, runtime: str, model_dir: str | Path | None = None,
                       options: PackageOptions | None = None, force: bool = False,
                       log: Callable[[str], None] = print) -> Path:
    """Write a Triton model repository for `runtime` ("cpu" | "gpu") from the target directory `engines`.

    Args:
        engines: the target directory (onnx/, trtllm_checkpoint/, and for gpu vision/, llm/).
        out: the repository to create.
        runtime: "cpu" (Python models over nvlm_deploy.runtime) or "gpu" (TensorRT + tensorrtllm backend).
        model_dir: the HF checkpoint (tokenizer, config); None: the one the LLM checkpoint was converted from.
        options: limits and instance counts.
        force: replace an existing `out`.
    """
    from nvlm_deploy.artifacts import atomic_output_dir, write_manifest

    if runtime not in ("cpu", "gpu"):
        raise DeployError(f"--runtime {runtime!r} is not one of ['cpu', 'gpu'].")
    options = options or PackageOptions()
    out = Path(out)
    artifacts = find_artifacts(engines, runtime=runtime, model_dir=model_dir)
    values, settings = template_values(artifacts, out, runtime=runtime, options=options)
    rendered = render_repository(values, runtime=runtime)  # every config parses before anything is written
    with atomic_output_dir(out, force=force) as tmp:
        for model, (text, config) in rendered.items():
            (tmp / model).mkdir()
            (tmp / model / "config.pbtxt").write_text(text)
            (tmp / model / "1").mkdir()  # every model needs a version directory, even the ensemble
            if config.backend == "python":
                shutil.copy2(TEMPLATES / model / "1" / "model.py", tmp / model / "1" / "model.py")
            log(f"  {model:<18} {config.backend or config.platform}")
        (tmp / ASSETS).mkdir(parents=True)
        for name in ASSET_FILES:
            if (artifacts.model_dir / name).is_file():
                shutil.copy2(artifacts.model_dir / name, tmp / ASSETS / name)
        engines_gpu = {stage: artifacts.manifests[stage].get("gpu") for stage in ("vision", "llm")
                       if stage in artifacts.manifests}
        write_manifest(tmp, stage="model_repository", settings=settings,
                       inputs={"engines": str(artifacts.engines.resolve()), "model_dir": str(artifacts.model_dir.resolve())},
                       tools=("tritonclient",),
                       extra={"engines_gpu": engines_gpu,
                              "tensorrt_llm": artifacts.manifests.get("llm", {}).get("tensorrt_llm"),
                              "models": list(MODELS)})
    return out
