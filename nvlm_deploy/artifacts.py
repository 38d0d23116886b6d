"""Stage output directories: atomic replacement, file records (size + BLAKE3 digest), input hashes.

A stage writes into `.<out>.tmp-<pid>` and only a complete directory (manifest last) becomes
`<out>`. Replacing an existing `<out>` (--force) is two renames, never a removal in place:
`<out>` -> `.<out>.old-<pid>`, `.<out>.tmp-<pid>` -> `<out>`, then the old one is deleted. A SIGKILL
at any point leaves the old directory, the new one, or no `<out>` at all (between the renames),
never a mix; the leftovers of a dead process are removed by the next run on the same `<out>`
(`remove_interrupted`) and named by `interrupted_leftovers` in the meantime.

File records: every file a stage writes is described in its manifest by size and BLAKE3 digest
(`HASH`, the one name of the digest: the manifest key, the hasher, the messages). Large files are
hashed while they are written (`StreamHash`, used by `trtllm.safetensors_io`), so a conversion
never reads its multi-GB output back; `file_records` hashes by reading only the files nobody
recorded (small ones: configs, graphs written by other libraries). BLAKE3 rather than sha256
because a conversion hashes every byte it writes: one core hashes ~4 GB/s with BLAKE3 against
~1.7 GB/s with sha256 (SHA extensions), and `--verify` reads with every core (BLAKE3 is a tree).
Manifests written with sha256 records are refused with a re-run message (`verify_files`).

`input_hashes` and `file_sha256` stay sha256: they identify small input files (configs, manifests)
and are compared only with values this same function computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

from nvlm_deploy.errors import DeployError

MANIFEST = "manifest.json"  # contracts.manifest re-exports it: the one name of a stage's manifest file
HASH = "blake3"  # the file records' digest: manifest key and algorithm (new_hasher)
_RETIRED_HASHES = ("sha256",)  # file-record keys of earlier nvlm-deploy versions: refused with a re-run message
FAULT_ENV = "NVLM_DEPLOY_FAULT_AT"  # tests: "<point>" or "<point>:<n>" SIGKILLs this process there (n-th time)
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A named point where tests kill the process (FAULT_ENV); does nothing otherwise.

    Points: stage-written (the new directory complete, before the swap), old-aside (between the
    two renames), new-in (before the old one is deleted), removing-old (after each deleted file of
    the old one), and the writers' own (safetensors-tensor: after each tensor written).
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ---- leftovers of interrupted runs ----

def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def interrupted_leftovers(out: Path) -> list[Path]:
    """`.<out>.tmp-<pid>` / `.<out>.old-<pid>` siblings of `out` left by processes that are gone."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    found = []
    for path in sorted(out.parent.iterdir()):
        match = _LEFTOVER.match(path.name)
        if match and match["name"] == out.name and not process_alive(int(match["pid"])):
            found.append(path)
    return found


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        _remove_tree(path)
    else:
        path.unlink(missing_ok=True)


def _remove_tree(root: Path) -> None:
    """rmtree file by file (a fault point after each), deepest first."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.unlink(os.path.join(folder, name))
            fault_point("removing-old")
        for name in dirs:
            path = os.path.join(folder, name)
            os.unlink(path) if os.path.islink(path) else os.rmdir(path)
    os.rmdir(root)


# ---- atomic stage directories ----

@contextlib.contextmanager
def atomic_output_dir(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `out` (two renames), on failure it is removed.

    Args:
        out: the final directory.
        force: replace an existing `out`; without it an existing `out` is an error.
    """
    out = Path(out)
    for leftover in interrupted_leftovers(out):  # a run killed earlier on this same output
        remove_path(leftover)
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
    fault_point("stage-written")
    swap_in(tmp, out)


