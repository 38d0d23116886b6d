"""nvlm-deploy relocate: rewrite a model repository's paths for where it is now, or where it will be mounted."""

import argparse

HELP = "rewrite the absolute paths in a repository's configs after moving it (or for a container mount)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", help="model repository written by `nvlm-deploy package`")
    parser.add_argument("--mounted-at", default=None,
                        help="where the server will see the repository (e.g. /models in a container); the "
                             "engines must sit at the same place relative to it as they do here")


def run(args: argparse.Namespace) -> int:
    from nvlm_deploy.serve.repository_paths import relocate_repository

    changed = relocate_repository(args.repo, mounted_at=args.mounted_at)
    for model, params in changed.items():
        for key, value in params.items():
            print(f"  {model:<18} {key} = {value}")
    print(f"rewrote {sum(len(p) for p in changed.values())} path(s) in {args.repo}")
    return 0
