"""Random-weight checkpoints with NVLM-D-72B's exact file layout, at small sizes.

Every structural feature is kept: zero dummy heads, qk-norm over the real heads, GQA, attention
bias, untied lm_head, bias-free mlp1 of LLM-intermediate width, mixed fp32/bf16 tensors, sharded
safetensors with an index, tokenizer files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from nvlm_deploy.config import LlmConfig, NvlmConfig, VisionConfig
from nvlm_deploy.errors import DeployError

NVLM_D_72B_ROPE_SCALING = {"factor": 3.0, "type": "dynamic"}

# name -> (vision fields, llm fields, top-level fields). Vocab sizes cover the tokenizer written
# with the checkpoint (1024 tokens); 1030 is deliberately not a multiple of tp, so lm_head padding runs.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        vision=dict(hidden_size=144, intermediate_size=288, num_hidden_layers=2, num_attention_heads=9,
                    num_dummy_heads=7, image_size=448, patch_size=14),
        llm=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1030, max_position_embeddings=32768),
        top=dict(max_dynamic_patch=6),
    ),
    "demo": dict(
        vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                    num_dummy_heads=4, image_size=112, patch_size=14),
        llm=dict(hidden_size=192, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1030, max_position_embeddings=4096),
        top=dict(max_dynamic_patch=6),
    ),
    "72b": dict(  # NVLM-D-72B itself (shared/reference/nvlm-d.md §1); for shapes and benchmarks
        vision=dict(hidden_size=3200, intermediate_size=12800, num_hidden_layers=45, num_attention_heads=25,
                    num_dummy_heads=7, image_size=448, patch_size=14),
        llm=dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8, vocab_size=152064, max_position_embeddings=32768,
                 bos_token_id=151643, eos_token_id=151645),
        top=dict(max_dynamic_patch=6),
    ),
}

# Stored in fp32 in NVLM-D-72B's shards; everything else is bf16 (nvlm-d.md §8).
FP32_SUFFIXES = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
                 "attn.qkv.weight", "attn.q_norm.weight", "attn.k_norm.weight", "attn.proj.weight")


def preset_config(name: str, **overrides) -> NvlmConfig:
    """The NvlmConfig of a preset; `overrides` replace top-level fields (e.g. num layers via vision=...)."""
    if name not in PRESETS:
        raise DeployError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    p = PRESETS[name]
    vision = VisionConfig(**p["vision"])
    llm = LlmConfig(rope_scaling=dict(NVLM_D_72B_ROPE_SCALING), **p["llm"])
    config = NvlmConfig(vision=vision, llm=llm, **p["top"])
    return dataclasses.replace(config, **overrides) if overrides else config


def random_state_dict(config: NvlmConfig, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 weights of a fresh NvlmModel with NVLM-like statistics and zero dummy heads."""
    from nvlm_deploy.model.nvlm import NvlmModel

    gen = torch.Generator().manual_seed(seed)
    model = NvlmModel(config)
    state = {}
    for name, t in model.state_dict().items():
        state[name] = _init(name, t, gen, config)
    zero_dummy_heads(state, config)
    return state


def _init(name: str, t: torch.Tensor, gen: torch.Generator, config: NvlmConfig) -> torch.Tensor:
    noise = torch.randn(t.shape, generator=gen)
    if name.endswith((".ls1", ".ls2")):  # layer scales start at initializer_factor
        return config.vision.initializer_factor * (1 + 0.1 * noise)
    is_norm_scale = ("norm" in name and name.endswith(".weight")) or name.endswith("mlp1.0.weight")
    return 1 + 0.1 * noise if is_norm_scale else 0.02 * noise  # norms near 1; matrices and biases small


def zero_dummy_heads(state: dict[str, torch.Tensor], config: NvlmConfig) -> None:
    """Zero what belongs to the dummy heads: their q/k/v rows, q/k-norm entries and proj columns."""
    v = config.vision
    real, inner = v.hidden_size, v.total_heads * v.head_dim
    for i in range(v.num_hidden_layers):
        p = f"vision_model.encoder.layers.{i}.attn."
        for block in range(3):
            state[p + "qkv.weight"][block * inner + real:(block + 1) * inner] = 0
            if p + "qkv.bias" in state:
                state[p + "qkv.bias"][block * inner + real:(block + 1) * inner] = 0
        for norm in ("q_norm.weight", "k_norm.weight"):
            if p + norm in state:
                state[p + norm][real:] = 0
        state[p + "proj.weight"][:, real:] = 0


def stored_dtype(name: str) -> torch.dtype:
    return torch.float32 if name.endswith(FP32_SUFFIXES) else torch.bfloat16


def write_tiny_checkpoint(out: str | Path, *, preset: str = "tiny", seed: int = 0, force: bool = False,
                          max_shard_bytes: int = 512 * 1024, state: dict[str, torch.Tensor] | None = None,
                          config: NvlmConfig | None = None) -> Path:
    """Write a checkpoint directory in NVLM-D-72B's layout (atomically).

    Args:
        out: directory to create.
        preset: a PRESETS name ("tiny", "demo"); ignored when `config` is given.
        seed: random seed of the weights.
        force: replace an existing `out`.
        max_shard_bytes: shard size; small by default so tiny checkpoints are sharded like the real one.
        state: weights to write instead of random ones (e.g. a trained demo model).
        config: the config to write instead of the preset's.
    """
    from nvlm_deploy.artifacts import atomic_output_dir
    from nvlm_deploy.model.checkpoint import save_checkpoint
    from nvlm_deploy.preprocess.tokenizer import Tokenizer, write_tokenizer

    config = config or preset_config(preset)
    if config.llm.num_hidden_layers * config.llm.hidden_size > 64 * 4096 and state is None:
        raise DeployError(f"preset {preset!r} is too large to write with random weights here.")
    state = state if state is not None else random_state_dict(config, seed=seed)
    with atomic_output_dir(out, force=force) as tmp:
        write_tokenizer(tmp)
        tok = Tokenizer.load(tmp)
        if len(tok) > config.llm.vocab_size:
            raise DeployError(f"the tokenizer has {len(tok)} tokens but vocab_size is {config.llm.vocab_size}.")
        llm = dataclasses.replace(config.llm, eos_token_id=tok.eos_id, bos_token_id=tok.pad_id)
        config = dataclasses.replace(config, llm=llm)
        tensors = {name: t.to(stored_dtype(name)) for name, t in state.items()}
        save_checkpoint(tensors, tmp, config=config.to_hf_dict(), max_shard_bytes=max_shard_bytes)
    return Path(out)
