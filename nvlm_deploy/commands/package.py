"""nvlm-deploy package: a Triton model repository from a target directory's artifacts."""

import argparse

HELP = "fill the triton_repo/ templates from the artifacts' manifests into a Triton model repository"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--engines", required=True, help="target directory (onnx/, trtllm_checkpoint/, [vision/, llm/])")
    io.add_argument("--runtime", choices=("cpu", "gpu"), required=True,
                    help="gpu: TensorRT engines + tensorrtllm backend; cpu: the same graph on ONNX Runtime + torch")
    io.add_argument("--out", required=True, help="model repository to write (e.g. <engines>/model_repository)")
    io.add_argument("--model", default=None, help="HF checkpoint with the tokenizer (default: the one recorded "
                                                  "in trtllm_checkpoint/manifest.json)")
    io.add_argument("--force", action="store_true", help="replace an existing --out")
    limits = parser.add_argument_group("limits (gpu: default and ceiling are the engine's build limits)")
    limits.add_argument("--max-batch-size", type=int, default=None, help="requests batched together (cpu default 8)")
    limits.add_argument("--max-input-len", type=int, default=None, help="prompt tokens incl. image tokens")
    limits.add_argument("--max-output-len", type=int, default=None, help="largest max_tokens (cpu default 512)")
    limits.add_argument("--max-images", type=int, default=None, help="images per request (cpu default 4)")
    limits.add_argument("--max-tiles", type=int, default=None, help="tiles per image before the thumbnail")
    gpu = parser.add_argument_group("gpu")
    gpu.add_argument("--kv-cache-free-gpu-mem-fraction", type=float, default=0.85,
                     help="share of free GPU memory the KV cache takes (written explicitly; default 0.85)")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.errors import DeployError
    from nvlm_deploy.serve.package import PackageOptions, package_repository

    if not 0 < args.kv_cache_free_gpu_mem_fraction < 1:
        raise DeployError(f"--kv-cache-free-gpu-mem-fraction must be between 0 and 1, got {args.kv_cache_free_gpu_mem_fraction}.")
    options = PackageOptions(max_batch_size=args.max_batch_size, max_input_len=args.max_input_len,
                             max_output_len=args.max_output_len, max_images=args.max_images,
                             max_tiles=args.max_tiles, kv_cache_free_gpu_mem_fraction=args.kv_cache_free_gpu_mem_fraction)
    print(f"packaging {args.runtime} repository {args.out} from {args.engines}")
    out = package_repository(args.engines, args.out, runtime=args.runtime, model_dir=args.model, options=options,
                             force=args.force)
    print(f"wrote {out}; serve it with: nvlm-deploy serve {out}")
    return 0
