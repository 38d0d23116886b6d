"""nvlm-deploy build vision: the vision encoder's TensorRT engine from the exported ONNX graph."""

import argparse

from nvlm_deploy.contracts.limits import add_limit_arguments, limit_choices

HELP = "build the vision encoder's TensorRT engine (vision/model.plan) from the ONNX export (needs TensorRT + GPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--onnx", required=True, help="onnx/ directory of `convert vision` (or the target dir holding it)")
    io.add_argument("--out", required=True, help="target directory; writes <out>/vision/")
    io.add_argument("--force", action="store_true", help="replace an existing <out>/vision")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--requests-per-call", type=int, default=1,
                        help="requests whose tiles one engine call takes; the profile's max T is the target's "
                             "tiles per request x this (default 1)")
    engine.add_argument("--hardware-compat", choices=("none", "ampere+"), default="none",
                        help="none: this GPU's SM only (fastest); ampere+: runs on any SM >= 8.0")
    engine.add_argument("--timing-cache", default=None,
                        help="timing cache file, reused and updated (default <out>/vision.timing_cache)")
    engine.add_argument("--workspace-gib", type=float, default=None, help="builder workspace limit in GiB")
    add_limit_arguments(parser, note="the profile covers one request at these limits")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.build.vision_engine import build_vision_engine

    out = build_vision_engine(args.onnx, args.out, requests_per_call=args.requests_per_call,
                              hardware_compat=args.hardware_compat, timing_cache=args.timing_cache,
                              workspace_gib=args.workspace_gib, force=args.force, limits=limit_choices(args))
    print(f"wrote {out}/model.plan and {out}/config.json")
    return 0
