"""`nvlm-deploy package`: fill the Triton templates from a target's manifests into a model repository.

Layout written (REPO):

    ensemble/  tensorrt_llm_bls/  preprocessing/  vision_encoder/  tensorrt_llm/  postprocessing/
    preprocessing/assets/      tokenizer.json, tokenizer_config.json, config.json (the HF checkpoint's)
    manifest.json              RepositoryManifest: runtime, limits, KV-cache plan, engines' GPUs, paths

The tokenizer and config live in `preprocessing/assets/` because Triton treats every top-level
directory as a model (hidden ones included) and ignores non-numeric directories inside a model.
Limits are the target's (`contracts.target`), optionally changed for this repository; the engines
a runtime uses must cover them. Paths in the configs are absolute (`serve.repository_paths`).
The Python models read the limits from this repository's manifest, so they are stated once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nvlm_deploy.contracts import bls_decoder, client_tensors
from nvlm_deploy.contracts.limits import MAX_BEAM_WIDTH, DeploymentLimits
from nvlm_deploy.contracts.precision import COMPUTE, Precision, precision
from nvlm_deploy.contracts.target import Target
from nvlm_deploy.errors import DeployError
from nvlm_deploy.preprocess.tokenizer import DEFAULT_SPECIAL_TOKEN_POLICY
from nvlm_deploy.serve.template import placeholders, render_config

MODELS = ("preprocessing", "vision_encoder", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls")
ASSETS = "preprocessing/assets"
ASSET_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json")
REQUIRED_ASSETS = ("tokenizer.json", "config.json")
MAX_DEFAULT_INSTANCES = 8  # preprocessing instances `package` sizes from the cores, at most


def default_instance_count(cores: int | None = None) -> int:
    """Preprocessing instances for a machine with `cores` usable cores (None: this process's).

    Each instance is one Python process decoding one image at a time (PIL releases the GIL, but an
    instance works on one request), so instances are the images decoded at once. Half the cores
    leaves the other half to the decoder, the vision encoder and Triton; at most MAX_DEFAULT_INSTANCES
    (each holds a tokenizer and a decoded image). `package --preprocessing-instances N` overrides it.
    """
    import os

    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_INSTANCES, cores // 2))


@dataclass(frozen=True)
class Runtime:
    """What a runtime serves from: the stages it reads, where its vision model is, its engines."""

    stages: tuple[str, ...]
    vision_stage: str
    engine_stages: tuple[str, ...]  # built for limits: they must cover the repository's

    def table_precision(self, target: Target) -> Precision:
        """Prompt-table precision: the decoder engine's dtype (gpu), the CPU runtime's compute (cpu)."""
        if self.engine_stages:
            return precision(target.manifest("trtllm_checkpoint").precision)
        return precision(COMPUTE)


RUNTIMES: dict[str, Runtime] = {
    "cpu": Runtime(stages=("onnx", "trtllm_checkpoint"), vision_stage="onnx", engine_stages=()),
    "gpu": Runtime(stages=("onnx", "trtllm_checkpoint", "vision", "llm"), vision_stage="vision",
                   engine_stages=("vision", "llm")),
}


# vision_encoder's per-tile embedding cache bound (`package --vision-cache-mib`): ~100 NVLM-D-72B tiles
# (256 tokens x 8192 x fp32 = 8 MiB each)
DEFAULT_VISION_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class PackageOptions:
    """What the user may choose; None means: the target's (limits) or computed (KV-cache fraction)."""

    limits: dict[str, int | None] = field(default_factory=dict)  # contracts.limits.CHOICE_FIELDS
    kv_cache_free_gpu_mem_fraction: float | None = None
    max_queue_delay_microseconds: int = 2000
    preprocessing_instance_count: int | None = None  # None: default_instance_count() (cores)
    postprocessing_instance_count: int = 1
    bls_instance_count: int = 1
    allow_remote_image_urls: bool = False  # preprocessing fetches http(s) image_url_input (size/time-limited)
    exif_transpose: bool = False  # preprocessing turns images by their EXIF orientation (HF does not)
    special_tokens_in_text: str = DEFAULT_SPECIAL_TOKEN_POLICY  # control tokens in request text: escape | refuse
    # decoupled (default): streaming through the gRPC stream; not decoupled: unary ModelInfer works (what
    # tensorrtllm_backend clients use when not streaming) and streaming is refused. Triton decides per model.
    decoupled_mode: bool = True
    # vision_encoder (issue 12): per-tile embedding cache bound (0 disables), Triton dynamic
    # batching of concurrent image requests (queue delay in us; None: no dynamic batching), ONNX Runtime
    # worker threads spinning (off: they would take the decoder's cores between calls)
    vision_cache_bytes: int = DEFAULT_VISION_CACHE_BYTES
    vision_batch_queue_delay_us: int | None = 500
    vision_onnx_spinning: bool = False
    # GPU only, off until a GPU run proves it: prompt_table_extra_ids from the image tiles' hashes, so the
    # decoder's enable_kv_cache_reuse can be on (serve/upstream/prompt_table_extra_ids_1.2.json)
    prompt_table_extra_ids: bool = False
    # a request still running this long after it arrived ends with an error (tensorrt_llm cpu, tensorrt_llm_bls)
    request_timeout_s: float = 300.0
    # where tensorrt_llm_bls decodes (contracts.bls_decoder); None: its default for the runtime
    bls_decoder: str | None = None

    def bls_decoder_for(self, runtime: str) -> str:
        """The BLS's decoder on `runtime`; DeployError for a choice that runtime cannot serve."""
        if self.bls_decoder is None:
            return bls_decoder.default(runtime)
        if self.bls_decoder not in bls_decoder.CHOICES:
            raise DeployError(f"--bls-decoder {self.bls_decoder!r} is not one of {', '.join(bls_decoder.CHOICES)}.")
        if self.bls_decoder == bls_decoder.LOCAL and runtime != "cpu":
            raise DeployError("--bls-decoder local is for --runtime cpu (the CPU decoder in the BLS's process); on "
                              "gpu the decoder is the tensorrtllm backend, which the BLS calls: leave it out.")
        return self.bls_decoder


# ensemble steps' maps when prompt_table_extra_ids is on: vision_encoder turns the token ids into the extra ids
EXTRA_IDS_MAPS = {
    "vision": '      input_map { key: "input_ids" value: "_INPUT_ID" }\n'
              '      output_map { key: "prompt_table_extra_ids" value: "_PROMPT_TABLE_EXTRA_IDS" }',
    "llm": '      input_map { key: "prompt_table_extra_ids" value: "_PROMPT_TABLE_EXTRA_IDS" }',
}


def templates() -> Path:
    from nvlm_deploy.resources import templates_dir

    return templates_dir()


def template_path(model: str, runtime: str) -> Path:
    specific = templates() / model / f"config.pbtxt.{runtime}.template"
    return specific if specific.is_file() else templates() / model / "config.pbtxt.template"


def find_model_dir(target: Target, model_dir: str | Path | None) -> Path:
    """The HF checkpoint for the tokenizer: `model_dir`, else the one the decoder was converted from."""
    if model_dir is None:
        recorded = target.manifest("trtllm_checkpoint").model_dir
        if not Path(recorded).is_dir():
            raise DeployError(f"{target.dir('trtllm_checkpoint') / 'manifest.json'} names the HF checkpoint "
                              f"{recorded!r}, which does not exist here; pass --model DIR (the checkpoint with "
                              "tokenizer.json).")
        model_dir = recorded
    model_dir = Path(model_dir)
    for name in REQUIRED_ASSETS:
        if not (model_dir / name).is_file():
            raise DeployError(f"{model_dir / name} does not exist: --model must be the HF NVLM-D checkpoint "
                              "(its tokenizer.json and config.json go into the repository).")
    return model_dir


def repository_limits(target: Target, runtime: Runtime, config, options: PackageOptions) -> DeploymentLimits:
    """The target's limits with the options applied; refused when an engine the runtime uses cannot serve them."""
    limits = target.requested_limits(config, options.limits)
    problems = target.engines_not_serving(limits, stages=runtime.engine_stages)
    if problems:
        raise DeployError(f"cannot package {target.root} with these limits:\n  - " + "\n  - ".join(problems))
    return limits


def kv_cache_plan(target: Target, runtime: Runtime, limits: DeploymentLimits, table: Precision, *,
                  hidden_size: int, given: float | None):
    from nvlm_deploy.serve.gpu_memory import GIB, plan_kv_cache

    if not runtime.engine_stages:
        return None
    llm, vision = target.manifest("llm"), target.manifest("vision")
    memory = llm.gpu.get("memory_gib")
    return plan_kv_cache(
        gpu_memory_bytes=int(memory * GIB) if memory else None,
        decoder_rank0_bytes=llm.engine_bytes.get("rank0.engine", 0), vision_plan_bytes=vision.plan_bytes,
        prompt_table_bytes=limits.max_prompt_embedding_table_size * hidden_size * table.itemsize, given=given)


def template_values(target: Target, runtime_name: str, out: Path, *, limits: DeploymentLimits, table: Precision,
                    config, kv_plan, options: PackageOptions) -> dict[str, object]:
    """The value of every `${var}` of one repository (paths absolute, for the repository's final place)."""
    runtime = RUNTIMES[runtime_name]
    out = out.resolve()
    return {
        "triton_max_batch_size": limits.max_batch_size,
        "assets_dir": str(out / ASSETS),
        "image_size": config.image_size,
        "hidden_size": config.llm.hidden_size,
        "pixel_values_data_type": precision(COMPUTE).triton,
        "prompt_table_data_type": table.triton,
        "runtime": runtime_name,
        "vision_model_path": str(target.dir(runtime.vision_stage).resolve()),
        "vision_threads": 0,
        "llm_threads": 0,  # tensorrt_llm (cpu) intra-op threads; 0: backend.llm.decoder_threads decides
        "vision_instance_count": 1,
        "vision_cache_bytes": options.vision_cache_bytes,
        "vision_onnx_spinning": options.vision_onnx_spinning,
        "vision_dynamic_batching": "" if options.vision_batch_queue_delay_us is None else
        f"dynamic_batching {{ max_queue_delay_microseconds: {options.vision_batch_queue_delay_us} }}",
        "vocab_size": config.llm.vocab_size,
        "prompt_table_extra_ids": options.prompt_table_extra_ids,
        "enable_kv_cache_reuse": options.prompt_table_extra_ids,
        "vision_extra_ids_maps": EXTRA_IDS_MAPS["vision"] if options.prompt_table_extra_ids else "",
        "llm_extra_ids_maps": EXTRA_IDS_MAPS["llm"] if options.prompt_table_extra_ids else "",
        "checkpoint_dir": str(target.dir("trtllm_checkpoint").resolve()),
        "engine_dir": str(target.dir("llm").resolve()),
        "compute_precision": COMPUTE,
        "kv_cache_free_gpu_mem_fraction": kv_plan.fraction if kv_plan else "",
        "max_queue_delay_microseconds": options.max_queue_delay_microseconds,
        "preprocessing_instance_count": options.preprocessing_instance_count or default_instance_count(),
        "postprocessing_instance_count": options.postprocessing_instance_count,
        "bls_instance_count": options.bls_instance_count,
        "allow_remote_image_urls": options.allow_remote_image_urls,
        "exif_transpose": options.exif_transpose,
        "special_tokens_in_text": options.special_tokens_in_text,
        "decoupled_mode": options.decoupled_mode,
        "request_timeout_s": options.request_timeout_s,
        "bls_decoder": options.bls_decoder_for(runtime_name),
        "max_beam_width": MAX_BEAM_WIDTH,
        **client_tensors.render_io(),
        **client_tensors.render_ensemble_maps(),
    }


def render_repository(values: dict, *, runtime: str) -> dict[str, tuple[str, object, dict[str, str]]]:
    """model -> (config text, parsed ModelConfig, path parameters); each template gets exactly its values."""
    from nvlm_deploy.serve.repository_paths import path_parameters

    rendered = {}
    for model in MODELS:
        path = template_path(model, runtime)
        text = path.read_text(encoding="utf-8")
        config_text, config = render_config(path, {k: v for k, v in values.items() if k in placeholders(text)})
        rendered[model] = (config_text, config, path_parameters(text))
    return rendered


def check_backend_config(config, *, source) -> None:
    """Refuse a GPU tensorrt_llm config the 1.2 backend would not load or that differs from upstream's
    tensors (facts in serve/upstream/tensorrtllm_backend_1.2.json)."""
    from nvlm_deploy.serve.upstream import io_mismatches, missing_required_parameters

    problems = [f"parameter {name} is missing (the backend reads it without a fallback)"
                for name in missing_required_parameters(config)] + io_mismatches(config)
    if problems:
        raise DeployError(f"{source} is out of date with tensorrtllm_backend 1.2:\n  - " + "\n  - ".join(problems))


def package_repository(engines: str | Path, out: str | Path, *, runtime: str, model_dir: str | Path | None = None,
                       options: PackageOptions | None = None, force: bool = False,
                       log: Callable[[str], None] = print) -> Path:
    """Write a Triton model repository for `runtime` ("cpu" | "gpu") from the target directory `engines`.

    Args:
        engines: the target directory (onnx/, trtllm_checkpoint/, and for gpu vision/, llm/).
        out: the repository to create.
        runtime: "cpu" (Python models over nvlm_deploy.runtime) or "gpu" (TensorRT + tensorrtllm backend).
        model_dir: the HF checkpoint (tokenizer, config); None: the one the LLM checkpoint was converted from.
        options: limits, KV-cache fraction and instance counts.
        force: replace an existing `out`.
    """
    from nvlm_deploy.artifacts import atomic_output_dir
    from nvlm_deploy.config import NvlmConfig
    from nvlm_deploy.contracts.manifest import RepositoryManifest, tool_versions, write_manifest
    from nvlm_deploy.serve.repository_paths import relative_paths

    if runtime not in RUNTIMES:
        raise DeployError(f"--runtime {runtime!r} is not one of {sorted(RUNTIMES)}.")
    if (options or PackageOptions()).prompt_table_extra_ids and runtime != "gpu":
        raise DeployError("--prompt-table-extra-ids is for --runtime gpu (it lets TensorRT-LLM's KV-cache reuse tell "
                          "images apart); the CPU runtime has no KV-cache reuse: leave it off.")
    spec, options, out = RUNTIMES[runtime], options or PackageOptions(), Path(out)
    target = Target.of(engines)
    manifests = {stage: target.manifest(stage) for stage in spec.stages}
    model_dir = find_model_dir(target, model_dir)
    config = NvlmConfig.from_hf(model_dir)
    limits = repository_limits(target, spec, config, options)
    table = spec.table_precision(target)
    kv_plan = kv_cache_plan(target, spec, limits, table, hidden_size=config.llm.hidden_size,
                            given=options.kv_cache_free_gpu_mem_fraction)
    values = template_values(target, runtime, out, limits=limits, table=table, config=config, kv_plan=kv_plan,
                             options=options)
    rendered = render_repository(values, runtime=runtime)  # every config parses before anything is written
    if runtime == "gpu":
        check_backend_config(rendered["tensorrt_llm"][1], source=template_path("tensorrt_llm", runtime))
    with atomic_output_dir(out, force=force) as tmp:
        for model, (text, model_config, _) in rendered.items():
            (tmp / model).mkdir()
            (tmp / model / "config.pbtxt").write_text(text, encoding="utf-8")
            (tmp / model / "1").mkdir()  # every model needs a version directory, even the ensemble
            if model_config.backend == "python":
                shutil.copy2(templates() / model / "1" / "model.py", tmp / model / "1" / "model.py")
            log(f"  {model:<18} {model_config.backend or model_config.platform}")
        (tmp / ASSETS).mkdir(parents=True)
        for name in ASSET_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / ASSETS / name)
        if kv_plan:
            log(f"  {kv_plan.summary()}")
        engines_gpu = {stage: {**manifests[stage].gpu, "hardware_compat": getattr(manifests[stage], "hardware_compat", "none")}
                       for stage in spec.engine_stages}
        write_manifest(tmp, RepositoryManifest(
            runtime=runtime, target=str(target.root.resolve()), model_dir=str(model_dir.resolve()),
            limits=limits.as_dict(), world_size=manifests["trtllm_checkpoint"].world_size,
            prompt_table_precision=table.name, kv_cache=kv_plan.as_dict() if kv_plan else {},
            engines_gpu=engines_gpu, tensorrt_llm=manifests["llm"].tensorrt_llm if "llm" in manifests else None,
            models=list(MODELS), decoupled=options.decoupled_mode,
            paths={model: relative_paths(params, values, out.resolve())
                   for model, (_, _, params) in rendered.items() if params},
            tools=tool_versions("tritonclient")))
    return out
