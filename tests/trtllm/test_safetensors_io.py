"""Streaming safetensors writing: kernel copies with their fallbacks, hashes made on the way, the writer thread."""

import errno
import os
import threading

import blake3
import pytest
import torch
from safetensors.torch import load_file, save_file

from nvlm_deploy.artifacts import record_of
from nvlm_deploy.trtllm import safetensors_io
from nvlm_deploy.trtllm.safetensors_io import BackgroundWriter, SafetensorsWriter, ShardReader, SourceRange


def _digest(path):
    return blake3.blake3(path.read_bytes()).hexdigest()


@pytest.fixture()
def source(tmp_path):
    """A shard with two bf16 tensors, and its reader."""
    tensors = {"a": torch.arange(24, dtype=torch.bfloat16).reshape(6, 4),
               "b": torch.arange(100, 108, dtype=torch.bfloat16).reshape(2, 4)}
    save_file(tensors, tmp_path / "shard.safetensors")
    reader = ShardReader(tmp_path, {n: "shard.safetensors" for n in tensors})
    yield tensors, reader
    reader.close()


def _write_copied(tmp_path, reader, tensors):
    """rows 2..5 of a + 2 zero rows, then all of b: written by kernel copy, hashed from the source."""
    specs = {"x": (torch.bfloat16, (6, 4)), "y": (torch.bfloat16, (2, 4))}
    writer = SafetensorsWriter(tmp_path / "out.safetensors", specs)
    path, offset, _ = reader.location("a")
    x = [SourceRange(path, offset + 2 * 8, 4 * 8), SourceRange(None, 0, 2 * 8)]
    y = [SourceRange(*reader.location("b"))]
    for name, ranges in (("x", x), ("y", y)):
        writer.copy(name, ranges, reader.fileno)
        writer.hash_ranges(name, ranges, reader.fileno)
    record = writer.close()
    loaded = load_file(tmp_path / "out.safetensors")
    assert torch.equal(loaded["x"], torch.cat([tensors["a"][2:], torch.zeros(2, 4, dtype=torch.bfloat16)]))
    assert torch.equal(loaded["y"], tensors["b"])
    return record


def test_kernel_copies_land_in_place_and_the_hash_is_the_files(tmp_path, source):
    tensors, reader = source
    record = _write_copied(tmp_path, reader, tensors)
    out = tmp_path / "out.safetensors"
    assert record.digest == _digest(out) and record.bytes == out.stat().st_size
    assert record_of(out) == record  # registered: the manifest takes it without reading the file


@pytest.mark.parametrize("unsupported", [("copy_file_range",), ("copy_file_range", "sendfile")])
def test_without_kernel_copies_the_same_bytes_arrive(tmp_path, source, monkeypatch, unsupported):
    tensors, reader = source

    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, "cross-device")

    for name in unsupported:
        monkeypatch.setattr(os, name, refuse)
    monkeypatch.setattr(safetensors_io, "_local", threading.local())  # forget the method chosen before
    record = _write_copied(tmp_path, reader, tensors)
    assert record.digest == _digest(tmp_path / "out.safetensors")
    data = os.urandom(3 * 4096 + 100)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb") as src, open(tmp_path / "dst", "wb") as dst:
        safetensors_io.kernel_copy(src.fileno(), 4096 + 5, dst.fileno(), 5, 2 * 4096)  # the fallback chain itself
    assert (tmp_path / "dst").read_bytes() == bytes(5) + data[4096 + 5:3 * 4096 + 5]


def test_out_of_order_writes_leave_the_hash_to_a_read(tmp_path):
    specs = {"x": (torch.float32, (2,)), "y": (torch.float32, (3,))}
    writer = SafetensorsWriter(tmp_path / "o.safetensors", specs)
    writer.write("y", torch.ones(3))
    writer.write("x", torch.zeros(2))
    assert writer.close() is None
    assert record_of(tmp_path / "o.safetensors").digest == _digest(tmp_path / "o.safetensors")
    assert torch.equal(load_file(tmp_path / "o.safetensors")["y"], torch.ones(3))


