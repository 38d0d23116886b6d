"""nvlm-deploy package: a Triton model repository from a target directory's artifacts."""

import argparse

from nvlm_deploy.contracts.limits import add_limit_arguments, limit_choices

HELP = "fill the triton_repo/ templates from the target's manifests into a Triton model repository"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--engines", required=True, help="target directory (onnx/, trtllm_checkpoint/, [vision/, llm/])")
    io.add_argument("--runtime", choices=("cpu", "gpu"), required=True,
                    help="gpu: TensorRT engines + tensorrtllm backend; cpu: the same graph on ONNX Runtime + torch")
    io.add_argument("--out", required=True, help="model repository to write (e.g. <engines>/model_repository)")
    io.add_argument("--model", default=None, help="HF checkpoint with the tokenizer (default: the one recorded "
                                                  "in trtllm_checkpoint/manifest.json)")
    io.add_argument("--force", action="store_true", help="replace an existing --out")
    io.add_argument("--allow-image-urls", action="store_true",
                    help="let preprocessing fetch http(s) image_url_input (off by default; data: URLs always work)")
    io.add_argument("--decoupled-mode", choices=("true", "false"), default="true",
                    help="true (default): streaming over the gRPC stream; false: unary requests (ModelInfer, "
                         "Triton's HTTP infer) work and streaming is refused (Triton decides per model)")
    add_limit_arguments(parser, note="here for this repository only; gpu engines must cover them")
    gpu = parser.add_argument_group("gpu")
    gpu.add_argument("--kv-cache-free-gpu-mem-fraction", type=float, default=None,
                     help="share of the GPU memory free after the decoder loads that the KV cache takes "
                          "(default: computed from the engine sizes so the vision engine fits on GPU 0)")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.serve.package import PackageOptions, package_repository

    options = PackageOptions(limits=limit_choices(args), kv_cache_free_gpu_mem_fraction=args.kv_cache_free_gpu_mem_fraction,
                             allow_remote_image_urls=args.allow_image_urls,
                             decoupled_mode=args.decoupled_mode == "true")
    print(f"packaging {args.runtime} repository {args.out} from {args.engines}")
    out = package_repository(args.engines, args.out, runtime=args.runtime, model_dir=args.model, options=options,
                             force=args.force)
    print(f"wrote {out}; serve it with: nvlm-deploy serve {out}")
    return 0
