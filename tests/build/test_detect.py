"""`--target auto` on recorded nvidia-smi outputs, and whether this machine can build a target's engines."""

from pathlib import Path

import pytest

from nvlm_deploy.build.detect import SmiGpu, auto_targets, gpu_blocker, parse_gpus
from nvlm_deploy.build.gpu import GpuInfo
from nvlm_deploy.build.targets import parse_target
from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.errors import DeployError
from nvlm_deploy.model.tiny import preset_config

DATA = Path(__file__).parent / "data"
NVLM_D_72B = preset_config("72b").llm  # 64 query heads, 8 KV heads, intermediate 29568


@pytest.mark.parametrize("recorded, gpu, count, targets_72b, targets_tiny", [
    ("nvidia-smi-8x-h100-80gb-hbm3.csv", SmiGpu("NVIDIA H100 80GB HBM3", "9.0", 79.6), 8,
     ["h100-sxm-bf16-tp8"], ["h100-sxm-bf16-tp4"]),
    ("nvidia-smi-2x-a100-sxm4-80gb.csv", SmiGpu("NVIDIA A100-SXM4-80GB", "8.0", 80.0), 2,
     ["a100-sxm-80gb-bf16-tp2"], ["a100-sxm-80gb-bf16-tp2"]),
    ("nvidia-smi-1x-l40s.csv", SmiGpu("NVIDIA L40S", "8.9", 45.0), 1, ["l40s-bf16-tp1"], ["l40s-bf16-tp1"]),
    ("nvidia-smi-1x-gh200-480gb.csv", SmiGpu("NVIDIA GH200 480GB", "9.0", 95.6), 1,
     ["gh200-bf16-tp1"], ["gh200-bf16-tp1"]),
])
def test_auto_targets_from_recorded_nvidia_smi(recorded, gpu, count, targets_72b, targets_tiny, tiny_checkpoint):
    gpus = parse_gpus((DATA / recorded).read_text())
    assert gpus == [gpu] * count
    assert [t.name for t in auto_targets(gpus, NVLM_D_72B)] == targets_72b
    # the tiny decoder's 4 heads split over at most 4 GPUs
    assert [t.name for t in auto_targets(gpus, NvlmConfig.from_hf(tiny_checkpoint).llm)] == targets_tiny


def test_auto_without_a_gpu_says_to_name_targets():
    assert parse_gpus((DATA / "nvidia-smi-none.txt").read_text()) == []
    with pytest.raises(DeployError, match=r"found no NVIDIA GPU.*--target cpu-bf16"):
        auto_targets([], NVLM_D_72B)


def test_one_target_per_gpu_type_and_unknown_gpus_are_named():
    mixed = parse_gpus((DATA / "nvidia-smi-2x-a100-sxm4-80gb.csv").read_text()
                       + (DATA / "nvidia-smi-1x-l40s.csv").read_text())
    assert [t.name for t in auto_targets(mixed, NVLM_D_72B)] == ["a100-sxm-80gb-bf16-tp2", "l40s-bf16-tp1"]
    with pytest.raises(DeployError, match=r"Tesla T4 \(15.0 GiB\) is not in the GPU registry"):
        auto_targets(parse_gpus("Tesla T4, 7.5, 15360\n"), NVLM_D_72B)


def test_an_unreadable_nvidia_smi_line_is_named():
    with pytest.raises(DeployError, match=r"cannot read nvidia-smi's line 'NVIDIA H100, \[N/A\], 81559'"):
        parse_gpus("NVIDIA H100, [N/A], 81559\n")


def test_cli_auto_on_a_machine_without_gpus_exits_1(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from nvlm_deploy.build import detect
    from nvlm_deploy.cli import main

    monkeypatch.setattr(detect, "query_nvidia_smi", lambda: (DATA / "nvidia-smi-none.txt").read_text())
    assert main(["build", "--model", str(tiny_checkpoint), "--target", "auto", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "found no NVIDIA GPU" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


# ---- can this machine build a target's engines? ----

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", 79.6, "10.14.1", "1.2.1")


def test_engines_need_the_libraries_and_the_targets_gpu():
    h100 = parse_target("h100-sxm-bf16-tp2")
    assert gpu_blocker(h100, local=H100, missing=["TensorRT", "TensorRT-LLM"]) == \
        "TensorRT and TensorRT-LLM are not installed here"
    no_gpu = GpuInfo(None, None, None, None, None)
    assert gpu_blocker(h100, local=no_gpu, missing=[]) == "this machine has no NVIDIA GPU"
    a100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0", 80.0, "10.14.1", "1.2.1")
    assert gpu_blocker(h100, local=a100, missing=[]) == ("this machine's GPU is NVIDIA A100-SXM4-80GB (SM 8.0); the "
                                                         "target's is NVIDIA H100 80GB SXM (SM 9.0)")
    assert gpu_blocker(h100, local=H100, missing=[]) is None
