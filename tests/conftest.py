"""Shared fixtures: one tiny random NVLM-D checkpoint per test session, built through the CLI code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.serving import LIMITS, MULTIBYTE_TEXT, byte_token_ids, png_bytes


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny NVLM-D checkpoint (448-px tiles, 9+7 vision heads, Qwen2 4/2 heads) with its tokenizer."""
    from nvlm_deploy.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-nvlm-d", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The reference model of `tiny_checkpoint`, fp32, eval mode."""
    from nvlm_deploy.model.nvlm import NvlmModel

    return NvlmModel.from_pretrained(tiny_checkpoint, dtype="fp32")


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


# ---- serving: the tiny checkpoint's fp32 artifacts, a CPU repository, one real tritonserver ----



@pytest.fixture(scope="session")
def engines(tiny_checkpoint, tmp_path_factory):
    """Target directory with onnx/ and trtllm_checkpoint/ in fp32 (exact parity with the reference)."""
    from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx

    target = tmp_path_factory.mktemp("engines") / "tiny-cpu"
    export_vision_onnx(tiny_checkpoint, target, dtype="fp32")
    convert_llm_checkpoint(tiny_checkpoint, target, dtype="fp32")
    return target


@pytest.fixture(scope="session")
def cpu_repo(engines):
    from nvlm_deploy.serve.package import PackageOptions, package_repository

    return package_repository(engines, engines / "model_repository", runtime="cpu",
                              options=PackageOptions(limits=LIMITS), log=lambda line: None)


@pytest.fixture(scope="session")
def server(cpu_repo):
    """A tritonserver on 127.0.0.1 (free ports) serving `cpu_repo`; stopped by PID at the end."""
    from nvlm_deploy.serve.server import start_server

    srv = start_server(cpu_repo, timeout=600)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    """The PyTorch reference with the repository's limits."""
    from nvlm_deploy.model.generate import ReferencePipeline

    return ReferencePipeline.from_model_dir(tiny_checkpoint, dtype="fp32", max_tiles=LIMITS["max_tiles_before_thumbnail"],
                                            max_images=LIMITS["max_images"])


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    return [png_bytes(), png_bytes((300, 600), (10, 40, 220), shape_color=(250, 250, 0))]


@pytest.fixture(scope="session")
def multibyte_checkpoint(tmp_path_factory):
    """A tiny checkpoint whose greedy answer is MULTIBYTE_TEXT repeated, one byte per token.

    Every decoder layer's attention output and MLP output projections are zero, so the last hidden
    state is the last token's embedding; lm_head row next(t) is token t's normalized embedding, so
    greedy decoding follows the chain prompt end -> byte 1 -> byte 2 -> ... -> byte 9 -> byte 1.
    """
    import torch

    from nvlm_deploy.model.tiny import preset_config, random_state_dict, write_tiny_checkpoint
    from nvlm_deploy.preprocess.request import Preprocessor
    from nvlm_deploy.preprocess.tokenizer import Tokenizer, write_tokenizer

    config = preset_config("tiny")
    state = random_state_dict(config, seed=1)
    tok_dir = tmp_path_factory.mktemp("tok")
    write_tokenizer(tok_dir)
    tokenizer = Tokenizer.load(tok_dir)
    chain = byte_token_ids(tokenizer, MULTIBYTE_TEXT)
    prompt_end = Preprocessor(config, tokenizer).prepare("Say it.").input_ids[-1]
    lm = "language_model.model."
    for i in range(config.llm.num_hidden_layers):
        state[f"{lm}layers.{i}.self_attn.o_proj.weight"].zero_()
        state[f"{lm}layers.{i}.mlp.down_proj.weight"].zero_()
    state[f"{lm}norm.weight"] = torch.ones_like(state[f"{lm}norm.weight"])
    embed = state[f"{lm}embed_tokens.weight"].to(torch.bfloat16).float()  # as stored
    unit = embed / embed.norm(dim=-1, keepdim=True)
    head = torch.zeros_like(state["language_model.lm_head.weight"])
    for t, nxt in zip([prompt_end] + chain, chain + chain[:1]):
        head[nxt] += 8.0 * unit[t]  # byte 1 follows both the prompt's end and byte 9
    state["language_model.lm_head.weight"] = head
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "multibyte", config=config, state=state)


@pytest.fixture(scope="session")
def multibyte_server(multibyte_checkpoint, tmp_path_factory):
    from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx
    from nvlm_deploy.serve.package import PackageOptions, package_repository
    from nvlm_deploy.serve.server import start_server

    target = tmp_path_factory.mktemp("engines") / "multibyte"
    export_vision_onnx(multibyte_checkpoint, target, dtype="fp32")
    convert_llm_checkpoint(multibyte_checkpoint, target, dtype="fp32")
    repo = package_repository(target, target / "model_repository", runtime="cpu",
                              options=PackageOptions(limits=LIMITS), log=lambda line: None)
    srv = start_server(repo, timeout=600)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def cpu_repo_tp(engines, tiny_checkpoint, tmp_path_factory):
    """tp -> CPU repository of the tiny checkpoint's decoder split in tp ranks (2 and 4), with the
    vision ONNX of `engines` (copied): the CPU runtime merges the ranks in one process."""
    import shutil

    from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint
    from nvlm_deploy.serve.package import PackageOptions, package_repository

    repos = {}
    for tp in (2, 4):
        target = tmp_path_factory.mktemp("engines") / f"tiny-cpu-tp{tp}"
        shutil.copytree(engines / "onnx", target / "onnx")
        shutil.copy2(engines / "manifest.json", target / "manifest.json")
        convert_llm_checkpoint(tiny_checkpoint, target, dtype="fp32", tp=tp)
        repos[tp] = package_repository(target, target / "model_repository", runtime="cpu",
                                       options=PackageOptions(limits=LIMITS), log=lambda line: None)
    return repos
