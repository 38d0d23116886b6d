"""Packaging: CPU and GPU repositories from a target's manifests, limits, paths, the GPU backend's parameters."""

import json
import os
import shutil

import pytest

from nvlm_deploy.contracts import bls_decoder
from nvlm_deploy.contracts.manifest import LlmEngineManifest, VisionEngineManifest, write_manifest
from nvlm_deploy.errors import DeployError
from nvlm_deploy.serve import package as pkg
from nvlm_deploy.serve.template import parse_model_config
from tests.serving import LIMITS

GIB = 1 << 30


def configs(repo):
    return {m: parse_model_config((repo / m / "config.pbtxt").read_text()) for m in pkg.MODELS}


def repo_manifest(repo) -> dict:
    return json.loads((repo / "manifest.json").read_text())


def test_cpu_repository_is_complete_and_self_describing(cpu_repo, engines):
    parsed = configs(cpu_repo)
    assert {m: c.backend or c.platform for m, c in parsed.items()} == {
        "preprocessing": "python", "vision_encoder": "python", "tensorrt_llm": "python",
        "postprocessing": "python", "ensemble": "ensemble", "tensorrt_llm_bls": "python"}
    for model, config in parsed.items():
        assert "${" not in (cpu_repo / model / "config.pbtxt").read_text()
        assert (cpu_repo / model / "1").is_dir()
        assert (cpu_repo / model / "1" / "model.py").is_file() == (config.backend == "python")
    assert parsed["tensorrt_llm"].model_transaction_policy.decoupled
    assets = parsed["preprocessing"].parameters["assets_dir"].string_value
    assert os.path.isabs(assets) and (cpu_repo / "preprocessing" / "assets" / "tokenizer.json").is_file()
    ckpt = parsed["tensorrt_llm"].parameters["checkpoint_dir"].string_value
    assert os.path.isabs(ckpt) and os.path.samefile(ckpt, engines / "trtllm_checkpoint")
    manifest = repo_manifest(cpu_repo)
    assert manifest["stage"] == "model_repository" and manifest["runtime"] == "cpu"
    limits = manifest["limits"]
    assert (limits["max_images"], limits["max_tiles_before_thumbnail"], limits["max_input_len"],
            limits["max_output_len"]) == (2, 2, 2048, 64)
    assert limits["derived"]["prompt_table_rows_per_request"] == 2 * 3 * 256
    assert manifest["paths"]["tensorrt_llm"] == {"checkpoint_dir": "../trtllm_checkpoint"}
    assert manifest["prompt_table_precision"] == "fp32"
    # the BLS decodes in its own process on cpu (contracts.bls_decoder)
    assert parsed["tensorrt_llm_bls"].parameters[bls_decoder.PARAMETER].string_value == bls_decoder.LOCAL


def test_client_tensors_come_from_one_table(cpu_repo):
    from nvlm_deploy.contracts.client_tensors import BLS_OUTPUTS, CLIENT_INPUTS, CLIENT_OUTPUTS

    parsed = configs(cpu_repo)
    for model, outputs in (("ensemble", CLIENT_OUTPUTS), ("tensorrt_llm_bls", BLS_OUTPUTS)):
        assert [(i.name, i.optional) for i in parsed[model].input] == [(t.name, t.optional) for t in CLIENT_INPUTS]
        assert [o.name for o in parsed[model].output] == [t.name for t in outputs]
    steps = {s.model_name: s for s in parsed["ensemble"].ensemble_scheduling.step}
    assert dict(steps["preprocessing"].input_map)["QUERY"] == "text_input"
    assert dict(steps["tensorrt_llm"].input_map)["runtime_top_k"] == "top_k"


