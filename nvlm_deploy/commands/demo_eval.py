"""nvlm-deploy demo eval: held-out accuracy per task of a demo checkpoint (JSON + table)."""

import argparse

HELP = "held-out accuracy of a demo checkpoint on each synthetic task (greedy, reference model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="demo checkpoint directory (default: the shipped nvlm_deploy/demo/nvlm-d-demo)")
    parser.add_argument("--json", dest="json_path", default=None, help="write the result as JSON to this file")
    data = parser.add_argument_group("data")
    data.add_argument("--per-task", type=int, default=300, help="held-out images per task (default 300)")
    data.add_argument("--tasks", default="all", help="comma-separated task names (default: all)")
    data.add_argument("--seed", type=int, default=0, help="seed of the evaluation split (default 0)")
    data.add_argument("--ablate-tiles", action="store_true",
                      help="give the model one tile per image (the thumbnail) and no tile tags")
    compute = parser.add_argument_group("compute")
    compute.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass (default 64)")
    compute.add_argument("--threads", type=int, default=1,
                         help="torch CPU threads (default 1: steady on a shared CPU)")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.demo.ask import default_model_dir
    from nvlm_deploy.demo.evaluate import evaluate, markdown_table, write_json
    from nvlm_deploy.errors import DeployError

    if args.per_task < 1 or args.batch_size < 1:
        raise DeployError(f"--per-task and --batch-size must be >= 1 (got {args.per_task}, {args.batch_size}).")
    model_dir = default_model_dir(args.model)
    result = evaluate(model_dir, tasks=args.tasks, per_task=args.per_task, seed=args.seed,
                      ablate_tiles=args.ablate_tiles, batch_size=args.batch_size, threads=args.threads)
    print(markdown_table(result))
    if args.json_path:
        write_json(result, args.json_path)
        print(f"\nwrote {args.json_path}")
    return 0
