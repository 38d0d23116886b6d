"""nvlm-deploy generate: answer a prompt with the PyTorch reference model (greedy)."""

import argparse

from nvlm_deploy.contracts.precision import CHOICES as PRECISION_CHOICES

HELP = "answer a prompt (with optional images) using the PyTorch reference model, greedily"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    req = parser.add_argument_group("required arguments")
    req.add_argument("--model", required=True, help="HF NVLM-D checkpoint directory")
    req.add_argument("--prompt", required=True, help="the question; <image> marks where each image goes")
    opt = parser.add_argument_group("optional arguments")
    opt.add_argument("--image", action="append", default=[], metavar="PATH",
                     help="an image file; repeat for several images")
    opt.add_argument("--max-new-tokens", type=int, default=64, help="generation limit (default 64)")
    opt.add_argument("--dtype", default="fp32", choices=PRECISION_CHOICES,
                     help="compute precision of the reference model (default fp32)")
    opt.add_argument("--max-tiles", type=int, default=None, help="tiles per image (default: the config's)")
    opt.add_argument("--max-images", type=int, default=None,
                     help="images per request (default: the deployment limits' default, 1)")
    opt.add_argument("--max-pixels", type=int, default=None,
                     help="largest width x height accepted per image (default 64 megapixels)")
    opt.add_argument("--system-message", default=None, help="chatml system message (default 'Answer the questions.')")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.model.generate import ReferencePipeline

    pipeline = ReferencePipeline.from_model_dir(args.model, dtype=args.dtype, max_tiles=args.max_tiles,
                                                max_images=args.max_images, max_pixels=args.max_pixels,
                                                system_message=args.system_message)
    print(pipeline.generate(args.prompt, args.image, max_new_tokens=args.max_new_tokens))
    return 0
