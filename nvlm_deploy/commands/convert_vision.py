"""nvlm-deploy convert vision: the vision encoder to ONNX, checked against the torch reference."""

import argparse

from nvlm_deploy.contracts.limits import add_limit_arguments, limit_choices

from nvlm_deploy.contracts.precision import CHOICES as PRECISION_CHOICES, DEFAULT as DEFAULT_PRECISION

HELP = "export the vision encoder (InternViT + pixel shuffle + mlp1) to ONNX and check it against torch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--model", required=True, help="HF NVLM-D checkpoint directory")
    io.add_argument("--out", required=True, help="target directory; writes <out>/onnx/")
    io.add_argument("--force", action="store_true", help="replace an existing <out>/onnx")
    graph = parser.add_argument_group("graph")
    graph.add_argument("--dtype", choices=PRECISION_CHOICES, default=DEFAULT_PRECISION,
                       help="weights and I/O dtype of the graph (default bf16, NVLM-D's)")
    add_limit_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.commands.limits_report import settle_and_report
    from nvlm_deploy.contracts.target import Target
    from nvlm_deploy.convert.onnx_check import CheckReport
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx

    settle_and_report(args.model, args.out, limit_choices(args))
    out = export_vision_onnx(args.model, args.out, dtype=args.dtype, force=args.force)
    manifest = Target.of(out, stage="onnx").manifest("onnx")
    print(CheckReport.from_dict(manifest.check).table())
    external = manifest.external_data_file
    print(f"wrote {out}/{manifest.onnx_file}" + (f" + {external}" if external else "")
          + f" ({manifest.weight_bytes / 2**20:.1f} MiB of weights, {manifest.nodes} nodes, "
            f"opset {manifest.opset}, all ops in TensorRT "
            f"{manifest.tensorrt_onnx_ops['tensorrt']}'s ONNX parser table)")
    return 0
