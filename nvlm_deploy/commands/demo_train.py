"""nvlm-deploy demo train: train the demo NVLM-D from scratch on the synthetic tasks (CPU, seeded)."""

import argparse

HELP = "train the demo NVLM-D on the synthetic image tasks and write it as an NVLM-D checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="checkpoint directory to create")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default 0)")
    run_group.add_argument("--steps", type=int, default=6000, help="optimizer steps (default 6000)")
    run_group.add_argument("--batch-size", type=int, default=16,
                           help="samples per step (default 16; a multiple of 8 keeps batch shapes fixed)")
    run_group.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    run_group.add_argument("--warmup", type=int, default=200, help="linear warmup steps (default 200)")
    run_group.add_argument("--threads", type=int, default=1,
                           help="torch CPU threads (default 1; part of the result: keep it to reproduce a run)")
    model_group = parser.add_argument_group("model and data")
    model_group.add_argument("--preset", default="demo", help="model size preset (default demo)")
    model_group.add_argument("--init", default=None,
                             help="continue from this demo checkpoint instead of fresh weights")
    model_group.add_argument("--tasks", default="all", help="comma-separated task names (default: all)")
    model_group.add_argument("--task-weights", default=None,
                             help="comma-separated slots per task in each batch pattern, e.g. 1,1,3,3 "
                                  "(default: 1 each); the batch size must be a multiple of their sum")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.demo.tasks import task_names
    from nvlm_deploy.demo.train import TrainSettings, train
    from nvlm_deploy.errors import DeployError

    for name in ("steps", "batch_size", "threads", "warmup"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise DeployError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    settings = TrainSettings(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             warmup=args.warmup, threads=args.threads, preset=args.preset,
                             tasks=tuple(task_names(args.tasks)), task_weights=_weights(args.task_weights),
                             init=args.init)
    summary = train(settings, out=args.out, force=args.force, log=lambda line: print(line, flush=True))
    print(f"wrote {args.out} ({settings.steps} steps in {summary['wall_seconds'] / 60:.1f} min)")
    return 0


def _weights(text: str | None) -> tuple[int, ...] | None:
    from nvlm_deploy.errors import DeployError

    if text is None:
        return None
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise DeployError(f"--task-weights {text!r} must be comma-separated integers, e.g. 1,1,3,3.") from None
