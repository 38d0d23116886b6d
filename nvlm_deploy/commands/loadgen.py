"""nvlm-deploy loadgen: drive a served repository over gRPC and report TTFT, ITL, latency, throughput."""

import argparse

HELP = ("load generator over gRPC (closed loop at --concurrency N or open loop at --rate R/s): TTFT, "
        "inter-token latency, latency percentiles, tokens, errors; CSV with genai-perf's metric names")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC address HOST:PORT (default 127.0.0.1:8001)")
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, help="closed loop: N requests in flight")
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals at R requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to send requests (default 10)")
    parser.add_argument("--requests", type=int, default=None, help="stop after this many requests")
    parser.add_argument("--warmup", type=int, default=1, help="requests sent and discarded first (default 1)")
    parser.add_argument("--prompt", default="Describe the image.", help="the prompt of every request")
    parser.add_argument("--image", action="append", default=[], metavar="PATH", help="an image file (repeatable)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens to generate per request (default 32)")
    parser.add_argument("--model-name", default="tensorrt_llm_bls", help="entry point: tensorrt_llm_bls or ensemble")
    parser.add_argument("--csv", default=None, help="write genai-perf-style CSV here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the open loop's arrival times")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from nvlm_deploy.bench.loadgen import format_summary, run_load
    from nvlm_deploy.client.tensors import ChatRequest, read_images
    from nvlm_deploy.errors import DeployError

    if args.duration <= 0:
        raise DeployError(f"--duration {args.duration}: must be above 0 seconds.")
    request = ChatRequest(prompt=args.prompt, images=read_images(args.image), max_tokens=args.max_tokens, stream=True)
    print(f"loadgen: {args.url} {args.model_name}, "
          + (f"concurrency {args.concurrency}" if args.concurrency else f"rate {args.rate}/s")
          + f" for {args.duration} s ...", flush=True)
    result = asyncio.run(run_load(args.url, request, concurrency=args.concurrency, rate=args.rate,
                                  duration_s=args.duration, max_requests=args.requests, model=args.model_name,
                                  seed=args.seed, warmup=args.warmup))
    print(format_summary(result.summary()))
    if args.csv:
        print(f"wrote {result.write_csv(args.csv)}")
    return 1 if result.summary()["errors"] else 0
