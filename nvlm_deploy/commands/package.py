"""nvlm-deploy package: a Triton model repository from a target directory's artifacts."""

import argparse

from nvlm_deploy.contracts import bls_decoder
from nvlm_deploy.contracts.limits import add_limit_arguments, limit_choices
from nvlm_deploy.preprocess.tokenizer import DEFAULT_SPECIAL_TOKEN_POLICY, SPECIAL_TOKEN_POLICIES

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
    io.add_argument("--verify", action="store_true",
                    help="check every file of the stages packaged against the digests their manifests record "
                         "(sizes are always checked)")
    io.add_argument("--allow-image-urls", action="store_true",
                    help="let preprocessing fetch http(s) image_url_input (off by default; data: URLs always work)")
    io.add_argument("--decoupled-mode", choices=("true", "false"), default="true",
                    help="true (default): streaming over the gRPC stream; false: unary requests (ModelInfer, "
                         "Triton's HTTP infer) work and streaming is refused (Triton decides per model)")
    io.add_argument("--bls-decoder", choices=bls_decoder.CHOICES, default=None,
                    help="where tensorrt_llm_bls decodes: local (cpu default: the CPU decoder in the BLS's own "
                         "process, 4 process crossings fewer per request; the decoder's weights load twice, the "
                         "ensemble's tensorrt_llm keeps its copy) or tensorrt_llm (each generation a request to "
                         "that model; gpu: always)")
    add_limit_arguments(parser, note="here for this repository only; gpu engines must cover them")
    pre = parser.add_argument_group("preprocessing")
    pre.add_argument("--preprocessing-instances", type=int, default=None, metavar="N",
                     help="preprocessing model instances (images decoded at once; default: half this machine's "
                          "cores, 1 to 8)")
    pre.add_argument("--exif-rotate", action="store_true",
                     help="turn images as their EXIF orientation says (HF NVLM-D does not: off by default)")
    pre.add_argument("--special-tokens-in-text", choices=SPECIAL_TOKEN_POLICIES, default=DEFAULT_SPECIAL_TOKEN_POLICY,
                     help="control tokens (<|im_end|>, <|im_start|>, ...) written in a request's text: escape "
                          "(default: read as plain text) or refuse (the request is an error); never obeyed")
    gpu = parser.add_argument_group("gpu")
    gpu.add_argument("--kv-cache-free-gpu-mem-fraction", type=float, default=None,
                     help="share of the GPU memory free after the decoder loads that the KV cache takes "
                          "(default: computed from the engine sizes so the vision engine fits on GPU 0)")
    gpu.add_argument("--prompt-table-extra-ids", action="store_true",
                     help="send prompt_table_extra_ids (from each image tile's pixels) so the decoder's KV-cache reuse "
                          "can be on (enable_kv_cache_reuse); off by default until a GPU run proves it")
    vision = parser.add_argument_group("vision encoder")
    vision.add_argument("--vision-cache-mib", type=float, default=None, metavar="MIB",
                        help="per-tile embedding cache bound in MiB (default 256: serve.package.DEFAULT_VISION_CACHE_BYTES; "
                             "0 turns it off)")
    vision.add_argument("--vision-batch-delay-us", type=int, default=None, metavar="US",
                        help="dynamic batching of concurrent image requests: queue delay in microseconds "
                             "(default 500; -1 turns dynamic batching off)")
    vision.add_argument("--vision-onnx-spinning", action="store_true",
                        help="(cpu) let ONNX Runtime's idle threads spin-wait (off by default: they take the "
                             "decoder's cores)")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.serve.package import PackageOptions, package_repository

    options = PackageOptions(limits=limit_choices(args), kv_cache_free_gpu_mem_fraction=args.kv_cache_free_gpu_mem_fraction,
                             allow_remote_image_urls=args.allow_image_urls,
                             preprocessing_instance_count=_instances(args.preprocessing_instances),
                             exif_transpose=args.exif_rotate, special_tokens_in_text=args.special_tokens_in_text,
                             decoupled_mode=args.decoupled_mode == "true", bls_decoder=args.bls_decoder,
                             **_vision_options(args))
    print(f"packaging {args.runtime} repository {args.out} from {args.engines}")
    _check_checkpoint_fits_its_config(args.engines)
    if args.verify:
        from nvlm_deploy.contracts.target import Target
        from nvlm_deploy.serve.package import RUNTIMES

        if args.runtime in RUNTIMES:
            Target.of(args.engines).verify(RUNTIMES[args.runtime].stages, hashes=True)
    out = package_repository(args.engines, args.out, runtime=args.runtime, model_dir=args.model, options=options,
                             force=args.force)
    print(f"wrote {out}; serve it with: nvlm-deploy serve {out}")
    return 0


def _instances(value: int | None) -> int | None:
    from nvlm_deploy.errors import DeployError

    if value is not None and value < 1:
        raise DeployError(f"--preprocessing-instances {value}: give a count >= 1 (or leave it out to size it "
                          "from the cores).")
    return value


def _vision_options(args: argparse.Namespace) -> dict:
    """PackageOptions of the vision encoder (tile cache, dynamic batching, spinning) and extra ids."""
    from nvlm_deploy.errors import DeployError

    options = {"vision_onnx_spinning": args.vision_onnx_spinning, "prompt_table_extra_ids": args.prompt_table_extra_ids}
    if args.vision_batch_delay_us is not None:
        options["vision_batch_queue_delay_us"] = None if args.vision_batch_delay_us < 0 else args.vision_batch_delay_us
    if args.vision_cache_mib is not None:
        if args.vision_cache_mib < 0:
            raise DeployError(f"--vision-cache-mib {args.vision_cache_mib}: give a size >= 0 (0 turns the cache off).")
        options["vision_cache_bytes"] = int(args.vision_cache_mib * 2**20)
    return options


def _check_checkpoint_fits_its_config(engines: str) -> None:
    """Refuse a checkpoint whose config.json no longer fits its rank files (an edited vocab_size keeps
    the file's size): the loader's own check (trtllm.checkpoint_check), run here on the headers only."""
    from nvlm_deploy.contracts.target import Target
    from nvlm_deploy.trtllm.checkpoint_check import verify_checkpoint
    from nvlm_deploy.trtllm.config import CONFIG_FILE, TrtllmConfig
    from nvlm_deploy.trtllm.rank_files import RankLayout, rank_file

    root = Target.of(engines, stage="trtllm_checkpoint").dir("trtllm_checkpoint")
    if (root / CONFIG_FILE).is_file():  # a missing stage is named by package itself, with its command
        config = TrtllmConfig.from_json(root / CONFIG_FILE)
        verify_checkpoint(root, config, layout=RankLayout(tp=config.tp, pp=config.pp,
                                                          num_layers=config.num_hidden_layers), rank_file=rank_file)