def swap_in(new: Path, out: Path) -> None:
    """Make the complete directory `new` be `out`: old aside, new in, old removed."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists() or out.is_symlink():
        out.rename(old)
        fault_point("old-aside")
    new.rename(out)
    fault_point("new-in")
    if old.exists():
        try:
            remove_path(old)
        except OSError as exc:  # the new output is in place; only the old one's removal failed
            print(f"warning: could not remove the replaced {old} ({exc.strerror}); delete it by hand.")


def missing_stage_message(out: Path, command: str) -> str:
    """Why `out` is missing, naming the leftovers an interrupted run left beside it."""
    leftovers = interrupted_leftovers(out)
    hint = (f" An interrupted run left {', '.join(p.name for p in leftovers)} in {out.parent}; the next "
            f"`{command}` removes {'it' if len(leftovers) == 1 else 'them'}.") if leftovers else ""
    return f"{out} does not exist: write it with `{command} ... --out {out.parent}`.{hint}"


# ---- file records: size + digest (HASH), computed while writing ----

def new_hasher(*, threads: bool = False):
    """A fresh HASH hasher (hashlib-style update / hexdigest; update releases the GIL).

    `threads`: let one update use every core (BLAKE3 is a tree hash), for reading a whole file back;
    streams hashed beside other work (copies, other files' lanes) stay on one core.
    """
    return blake3.blake3(max_threads=blake3.blake3.AUTO if threads else 1)


@dataclass(frozen=True)
class FileRecord:
    bytes: int
    digest: str  # hex HASH of the file's bytes

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, HASH: self.digest}


# absolute path -> (record, st_mtime_ns) of files hashed while written by this process
_recorded: dict[str, tuple[FileRecord, int]] = {}
_recorded_lock = threading.Lock()


def remember(path: Path, record: FileRecord) -> None:
    """Register the record of a file just written (its hash computed on the way), for `file_records`."""
    with _recorded_lock:
        _recorded[str(Path(path).absolute())] = (record, os.stat(path).st_mtime_ns)


class StreamHash:
    """HASH of a file written at increasing offsets, fed as the bytes go out.

    Regions skipped over read as zeros (the file was extended with truncate), so they are hashed as
    zeros. A write behind the hashed position (out of order) makes the hash unknown: `digest`
    returns None and the file is hashed by reading instead. Files that begin with the same bytes
    (tp ranks' files with a replicated tensor first) need those bytes hashed once: `state` tells that
    two streams were fed the same, `fork` / `adopt` hand one's state to the other.
    """

    _ZEROS = bytes(1 << 20)

    def __init__(self):
        self.h = new_hasher()
        self.pos = 0
        self.valid = True

    def zeros_to(self, offset: int) -> None:
        while self.valid and self.pos < offset:
            n = min(offset - self.pos, len(self._ZEROS))
            self.h.update(memoryview(self._ZEROS)[:n])
            self.pos += n

    def update_at(self, offset: int, data) -> None:
        if not self.valid:
            return
        if offset < self.pos:
            self.valid = False
            return
        self.zeros_to(offset)
        self.h.update(data)
        self.pos += memoryview(data).nbytes

    def state(self) -> tuple[int, bytes] | None:
        """(position, digest of the bytes so far); None once unknown. Two streams in the same state were
        fed the same bytes (BLAKE3 is collision resistant), so their hashers' internal states are equal."""
        return (self.pos, self.h.digest()) if self.valid else None

    def fork(self) -> StreamHash:
        """An independent copy of this stream, to continue from where it is."""
        twin = StreamHash()
        twin.h, twin.pos, twin.valid = self.h.copy(), self.pos, self.valid
        return twin

    def adopt(self, other: StreamHash) -> None:
        """Continue from (a copy of) `other`'s state: what feeding this stream the bytes `other` was fed
        since they were in the same `state` gives, without reading them again."""
        self.h, self.pos, self.valid = other.h.copy(), other.pos, other.valid

    def finish(self, size: int) -> FileRecord | None:
        if self.valid and self.pos <= size:
            self.zeros_to(size)
            return FileRecord(size, self.h.hexdigest())
        return None


def _hash_file(h, path: str | Path, chunk: int) -> str:
    buf = bytearray(chunk)  # positioned reads into one buffer: no mapped pages counted as this process's memory
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def file_digest(path: str | Path, *, chunk: int = 1 << 24) -> str:
    """HASH of a file read back (every core: the records of files nobody recorded, `--verify`)."""
    return _hash_file(new_hasher(threads=True), path, chunk)


def file_sha256(path: str | Path, *, chunk: int = 1 << 22) -> str:
    """sha256 of a small identifying file (`input_hashes`, the target manifest's stage manifests)."""
    return _hash_file(hashlib.sha256(), path, chunk)


def record_of(path: Path) -> FileRecord:
    """The file's record: the one made while writing it when still current, else hashed now."""
    stat = os.stat(path)
    with _recorded_lock:
        known = _recorded.get(str(Path(path).absolute()))
    if known and known[0].bytes == stat.st_size and known[1] == stat.st_mtime_ns:
        return known[0]
    return FileRecord(stat.st_size, file_digest(path))


def file_records(directory: str | Path, *, skip: tuple[str, ...] = (MANIFEST,)) -> dict[str, dict]:
    """relative path -> {"bytes", HASH} for every file under `directory` (sorted; `skip` at the top excluded)."""
    root = Path(directory)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in skip or "__pycache__" in path.parts:
            continue
        out[rel] = record_of(path).as_dict()
    return out


def verify_files(directory: str | Path, records: dict[str, dict] | None, *, hashes: bool = False,
                 fix: str, names: list[str] | None = None) -> None:
    """Raise one DeployError naming every recorded file that is missing, of another size, or (hashes) changed.

    Args:
        directory: the stage directory.
        records: its manifest's `files`; None means the manifest predates file records, records
            keyed by a retired digest (sha256) that it predates HASH: both are refused.
        hashes: also compare the digests (reads every file: a fraction of a second per GB).
        fix: what to do, for the message.
        names: check only these files (None: all recorded).
    """
    root = Path(directory)
    manifest = root / MANIFEST
    if records is None:
        raise DeployError(f"{manifest} records no file sizes or hashes (written by an older nvlm-deploy), so "
                          f"{root} cannot be checked: {fix}.")
    retired = sorted({key for record in records.values() if isinstance(record, dict) and HASH not in record
                      for key in _RETIRED_HASHES if key in record})
    if retired:
        raise DeployError(f"{manifest} records {'/'.join(retired)} digests (written by an older nvlm-deploy); this "
                          f"version records and checks {HASH}, so {root} cannot be checked: {fix}.")
    problems = []
    for rel, record in sorted(records.items()):
        if names is not None and rel not in names:
            continue
        path = root / rel
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{path} is missing")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("bytes"), int):
            problems.append(f"{manifest} has no usable record of {rel}")
        elif size != record["bytes"]:
            problems.append(f"{path} has {size} bytes; the manifest records {record['bytes']} "
                            f"({'truncated' if size < record['bytes'] else 'grown'})")
        elif hashes and file_digest(path) != record.get(HASH):
            problems.append(f"{path} differs from what was written ({HASH} mismatch)")
    if problems:
        raise DeployError(f"{root} does not match its manifest:\n  - " + "\n  - ".join(problems) + f"\nFix: {fix}.")


def input_hashes(directory: str | Path, *, patterns: tuple[str, ...] = ("*.json",)) -> dict[str, str]:
    """sha256 of the small files that identify an input directory (configs, indexes, manifests).

    Weight shards are identified by the index's name -> shard map rather than hashed whole:
    hashing 160 GB would dominate a conversion.
    """
    root = Path(directory)
    return {p.name: file_sha256(p) for pattern in patterns for p in sorted(root.glob(pattern)) if p.is_file()}


def write_recorded(path: str | Path, data: bytes | memoryview) -> FileRecord:
    """Write `data` to `path`, hashing it on the way (an in-memory blob: a serialized engine, a graph)."""
    path = Path(path)
    h = new_hasher()
    view = memoryview(data).cast("B")
    with open(path, "wb") as f:
        for start in range(0, len(view), 1 << 24):
            piece = view[start:start + (1 << 24)]
            h.update(piece)
            f.write(piece)
    record = FileRecord(len(view), h.hexdigest())
    remember(path, record)
    return record
