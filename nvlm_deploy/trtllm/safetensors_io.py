"""Safetensors files read and written one tensor at a time (TensorRT-LLM rank files, HF shards).

Reading uses plain positioned reads (pages of a memory map would stay resident and count against
the process); writing fixes the header up front from the tensors' specs, then places each tensor's
bytes at its offset as soon as it is ready, so peak memory stays near the largest tensor.

Writing is fast and self-describing: tensors that need no cast and whose piece is a run of whole
rows of the source are copied file to file by the caller (`copy_range_to`: in the kernel with
`os.copy_file_range`, else `os.sendfile`, where source and destination sit at the same place in a
page; else, to one file, pwrite straight from a 2 MiB memory map of the source, and, to several, a
small buffer read once for all of them); the rest is read, cast and split by a background thread
(torch on that thread alone) and written by others (`BackgroundWriter`: a preparing thread and one
hashing lane per file, a bounded budget), so reading, casting, writing and hashing overlap the
copies, and every file's digest (`artifacts.HASH`) is computed on the way (`artifacts.StreamHash`):
its manifest record never needs a second read. Bytes copied to several files at the same place
after the same bytes (a replicated tensor on tp ranks with equal headers) are hashed once
(`SafetensorsWriter.hash_jobs`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nvlm_deploy.artifacts import FileRecord, StreamHash, remember
from nvlm_deploy.errors import DeployError

# safetensors header dtype codes (the file format's own table)
ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
             "U8": torch.uint8, "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


_open_lock = threading.Lock()


class ShardReader:
    """Reads single tensors of a sharded safetensors checkpoint with positioned reads (no mmap)."""

    def __init__(self, root: Path, weight_map: dict[str, str]):
        self.root, self.weight_map = root, weight_map
        self._headers: dict[str, tuple[int, dict]] = {}
        self._files: dict[str, object] = {}

    def _header(self, shard: str) -> tuple[int, dict]:
        if shard not in self._headers:
            path = self.root / shard
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise DeployError(f"{path} is not a safetensors file (shorter than 8 bytes).")
                (n,) = struct.unpack("<Q", raw)
                try:
                    header = json.loads(f.read(n))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise DeployError(f"{path} has an unreadable safetensors header ({exc}); re-copy it.") from None
            self._headers[shard] = (8 + n, header)
        return self._headers[shard]

    def check(self, names: list[str]) -> None:
        """Raise one DeployError naming every tensor whose shard does not hold it."""
        missing = [n for n in names if n not in self._header(self.weight_map[n])[1]]
        if missing:
            raise DeployError(f"{self.root}: {len(missing)} tensor(s) listed in the index are missing from "
                              f"their shard: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}. "
                              "A shard is incomplete or the index is stale; re-copy the checkpoint.")

    def spec(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        entry = self._header(self.weight_map[name])[1][name]
        if entry["dtype"] not in ST_DTYPES:
            raise DeployError(f"{self.root}: tensor {name!r} has dtype {entry['dtype']}, which is not supported.")
        return ST_DTYPES[entry["dtype"]], tuple(entry["shape"])

    def location(self, name: str) -> tuple[Path, int, int]:
        """(shard path, absolute byte offset, byte count) of one tensor's data."""
        shard = self.weight_map[name]
        start, header = self._header(shard)
        begin, end = header[name]["data_offsets"]
        return self.root / shard, start + begin, end - begin

    def fileno(self, shard_path: Path) -> int:
        """An open descriptor of a shard (kernel copies and hashing threads share it; positioned I/O only)."""
        shard = shard_path.name
        with _open_lock:
            if shard not in self._files:
                self._files[shard] = open(self.root / shard, "rb")
            return self._files[shard].fileno()

    def get(self, name: str) -> torch.Tensor:
        """The tensor in its stored dtype, in freshly allocated memory (positioned reads: any thread)."""
        path, offset, nbytes = self.location(name)
        dtype, shape = self.spec(name)
        buf = torch.empty(nbytes, dtype=torch.uint8)
        view, fd, done = memoryview(buf.numpy()), self.fileno(path), 0
        while done < nbytes:  # pieces of at most 1 GiB (one read call returns at most ~2 GiB)
            n = os.preadv(fd, [view[done:done + min(nbytes - done, 1 << 30)]], offset + done)
            if n <= 0:
                raise DeployError(f"{path} is truncated: tensor {name!r} is cut short; re-copy the shard.")
            done += n
        return buf.view(dtype).reshape(shape)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


