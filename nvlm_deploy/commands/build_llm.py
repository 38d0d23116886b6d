"""nvlm-deploy build llm: TensorRT-LLM checkpoint -> decoder engine with a prompt table (trtllm-build)."""

import argparse

HELP = "build the decoder engine with trtllm-build (needs TensorRT-LLM 1.0-1.2 and an NVIDIA GPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    req = parser.add_argument_group("required arguments")
    req.add_argument("--checkpoint", required=True,
                     help="trtllm_checkpoint/ directory (or the target directory that holds it)")
    req.add_argument("--out", required=True, help="target directory; llm/ is written inside")
    lim = parser.add_argument_group("request limits (engine sizes follow from them)")
    lim.add_argument("--max-batch-size", type=int, default=8, help="requests in flight (default 8)")
    lim.add_argument("--max-images", type=int, default=1, help="images per request (default 1)")
    lim.add_argument("--max-tiles", type=int, default=7, help="tiles per image, thumbnail included (default 7)")
    lim.add_argument("--tokens-per-tile", type=int, default=256, help="image tokens per tile (default 256)")
    lim.add_argument("--max-text-len", type=int, default=1024, help="prompt tokens besides image tokens (default 1024)")
    lim.add_argument("--max-output-len", type=int, default=1024, help="generated tokens per request (default 1024)")
    lim.add_argument("--max-num-tokens", type=int, default=None,
                     help="tokens per engine step (default: one full multimodal prompt)")
    opt = parser.add_argument_group("optional arguments")
    opt.add_argument("--workers", type=int, default=None, help="parallel build workers (default: one per rank)")
    opt.add_argument("--force", action="store_true", help="replace an existing llm/")
    opt.add_argument("--dry-run", action="store_true", help="print the trtllm-build command and stop")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nvlm_deploy.build.llm_engine import (ENGINE_DIR, LlmBuildLimits, build_llm_engine, read_checkpoint_mapping,
                                              resolve_checkpoint_dir, trtllm_build_command)

    limits = LlmBuildLimits(max_batch_size=args.max_batch_size, max_images=args.max_images, max_tiles=args.max_tiles,
                            tokens_per_tile=args.tokens_per_tile, max_text_len=args.max_text_len,
                            max_output_len=args.max_output_len, max_num_tokens=args.max_num_tokens)
    if args.dry_run:
        checkpoint = resolve_checkpoint_dir(args.checkpoint)
        workers = args.workers or read_checkpoint_mapping(checkpoint)["world_size"]
        print(" ".join(trtllm_build_command(checkpoint, Path(args.out) / ENGINE_DIR, limits, workers=workers)))
        return 0
    out = build_llm_engine(args.checkpoint, args.out, limits=limits, workers=args.workers, force=args.force)
    print(f"wrote the decoder engine to {out}")
    return 0
