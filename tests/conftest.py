"""Shared fixtures: one tiny random NVLM-D checkpoint per test session, built through the CLI code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny NVLM-D checkpoint (448-px tiles, 9+7 vision heads, Qwen2 4/2 heads) with its tokenizer."""
    from nvlm_deploy.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-nvlm-d", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The reference model of `tiny_checkpoint`, fp32, eval mode."""
    from nvlm_deploy.model.nvlm import NvlmModel

    return NvlmModel.from_pretrained(tiny_checkpoint, dtype="float32")


def pytest_collection_modifyitems(config, items):
    have_trt = importlib.util.find_spec("tensorrt") is not None
    have_trtllm = importlib.util.find_spec("tensorrt_llm") is not None
    skip = pytest.mark.skip(reason="needs TensorRT and TensorRT-LLM with an NVIDIA GPU "
                                   f"(tensorrt importable: {have_trt}, tensorrt_llm importable: {have_trtllm})")
    for item in items:
        if "gpu" in item.keywords and not (have_trt and _has_gpu()):
            item.add_marker(skip)


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
