"""HF NVLM-D -> quantized TensorRT-LLM checkpoint (fp8 / int4_awq / int4_rtn), calibrated on CPU.

Steps: build calibration requests with the reference vision encoder + projector (they stay in the
model dtype and only make the prompt tables; `quant.calibration`); modelopt calibrates the Qwen2
decoder with the recipe's config; the calibrated linears are read out (`quant.linears`), the MLP
zero-padded for int4 with tp > 1 when the group count per rank would not be whole, and the
checkpoint written through the project's name table and splits (`quant.trtllm_checkpoint`) into
`<target>/trtllm_checkpoint/`, atomically, with a manifest that records the recipe, calibration
set and padding.

Two calibrations write the same checkpoint, byte for byte (tests/quant/test_quantize.py):
- "layerwise" (default): one decoder layer in memory at a time (`quant.layerwise`);
- "whole-model": modelopt's documented flow over the whole reference model, needed for `--hf-out`
  (modelopt's unified HF export takes the whole quantized model).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nvlm_deploy.errors import DeployError

CHECKPOINT_STAGE = "trtllm_checkpoint"
DEFAULT_CALIB_SIZE = 32  # TensorRT-LLM's quantize.py caps AWQ calibration at 32 samples
LAYERWISE, WHOLE_MODEL = "layerwise", "whole-model"
CALIBRATIONS = (LAYERWISE, WHOLE_MODEL)


@dataclasses.dataclass(frozen=True)
class QuantizeOptions:
    recipe: str
    kv_cache: str = "none"  # "fp8" or "none"
    group_size: int = 128
    tp: int = 1
    pp: int = 1
    calib: str = "demo"
    calib_size: int = DEFAULT_CALIB_SIZE
    dtype: str = "bf16"  # the checkpoint's model dtype (unquantized tensors, int4 scales)
    calibration: str = LAYERWISE  # CALIBRATIONS; --hf-out needs WHOLE_MODEL


def check_options(llm, options: QuantizeOptions) -> None:
    """Every refusal that needs no calibration, before anything is loaded or written."""
    from nvlm_deploy.quant.recipes import KV_CACHE_CHOICES, check_group_size, recipe
    from nvlm_deploy.trtllm import splits

    r = recipe(options.recipe)
    if options.calibration not in CALIBRATIONS:
        raise DeployError(f"--calibration {options.calibration!r} is not one of {CALIBRATIONS}.")
    if options.kv_cache not in KV_CACHE_CHOICES:
        raise DeployError(f"--kv-cache {options.kv_cache!r} is not one of {KV_CACHE_CHOICES}.")
    splits.check_tp(num_heads=llm.num_attention_heads, num_kv_heads=llm.num_key_value_heads, tp=options.tp)
    splits.check_pp(num_layers=llm.num_hidden_layers, pp=options.pp)
    if r.int4:
        check_group_size(group_size=options.group_size, hidden_size=llm.hidden_size, head_dim=llm.head_dim,
                         num_heads=llm.num_attention_heads, tp=options.tp)
        if llm.intermediate_size % options.group_size:
            raise DeployError(f"--group-size {options.group_size} does not divide the MLP width "
                              f"{llm.intermediate_size}; choose a group size that divides it.")


def check_gpu(gpu: str, options: QuantizeOptions) -> None:
    """Refuse a recipe the GPU cannot run (plan.gpus registry: fp8 needs FP8 Tensor Cores, SM 8.9+)."""
    from nvlm_deploy.plan.gpus import gpu_spec

    spec = gpu_spec(gpu)  # DeployError naming the known slugs
    needs_fp8 = options.recipe == "fp8" or options.kv_cache == "fp8"
    if needs_fp8 and "fp8" not in spec.recipes:
        raise DeployError(f"{spec.name} (SM {spec.compute_capability}) has no FP8 Tensor Cores, so TensorRT-LLM "
                          f"cannot run FP8 weights, activations or KV cache on it; use --recipe int4_awq "
                          f"--kv-cache none for it (its recipes: {', '.join(spec.recipes)}).")


def preflight(model_dir: str | Path, options: QuantizeOptions):
    """The model config after every refusal that needs no calibration (nothing is written before this)."""
    from nvlm_deploy.config import NvlmConfig
    from nvlm_deploy.quant.calibration import calibration_prompts

    config = NvlmConfig.from_hf(model_dir)
    check_options(config.llm, options)
    calibration_prompts(options.calib, size=options.calib_size)  # an empty or missing set is refused here
    return config


def quantize_checkpoint(model_dir: str | Path, out_dir: str | Path, options: QuantizeOptions, *,
                        force: bool = False, hf_out: str | Path | None = None) -> Path:
    """Calibrate and write `<out_dir>/trtllm_checkpoint/`; returns that directory.

    Args:
        model_dir: HF NVLM-D checkpoint.
        out_dir: the target directory (engines/<model>/<target>).
        options: recipe, KV cache, group size, tp/pp, calibration set.
        force: replace an existing trtllm_checkpoint/ (and hf_out).
        hf_out: also write modelopt's unified HF checkpoint there (`quant.hf_export`).
    """
    from nvlm_deploy.artifacts import atomic_output_dir
    from nvlm_deploy.contracts.precision import precision
    from nvlm_deploy.contracts.target import Target

    model_dir = Path(model_dir)
    if hf_out is not None and options.calibration != WHOLE_MODEL:
        options = dataclasses.replace(options, calibration=WHOLE_MODEL)  # modelopt's HF export takes the whole model
    config = preflight(model_dir, options)
    prec = precision(options.dtype)
    target = Target(out_dir)
    target.settle_limits(config, model_dir=model_dir, choices={})
    model = None
    with atomic_output_dir(target.dir(CHECKPOINT_STAGE), force=force) as tmp:
        if options.calibration == LAYERWISE:
            from nvlm_deploy.quant.layerwise import write_layerwise

            padded = write_layerwise(model_dir, tmp, options, dtype=prec)
        else:
            model, decoder, padded = calibrate(model_dir, options)
            write_checkpoint(tmp, model, decoder, options, padded=padded, dtype=prec)
        write_checkpoint_manifest(tmp, model_dir, options, prec=prec, llm=config.llm, padded=padded)
    if hf_out is not None:
        from nvlm_deploy.quant.hf_export import export_unified_hf

        export_unified_hf(model, model_dir, hf_out, dtype=prec, force=force)
    return target.dir(CHECKPOINT_STAGE)


def calibrate(model_dir: Path, options: QuantizeOptions):
    """(reference model, calibrated linears, padded intermediate size) — modelopt on CPU."""
    import torch

    from nvlm_deploy.lazy import require
    from nvlm_deploy.model.nvlm import NvlmModel
    from nvlm_deploy.preprocess.request import Preprocessor
    from nvlm_deploy.quant import linears
    from nvlm_deploy.quant.calibration import calibration_requests, forward_loop
    from nvlm_deploy.quant.recipes import recipe
    from nvlm_deploy.quant.trtllm_checkpoint import padded_mlp_width

    r = recipe(options.recipe)
    mtq = require("modelopt.torch.quantization", extra="quant", purpose=f"quantize --recipe {r.name}")
    model = NvlmModel.from_pretrained(model_dir, dtype="fp32")
    preprocessor = Preprocessor.from_model_dir(model_dir)
    requests = calibration_requests(model, preprocessor, options.calib, size=options.calib_size)
    cfg = r.modelopt_config(group_size=options.group_size, kv_cache=options.kv_cache)
    with torch.no_grad():
        mtq.quantize(model.language_model, cfg, forward_loop(model, requests))
    decoder = linears.collect(model.language_model, int4=r.int4, group_size=options.group_size,
                              kv_cache=options.kv_cache == "fp8")
    llm = model.config.llm
    padded = padded_mlp_width(llm, options)
    if padded != llm.intermediate_size:
        linears.pad_intermediate(decoder, num_layers=llm.num_hidden_layers, intermediate=llm.intermediate_size,
                                 padded=padded, group_size=options.group_size)
    return model, decoder, padded


def write_checkpoint(directory: Path, model, decoder, options: QuantizeOptions, *, padded: int, dtype) -> None:
    """config.json + rank files of a calibrated reference model (whole-model calibration) into `directory`."""
    from nvlm_deploy.quant.recipes import recipe
    from nvlm_deploy.quant.trtllm_checkpoint import checkpoint_config, rank_tensors, write_rank_files
    from nvlm_deploy.trtllm.names import HF_PREFIX, plan_tensors
    from nvlm_deploy.trtllm.rank_files import RankLayout

    r = recipe(options.recipe)
    llm = model.config.llm
    state = {n: t for n, t in model.state_dict().items() if n.startswith(HF_PREFIX) and "quantizer" not in n}
    targets = plan_tensors(sorted(n for n in state if n.endswith((".weight", ".bias"))),
                           num_layers=llm.num_hidden_layers, attention_bias=llm.attention_bias,
                           tie_word_embeddings=llm.tie_word_embeddings, where="the calibrated model")
    layout = RankLayout(tp=options.tp, pp=options.pp, num_layers=llm.num_hidden_layers)
    tensors = rank_tensors(targets, lambda n: state[n].float(), decoder, layout, dtype=dtype.torch_dtype(),
                           num_kv_heads=llm.num_key_value_heads, int4=r.int4, group_size=options.group_size)
    checkpoint_config(llm, options, padded=padded, dtype=dtype).write(directory)
    write_rank_files(directory, tensors)


def write_checkpoint_manifest(directory: Path, model_dir: Path, options: QuantizeOptions, *, prec, llm, padded: int) -> None:
    from nvlm_deploy.artifacts import input_hashes
    from nvlm_deploy.contracts.manifest import TrtllmCheckpointManifest, tool_versions, write_manifest
    from nvlm_deploy.trtllm.config import ROTARY_SCALING_REASON
    from nvlm_deploy.trtllm.rank_files import RankLayout

    layout = RankLayout(tp=options.tp, pp=options.pp, num_layers=llm.num_hidden_layers)
    ranks = {f"rank{r}": {"tp_rank": r % layout.tp, "pp_rank": r // layout.tp,
                          "layers": [layout.layers(r).start, layout.layers(r).stop]} for r in layout.ranks()}
    quantization = {**dataclasses.asdict(options), "intermediate_size": llm.intermediate_size,
                    "padded_intermediate_size": padded}
    write_manifest(directory, TrtllmCheckpointManifest(
        model_dir=str(model_dir.resolve()), input_hashes=input_hashes(model_dir), precision=prec.name,
        tp=layout.tp, pp=layout.pp, world_size=layout.tp * layout.pp, ranks=ranks, rotary_scaling=None,
        rotary_scaling_reason=ROTARY_SCALING_REASON, source_rope_scaling=llm.rope_scaling,
        self_check=["rank files re-read with safetensors (names, dtypes, shapes)"],
        tools=tool_versions("torch", "safetensors", "nvidia-modelopt"), quantization=quantization))