@dataclass(frozen=True)
class SourceRange:
    """Bytes of a source file copied as they are into a tensor's place (None path: zeros, e.g. vocab padding)."""

    path: Path | None
    offset: int
    nbytes: int


class SafetensorsWriter:
    """Writes one safetensors file tensor by tensor: the header is fixed up front from the specs.

    The file's digest is computed as the bytes go out (tensors written in header order; anything
    else falls back to hashing by reading) and registered with `artifacts.remember` on `close`.
    """

    def __init__(self, path: Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, (dtype, shape) in specs.items():
            nbytes = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
            header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format allows space padding; keeps data 8-byte aligned
        self.path, self.specs, self.header = path, specs, header
        self.data_start = 8 + len(raw)
        self.size = self.data_start + offset
        self.written: set[str] = set()
        self.hash = StreamHash()
        self.file = open(path, "wb")
        first = struct.pack("<Q", len(raw)) + raw
        self.file.write(first)
        self.hash.update_at(0, first)
        self.file.truncate(self.size)
        self.file.flush()
        self.fd = self.file.fileno()

    def _place(self, name: str) -> tuple[int, int]:
        begin, end = self.header[name]["data_offsets"]
        return self.data_start + begin, end - begin

    def write(self, name: str, tensor: torch.Tensor) -> None:
        dtype, shape = self.specs[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise AssertionError(f"{self.path.name}:{name} is {tensor.dtype}{tuple(tensor.shape)}, "
                                 f"its header says {dtype}{shape}")
        offset, nbytes = self._place(name)
        if tensor.numel():
            data = memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
            _pwrite_all(self.fd, data, offset)
            self.hash.update_at(offset, data)
        self.written.add(name)

    def copy(self, name: str, ranges: list[SourceRange], fds: Callable[[Path], int], *, start: int = 0,
             whole: bool = True, also: list[tuple["SafetensorsWriter", str]] = ()) -> None:
        """Fill tensor `name` (from byte `start` of it) with source byte ranges, file to file (`copy_range`).

        `whole`: these ranges end the tensor (its size is checked then; earlier chunks pass False).
        `also`: other (writer, tensor) that get the same bytes at the same place (a replicated tensor's
        other ranks): each source range is read once for all of them.
        """
        targets = [(w, n, w._destination(n, ranges, start=start, whole=whole)) for w, n in [(self, name), *also]]
        done = 0
        for r in ranges:
            if r.path is not None:
                copy_range_to(fds(r.path), r.offset, [(w.fd, at + done) for w, _, at in targets], r.nbytes)
            done += r.nbytes
        if whole:
            for w, n, _ in targets:
                w.written.add(n)

    def _destination(self, name: str, ranges: list[SourceRange], *, start: int, whole: bool) -> int:
        """Absolute offset where `ranges` go in tensor `name` from byte `start`; checks they fit."""
        offset, nbytes = self._place(name)
        end = start + sum(r.nbytes for r in ranges)
        if end > nbytes or whole and end != nbytes:
            raise AssertionError(f"{self.path.name}:{name}: source ranges end at byte {end}, the header says {nbytes}")
        return offset + start

    def hash_ranges(self, name: str, ranges: list[SourceRange], fds: Callable[[Path], int], *, start: int = 0) -> None:
        """Feed the hash with what `copy` put in place, read from the source's page cache (no second disk read)."""
        offset = self._place(name)[0] + start
        for r in ranges:
            if r.path is None:  # zeros (the file was extended with truncate): hashed without a buffer
                if self.hash.pos > offset:
                    self.hash.valid = False
                self.hash.zeros_to(offset + r.nbytes)
            else:
                for chunk in _mapped_chunks(fds(r.path), r.offset, r.nbytes):
                    self.hash.update_at(offset, chunk)
                    offset += len(chunk)
                continue
            offset += r.nbytes

    def hash_jobs(self, name: str, ranges: list[SourceRange], fds: Callable[[Path], int], *, start: int = 0,
                  also: list[tuple[SafetensorsWriter, str]] = ()) -> list[tuple[Callable[[], None], bool]]:
        """`hash_ranges` for this file and for `also` (other files given the same bytes at the same place: a
        replicated tensor's other tp ranks), as (job, must run even after an error) per file, this one
        first: each to run on its file's lane, the first submitted first.

        Files whose hashes so far cover the same bytes (tp ranks of one pipeline rank have the same header
        and, up to the first piece that differs, the same tensors: the replicated embedding comes first)
        share one pass over these bytes: the first job hashes them and the others continue from a copy of
        its state (`StreamHash.adopt`): tp 4 hashes the embedding once instead of four times. Whether a
        file's bytes so far are the same is checked when its job runs (`StreamHash.state`: position and
        digest); a file that differs, or whose tensor sits elsewhere, hashes the bytes itself.
        """
        at = self._place(name)[0] + start
        shared = [(w, n) for w, n in also if w._place(n)[0] + start == at]
        if not shared:
            return [(lambda w=w, n=n: w.hash_ranges(n, ranges, fds, start=start), False)
                    for w, n in [(self, name), *also]]
        handoff: dict[str, object] = {}
        done = threading.Event()

        def lead() -> None:
            try:
                before = self.hash.state()
                self.hash_ranges(name, ranges, fds, start=start)
                if before is not None and self.hash.valid:
                    handoff.update(before=before, after=self.hash.fork())
            finally:
                done.set()  # also when this failed: the followers then hash for themselves

        def follow(w: SafetensorsWriter, n: str) -> None:
            if w._place(n)[0] + start == at:
                done.wait()
                if "after" in handoff and w.hash.state() == handoff["before"]:
                    w.hash.adopt(handoff["after"])
                    return
            w.hash_ranges(n, ranges, fds, start=start)

        return [(lead, True), *((lambda w=w, n=n: follow(w, n), False) for w, n in also)]

    def close(self) -> FileRecord | None:
        """Close, check every planned tensor was written, register the file's record; returns it (None: unknown)."""
        self.file.close()
        unwritten = sorted(set(self.specs) - self.written)
        if unwritten:
            raise AssertionError(f"{self.path.name}: tensors never written: {unwritten[:10]}")
        record = self.hash.finish(self.size)
        if record is not None:
            remember(self.path, record)
        return record


# ---- kernel-side copies and positioned I/O ----

_CHUNK = 1 << 24  # 16 MiB: memory-mapped hashing windows, and reads hashed when mapping fails
# User-space copies go through a buffer this small: it stays in the core's L2 cache between the read
# and the write(s). Measured here (2026-12-01, 600 MiB to 4 files): 256 KiB 2.9-3.5 GB per CPU
# second, 1 MiB 1.9, 4 MiB 0.5-0.75.
_COPY_PIECE = 256 << 10
# Copies written straight from a memory map of the source take this many bytes per map and pwrite.
# Measured here (2026-12-01, 594 MiB to one file, GB per CPU second): 512 KiB 4.2-4.4, 1 MiB 4.5-5.0,
# 2 MiB 4.9-5.2, 16 MiB 0.5-5.5 (erratic); in the quick tp 1 conversion 2 MiB windows matched 16 MiB
# ones in wall time with 15 MB less peak RSS (mapped pages count as the process's).
_MAPPED_PIECE = 2 << 20
_PAGE = mmap.PAGESIZE
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}
_local = threading.local()


def _buffer(size: int) -> memoryview:
    """This thread's reused buffer of `size` bytes."""
    buffers = _local.__dict__.setdefault("buffers", {})
    if size not in buffers:
        buffers[size] = memoryview(bytearray(size))
    return buffers[size]


def _pread_chunks(fd: int, offset: int, nbytes: int, size: int = _CHUNK):
    """The bytes of [offset, offset + nbytes) in views of one reused buffer (valid until the next one)."""
    buf = _buffer(size)
    end = offset + nbytes
    while offset < end:
        n = os.preadv(fd, [buf[:min(size, end - offset)]], offset)
        if n <= 0:
            raise DeployError(f"a source file ended early (fd {fd}, offset {offset}): it is truncated; re-copy it.")
        yield buf[:n]
        offset += n


def _mapped_chunks(fd: int, offset: int, nbytes: int, *, window: int | None = None, fallback: int | None = None):
    """The bytes of [offset, offset + nbytes) as views of read-only memory maps of the page cache (no
    copy into this process), one window of at most `window` (default `_CHUNK`) at a time so resident
    pages stay bounded; positioned reads into a reused buffer of `fallback` bytes (default `_CHUNK`)
    where mapping fails."""
    size = window or _CHUNK
    page, end = mmap.ALLOCATIONGRANULARITY, offset + nbytes
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    while offset < end:
        base = offset - offset % page
        length = min(end, base + size) - base
        try:
            mapped = mmap.mmap(fd, length, flags=flags, prot=mmap.PROT_READ, offset=base)
        except (OSError, ValueError):
            yield from _pread_chunks(fd, offset, end - offset, fallback or _CHUNK)
            return
        try:
            with memoryview(mapped) as view, view[offset - base:length] as piece:
                yield piece  # released when the caller asks for the next one, so the map can close
        finally:
            mapped.close()
        offset = base + length


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    data = data.cast("B")
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, nbytes: int) -> None:
    """Copy a byte range file to file the cheapest way (`copy_range_to` with one destination)."""
    copy_range_to(src_fd, src_offset, [(dst_fd, dst_offset)], nbytes)


