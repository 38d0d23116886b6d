"""`nvlm-deploy`: one CLI, a registry of subcommands.

Each subcommand is a module in `nvlm_deploy.commands` with `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Command modules import only argparse-level things at top level; heavy work is
imported inside `run`, so `--help` stays fast. The argparse namespace stops at a command's `run`:
library code takes keyword arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nvlm_deploy import __version__
from nvlm_deploy.errors import DeployError

# (words on the command line, module in nvlm_deploy.commands). Two words make a nested command.
COMMANDS: list[tuple[str, str]] = [
    ("tiny", "tiny"),
    ("plan", "plan"),
    ("generate", "generate"),
    ("convert vision", "convert_vision"),
    ("convert llm", "convert_llm"),
    ("quantize", "quantize"),
    ("eval", "eval"),
    ("build", "build_all"),  # `build` itself; before its subcommands, which attach to its parser
    ("build vision", "build_vision"),
    ("build llm", "build_llm"),
    ("package", "package"),
    ("relocate", "relocate"),
    ("serve", "serve"),
    ("chat", "chat"),
    ("openai", "openai"),
    ("demo", "demo"),
    ("demo train", "demo_train"),
    ("demo eval", "demo_eval"),
    ("bench", "bench"),
    ("loadgen", "loadgen"),
]

GROUP_HELP = {
    "convert": "export the vision encoder to ONNX or the decoder to a TensorRT-LLM checkpoint",
    "build": "build TensorRT / TensorRT-LLM engines (needs a GPU and NVIDIA's libraries)",
    "demo": "the small NVLM-D trained here: ask it, train it, evaluate it",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvlm-deploy", description="Compile NVLM-D checkpoints into TensorRT / TensorRT-LLM / Triton deployments (and run them on CPU).")
    parser.add_argument("--version", action="version", version=f"nvlm-deploy {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    group_parsers: dict[str, argparse.ArgumentParser] = {}
    for words, module_name in COMMANDS:
        try:
            module = importlib.import_module(f"nvlm_deploy.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"nvlm_deploy.commands.{module_name}":
                continue  # command not built yet
            raise
        *group, name = words.split()
        if group:
            g = group[0]
            if g not in groups:
                gp = group_parsers.get(g) or top.add_parser(g, help=GROUP_HELP.get(g))
                group_parsers[g] = gp
                groups[g] = gp.add_subparsers(dest=f"{g}_command", metavar="SUBCOMMAND")
            sub = groups[g].add_parser(name, help=module.HELP, description=module.HELP)
        else:
            sub = top.add_parser(name, help=module.HELP, description=module.HELP)
            group_parsers[name] = sub
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 1 if args.command is None else 0
    try:
        return int(run(args) or 0)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
