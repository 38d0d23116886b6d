"""Stage directories: replaced atomically whatever point a SIGKILL hits, file records, verification."""

import os
import signal
import subprocess
import sys
import textwrap

import blake3
import pytest

from nvlm_deploy import artifacts
from nvlm_deploy.artifacts import (FAULT_ENV, StreamHash, atomic_output_dir, file_records, interrupted_leftovers,
                                   missing_stage_message, verify_files, write_recorded)
from nvlm_deploy.errors import DeployError

# A stage in a child process: writes NEW into every file of `out` (replacing OLD), manifest last.
STAGE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from nvlm_deploy.artifacts import atomic_output_dir, fault_point
    out = Path(sys.argv[1])
    with atomic_output_dir(out, force=True) as tmp:
        for i in range(4):
            (tmp / f"part{i}").write_text("NEW")
            fault_point("part")
        (tmp / "manifest.json").write_text("NEW")
""")


def _old_stage(out):
    out.mkdir()
    for i in range(4):
        (out / f"part{i}").write_text("OLD")
    (out / "manifest.json").write_text("OLD")


def _state(out) -> str:
    """'old' / 'new' for a complete directory, 'missing', or 'MIXED' (what must never happen)."""
    if not out.exists():
        return "missing"
    contents = {p.name: p.read_text() for p in out.iterdir()}
    for version in ("OLD", "NEW"):
        if contents == {**{f"part{i}": version for i in range(4)}, "manifest.json": version}:
            return version.lower()
    return "MIXED"


@pytest.mark.parametrize("point, after", [
    ("part:2", "old"),           # mid-write of the new one: the old one is untouched
    ("stage-written", "old"),    # the new one complete, not yet swapped
    ("old-aside", "missing"),    # between the two renames: no directory at all, never a mix
    ("new-in", "new"),           # swapped, the old one not yet removed
    ("removing-old:2", "new"),   # killed while deleting the old one (the reported bug's moment)
])
def test_a_sigkill_at_any_point_leaves_the_old_or_the_new_never_a_mix(tmp_path, point, after):
    out = tmp_path / "stage"
    _old_stage(out)
    run = subprocess.run([sys.executable, "-c", STAGE, str(out)], env={**os.environ, FAULT_ENV: point})
    assert run.returncode == -signal.SIGKILL
    assert _state(out) == after
    leftovers = interrupted_leftovers(out)
    if after == "missing":
        assert "An interrupted run left" in missing_stage_message(out, "nvlm-deploy convert llm")
    # the next run removes what the killed one left, and completes
    assert subprocess.run([sys.executable, "-c", STAGE, str(out)], env={**os.environ, FAULT_ENV: ""}).returncode == 0
    assert _state(out) == "new"
    assert not any(p.exists() for p in leftovers) and not interrupted_leftovers(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_a_failing_stage_removes_its_temporary_directory_and_keeps_the_old(tmp_path):
    out = tmp_path / "stage"
    _old_stage(out)
    with pytest.raises(RuntimeError), atomic_output_dir(out, force=True) as tmp:
        (tmp / "part0").write_text("NEW")
        raise RuntimeError("stage failed")
    assert _state(out) == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "stage").mkdir()
    with pytest.raises(DeployError, match="--force"), atomic_output_dir(tmp_path / "stage"):
        pass


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def test_stream_hash_equals_blake3_of_the_file_with_gaps_as_zeros():
    data = b"header" + bytes(10) + b"tensor"
    h = StreamHash()
    h.update_at(0, b"header")
    h.update_at(16, b"tensor")  # the gap reads as zeros (truncate-extended file)
    assert h.finish(len(data) + 4).digest == _b3(data + bytes(4))
    late = StreamHash()
    late.update_at(10, b"x")
    late.update_at(0, b"y")  # out of order: unknown, hashed by reading instead
    assert late.finish(11) is None


def test_records_come_from_the_write_and_are_recomputed_after_a_change(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    write_recorded(tmp_path / "big.bin", b"a" * 1000)
    (tmp_path / "sub" / "small.json").write_text("{}")
    (tmp_path / "manifest.json").write_text("{}")
    read = []
    real = artifacts.file_digest
    monkeypatch.setattr(artifacts, "file_digest", lambda p, **k: read.append(p.name) or real(p))
    records = file_records(tmp_path)
    assert sorted(records) == ["big.bin", "sub/small.json"]  # the manifest does not describe itself
    assert records["big.bin"] == {"bytes": 1000, "blake3": _b3(b"a" * 1000)}
    assert records["sub/small.json"] == {"bytes": 2, "blake3": _b3(b"{}")}
    assert read == ["small.json"]  # the big file was hashed while written, not read back
    os.utime(tmp_path / "big.bin", ns=(1, 1))  # changed after writing: the write's record no longer counts
    file_records(tmp_path)
    assert "big.bin" in read


def test_verification_names_each_missing_truncated_or_changed_file(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(b"12345678")
    records = file_records(tmp_path)
    verify_files(tmp_path, records, hashes=True, fix="re-run it")
    (tmp_path / "a").unlink()
    (tmp_path / "b").write_bytes(b"1234")
    (tmp_path / "c").write_bytes(b"87654321")  # same size: only the hash tells
    with pytest.raises(DeployError) as sizes:
        verify_files(tmp_path, records, fix="re-run `x --force`")
    message = str(sizes.value)
    assert f"{tmp_path / 'a'} is missing" in message and "has 4 bytes; the manifest records 8 (truncated)" in message
    assert str(tmp_path / "c") not in message and "re-run `x --force`" in message
    with pytest.raises(DeployError, match="blake3 mismatch"):
        verify_files(tmp_path, records, hashes=True, fix="re-run", names=["c"])
    with pytest.raises(DeployError, match="records no file sizes"):
        verify_files(tmp_path, None, fix="re-run")


def test_records_of_an_older_digest_are_refused_with_a_re_run_message(tmp_path):
    """Manifests from before BLAKE3 recorded sha256: nothing here can check them, so the stage is re-run."""
    import hashlib

    (tmp_path / "a").write_bytes(b"12345678")
    old = {"a": {"bytes": 8, "sha256": hashlib.sha256(b"12345678").hexdigest()}}
    for hashes in (False, True):  # refused even for a sizes-only check, like records from before file records
        with pytest.raises(DeployError) as exc:
            verify_files(tmp_path, old, hashes=hashes, fix="re-run `nvlm-deploy convert llm --force`")
        message = str(exc.value)
        assert "records sha256 digests" in message and "blake3" in message
        assert "re-run `nvlm-deploy convert llm --force`" in message
    verify_files(tmp_path, file_records(tmp_path), hashes=True, fix="re-run")  # a fresh record passes


def test_big_files_read_back_hash_to_the_same_digest_as_streamed(tmp_path):
    """file_digest (every core, read back) and write_recorded / StreamHash (one core, on the way) agree."""
    data = os.urandom(3 << 20) + bytes(1 << 20)
    record = write_recorded(tmp_path / "x.bin", data)
    assert record.digest == _b3(data) == artifacts.file_digest(tmp_path / "x.bin", chunk=1 << 20)
