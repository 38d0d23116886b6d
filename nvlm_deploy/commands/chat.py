"""nvlm-deploy chat: ask a running server a question (with images) over gRPC."""

import argparse

HELP = "ask a served NVLM-D a question over gRPC (images sent as bytes; --stream prints as it comes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the question; `<image>` marks where each image goes (default: images first)")
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC address HOST:PORT (default 127.0.0.1:8001)")
    parser.add_argument("--image", action="append", default=[], metavar="PATH", help="an image file (repeatable)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for each response before calling the stream stalled "
                             "(default 120; 0: wait forever)")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate (default 64)")
    gen.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--top-k", type=int, default=None, help="0 with --top-p 0 is greedy (the default)")
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--model-name", default="tensorrt_llm_bls", help="entry point: tensorrt_llm_bls (default) or ensemble")


def run(args: argparse.Namespace) -> int:
    import sys

    from nvlm_deploy.client.sync import NvlmClient
    from nvlm_deploy.client.tensors import DEFAULT_TIMEOUT_S
    from nvlm_deploy.errors import DeployError

    if args.timeout is not None and args.timeout < 0:
        raise DeployError(f"--timeout must be >= 0 seconds, got {args.timeout}.")
    timeout = DEFAULT_TIMEOUT_S if args.timeout is None else (args.timeout or None)
    options = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed)
    with NvlmClient(args.url, model=args.model_name, timeout=timeout) as client:
        if args.stream:
            for chunk in client.stream(args.prompt, args.image, **options):
                sys.stdout.write(chunk)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            print(client.chat(args.prompt, args.image, **options))
    return 0
