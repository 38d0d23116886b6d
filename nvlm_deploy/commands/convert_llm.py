"""nvlm-deploy convert llm: HF NVLM-D decoder -> TensorRT-LLM checkpoint (tp x pp ranks), streamed."""

import argparse

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
    par.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"],
                     help="weight dtype (default bf16, as NVLM-D ships; fp32 is for exact parity checks)")
    opt = parser.add_argument_group("optional arguments")
    opt.add_argument("--force", action="store_true", help="replace an existing trtllm_checkpoint/")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint

    out = convert_llm_checkpoint(args.model, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype, force=args.force)
    print(f"wrote TensorRT-LLM checkpoint (tp {args.tp}, pp {args.pp}, {args.dtype}) to {out}")
    return 0