def test_background_writer_keeps_order_per_lane_bounds_memory_and_hands_errors_back():
    done, high = {0: [], 1: []}, []
    writer = BackgroundWriter(budget=10, lanes=2)
    for i in range(12):
        writer.submit(4, lambda i=i: (high.append(writer.pending), done[i % 2].append(i)), lane=i)
    writer.close()
    assert done == {0: list(range(0, 12, 2)), 1: list(range(1, 12, 2))} and max(high) <= 10

    failing = BackgroundWriter(budget=10, lanes=2)

    def boom():
        raise OSError(errno.ENOSPC, "No space left on device")

    failing.submit(1, boom)
    with pytest.raises(OSError, match="No space left"):
        for _ in range(100):
            failing.submit(1, lambda: None)
        failing.close()


def test_lane_jobs_wait_for_prepared_pieces_and_a_barrier_follows_every_lane():
    """The preparing thread cuts while the lanes write; a barrier is passed once every lane ran what came
    before it, even after an error (so a waiting self-check never hangs); errors in preparing reach the producer."""
    order, writer = [], BackgroundWriter(budget=100, lanes=2)
    gate = threading.Event()
    first = writer.prepare(lambda: (gate.wait(), {0: "a0", 1: "a1"})[1])
    for lane in (0, 1):
        writer.submit(1, lambda lane=lane: order.append(first.result().pop(lane)), lane=lane)
    passed = writer.barrier()
    assert not passed.wait(0.05)  # the lanes wait for the piece being prepared
    gate.set()
    assert passed.wait(10) and sorted(order) == ["a0", "a1"] and first.result() == {}
    writer.close()

    failing = BackgroundWriter(budget=100, lanes=2)
    bad = failing.prepare(lambda: 1 / 0)
    failing.submit(1, lambda: bad.result(), lane=1)
    assert failing.barrier().wait(10)
    with pytest.raises(ZeroDivisionError):
        failing.close()
    failing.close()  # closing again does nothing


