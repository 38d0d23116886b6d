"""Paths inside a packaged repository's configs: always absolute, and movable.

tensorrtllm_backend checks `gpt_model_path` with std::filesystem::exists and never joins it with
the model repository (serve/upstream/tensorrtllm_backend_1.2.json), so a relative path resolves
from the server's working directory. Every path parameter of every config is therefore written
absolute, and the repository manifest records each one relative to the repository. When the
repository (or the whole target around it) moves, `relocate_repository` rewrites the absolute paths
from the recorded relative ones: `serve` does so by itself when the recorded paths do not resolve,
and `nvlm-deploy relocate REPO --mounted-at /models` prepares a repository for a container that
mounts it elsewhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from nvlm_deploy.errors import DeployError

# template placeholders whose values are paths
PATH_PLACEHOLDERS = ("assets_dir", "vision_model_path", "checkpoint_dir", "engine_dir")
_PATH_PARAM = re.compile(r'parameters\s*\{\s*key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"\$\{(' +
                         "|".join(PATH_PLACEHOLDERS) + r')\}"')


def path_parameters(template_text: str) -> dict[str, str]:
    """config parameter key -> path placeholder, for the parameters of a template that hold paths."""
    return dict(_PATH_PARAM.findall(template_text))


def relative_paths(params: dict[str, str], values: dict[str, str], repo: Path) -> dict[str, str]:
    """parameter -> its path (values[placeholder], absolute) relative to the repository."""
    return {key: os.path.relpath(values[placeholder], repo) for key, placeholder in params.items()}


def set_parameter(config_text: str, key: str, value: str, *, source: str) -> str:
    """`config_text` with parameter `key`'s string_value replaced (one occurrence, or an error)."""
    pattern = re.compile(r'(parameters\s*\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{\s*string_value:\s*")'
                         r'((?:[^"\\]|\\.)*)(")')
    out, count = pattern.subn(lambda m: m.group(1) + value.replace("\\", "\\\\").replace('"', '\\"') + m.group(3),
                              config_text)
    if count != 1:
        raise DeployError(f"{source}: parameter {key!r} appears {count} times; expected once (re-run `nvlm-deploy package`).")
    return out


def missing_paths(repo: Path, manifest) -> list[str]:
    """'model: parameter = path' for every recorded path parameter that does not exist as written."""
    from nvlm_deploy.serve.template import parse_model_config

    missing = []
    for model, params in manifest.paths.items():
        config = parse_model_config((repo / model / "config.pbtxt").read_text(encoding="utf-8"),
                                    source=str(repo / model / "config.pbtxt"))
        for key in params:
            value = config.parameters[key].string_value
            if not Path(value).exists():
                missing.append(f"{model}: {key} = {value}")
    return missing


def relocate_repository(repo: str | Path, *, mounted_at: str | None = None) -> dict[str, dict[str, str]]:
    """Rewrite every path parameter from the manifest's relative paths; returns model -> key -> new value.

    Args:
        repo: the repository, where it is now.
        mounted_at: where the server will see it (a container mount such as /models); None: where it
            is now. With a mount point the paths are not checked here (they exist only there).
    """
    from nvlm_deploy.contracts.manifest import RepositoryManifest, read_manifest
    from nvlm_deploy.serve.template import parse_model_config

    repo = Path(repo).resolve()
    manifest = read_manifest(repo, RepositoryManifest, writer="nvlm-deploy package")
    changed: dict[str, dict[str, str]] = {}
    for model, params in manifest.paths.items():
        path = repo / model / "config.pbtxt"
        text = path.read_text(encoding="utf-8")
        for key, relative in params.items():
            if mounted_at:
                value = str(PurePosixPath(os.path.normpath(PurePosixPath(mounted_at) / relative)))
            else:
                value = str((repo / relative).resolve())
                if not Path(value).exists():
                    raise DeployError(f"{path}: {key} should be {relative} relative to the repository, but {value} "
                                      "does not exist: move the repository together with its target directory "
                                      "(engines/<model>/<target>/), or re-run `nvlm-deploy package`.")
            text = set_parameter(text, key, value, source=str(path))
            changed.setdefault(model, {})[key] = value
        parse_model_config(text, source=str(path))
        tmp = path.with_name(f".config.pbtxt.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    from nvlm_deploy.contracts.manifest import refresh_file_records

    refresh_file_records(repo, RepositoryManifest, [f"{model}/config.pbtxt" for model in changed],
                         writer="nvlm-deploy package")  # the manifest records the rewritten configs
    return changed