@pytest.fixture()
def gpu_engines(engines, tmp_path):
    """The cpu artifacts plus vision/ and llm/ manifests as `nvlm-deploy build` writes them on an H100
    (no engines inside: TensorRT cannot run here; packaging reads only the manifests)."""
    from nvlm_deploy.build.gpu import GpuInfo
    from nvlm_deploy.contracts.target import Target

    target = tmp_path / "h100-sxm-bf16-tp2"
    for stage in ("onnx", "trtllm_checkpoint"):
        shutil.copytree(engines / stage, target / stage)
    shutil.copy2(engines / "manifest.json", target / "manifest.json")
    gpu = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", 79.1, "10.14.1", "1.2.1").as_dict()
    built = Target(target).requested_limits(_config(engines), dict(max_batch_size=4, max_images=2, max_output_len=256))
    (target / "vision").mkdir()
    write_manifest(target / "vision", VisionEngineManifest(
        onnx_dir=str(target / "onnx"), onnx_created="", precision="bf16", hardware_compat="none", requests_per_call=1,
        profile={"min": 1, "opt": 7, "max": 14}, plan_bytes=12 * GIB, gpu=gpu, build_seconds=1.0))
    (target / "llm").mkdir()
    write_manifest(target / "llm", LlmEngineManifest(
        checkpoint_dir=str(target / "trtllm_checkpoint"), input_hashes={}, limits=built.as_dict(), precision="bf16",
        tp=2, pp=1, world_size=2, workers=2, gpu=gpu, tensorrt_llm="1.2.1", command=[],
        engine_bytes={"rank0.engine": 36 * GIB, "rank1.engine": 36 * GIB}))
    Target(target).store_limits(built, model_dir=_config_dir(engines))  # as the build does
    return target


def _config_dir(engines):
    return json.loads((engines / "manifest.json").read_text())["model_dir"]


def _config(engines):
    from nvlm_deploy.config import NvlmConfig

    return NvlmConfig.from_hf(_config_dir(engines))


def test_gpu_repository_uses_engine_limits_and_computes_the_kv_cache_fraction(gpu_engines, tmp_path):
    lines = []
    repo = pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lines.append,
                                  options=pkg.PackageOptions(limits=dict(max_batch_size=4, max_images=2)))
    parsed = configs(repo)
    llm = parsed["tensorrt_llm"]
    assert llm.backend == "tensorrtllm" and llm.max_batch_size == 4
    # 79.1 GiB - 36 GiB rank 0 - 1 GiB context = 42.1 GiB free; the vision engine keeps 12 + 3 GiB + tables
    fraction = float(llm.parameters["kv_cache_free_gpu_mem_fraction"].string_value)
    table_bytes = 4 * 2 * 7 * 256 * 128 * 2
    assert fraction == int((1 - (15 * GIB + table_bytes) / (42.1 * GIB)) * 100) / 100 == 0.64
    assert any("kv_cache_free_gpu_mem_fraction 0.64" in line and "vision engine" in line for line in lines)
    assert repo_manifest(repo)["kv_cache"]["how"] == "computed"
    assert os.path.samefile(llm.parameters["gpt_model_path"].string_value, gpu_engines / "llm")
    assert not (repo / "tensorrt_llm" / "1" / "model.py").exists()
    assert parsed["vision_encoder"].parameters["runtime"].string_value == "gpu"
    manifest = repo_manifest(repo)
    assert manifest["engines_gpu"]["llm"]["compute_capability"] == "9.0" and manifest["world_size"] == 1
    assert manifest["limits"]["max_output_len"] == 256 and manifest["limits"]["max_images"] == 2
    assert parsed["tensorrt_llm_bls"].parameters[bls_decoder.PARAMETER].string_value == bls_decoder.TENSORRT_LLM


