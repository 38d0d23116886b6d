"""nvlm-deploy tiny: write a random-weight checkpoint with NVLM-D-72B's exact layout."""

import argparse

HELP = "write a tiny random-weight NVLM-D checkpoint (NVLM-D-72B's file layout and config keys)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="checkpoint directory to create")
    parser.add_argument("--preset", default="tiny", help="size preset: tiny (default) or demo")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.model.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(args.out, preset=args.preset, seed=args.seed, force=args.force)
    print(f"wrote {args.preset} checkpoint to {out}")
    return 0
