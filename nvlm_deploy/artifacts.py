"""Stage output directories: atomic writes and `manifest.json`.

A stage writes into `<out>.tmp-<pid>` and renames it to `<out>` only when complete, so an
interrupted run never leaves a directory that looks finished. The manifest says what the
directory is: stage, settings, input hashes, tool versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from nvlm_deploy.errors import DeployError

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `out`, on failure it is removed.

    Args:
        out: the final directory.
        force: replace an existing `out`; without it an existing `out` is an error.
    """
    out = Path(out)
    if out.exists() and not force:
        raise DeployError(f"{out} already exists; pass --force to replace it, or choose another --out.")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployError(f"cannot create the output directory's parent {parent} ({exc.strerror}).") from None
    if not os.access(parent, os.W_OK):
        raise DeployError(f"{parent} is not writable: choose an --out in a directory you can write to.")
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_hashes(directory: str | Path, *, patterns: tuple[str, ...] = ("*.json",)) -> dict[str, str]:
    """sha256 of the small files that identify an input directory (configs, indexes, manifests).

    Weight shards are identified by the index's name -> shard map rather than hashed whole:
    hashing 160 GB would dominate a conversion.
    """
    root = Path(directory)
    return {p.name: file_sha256(p) for pattern in patterns for p in sorted(root.glob(pattern)) if p.is_file()}


def tool_versions(*packages: str) -> dict[str, str]:
    out = {"python": platform.python_version(), "nvlm-deploy": _version("nvlm-deploy")}
    for name in packages:
        out[name] = _version(name)
    return out


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "nvlm-deploy":
            from nvlm_deploy import __version__

            return __version__
        return "not installed"


def write_manifest(directory: str | Path, *, stage: str, settings: dict, inputs: dict | None = None,
                   tools: tuple[str, ...] = (), extra: dict | None = None) -> dict:
    """Write `<directory>/manifest.json` and return its content."""
    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": settings,
        "inputs": inputs or {},
        "tools": tool_versions(*tools),
        **(extra or {}),
    }
    Path(directory, MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False), encoding="utf-8")
    return manifest


def read_manifest(directory: str | Path, *, stage: str | None = None) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DeployError(f"{path} does not exist: {directory} is not a finished nvlm-deploy artifact "
                          "(re-run the stage that writes it).")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if stage and manifest.get("stage") != stage:
        raise DeployError(f"{path} is a '{manifest.get('stage')}' artifact, not '{stage}'.")
    return manifest
