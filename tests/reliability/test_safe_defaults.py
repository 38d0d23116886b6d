"""Safe defaults (issue 14 item 6): every endpoint on 127.0.0.1 unless told, metrics off, no URL
fetching unless packaged with it, safetensors only, no trust_remote_code, no pickle anywhere."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from nvlm_deploy.serve import server as srv

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("nvlm_deploy", "triton_repo", "benchmarks", "scripts") for p in (ROOT / d).rglob("*.py")]


def flags(cmd: list[str]) -> dict[str, str]:
    return {flag: cmd[i + 1] for i, flag in enumerate(cmd[:-1]) if flag.startswith("--")}


def test_every_endpoint_binds_localhost_and_metrics_are_off_by_default(tmp_path):
    dist = srv._pytriton_dist(tmp_path)
    args = flags(srv.server_command(dist, tmp_path, grpc_port=1, http_port=2))
    assert args["--grpc-address"] == args["--http-address"] == "127.0.0.1"
    assert args["--allow-metrics"] == "false"
    assert args["--allow-sagemaker"] == args["--allow-vertex-ai"] == "false"  # no other listener
    with_metrics = flags(srv.server_command(dist, tmp_path, grpc_port=1, http_port=2, metrics_port=3))
    assert (with_metrics["--allow-metrics"], with_metrics["--metrics-address"], with_metrics["--metrics-port"]) == (
        "true", "127.0.0.1", "3")
    told = flags(srv.server_command(dist, tmp_path, grpc_port=1, http_port=2, host="0.0.0.0", metrics_port=3))
    assert told["--grpc-address"] == told["--http-address"] == told["--metrics-address"] == "0.0.0.0"


def test_serve_and_openai_default_to_localhost():
    from nvlm_deploy.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["repo"])
    assert args.host == "127.0.0.1" and args.metrics_port is None


def test_url_fetching_is_off_unless_packaged_with_it():
    from nvlm_deploy.commands import package
    from nvlm_deploy.serve.package import PackageOptions

    assert PackageOptions().allow_remote_image_urls is False
    parser = argparse.ArgumentParser()
    package.add_arguments(parser)
    args = parser.parse_args(["--engines", "e", "--runtime", "cpu", "--out", "o"])
    assert args.allow_image_urls is False


@pytest.mark.parametrize("pattern, why", [
    (r"trust_remote_code", "never run a checkpoint's code"),
    (r"torch\.load\(|pickle\.|allow_pickle|np\.load\(|numpy\.load\(", "weights are safetensors; nothing unpickles"),
    (r"yaml\.load\(|(?<![.\w])eval\(|(?<![.\w])exec\(", "no code from data"),
])
def test_no_unsafe_loading_anywhere(pattern, why):
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if re.search(pattern, line)]
    assert not hits, f"{why}: {hits}"


def test_checkpoints_are_read_from_safetensors_only(tiny_checkpoint, tmp_path):
    import shutil

    from nvlm_deploy.errors import DeployError
    from nvlm_deploy.model.checkpoint import CheckpointIndex

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, pickled)
    for f in list(pickled.glob("*.safetensors")) + [pickled / "model.safetensors.index.json"]:
        f.unlink(missing_ok=True)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle would run code")
    with pytest.raises(DeployError, match="safetensors"):
        CheckpointIndex.open(pickled)


@pytest.mark.server
def test_the_running_server_listens_on_localhost_only(server):
    """Every listening TCP socket of tritonserver is on 127.0.0.1 (no metrics or other port elsewhere)."""
    inodes = {link.readlink().name[len("socket:["):-1] for link in Path(f"/proc/{server.pid}/fd").iterdir()
              if link.readlink().name.startswith("socket:[")}
    listening = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # state LISTEN, owned by the server
                address, port = cols[1].split(":")
                listening.append((address, int(port, 16)))
    assert {port for _, port in listening} == {server.grpc_port, server.http_port}, listening
    # 127.0.0.1 as /proc writes it: IPv4 little-endian hex, or IPv4-mapped in an IPv6 socket (gRPC's)
    localhost = {"0100007F", "0000000000000000FFFF00000100007F"}
    assert all(address in localhost for address, _ in listening), listening
