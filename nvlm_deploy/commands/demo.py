"""nvlm-deploy demo: ask the shipped demo NVLM-D a question about an image; prints question and answer.

Without arguments it asks about the bundled wide sample, which dynamic tiling cuts into 3 tiles +
thumbnail and whose answer shows only in the tiles.
"""

import argparse

HELP = "ask the shipped demo NVLM-D about an image (default: a bundled sample and its question)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", default=None,
                        help="image file (default: the bundled sample nvlm_deploy/demo/samples/striped_wide.png)")
    parser.add_argument("-q", "--question", default=None,
                        help="question about the image (default: the question that fits the sample)")
    parser.add_argument("--model", default=None, help="demo checkpoint (default: the shipped nvlm-d-demo)")
    parser.add_argument("--max-tokens", type=int, default=16, help="longest answer in tokens (default 16)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nvlm_deploy.demo.ask import ask, sample_path, sample_question
    from nvlm_deploy.errors import DeployError

    image = Path(args.image) if args.image else sample_path()
    if not image.is_file():
        raise DeployError(f"--image {image} does not exist; pass an image file (PNG, JPEG, ...).")
    question = args.question or sample_question(image)
    answer = ask(question, [image], model_dir=args.model, max_new_tokens=args.max_tokens)
    print(f"image:    {image}")
    print(f"question: {question}")
    print(f"answer:   {answer}")
    return 0