def test_bls_decoder_choices_the_runtime_cannot_serve_are_refused(engines, gpu_engines, tmp_path):
    with pytest.raises(DeployError, match="--bls-decoder local is for --runtime cpu"):
        pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None,
                               options=pkg.PackageOptions(bls_decoder=bls_decoder.LOCAL))
    with pytest.raises(DeployError, match="is not one of local, tensorrt_llm"):
        pkg.package_repository(engines, tmp_path / "repo", runtime="cpu", log=lambda line: None,
                               options=pkg.PackageOptions(bls_decoder="inside"))
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("precision, triton", [("bf16", "TYPE_BF16"), ("fp16", "TYPE_FP16"), ("fp32", "TYPE_FP32")])
def test_gpu_prompt_table_type_is_the_decoder_checkpoints(gpu_engines, tmp_path, precision, triton):
    path = gpu_engines / "trtllm_checkpoint" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "precision": precision}))
    repo = pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None)
    parsed = configs(repo)
    table_in = next(i for i in parsed["tensorrt_llm"].input if i.name == "prompt_embedding_table")
    table_out = next(o for o in parsed["vision_encoder"].output if o.name == "prompt_embedding_table")
    from tritonclient.grpc import model_config_pb2

    assert model_config_pb2.DataType.Name(table_in.data_type) == model_config_pb2.DataType.Name(table_out.data_type) \
        == triton


def test_gpu_config_holds_every_parameter_the_backend_reads_without_a_fallback(gpu_engines, tmp_path, monkeypatch):
    from nvlm_deploy.serve.upstream import TENSORRTLLM_BACKEND, io_mismatches

    repo = pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None)
    config = configs(repo)["tensorrt_llm"]
    required = TENSORRTLLM_BACKEND["required_parameters"]
    assert {"gpt_model_type", "tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend"} <= set(required)
    assert set(required) <= set(config.parameters), sorted(set(required) - set(config.parameters))
    assert config.parameters["gpt_model_type"].string_value == "inflight_fused_batching"
    assert config.parameters["guided_decoding_backend"].string_value == ""  # "" = not set (guided decoding off)
    assert io_mismatches(config) == []  # every tensor as upstream's tensorrt_llm model declares it
    # a template that drops one of them, or changes a tensor, is refused and nothing is written
    templates = tmp_path / "templates"
    shutil.copytree(pkg.templates(), templates)
    monkeypatch.setattr(pkg, "templates", lambda: templates)
    path = templates / "tensorrt_llm" / "config.pbtxt.gpu.template"
    original = path.read_text()
    path.write_text("\n".join(line for line in original.splitlines() if '"tokenizer_dir"' not in line))
    with pytest.raises(DeployError, match="parameter tokenizer_dir is missing"):
        pkg.package_repository(gpu_engines, tmp_path / "r2", runtime="gpu", log=lambda line: None)
    path.write_text(original.replace('name: "stop_words_list" data_type: TYPE_INT32 dims: [ 2, -1 ]',
                                     'name: "stop_words_list" data_type: TYPE_INT32 dims: [ -1 ]'))
    with pytest.raises(DeployError, match=r"stop_words_list: dims \[-1\] \(upstream \[2, -1\]\)"):
        pkg.package_repository(gpu_engines, tmp_path / "r2", runtime="gpu", log=lambda line: None)
    assert not (tmp_path / "r2").exists()


def test_moved_gpu_repository_resolves_every_path_from_any_working_directory(gpu_engines, tmp_path, monkeypatch):
    from nvlm_deploy.serve.launch import check_paths
    from nvlm_deploy.serve.repository_paths import missing_paths

    repo = pkg.package_repository(gpu_engines, gpu_engines / "model_repository", runtime="gpu", log=lambda line: None)
    elsewhere = tmp_path / "unrelated"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # the repository alone moved: absolute paths still resolve
    alone = shutil.copytree(repo, tmp_path / "copies" / "repo")
    assert _every_path_exists(alone)
    # the whole target moved (repository inside): serve relocates from the recorded relative paths
    moved_target = shutil.move(str(gpu_engines), str(tmp_path / "mnt" / "h100"))
    moved_repo = tmp_path / "mnt" / "h100" / "model_repository"
    assert not _every_path_exists(moved_repo)
    said = []
    manifest = check_paths(moved_repo, log=said.append)
    assert said and "relocated" in said[0] and not missing_paths(moved_repo, manifest)
    assert _every_path_exists(moved_repo)
    gpt = configs(moved_repo)["tensorrt_llm"].parameters["gpt_model_path"].string_value
    assert os.path.samefile(gpt, os.path.join(moved_target, "llm"))


