"""nvlm-deploy build llm: TensorRT-LLM checkpoint -> decoder engine with a prompt table (trtllm-build)."""

import argparse

from nvlm_deploy.contracts.limits import add_limit_arguments, limit_choices

HELP = "build the decoder engine with trtllm-build (needs TensorRT-LLM 1.0-1.2 and an NVIDIA GPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    req = parser.add_argument_group("required arguments")
    req.add_argument("--checkpoint", required=True,
                     help="trtllm_checkpoint/ directory (or the target directory that holds it)")
    req.add_argument("--out", required=True, help="target directory; llm/ is written inside")
    add_limit_arguments(parser, note="engine sizes follow from them")
    opt = parser.add_argument_group("optional arguments")
    opt.add_argument("--workers", type=int, default=None, help="parallel build workers (default: one per rank)")
    opt.add_argument("--force", action="store_true", help="replace an existing llm/")
    opt.add_argument("--dry-run", action="store_true",
                     help="print the trtllm-build command for these limits and stop (stores nothing)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nvlm_deploy.build.llm_engine import (ENGINE_STAGE, build_llm_engine, checkpoint_manifest, read_checkpoint,
                                              resolve_checkpoint_dir, trtllm_build_command)
    from nvlm_deploy.config import NvlmConfig
    from nvlm_deploy.contracts.target import Target

    if args.dry_run:
        checkpoint = resolve_checkpoint_dir(args.checkpoint)
        workers = args.workers or read_checkpoint(checkpoint).mapping.world_size
        model_dir = checkpoint_manifest(checkpoint).model_dir
        limits = Target(args.out).requested_limits(NvlmConfig.from_hf(model_dir), limit_choices(args))
        print(" ".join(trtllm_build_command(checkpoint, Path(args.out) / ENGINE_STAGE, limits, workers=workers)))
        return 0
    out = build_llm_engine(args.checkpoint, args.out, workers=args.workers, force=args.force,
                           limits=limit_choices(args))
    print(f"wrote the decoder engine to {out}")
    return 0
