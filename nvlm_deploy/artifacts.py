"""Stage output directories: atomic writes and input hashes.

A stage writes into `.<out>.tmp-<pid>` and renames it to `<out>` only when complete, so an
interrupted run never leaves a directory that looks finished. What the directory is (its typed
`manifest.json`) is `nvlm_deploy.contracts.manifest`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from nvlm_deploy.errors import DeployError

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