def copy_range_to(src_fd: int, src_offset: int, targets: list[tuple[int, int]], nbytes: int) -> None:
    """Copy a byte range to every (descriptor, offset) in `targets`: in the kernel (`kernel_copy`) where
    both offsets sit at the same place in a page; else, for one such target, written straight from a
    read-only memory map of the source's page cache (`_mapped_chunks`); for several, through a small
    user-space buffer, the source read once for all of them.

    Why: the kernel copies a misaligned range destination page by destination page, each source
    page in two pieces, at about 2 GB per CPU second here against 3-3.5 aligned. A safetensors
    tensor's offset depends on its file's header length, so source and rank file rarely line up.
    Writing from the map costs one copy (page cache to page cache, inside `pwrite`) where the buffer
    costs two (into it, out of it): measured here (2026-12-01, 594 MiB to one file, GB per CPU second)
    4.5-5.2 against 2.8-3.1 through the buffer and 3.8-4.3 for an aligned kernel copy; in the quick tp 1
    conversion the main thread (copies and planning) went from 0.63-0.68 to 0.43-0.48 CPU s (medians
    of 5-6 alternating runs). To several files the map
    lost to the buffer in the conversions (tp 2 and tp 4: main thread 0.70 vs 1.03 and 1.10 vs 2.63
    CPU s, medians of 5-6 runs), so replicated pieces keep the buffer.
    """
    buffered = []
    for fd, offset in targets:
        if (src_offset - offset) % _PAGE == 0:
            kernel_copy(src_fd, src_offset, fd, offset, nbytes)
        else:
            buffered.append((fd, offset))
    done = 0
    if len(buffered) == 1:
        ((fd, offset),) = buffered
        for piece in _mapped_chunks(src_fd, src_offset, nbytes, window=_MAPPED_PIECE, fallback=_COPY_PIECE):
            _pwrite_all(fd, piece, offset + done)
            done += len(piece)
        return
    for chunk in _pread_chunks(src_fd, src_offset, nbytes, _COPY_PIECE):
        for fd, offset in buffered:
            _pwrite_all(fd, chunk, offset + done)
        done += len(chunk)


