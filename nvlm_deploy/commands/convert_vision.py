"""nvlm-deploy convert vision: the vision encoder to ONNX, checked against the torch reference."""

import argparse

HELP = "export the vision encoder (InternViT + pixel shuffle + mlp1) to ONNX and check it against torch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--model", required=True, help="HF NVLM-D checkpoint directory")
    io.add_argument("--out", required=True, help="target directory; writes <out>/onnx/")
    io.add_argument("--force", action="store_true", help="replace an existing <out>/onnx")
    graph = parser.add_argument_group("graph")
    graph.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                       help="weights and I/O dtype of the graph (default bf16, NVLM-D's)")
    graph.add_argument("--max-tiles", type=int, default=None,
                       help="tiles per image incl. thumbnail, for the engine profile (default: the config's)")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.artifacts import read_manifest
    from nvlm_deploy.convert.onnx_check import CheckReport
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx

    out = export_vision_onnx(args.model, args.out, dtype=args.dtype, max_tiles=args.max_tiles, force=args.force)
    manifest = read_manifest(out, stage="onnx")
    print(CheckReport.from_dict(manifest["check"]).table())
    external = manifest["files"]["external_data"]
    print(f"wrote {out}/{manifest['files']['onnx']}" + (f" + {external}" if external else "")
          + f" ({manifest['weight_bytes'] / 2**20:.1f} MiB of weights, {manifest['nodes']} nodes, "
            f"opset {manifest['settings']['opset']}, all ops in TensorRT "
            f"{manifest['tensorrt_onnx_ops']['tensorrt']}'s ONNX parser table)")
    return 0
