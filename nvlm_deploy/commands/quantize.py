"""nvlm-deploy quantize: calibrate the decoder with nvidia-modelopt on CPU, write a quantized TensorRT-LLM checkpoint."""

import argparse

HELP = "quantize the Qwen2 decoder (fp8 | int4_awq) into a TensorRT-LLM checkpoint, calibrated on image+text requests"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nvlm_deploy.contracts.limits import add_limit_arguments
    from nvlm_deploy.quant.quantize import CALIBRATIONS, DEFAULT_CALIB_SIZE, LAYERWISE
    from nvlm_deploy.quant.recipes import KV_CACHE_CHOICES, RECIPES

    req = parser.add_argument_group("required arguments")
    req.add_argument("--model", required=True, help="HF NVLM-D checkpoint directory")
    req.add_argument("--recipe", required=True,
                     help="; ".join(f"{name}: {r.help}" for name, r in RECIPES.items()))
    req.add_argument("--out", required=True,
                     help="target directory (engines/<model>/<target>); trtllm_checkpoint/ is written inside")
    q = parser.add_argument_group("quantization")
    q.add_argument("--kv-cache", default="none", choices=KV_CACHE_CHOICES,
                   help="fp8: FP8 KV cache with calibrated scales (default none: the model dtype)")
    q.add_argument("--group-size", type=int, default=128, help="int4 group size (default 128)")
    q.add_argument("--calib", default="demo",
                   help="calibration set: 'demo' (the demo task generator's image+text requests, default) or a "
                        "folder of images + prompts.txt")
    q.add_argument("--calib-size", type=int, default=DEFAULT_CALIB_SIZE,
                   help=f"calibration requests (default {DEFAULT_CALIB_SIZE})")
    q.add_argument("--calibration", default=LAYERWISE, choices=CALIBRATIONS,
                   help="layerwise (default): one decoder layer in host memory at a time; whole-model: modelopt's "
                        "documented flow over the whole model (same scales; --hf-out uses it)")
    q.add_argument("--gpu", help="GPU registry slug the checkpoint is for (e.g. a100-sxm-80gb): refuse a recipe it "
                                 "cannot run (fp8 needs SM 8.9+)")
    par = parser.add_argument_group("parallelism and precision")
    par.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (default 1)")
    par.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks (default 1)")
    par.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"),
                     help="dtype of the unquantized tensors and int4 scales (default bf16)")
    opt = parser.add_argument_group("optional arguments")
    opt.add_argument("--hf-out", help="also write modelopt's unified HF quantized checkpoint (a complete NVLM-D "
                                      "directory, vision tower unquantized) here")
    opt.add_argument("--force", action="store_true", help="replace an existing trtllm_checkpoint/ (and --hf-out)")
    add_limit_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.commands.limits_report import settle_and_report
    from nvlm_deploy.contracts.limits import limit_choices
    from nvlm_deploy.quant.quantize import QuantizeOptions, check_gpu, preflight, quantize_checkpoint

    options = QuantizeOptions(recipe=args.recipe, kv_cache=args.kv_cache, group_size=args.group_size, tp=args.tp,
                              pp=args.pp, calib=args.calib, calib_size=args.calib_size, dtype=args.dtype,
                              calibration=args.calibration)
    if args.gpu:
        check_gpu(args.gpu, options)
    preflight(args.model, options)  # every refusal before the target's manifest is touched
    settle_and_report(args.model, args.out, limit_choices(args))
    out = quantize_checkpoint(args.model, args.out, options, force=args.force, hf_out=args.hf_out)
    print(f"wrote {args.recipe} TensorRT-LLM checkpoint (tp {args.tp}, pp {args.pp}, kv cache {args.kv_cache}) to {out}")
    if args.hf_out:
        print(f"wrote the unified HF quantized checkpoint to {args.hf_out}")
    return 0
