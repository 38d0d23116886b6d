"""nvlm-deploy build: every stage for each target (convert -> ONNX -> engines -> repository), reusing what matches."""

import argparse

from nvlm_deploy.contracts.limits import add_limit_arguments, limit_choices

HELP = ("every stage for each target into <out>/<model>/<target>/, reusing stages whose manifest matches; "
        "or one stage: build vision, build llm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("model and targets (without a subcommand)")
    io.add_argument("--model", default=None, help="HF NVLM-D checkpoint directory")
    io.add_argument("--target", dest="targets", action="append", default=None, metavar="NAME",
                    help="<gpu>-<recipe>-tp<N>[pp<M>] (e.g. h100-sxm-bf16-tp2), cpu-<precision> (e.g. cpu-fp32), "
                         "or auto (one per GPU type nvidia-smi lists); repeat for several")
    io.add_argument("--out", default="engines", help="engines root (default engines)")
    add_limit_arguments(parser, note="applied to every target")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.pipeline.run import build_targets, summary
    from nvlm_deploy.errors import DeployError

    if not args.model or not args.targets:
        raise DeployError("nvlm-deploy build needs --model DIR and at least one --target NAME (e.g. --target cpu-fp32 "
                          "--target h100-sxm-bf16-tp2, or --target auto), or a subcommand: build vision, build llm. "
                          "See nvlm-deploy build --help.")
    results = build_targets(args.model, args.targets, out=args.out, limits=limit_choices(args),
                            log=lambda line: print(line, flush=True))
    for result in results:
        print("\n".join(summary(result)))
    return 0
