"""nvlm-deploy plan: GPUs, tp x pp, KV cache and speed bounds of a deployment, from config.json alone."""

import argparse

from nvlm_deploy.contracts.limits import add_limit_arguments, limit_choices

HELP = "plan a deployment: the smallest tp/pp that fits a GPU type, KV cache, max batch and roofline speeds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nvlm_deploy.plan.gpus import GPUS
    from nvlm_deploy.plan.recipes import CHOICES, DEFAULT

    target = parser.add_argument_group("model and target")
    target.add_argument("--model", required=True, help="HF NVLM-D checkpoint directory (config.json alone is enough)")
    target.add_argument("--gpu", required=True, metavar="NAME",
                        help=f"GPU type: {', '.join(GPUS)}, or an nvidia-smi name such as 'NVIDIA H100 80GB HBM3'")
    target.add_argument("--gpus", type=int, default=None, help="GPUs available (default: one node, 8)")
    target.add_argument("--recipe", choices=CHOICES, default=DEFAULT, help=f"decoder recipe (default {DEFAULT})")
    add_limit_arguments(parser, note="the plan sizes the KV cache and prompt tables for them")
    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=int, default=None,
                      help="requests at full length (input + output) the KV cache must hold at once (default 1)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", default=None, metavar="PATH", help="also write the plan as JSON (e.g. plan.json)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from nvlm_deploy.plan.planner import plan_deployment
    from nvlm_deploy.plan.render import render

    plan = plan_deployment(args.model, gpu=args.gpu, recipe=args.recipe, gpus=args.gpus,
                           limits=limit_choices(args), concurrency=args.concurrency)
    print(render(plan))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(plan.as_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {path}")
    return 0