def _every_path_exists(repo) -> bool:
    paths = repo_manifest(repo)["paths"]
    parsed = configs(repo)
    assert paths["tensorrt_llm"] == {"gpt_model_path": "../llm"}
    return all(os.path.isabs(parsed[m].parameters[k].string_value) and os.path.exists(parsed[m].parameters[k].string_value)
               for m, params in paths.items() for k in params)


def test_relocate_for_a_container_mount(cpu_repo, tmp_path, capsys):
    from nvlm_deploy.cli import main

    repo = shutil.copytree(cpu_repo, tmp_path / "repo")
    assert main(["relocate", str(repo), "--mounted-at", "/models"]) == 0
    assert "rewrote" in capsys.readouterr().out
    parsed = configs(repo)
    assert parsed["tensorrt_llm"].parameters["checkpoint_dir"].string_value == "/trtllm_checkpoint"
    assert parsed["preprocessing"].parameters["assets_dir"].string_value == "/models/preprocessing/assets"


def test_gpu_limits_above_the_build_are_refused_with_the_rebuild_command(gpu_engines, tmp_path):
    with pytest.raises(DeployError, match=r"(?s)max_output_len 512 > 256.*build llm"):
        pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None,
                               options=pkg.PackageOptions(limits={"max_output_len": 512}))
    with pytest.raises(DeployError, match=r"(?s)21 tiles per request \(--max-images 3.*at most 14 tiles per call"):
        pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None,
                               options=pkg.PackageOptions(limits={"max_images": 3}))
    assert not (tmp_path / "repo").exists()


def test_gpu_memory_too_small_for_both_engines_is_refused(gpu_engines, tmp_path):
    path = gpu_engines / "llm" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["engine_bytes"]["rank0.engine"] = 70 * GIB
    path.write_text(json.dumps(raw))
    with pytest.raises(DeployError, match="cannot hold the decoder's rank 0"):
        pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None)
    repo = pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None,
                                  options=pkg.PackageOptions(kv_cache_free_gpu_mem_fraction=0.2))
    assert configs(repo)["tensorrt_llm"].parameters["kv_cache_free_gpu_mem_fraction"].string_value == "0.2"


def test_gpu_needs_the_engines(engines, tmp_path):
    with pytest.raises(DeployError, match="vision does not exist.*nvlm-deploy build vision"):
        pkg.package_repository(engines, tmp_path / "repo", runtime="gpu")


def test_a_template_with_an_unfilled_placeholder_writes_nothing(engines, tmp_path, monkeypatch):
    templates = tmp_path / "templates"
    shutil.copytree(pkg.templates(), templates)
    path = templates / "postprocessing" / "config.pbtxt.template"
    path.write_text(path.read_text() + 'parameters { key: "x" value: { string_value: "${not_a_setting}" } }\n')
    monkeypatch.setattr(pkg, "templates", lambda: templates)
    with pytest.raises(DeployError, match=r"\$\{not_a_setting\}"):
        pkg.package_repository(engines, tmp_path / "repo", runtime="cpu", log=lambda line: None)
    assert not (tmp_path / "repo").exists()


def test_package_cli_writes_a_repository(engines, tmp_path, capsys):
    from nvlm_deploy.cli import main

    assert main(["package", "--engines", str(engines), "--runtime", "cpu", "--out", str(tmp_path / "r"),
                 "--max-images", "1", "--bls-decoder", "tensorrt_llm"]) == 0
    assert "serve it with" in capsys.readouterr().out
    assert repo_manifest(tmp_path / "r")["limits"]["max_images"] == 1
    assert configs(tmp_path / "r")["tensorrt_llm_bls"].parameters[bls_decoder.PARAMETER].string_value == "tensorrt_llm"
    assert main(["package", "--engines", str(tmp_path), "--runtime", "cpu", "--out", str(tmp_path / "r2")]) == 1


def test_serving_limits_are_the_repository_manifests(cpu_repo):
    from nvlm_deploy.backend.request_inputs import repository_limits

    limits = repository_limits(cpu_repo)
    assert limits.choices() == {**{k: v for k, v in LIMITS.items()}}