def test_reader_gets_tensors_from_several_threads_at_once(source):
    tensors, reader = source
    got = []
    threads = [threading.Thread(target=lambda: got.extend(reader.get(n) for n in ("a", "b") * 50)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 400 and all(torch.equal(g, tensors["a" if g.shape == (6, 4) else "b"]) for g in got)


def test_one_source_range_reaches_every_target_aligned_or_not(tmp_path, monkeypatch):
    """copy_range_to: targets at the source's place in a page go through the kernel, the others share one
    buffered read (pieces of 256 KiB); every target gets the same bytes."""
    data = os.urandom(600 << 10)
    (tmp_path / "src").write_bytes(data)
    kernel, real = [], safetensors_io.kernel_copy
    monkeypatch.setattr(safetensors_io, "kernel_copy", lambda *a: kernel.append(a[3]) or real(*a))
    offsets = [8, 4096 + 8, 4096, 123]  # src offset 8: the first two line up with it, the last two do not
    paths = [tmp_path / f"dst{i}" for i in range(4)]
    files = [open(p, "w+b") for p in paths]
    try:
        with open(tmp_path / "src", "rb") as src:
            safetensors_io.copy_range_to(src.fileno(), 8, [(f.fileno(), o) for f, o in zip(files, offsets)],
                                         len(data) - 8)
    finally:
        for f in files:
            f.close()
    assert kernel == [8, 4096 + 8]
    for path, offset in zip(paths, offsets):
        assert path.read_bytes() == bytes(offset) + data[8:]


def test_one_misaligned_target_is_written_from_a_memory_map_or_without_one(tmp_path, monkeypatch):
    """copy_range_to with one target off the source's place in a page: pwrite from a map of the source
    (pieces of _MAPPED_PIECE), or, where mapping fails, through the buffer; the same bytes either way."""
    data = os.urandom(3 * (64 << 10) + 123)
    (tmp_path / "src").write_bytes(data)
    monkeypatch.setattr(safetensors_io, "_MAPPED_PIECE", 64 << 10)  # several windows
    for mapping in (True, False):
        if not mapping:
            def refuse(*args, **kwargs):
                raise OSError(errno.ENODEV, "no mmap here")

            monkeypatch.setattr(safetensors_io.mmap, "mmap", refuse)
        out = tmp_path / f"dst-{mapping}"
        with open(tmp_path / "src", "rb") as src, open(out, "w+b") as dst:
            safetensors_io.copy_range_to(src.fileno(), 5000, [(dst.fileno(), 7)], len(data) - 5000)
        assert out.read_bytes() == bytes(7) + data[5000:]


def _replicated(tmp_path, reader, tensors, *, differ: bool):
    """Three files with the same header; "y" (all of b) copied to each, "x" before it the same in all
    (or, `differ`, different in the last file). Returns the writers and the hash_jobs' lead/followers."""
    specs = {"x": (torch.bfloat16, (2, 4)), "y": (torch.bfloat16, (2, 4))}
    writers = [SafetensorsWriter(tmp_path / f"r{i}.safetensors", specs) for i in range(3)]
    for i, w in enumerate(writers):
        w.write("x", tensors["a"][:2] + (1 if differ and i == 2 else 0))
    y = [SourceRange(*reader.location("b"))]
    writers[0].copy("y", y, reader.fileno, also=[(w, "y") for w in writers[1:]])
    return writers, writers[0].hash_jobs("y", y, reader.fileno, also=[(w, "y") for w in writers[1:]])


@pytest.mark.parametrize("differ", [False, True])
def test_a_replicated_range_is_hashed_once_where_the_files_agree_so_far(tmp_path, source, monkeypatch, differ):
    """hash_jobs: the first file's job hashes the bytes; a file whose bytes so far are the same continues
    from a copy of its state, one that differs hashes them itself. Every record is its file's digest."""
    tensors, reader = source
    hashed = []
    real = SafetensorsWriter.hash_ranges
    monkeypatch.setattr(SafetensorsWriter, "hash_ranges",
                        lambda self, *a, **k: hashed.append(self.path.name) or real(self, *a, **k))
    writers, jobs = _replicated(tmp_path, reader, tensors, differ=differ)
    assert [always for _, always in jobs] == [True, False, False]  # the lead runs even after an error
    lanes = [threading.Thread(target=job) for job, _ in reversed(jobs)]  # followers wait for the lead
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join(10)
    assert hashed == (["r0.safetensors", "r2.safetensors"] if differ else ["r0.safetensors"])
    for w in writers:
        record = w.close()
        assert record.digest == _digest(w.path) and record.bytes == w.path.stat().st_size
    assert torch.equal(load_file(writers[2].path)["y"], tensors["b"])


def test_followers_hash_for_themselves_when_the_lead_failed(tmp_path, source, monkeypatch):
    tensors, reader = source
    writers, jobs = _replicated(tmp_path, reader, tensors, differ=False)
    real = SafetensorsWriter.hash_ranges

    def fail_first(self, *a, **k):
        if self is writers[0]:
            raise OSError(errno.EIO, "read error")
        return real(self, *a, **k)

    monkeypatch.setattr(SafetensorsWriter, "hash_ranges", fail_first)
    with pytest.raises(OSError, match="read error"):
        jobs[0][0]()
    for job, _ in jobs[1:]:
        job()  # does not wait forever
    for w in writers[1:]:
        assert w.close().digest == _digest(w.path)
    writers[0].file.close()


def test_jobs_that_others_wait_for_run_after_an_error_and_prepared_work_uses_one_torch_thread():
    writer, ran, before = BackgroundWriter(budget=100, lanes=1), [], torch.get_num_threads()

    def boom():
        raise ValueError("first")

    writer.submit(1, boom)
    writer.submit(1, lambda: ran.append("skipped"))
    writer.submit(1, lambda: ran.append("always"), always=True)
    threads = writer.prepare(torch.get_num_threads)
    with pytest.raises(ValueError, match="first"):
        writer.close()
    assert ran == ["always"]
    assert threads.result() == 1 and torch.get_num_threads() == before  # this thread's count untouched
