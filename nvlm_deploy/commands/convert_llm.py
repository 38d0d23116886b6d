"""nvlm-deploy convert llm: HF NVLM-D decoder -> TensorRT-LLM checkpoint (tp x pp ranks), streamed."""

import argparse

from nvlm_deploy.contracts.limits import add_limit_arguments, limit_choices

from nvlm_deploy.contracts.precision import CHOICES as PRECISION_CHOICES, DEFAULT as DEFAULT_PRECISION

HELP = "convert the Qwen2 decoder to a TensorRT-LLM checkpoint (config.json + rank{N}.safetensors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    req = parser.add_argument_group("required arguments")
    req.add_argument("--model", required=True, help="HF NVLM-D checkpoint directory")
    req.add_argument("--out", required=True,
                     help="target directory (engines/<model>/<target>); trtllm_checkpoint/ is written inside")
    par = parser.add_argument_group("parallelism and precision")
    par.add_argument("--tp", type=int, default=1,
                     help="tensor-parallel ranks; must divide the attention heads (default 1)")
    par.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks; at most the layer count (default 1)")
    par.add_argument("--dtype", default=DEFAULT_PRECISION, choices=PRECISION_CHOICES,
                     help="weight dtype (default bf16, as NVLM-D ships; fp32 is for exact parity checks)")
    opt = parser.add_argument_group("optional arguments")
    opt.add_argument("--force", action="store_true", help="replace an existing trtllm_checkpoint/")
    add_limit_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.commands.limits_report import settle_and_report
    from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint

    settle_and_report(args.model, args.out, limit_choices(args))

    out = convert_llm_checkpoint(args.model, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype, force=args.force)
    print(f"wrote TensorRT-LLM checkpoint (tp {args.tp}, pp {args.pp}, {args.dtype}) to {out}")
    return 0