def kernel_copy(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, nbytes: int) -> None:
    """Copy a byte range file to file without passing it through this process: copy_file_range, else
    sendfile, else positioned reads and writes (filesystems or kernels without the first two)."""
    done = 0
    method = getattr(_local, "method", "copy_file_range")
    while done < nbytes:
        count = min(nbytes - done, 1 << 30)
        try:
            if method == "copy_file_range":
                n = os.copy_file_range(src_fd, dst_fd, count, src_offset + done, dst_offset + done)
            elif method == "sendfile":
                os.lseek(dst_fd, dst_offset + done, os.SEEK_SET)
                n = os.sendfile(dst_fd, src_fd, src_offset + done, count)
            else:
                n = 0
                for chunk in _pread_chunks(src_fd, src_offset + done, count, _COPY_PIECE):
                    _pwrite_all(dst_fd, chunk, dst_offset + done + n)
                    n += len(chunk)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY or method == "pread":
                raise
            method = _local.method = "sendfile" if method == "copy_file_range" else "pread"
            continue
        if n == 0:
            raise DeployError(f"a source file ended early (offset {src_offset + done}): it is truncated; re-copy it.")
        done += n


@contextlib.contextmanager
def one_torch_thread():
    """torch operations on this thread use no intra-op threads while inside.

    With OpenMP (torch's CPU builds) the thread count is per calling thread; torch also keeps it as the
    default for threads that have not used torch yet, restored on the way out.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _with_one_torch_thread(fn: Callable[[], object]) -> object:
    with one_torch_thread():
        return fn()


class BackgroundWriter:
    """Background threads ("lanes") that run write jobs, each lane in submission order, holding at most
    `budget` bytes of pending data across all lanes; and one preparing thread (`prepare`).

    The producer (kernel copies, planning) goes on while the preparing thread reads, casts and splits
    tensors and the lanes write and hash them. Jobs of one file must go to one lane (its hash is a
    stream); files on different lanes are written and hashed in parallel (BLAKE3 releases the GIL).
    A lane job may wait for a prepared result, or for another lane's job (`SafetensorsWriter.hash_jobs`),
    submitted before it (never the other way round, so no cycle; a job others wait for is submitted
    with `always`, so an error elsewhere does not skip it). An error in a job is raised in the
    producer at its next `submit` / `wait_room` or at `close`.
    """

    def __init__(self, budget: int = 1 << 30, lanes: int = 1):
        import queue
        from concurrent.futures import ThreadPoolExecutor

        self.budget, self.pending = budget, 0
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.queues = [queue.Queue() for _ in range(max(1, lanes))]
        self.threads = [threading.Thread(target=self._run, args=(q,), name=f"safetensors-writer-{i}", daemon=True)
                        for i, q in enumerate(self.queues)]
        for thread in self.threads:
            thread.start()
        self.preparer = ThreadPoolExecutor(1, thread_name_prefix="safetensors-prepare")
        self.closed = False

    def prepare(self, fn: Callable[[], object]):
        """Run `fn` on the preparing thread (in submission order); its Future, for lane jobs to wait on.

        Its torch operations run on that thread alone (`one_torch_thread`): the lanes and the producer
        already keep the cores busy, and torch's intra-op threads, spinning at each operation's end for
        one of theirs that the system has preempted, took a fifth of the quick tp 4 conversion's CPU
        time (perf, 2026-12-01)."""
        return self.preparer.submit(_with_one_torch_thread, fn)

    def barrier(self) -> threading.Event:
        """An event set once every lane has run every job submitted so far (what they write is in place)."""
        done, left, lock = threading.Event(), [len(self.queues)], threading.Lock()

        def arrive():
            with lock:
                left[0] -= 1
                if not left[0]:
                    done.set()

        for jobs in self.queues:
            jobs.put((0, arrive, True))
        return done

    def wait_room(self, nbytes: int) -> None:
        """Block until `nbytes` more fit the budget (or nothing is pending): call before reading what
        will be submitted, so a large piece still queued and the next tensor's sources never coexist
        beyond the budget."""
        with self.cond:
            self.cond.wait_for(lambda: self.error is not None or self.pending == 0
                               or self.pending + nbytes <= self.budget)
            self._raise()

    def submit(self, nbytes: int, job: Callable[[], None], *, lane: int = 0, always: bool = False) -> None:
        """Queue `job` on `lane` (modulo the lanes); `always`: run it even after an error (a job that
        others wait for)."""
        self.wait_room(nbytes)
        with self.cond:
            self.pending += nbytes
        self.queues[lane % len(self.queues)].put((nbytes, job, always))

    def _run(self, jobs) -> None:
        while True:
            item = jobs.get()
            if item is None:
                return
            nbytes, job, always = item
            try:
                if self.error is None or always:
                    job()
            except BaseException as exc:  # handed to the producer
                with self.cond:
                    self.error = self.error or exc
            with self.cond:
                self.pending -= nbytes
                self.cond.notify_all()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def close(self) -> None:
        """Wait for every job; raise the first error. Closing again does nothing."""
        if self.closed:
            return
        self.closed = True
        for jobs in self.queues:
            jobs.put(None)
        for thread in self.threads:
            thread.join()
        self.preparer.shutdown(wait=True, cancel_futures=True)
        self._raise()
