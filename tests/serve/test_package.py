import json
import shutil

import pytest

from nvlm_deploy.errors import DeployError
from nvlm_deploy.serve import package as pkg
from nvlm_deploy.serve.template import parse_model_config


def configs(repo):
    return {m: parse_model_config((repo / m / "config.pbtxt").read_text()) for m in pkg.MODELS}


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
    pre = parsed["preprocessing"].parameters
    assert (pre["max_images"].string_value, pre["max_tiles"].string_value, pre["max_input_len"].string_value) == ("2", "2", "2048")
    assert (cpu_repo / pre["assets_dir"].string_value / "tokenizer.json").is_file()
    ckpt = cpu_repo / parsed["tensorrt_llm"].parameters["checkpoint_dir"].string_value
    assert (ckpt.resolve() / "config.json").is_file() and ckpt.resolve() == (engines / "trtllm_checkpoint").resolve()
    manifest = json.loads((cpu_repo / "manifest.json").read_text())
    assert manifest["settings"]["runtime"] == "cpu" and manifest["settings"]["limits"]["max_output_len"] == 64
    names = [i.name for i in parsed["ensemble"].input]
    assert names[:4] == ["text_input", "image_bytes_input", "image_bytes_lengths", "max_tokens"]
    assert {"stream", "temperature", "top_k", "top_p", "end_id", "pad_id", "exclude_input_in_output"} <= set(names)
    assert [o.name for o in parsed["ensemble"].output] == ["text_output"]


@pytest.fixture()
def gpu_engines(engines, tmp_path):
    """The cpu artifacts plus vision/ and llm/ manifests as `nvlm-deploy build` writes them (no engines inside)."""
    from nvlm_deploy.artifacts import write_manifest
    from nvlm_deploy.build.gpu import GpuInfo
    from nvlm_deploy.build.llm_engine import LlmBuildLimits

    target = tmp_path / "h100-sxm-bf16-tp2"
    for stage in ("onnx", "trtllm_checkpoint"):
        shutil.copytree(engines / stage, target / stage)
    gpu = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", 79.1, "10.11.0", "1.2.0").as_dict()
    for stage, name in (("vision", "vision_engine"), ("llm", "llm_engine")):
        (target / stage).mkdir()
        limits = LlmBuildLimits(max_batch_size=4, max_images=2, max_tiles=7, max_output_len=256).as_dict()
        write_manifest(target / stage, stage=name, settings={"limits": limits, "world_size": 2, "dtype": "bf16"},
                       extra={"gpu": gpu, "tensorrt_llm": "1.2.0"})
    return target


def test_gpu_repository_uses_engine_limits_and_writes_kv_cache_fraction(gpu_engines, tmp_path):
    repo = pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None,
                                  options=pkg.PackageOptions(kv_cache_free_gpu_mem_fraction=0.5))
    parsed = configs(repo)
    llm = parsed["tensorrt_llm"]
    assert llm.backend == "tensorrtllm" and llm.max_batch_size == 4
    assert llm.parameters["kv_cache_free_gpu_mem_fraction"].string_value == "0.5"
    assert (repo / llm.parameters["gpt_model_path"].string_value).resolve() == (gpu_engines / "llm").resolve()
    assert not (repo / "tensorrt_llm" / "1" / "model.py").exists()
    assert parsed["vision_encoder"].parameters["runtime"].string_value == "gpu"
    pre = parsed["preprocessing"].parameters
    assert (pre["max_tiles"].string_value, pre["max_images"].string_value, pre["max_output_len"].string_value) == ("6", "2", "256")
    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest["engines_gpu"]["llm"]["compute_capability"] == "9.0" and manifest["settings"]["world_size"] == 1


def test_gpu_limits_above_the_build_are_refused_with_the_rebuild_command(gpu_engines, tmp_path):
    with pytest.raises(DeployError, match="build limit 256.*build llm --max-output-len 512"):
        pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None,
                               options=pkg.PackageOptions(max_output_len=512))


def test_gpu_needs_the_engines(engines, tmp_path):
    with pytest.raises(DeployError, match="vision does not exist.*nvlm-deploy build vision"):
        pkg.package_repository(engines, tmp_path / "repo", runtime="gpu")


def test_a_template_with_an_unfilled_placeholder_writes_nothing(engines, tmp_path, monkeypatch):
    templates = tmp_path / "templates"
    shutil.copytree(pkg.TEMPLATES, templates)
    path = templates / "postprocessing" / "config.pbtxt.template"
    path.write_text(path.read_text() + 'parameters { key: "x" value: { string_value: "${not_a_setting}" } }\n')
    monkeypatch.setattr(pkg, "TEMPLATES", templates)
    with pytest.raises(DeployError, match=r"\$\{not_a_setting\}"):
        pkg.package_repository(engines, tmp_path / "repo", runtime="cpu", log=lambda line: None)
    assert not (tmp_path / "repo").exists()


def test_package_cli_writes_a_repository(engines, tmp_path, capsys):
    from nvlm_deploy.cli import main

    assert main(["package", "--engines", str(engines), "--runtime", "cpu", "--out", str(tmp_path / "r"),
                 "--max-images", "1"]) == 0
    assert "serve it with" in capsys.readouterr().out
    assert configs(tmp_path / "r")["preprocessing"].parameters["max_images"].string_value == "1"
    assert main(["package", "--engines", str(tmp_path), "--runtime", "cpu", "--out", str(tmp_path / "r2")]) == 1
