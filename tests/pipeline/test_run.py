"""`nvlm-deploy build`: two targets from one run, reuse on the next, resume after SIGKILL, the GPU machine's
half (its engines stood in by the manifests `build vision` / `build llm` write), and the target-level
refusal of engines built for another GPU or TensorRT-LLM version."""

import contextlib
import dataclasses
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from types import SimpleNamespace

import pytest

from nvlm_deploy.artifacts import input_hashes
from nvlm_deploy.pipeline import run, stages
from nvlm_deploy.build.gpu import GpuInfo
from nvlm_deploy.cli import main
from nvlm_deploy.contracts.manifest import (LlmEngineManifest, RepositoryManifest, TargetManifest,
                                            VisionEngineManifest, read_manifest, write_manifest)
from nvlm_deploy.contracts.target import Target
from nvlm_deploy.errors import DeployError
from nvlm_deploy.serve.launch import check_repository

CPU, GPU = "cpu-fp32", "h100-sxm-bf16-tp2"
CPU_STAGES = ("onnx", "trtllm_checkpoint", "model_repository")
GPU_STAGES = ("onnx", "trtllm_checkpoint", "vision", "llm", "model_repository")
H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", 79.6, "10.14.1", "1.2.1")
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0", 80.0, "10.14.1", "1.2.1")


