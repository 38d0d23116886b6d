"""trtllm-build step: the exact command, limits, version pin and the clear stop without TensorRT-LLM."""

import importlib.util
import json

import pytest

from nvlm_deploy.build.llm_engine import (LlmBuildLimits, build_llm_engine, check_trtllm_version,
                                          trtllm_build_command)
from nvlm_deploy.cli import main
from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint
from nvlm_deploy.errors import DeployError

HAVE_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None
# Flags of TensorRT-LLM 1.2 tensorrt_llm/commands/build.py parse_arguments() and the plugin flags
# plugin/plugin.py cli_plugin_args exposes (paged_kv_cache is no plugin flag there: --kv_cache_type).
TRTLLM_12_FLAGS = {"--checkpoint_dir", "--output_dir", "--max_batch_size", "--max_input_len", "--max_seq_len",
                   "--max_num_tokens", "--max_beam_width", "--max_prompt_embedding_table_size", "--kv_cache_type",
                   "--workers", "--gpt_attention_plugin", "--gemm_plugin", "--context_fmha",
                   "--remove_input_padding", "--use_paged_context_fmha"}


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    return convert_llm_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("target"), tp=2, pp=2)


def test_limits_derive_every_engine_size():
    limits = LlmBuildLimits(max_batch_size=4, max_images=2, max_tiles=7, tokens_per_tile=256,
                            max_text_len=512, max_output_len=256)
    assert limits.max_prompt_embedding_table_size == 4 * 2 * 7 * 256
    assert limits.max_input_len == 512 + 2 * 7 * 256
    assert limits.max_seq_len == limits.max_input_len + 256
    assert limits.num_tokens == 8192  # trtllm-build's default, already above one prompt
    assert LlmBuildLimits(max_text_len=9000).num_tokens == 9000 + 7 * 256  # raised to fit a full prompt
    with pytest.raises(DeployError, match="max_batch_size"):
        LlmBuildLimits(max_batch_size=0)


def test_command_has_the_required_flags_and_only_trtllm_12_flags(tmp_path):
    cmd = trtllm_build_command(tmp_path / "ckpt", tmp_path / "llm", LlmBuildLimits(), workers=4)
    assert cmd[0] == "trtllm-build"
    flags = {a for a in cmd if a.startswith("--")}
    assert flags <= TRTLLM_12_FLAGS
    value = {cmd[i]: cmd[i + 1] for i in range(1, len(cmd), 2)}
    assert value["--kv_cache_type"] == "paged" and value["--gemm_plugin"] == "auto"
    assert value["--remove_input_padding"] == "enable" and value["--use_paged_context_fmha"] == "enable"
    assert value["--max_prompt_embedding_table_size"] == str(8 * 1 * 7 * 256)
    assert value["--max_input_len"] == str(1024 + 1792) and value["--max_seq_len"] == str(1024 + 1792 + 1024)
    assert value["--workers"] == "4" and value["--checkpoint_dir"] == str(tmp_path / "ckpt")


def test_version_pin():
    check_trtllm_version("1.2.1")
    check_trtllm_version("1.0.0rc4")
    with pytest.raises(DeployError, match="removed after 1.2"):
        check_trtllm_version("1.3.0")
    with pytest.raises(DeployError, match="1.0 to 1.2"):
        check_trtllm_version("0.21.0")


def test_dry_run_prints_the_command_with_workers_per_rank(checkpoint, tmp_path, capsys):
    assert main(["build", "llm", "--checkpoint", str(checkpoint.parent), "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trtllm-build --checkpoint_dir ") and "--workers 4" in out
    assert not (tmp_path / "llm").exists()


@pytest.mark.skipif(HAVE_TRTLLM, reason="TensorRT-LLM is installed here")
def test_without_tensorrt_llm_stops_with_a_clear_message(checkpoint, tmp_path, capsys):
    assert main(["build", "llm", "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "tensorrt_llm" in err and "pip install" in err and "--runtime cpu" in err and "Traceback" not in err
    assert not (tmp_path / "llm").exists() and not list(tmp_path.glob(".llm.tmp-*"))


def test_incomplete_checkpoint_is_refused_before_building(checkpoint, tmp_path):
    import shutil

    broken = shutil.copytree(checkpoint, tmp_path / "ckpt")
    (broken / "rank3.safetensors").unlink()
    with pytest.raises(DeployError, match="rank3.safetensors"):
        build_llm_engine(broken, tmp_path / "target")


@pytest.mark.gpu
def test_build_tiny_engine_on_gpu(tiny_checkpoint, tmp_path):
    target = tmp_path / "target"
    convert_llm_checkpoint(tiny_checkpoint, target, tp=1, pp=1)
    limits = LlmBuildLimits(max_batch_size=2, max_tiles=3, max_text_len=256, max_output_len=64)
    out = build_llm_engine(target, target, limits=limits)
    assert (out / "rank0.engine").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["build_config"]["max_prompt_embedding_table_size"] == 2 * 1 * 3 * 256
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "llm_engine" and manifest["gpu"]["name"]
