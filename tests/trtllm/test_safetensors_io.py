"""Streaming safetensors writing: kernel copies with their fallbacks, hashes made on the way, the writer thread."""

import errno
import hashlib
import os
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from nvlm_deploy.artifacts import record_of
from nvlm_deploy.trtllm import safetensors_io
from nvlm_deploy.trtllm.safetensors_io import BackgroundWriter, SafetensorsWriter, ShardReader, SourceRange


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    assert record.sha256 == _sha(out) and record.bytes == out.stat().st_size
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
    assert record.sha256 == _sha(tmp_path / "out.safetensors")


def test_out_of_order_writes_leave_the_hash_to_a_read(tmp_path):
    specs = {"x": (torch.float32, (2,)), "y": (torch.float32, (3,))}
    writer = SafetensorsWriter(tmp_path / "o.safetensors", specs)
    writer.write("y", torch.ones(3))
    writer.write("x", torch.zeros(2))
    assert writer.close() is None
    assert record_of(tmp_path / "o.safetensors").sha256 == _sha(tmp_path / "o.safetensors")
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
