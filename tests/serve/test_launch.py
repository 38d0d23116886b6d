import pytest

from nvlm_deploy.build.gpu import GpuInfo
from nvlm_deploy.contracts.manifest import RepositoryManifest, read_manifest, write_manifest
from nvlm_deploy.errors import DeployError
from nvlm_deploy.serve.launch import check_repository, engine_mismatches, leader_mode_command, runs_on

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", 79.1, "10.11.0", "1.2.0")
L40S = GpuInfo("NVIDIA L40S", "8.9", 44.5, "10.11.0", "1.2.0")
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0", 79.1, "10.11.0", "1.2.0")
T4 = GpuInfo("Tesla T4", "7.5", 14.6, "10.11.0", "1.2.0")
CPU = GpuInfo(None, None, None, None, None)


def gpu_repo(tmp_path, built=H100, trtllm="1.2.0", vision_compat="none"):
    """A GPU repository's manifest as `package --runtime gpu` writes it (no engines: nothing here loads them)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    write_manifest(repo, RepositoryManifest(
        runtime="gpu", target="/eng/h100-sxm-bf16-tp2", model_dir="/models/nvlm-d", limits={}, world_size=2,
        prompt_table_precision="bf16", kv_cache={}, tensorrt_llm=trtllm, models=[], paths={},
        engines_gpu={"vision": {**built.as_dict(), "hardware_compat": vision_compat},
                     "llm": {**built.as_dict(), "hardware_compat": "none"}}))
    return repo


def test_matching_machine_passes(tmp_path):
    assert check_repository(gpu_repo(tmp_path), local=H100).world_size == 2


def test_hardware_compatible_engines_run_on_later_architectures(tmp_path):
    ampere_plus = {**A100.as_dict(), "hardware_compat": "ampere+"}
    assert runs_on(ampere_plus, "9.0") and runs_on(ampere_plus, "8.9") and runs_on(ampere_plus, "10.0")
    assert not runs_on(ampere_plus, "7.5")
    exact = {**A100.as_dict(), "hardware_compat": "none"}
    assert runs_on(exact, "8.0") and not runs_on(exact, "9.0")
    # the vision engine built Ampere+ on an A100 passes on an H100; the decoder engine still must match
    problems = engine_mismatches(read_manifest(gpu_repo(tmp_path, built=A100, vision_compat="ampere+"),
                                               RepositoryManifest), H100)
    assert len(problems) == 1 and problems[0].startswith("llm/")


def test_other_gpu_is_refused_with_what_was_built_for_what_and_how_to_rebuild(tmp_path):
    with pytest.raises(DeployError) as exc:
        check_repository(gpu_repo(tmp_path), local=L40S)
    message = str(exc.value)
    assert "built for NVIDIA H100 80GB HBM3 (SM 9.0, hardware compatibility none)" in message
    assert "NVIDIA L40S (SM 8.9)" in message
    assert "nvlm-deploy build llm" in message and "/eng/h100-sxm-bf16-tp2" in message


def test_other_tensorrt_llm_version_is_refused(tmp_path):
    newer = GpuInfo(H100.name, "9.0", 79.1, "10.11.0", "1.3.0")
    with pytest.raises(DeployError, match="TensorRT-LLM 1.2.0; this machine has 1.3.0"):
        check_repository(gpu_repo(tmp_path), local=newer)


def test_no_gpu_is_a_mismatch_but_cpu_repositories_need_none(tmp_path, cpu_repo):
    assert any("no NVIDIA GPU" in p for p in engine_mismatches(read_manifest(gpu_repo(tmp_path), RepositoryManifest), CPU))
    assert check_repository(cpu_repo, local=CPU).runtime == "cpu"


def test_not_a_repository(tmp_path):
    with pytest.raises(DeployError, match="nvlm-deploy package"):
        check_repository(tmp_path)


def test_leader_mode_runs_one_server_per_rank_and_workers_load_only_the_llm():
    cmd = leader_mode_command(["--model-repository", "/r", "--grpc-port", "9001"], world_size=2, binary="/bin/ts")
    assert cmd[:2] == ["mpirun", "--allow-run-as-root"]
    ranks = " ".join(cmd[2:]).split(" : ")
    assert len(ranks) == 2
    assert ranks[0].startswith("-n 1 /bin/ts --model-repository /r --grpc-port 9001")
    assert "--load-model" not in ranks[0] and "shm-region-prefix-name=nvlmd0_" in ranks[0]
    assert ranks[1].endswith("--model-control-mode explicit --load-model tensorrt_llm")
    assert "shm-region-prefix-name=nvlmd1_" in ranks[1]


def test_serve_cli_refuses_gpu_engines_here_and_prints_the_command_for_cpu(tmp_path, cpu_repo, capsys):
    from nvlm_deploy.build.gpu import describe_local_gpu
    from nvlm_deploy.cli import main

    if describe_local_gpu().compute_capability == H100.compute_capability:
        pytest.skip("this machine has the engines' GPU")
    assert main(["serve", str(gpu_repo(tmp_path))]) == 1
    assert "do not fit this machine" in capsys.readouterr().err
    assert main(["serve", str(cpu_repo), "--print-command", "--grpc-port", "9101"]) == 0
    line = capsys.readouterr().out
    assert "tritonserver --model-repository" in line and "--grpc-port 9101" in line and "--grpc-address 127.0.0.1" in line


def test_cpu_repository_of_a_multi_rank_checkpoint_serves_in_one_process(tmp_path, cpu_repo, capsys):
    """The CPU runtime merges every rank itself: no mpirun whatever the checkpoint's world size."""
    import json
    import shutil

    from nvlm_deploy.cli import main

    repo = shutil.copytree(cpu_repo, tmp_path / "repo")
    manifest = json.loads((repo / "manifest.json").read_text())
    (repo / "manifest.json").write_text(json.dumps({**manifest, "world_size": 4}))
    assert main(["serve", str(repo), "--print-command"]) == 0
    line = capsys.readouterr().out
    assert "mpirun" not in line and line.split()[0].endswith("tritonserver")