def build(*args) -> SimpleNamespace:
    """`nvlm-deploy build ARGS` in this process: exit code, stdout lines, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["build", *map(str, args)])
    return SimpleNamespace(rc=rc, out=out.getvalue(), lines=out.getvalue().splitlines(), err=err.getvalue())


def built(result, target: str, stage: str) -> bool:
    return re.search(rf"^\[{target}\] {stage}: built in \d+\.\d s$", result.out, re.M) is not None


def manifests(directory):
    return {p: p.read_bytes() for p in sorted(directory.rglob("manifest.json"))}


@pytest.fixture(scope="module")
def first(tiny_checkpoint, tmp_path_factory):
    """One run for a CPU and a GPU target, on this machine (no TensorRT)."""
    root = tmp_path_factory.mktemp("engines")
    result = build("--model", tiny_checkpoint, "--target", CPU, "--target", GPU, "--out", root)
    result.cpu, result.gpu = (Target(root / tiny_checkpoint.name / name) for name in (CPU, GPU))
    result.root = root
    return result


def test_two_targets_build_every_cpu_stage_and_one_cpu_served_repository(first, tiny_checkpoint):
    assert first.rc == 0, first.err
    assert all(built(first, CPU, stage) for stage in CPU_STAGES)
    assert built(first, GPU, "onnx") and built(first, GPU, "trtllm_checkpoint")
    for stage in ("vision", "llm"):
        assert f"[{GPU}] {stage}: needs a GPU (TensorRT and TensorRT-LLM are not installed here)" in first.lines
    assert f"[{GPU}] model_repository: needs a GPU (waits for vision, llm)" in first.lines
    cpu, gpu = first.cpu, first.gpu
    assert read_manifest(cpu.dir("model_repository"), RepositoryManifest).runtime == "cpu"
    assert f"[{CPU}] ready: nvlm-deploy serve {cpu.dir('model_repository')}" in first.lines
    assert main(["serve", str(cpu.dir("model_repository")), "--print-command"]) == 0
    # per-target stages in the target's precision and parallelism
    assert cpu.manifest("onnx").precision == "fp32" and gpu.manifest("onnx").precision == "bf16"
    checkpoint = gpu.manifest("trtllm_checkpoint")
    assert (checkpoint.precision, checkpoint.tp, checkpoint.pp) == ("bf16", 2, 1)
    assert not any(gpu.dir(s).exists() for s in ("vision", "llm", "model_repository"))
    # what is left, as commands for the GPU machine
    root = gpu.root
    assert f"  nvlm-deploy build vision --onnx {root} --out {root}" in first.lines
    assert f"  nvlm-deploy build llm --checkpoint {root} --out {root}" in first.lines
    assert (f"  nvlm-deploy package --engines {root} --runtime gpu --model {tiny_checkpoint} "
            f"--out {root}/model_repository") in first.lines
    assert any(line.startswith(f"[{GPU}] every CPU stage is done; vision, llm, model_repository remain for a machine "
                               "with NVIDIA H100 80GB SXM GPUs (SM 9.0)") for line in first.lines)


def test_target_manifests_record_the_gpu_versions_hashes_and_plan(first, tiny_checkpoint):
    gpu = read_manifest(first.gpu.root, TargetManifest)
    assert (gpu.target, gpu.runtime, gpu.recipe, gpu.tp, gpu.pp) == (GPU, "gpu", "bf16", 2, 1)
    assert gpu.gpu == {"slug": "h100-sxm", "name": "NVIDIA H100 80GB SXM", "compute_capability": "9.0",
                       "memory_bytes": 80 * 10**9}
    assert gpu.tensorrt is None and gpu.tensorrt_llm is None  # no engine built here
    assert gpu.input_hashes == input_hashes(tiny_checkpoint) and "config.json" in gpu.input_hashes
    assert gpu.plan["fits"] and gpu.plan["gpu"]["slug"] == "h100-sxm" and gpu.plan["gpus_available"] == 2
    assert gpu.stages == {}  # not finished
    cpu = read_manifest(first.cpu.root, TargetManifest)
    assert (cpu.target, cpu.runtime, cpu.gpu, cpu.plan) == (CPU, "cpu", {}, {})
    assert set(cpu.stages) == set(CPU_STAGES)


def test_second_run_reuses_every_stage(first, tiny_checkpoint):
    before = manifests(first.root)
    again = build("--model", tiny_checkpoint, "--target", CPU, "--target", GPU, "--out", first.root)
    assert again.rc == 0, again.err
    for stage in CPU_STAGES:
        assert f"[{CPU}] {stage}: reused" in again.lines
    for stage in ("onnx", "trtllm_checkpoint"):
        assert f"[{GPU}] {stage}: reused" in again.lines
    assert "built in" not in again.out and "removed" not in again.out
    assert sum("needs a GPU" in line for line in again.lines) == 3
    assert manifests(first.root) == before


def test_changed_limits_rebuild_only_what_depends_on_them(first, tiny_checkpoint, tmp_path):
    root = tmp_path / "engines"
    shutil.copytree(first.cpu.root, root / tiny_checkpoint.name / CPU)
    run = build("--model", tiny_checkpoint, "--target", CPU, "--out", root, "--max-output-len", 64)
    assert run.rc == 0, run.err
    assert f"[{CPU}] onnx: reused" in run.lines and f"[{CPU}] trtllm_checkpoint: reused" in run.lines
    assert f"[{CPU}] model_repository: out of date (limits max_output_len 1024 -> 64); removed" in run.lines
    assert built(run, CPU, "model_repository")
    repo = read_manifest(root / tiny_checkpoint.name / CPU / "model_repository", RepositoryManifest)
    assert repo.limits["max_output_len"] == 64


def test_a_build_killed_mid_stage_resumes(tiny_checkpoint, tmp_path):
    root = tmp_path / "engines"
    target = root / tiny_checkpoint.name / CPU
    proc = subprocess.Popen([sys.executable, "-m", "nvlm_deploy", "build", "--model", str(tiny_checkpoint),
                             "--target", CPU, "--out", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(target.glob(".onnx.tmp-*")):
        assert proc.poll() is None, "the build ended before the ONNX export started"
        assert time.monotonic() < deadline, "no .onnx.tmp-* directory appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # reaped: a zombie would still count as alive
    assert f".onnx.tmp-{proc.pid}" in [p.name for p in target.iterdir()] and not (target / "onnx").exists()
    resumed = build("--model", tiny_checkpoint, "--target", CPU, "--out", root)
    assert resumed.rc == 0, resumed.err
    assert f"[{CPU}] removed .onnx.tmp-{proc.pid} (left by an interrupted run)" in resumed.lines
    assert all(built(resumed, CPU, stage) for stage in CPU_STAGES)
    assert not list(target.glob(".*.tmp-*"))
    assert all(Target(target).has(stage) for stage in CPU_STAGES)


def test_a_quantized_cpu_target_is_quantized_packaged_and_reused(tiny_checkpoint, tmp_path):
    """cpu-fp8: the checkpoint stage is `quantize` (modelopt, demo calibration set), the CPU repository
    serves it; a second run reuses every stage."""
    pytest.importorskip("modelopt.torch.quantization")
    result = build("--model", tiny_checkpoint, "--target", "cpu-fp8", "--out", tmp_path)
    assert result.rc == 0, result.err
    assert all(built(result, "cpu-fp8", stage) for stage in CPU_STAGES)
    target = Target(tmp_path / tiny_checkpoint.name / "cpu-fp8")
    checkpoint = target.manifest("trtllm_checkpoint")
    assert checkpoint.quantization["recipe"] == "fp8" and checkpoint.precision == "bf16"
    config = (target.dir("trtllm_checkpoint") / "config.json").read_text()
    assert '"quant_algo": "FP8"' in config
    check_repository(target.dir("model_repository"))
    again = build("--model", tiny_checkpoint, "--target", "cpu-fp8", "--out", tmp_path)
    assert again.rc == 0 and not any(built(again, "cpu-fp8", stage) for stage in CPU_STAGES), again.out


def test_build_without_model_or_target_says_what_it_needs(capsys):
    assert main(["build"]) == 1
    assert "needs --model DIR and at least one --target NAME" in capsys.readouterr().err


# ---- the GPU machine's half, engines stood in by their manifests ----

def fake_vision_engine(build_: stages.TargetBuild):
    """vision/manifest.json as `build vision` writes it on an H100 (no plan: TensorRT cannot run here)."""
    from nvlm_deploy.build.vision_engine import tile_profile

    target, onnx = build_.target, build_.target.manifest("onnx")
    target.dir("vision").mkdir()
    write_manifest(target.dir("vision"), VisionEngineManifest(
        onnx_dir=str(target.dir("onnx")), onnx_created=onnx.created, precision=onnx.precision, hardware_compat="none",
        requests_per_call=1, profile=asdict(tile_profile(build_.limits)), plan_bytes=1 << 20, gpu=H100.as_dict(),
        build_seconds=1.0))


def fake_llm_engine(build_: stages.TargetBuild):
    """llm/manifest.json as `build llm` writes it on an H100 with TensorRT-LLM 1.2.1."""
    target, checkpoint = build_.target, build_.target.dir("trtllm_checkpoint")
    target.dir("llm").mkdir()
    write_manifest(target.dir("llm"), LlmEngineManifest(
        checkpoint_dir=str(checkpoint), input_hashes=input_hashes(checkpoint), limits=build_.limits.as_dict(),
        precision="bf16", tp=2, pp=1, world_size=2, workers=2, gpu=H100.as_dict(), tensorrt_llm="1.2.1", command=[],
        engine_bytes={"rank0.engine": 1 << 20, "rank1.engine": 1 << 20}))


def on_an_h100(monkeypatch):
    monkeypatch.setattr(run, "gpu_blocker", lambda spec: None)
    monkeypatch.setitem(stages.STEPS, "vision", dataclasses.replace(stages.STEPS["vision"], build=fake_vision_engine))
    monkeypatch.setitem(stages.STEPS, "llm", dataclasses.replace(stages.STEPS["llm"], build=fake_llm_engine))


@pytest.fixture(scope="module")
def gpu_machine(first, tiny_checkpoint, tmp_path_factory):
    """The GPU target of `first` carried to an H100 machine and built there twice."""
    root = tmp_path_factory.mktemp("gpu-machine")
    shutil.copytree(first.gpu.root, root / tiny_checkpoint.name / GPU)
    with pytest.MonkeyPatch.context() as monkeypatch:
        on_an_h100(monkeypatch)
        runs = [build("--model", tiny_checkpoint, "--target", GPU, "--out", root) for _ in range(2)]
    return SimpleNamespace(root=root, target=Target(root / tiny_checkpoint.name / GPU), runs=runs)


def test_the_same_build_on_the_gpu_machine_finishes_the_target(gpu_machine):
    done, again = gpu_machine.runs
    assert done.rc == 0, done.err
    assert f"[{GPU}] onnx: reused" in done.lines and f"[{GPU}] trtllm_checkpoint: reused" in done.lines
    assert all(built(done, GPU, stage) for stage in ("vision", "llm", "model_repository"))
    target = gpu_machine.target
    repo = read_manifest(target.dir("model_repository"), RepositoryManifest)
    assert repo.runtime == "gpu" and repo.engines_gpu["vision"]["name"] == H100.name and repo.tensorrt_llm == "1.2.1"
    recorded = read_manifest(target.root, TargetManifest)
    assert (recorded.tensorrt, recorded.tensorrt_llm) == ("10.14.1", "1.2.1")
    assert set(recorded.stages) == set(GPU_STAGES)
    serve = f"nvlm-deploy serve {target.dir('model_repository')} (on NVIDIA H100 80GB SXM GPUs)"
    assert f"[{GPU}] ready: {serve}" in done.lines
    assert again.rc == 0 and all(f"[{GPU}] {stage}: reused" in again.lines for stage in GPU_STAGES)
    assert check_repository(target.dir("model_repository"), local=H100).world_size == 2


@pytest.fixture()
def finished(gpu_machine, tmp_path, tiny_checkpoint):
    """A copy of the finished GPU target, to tamper with."""
    return Target(shutil.copytree(gpu_machine.target.root, tmp_path / "engines" / tiny_checkpoint.name / GPU))


def test_package_refuses_an_engine_built_for_another_gpu_than_the_target(finished, tiny_checkpoint, capsys):
    vision = read_manifest(finished.dir("vision"), VisionEngineManifest)
    write_manifest(finished.dir("vision"), dataclasses.replace(vision, gpu=A100.as_dict()))
    assert main(["package", "--engines", str(finished.root), "--runtime", "gpu", "--out",
                 str(finished.root / "repo")]) == 1
    err = capsys.readouterr().err
    assert "vision/ engine was built for NVIDIA A100-SXM4-80GB (SM 8.0, hardware compatibility none)" in err
    assert f"this target ({GPU}, {finished.root}/manifest.json) is for NVIDIA H100 80GB SXM (SM 9.0)" in err
    assert (f"`nvlm-deploy build --model {tiny_checkpoint} --target {GPU} --out {finished.root.parent.parent}`"
            in err)
    assert "Traceback" not in err and not (finished.root / "repo").exists()
    # built Ampere+ on an A100, TensorRT runs it on the H100: accepted
    write_manifest(finished.dir("vision"), dataclasses.replace(vision, gpu=A100.as_dict(), hardware_compat="ampere+"))
    assert main(["package", "--engines", str(finished.root), "--runtime", "gpu", "--out",
                 str(finished.root / "repo")]) == 0


def test_build_replaces_an_engine_built_for_another_gpu(finished, tiny_checkpoint, monkeypatch):
    vision = read_manifest(finished.dir("vision"), VisionEngineManifest)
    write_manifest(finished.dir("vision"), dataclasses.replace(vision, gpu=A100.as_dict()))
    on_an_h100(monkeypatch)
    run = build("--model", tiny_checkpoint, "--target", GPU, "--out", finished.root.parent.parent)
    assert run.rc == 0, run.err
    assert any(line.startswith(f"[{GPU}] vision: out of date (vision/ engine was built for NVIDIA A100-SXM4-80GB")
               and line.endswith("; removed") for line in run.lines)
    assert built(run, GPU, "vision") and f"[{GPU}] llm: reused" in run.lines and built(run, GPU, "model_repository")
    assert finished.manifest("vision").gpu["name"] == H100.name


def test_lower_limits_on_the_cpu_machine_remove_only_the_engine_they_change(finished, tiny_checkpoint):
    run = build("--model", tiny_checkpoint, "--target", GPU, "--out", finished.root.parent.parent,
                "--max-output-len", 64)
    assert run.rc == 0, run.err
    assert f"[{GPU}] vision: reused" in run.lines  # the tile profile does not depend on the output length
    assert f"[{GPU}] llm: out of date (limits max_output_len 1024 -> 64); removed" in run.lines
    assert f"[{GPU}] llm: needs a GPU (TensorRT and TensorRT-LLM are not installed here)" in run.lines
    assert f"  nvlm-deploy build llm --checkpoint {finished.root} --out {finished.root}" in run.lines
    assert not any("build vision" in line for line in run.lines)
    assert read_manifest(finished.root, TargetManifest).tensorrt_llm is None  # no longer a finished build


def test_serve_refuses_a_repository_whose_engines_disagree_with_the_target(finished, tiny_checkpoint):
    repo = finished.dir("model_repository")
    manifest = read_manifest(repo, RepositoryManifest)
    other_gpu = {stage: {**A100.as_dict(), "hardware_compat": "none"} for stage in manifest.engines_gpu}
    write_manifest(repo, dataclasses.replace(manifest, engines_gpu=other_gpu))
    with pytest.raises(DeployError) as exc:
        check_repository(repo, local=A100)  # this machine fits the tampered repository; the target does not
    message = str(exc.value)
    assert f"{repo}/manifest.json does not match the target it was packaged from" in message
    assert "llm/ engine was built for NVIDIA A100-SXM4-80GB (SM 8.0" in message
    assert "is for NVIDIA H100 80GB SXM (SM 9.0)" in message and f"--target {GPU}" in message
    write_manifest(repo, dataclasses.replace(manifest, tensorrt_llm="1.3.0"))
    newer = GpuInfo(H100.name, "9.0", 79.6, "10.14.1", "1.3.0")
    with pytest.raises(DeployError, match=r"llm/ engine was built with TensorRT-LLM 1\.3\.0; this target "
                                          rf"\({GPU}, .*\) was built with 1\.2\.1"):
        check_repository(repo, local=newer)
