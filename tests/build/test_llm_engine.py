"""trtllm-build step: the exact command, limits, version pin and the clear stop without TensorRT-LLM."""

import importlib.util
import json

import pytest

from nvlm_deploy.build.llm_engine import build_llm_engine, check_trtllm_version, trtllm_build_command
from nvlm_deploy.cli import main
from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.contracts.limits import DeploymentLimits
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


def nvlm_d_like(**choices) -> DeploymentLimits:
    """Limits of a model with NVLM-D's tiling (256 tokens per tile, 6 tiles + thumbnail)."""
    return DeploymentLimits(tokens_per_tile=256, thumbnail=True, **{
        "max_images": 1, "max_tiles_before_thumbnail": 6, "max_input_len": 1024 + 1792, "max_output_len": 1024,
        "max_batch_size": 8, **choices})


def test_limits_derive_every_engine_size():
    limits = nvlm_d_like(max_batch_size=4, max_images=2, max_input_len=512 + 2 * 7 * 256, max_output_len=256)
    assert limits.max_tiles_per_image == 7 and limits.max_tiles_per_request == 14
    assert limits.max_prompt_embedding_table_size == 4 * 2 * 7 * 256
    assert limits.max_seq_len == limits.max_input_len + 256
    assert limits.max_num_tokens == 8192  # trtllm-build's default, already above one prompt
    assert nvlm_d_like(max_input_len=9000 + 1792).max_num_tokens == 9000 + 1792  # raised to fit a full prompt
    with pytest.raises(DeployError, match="max_batch_size"):
        nvlm_d_like(max_batch_size=0)
    with pytest.raises(DeployError, match="no room for text"):
        nvlm_d_like(max_input_len=1792)


def test_tokens_per_tile_come_from_the_model(tiny_checkpoint):
    from nvlm_deploy.demo.ask import SHIPPED_MODEL

    assert DeploymentLimits.for_model(NvlmConfig.from_hf(SHIPPED_MODEL)).tokens_per_tile == 16
    tiny = DeploymentLimits.for_model(NvlmConfig.from_hf(tiny_checkpoint), max_images=2)
    assert (tiny.tokens_per_tile, tiny.max_tiles_per_image, tiny.max_input_len) == (256, 7, 2 * 7 * 256 + 1024)


def test_command_has_the_required_flags_and_only_trtllm_12_flags(tmp_path):
    cmd = trtllm_build_command(tmp_path / "ckpt", tmp_path / "llm", nvlm_d_like(), workers=4)
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
    limits = dict(max_batch_size=2, max_tiles_before_thumbnail=2, max_input_len=1024, max_output_len=64)
    out = build_llm_engine(target, target, limits=limits)
    assert (out / "rank0.engine").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["build_config"]["max_prompt_embedding_table_size"] == 2 * 1 * 3 * 256
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "llm" and manifest["gpu"]["name"] and manifest["engine_bytes"]["rank0.engine"] > 0


def fake_vision_engine(target, *, max_tiles: int):
    """vision/manifest.json as `build vision` writes it, with a profile of at most `max_tiles` tiles
    (no plan inside: TensorRT cannot run here, and nothing in these tests reads the plan)."""
    from nvlm_deploy.contracts.manifest import VisionEngineManifest, write_manifest

    (target / "vision").mkdir(parents=True)
    write_manifest(target / "vision", VisionEngineManifest(
        onnx_dir=str(target / "onnx"), onnx_created="", precision="bf16", hardware_compat="none",
        requests_per_call=1, profile={"min": 1, "opt": 7, "max": max_tiles}, plan_bytes=1, gpu={},
        build_seconds=0.0))


def test_more_images_than_the_vision_profile_is_refused_naming_both_limits(tiny_checkpoint, tmp_path, capsys):
    target = tmp_path / "target"
    convert_llm_checkpoint(tiny_checkpoint, target)
    before = (target / "manifest.json").read_text()
    fake_vision_engine(target, max_tiles=7)  # one image of 6 tiles + thumbnail per call
    rc = main(["build", "llm", "--checkpoint", str(target), "--out", str(target), "--max-images", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "--max-images 4" in err and "28 tiles per request" in err and "at most 7 tiles per call" in err
    assert "build vision" in err  # the fix
    assert not (target / "llm").exists() and (target / "manifest.json").read_text() == before
