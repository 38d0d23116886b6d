"""nvlm-deploy eval: what quantization costs, quantized checkpoints against the unquantized model on the same prompts."""

import argparse

HELP = ("compare quantized TensorRT-LLM checkpoints with the unquantized model: top-1 agreement, KL, greedy exact "
        "match, demo task accuracy (JSON, Markdown, PNG)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    req = parser.add_argument_group("required arguments")
    req.add_argument("--model", required=True, help="the unquantized HF NVLM-D checkpoint (the reference)")
    req.add_argument("--target", action="append", required=True,
                     help="a target directory (or trtllm_checkpoint/) written by `nvlm-deploy quantize`; repeat it "
                          "to compare recipes (e.g. fp8, int4_awq and int4_rtn side by side)")
    opt = parser.add_argument_group("optional arguments")
    opt.add_argument("--per-task", type=int, default=300, help="held-out prompts per demo task (default 300)")
    opt.add_argument("--tasks", default="all", help="comma-separated demo tasks (default all)")
    opt.add_argument("--seed", type=int, default=None, help="eval split seed (default: the demo eval's, 0)")
    opt.add_argument("--json", help="write the report here (default: print the Markdown table only)")
    opt.add_argument("--markdown", help="write the Markdown table here")
    opt.add_argument("--png", help="write the accuracy chart (per task, per recipe) here")


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from nvlm_deploy.errors import DeployError
    from nvlm_deploy.quant.evaluate import EVAL_SEED, bar_chart, evaluate, markdown

    if args.per_task < 1:
        raise DeployError(f"--per-task must be at least 1, got {args.per_task}.")
    command = "nvlm-deploy " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    report = evaluate(args.model, args.target, tasks=args.tasks, per_task=args.per_task,
                      seed=EVAL_SEED if args.seed is None else args.seed, command=command)
    table = markdown(report)
    print(table)
    if args.json:
        from nvlm_deploy.demo.evaluate import write_json

        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
        print(f"wrote {args.markdown}")
    if args.png:
        bar_chart(report, args.png)
        print(f"wrote {args.png}")
    return 0
