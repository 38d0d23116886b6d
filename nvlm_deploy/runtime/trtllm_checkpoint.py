"""Load a TensorRT-LLM Qwen2 checkpoint: every rank, tensor-parallel splits merged back.

The result is the tp 1 / pp 1 layout: global layer numbers and full tensors, lm_head trimmed to
vocab_size. Replicated tensors must be identical on every rank, and every rank must hold exactly
the tensors its place in the mapping calls for; both are checked, so this is also the executable
check of every checkpoint the converter writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nvlm_deploy.convert import tp_split
from nvlm_deploy.convert.llm_names import GLOBAL_NAMES, LAYER_NAMES
from nvlm_deploy.errors import DeployError

# TensorRT-LLM name (global or layer suffix) -> split kind, from THE name table.
SPLIT_OF = {name: split for name, split in GLOBAL_NAMES.values()} | {
    suffix: split for suffix, split in LAYER_NAMES.values()}
REQUIRED_CONFIG = ("architecture", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "intermediate_size", "norm_epsilon", "rotary_base", "mapping")


@dataclass(frozen=True)
class TrtllmDecoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    intermediate_size: int
    norm_epsilon: float
    rotary_base: float
    rotary_scaling: dict | None
    dtype: str
    tp: int
    pp: int
    attn_bias: bool = True

    @classmethod
    def from_json(cls, path: Path) -> "TrtllmDecoderConfig":
        if not path.is_file():
            raise DeployError(f"{path} does not exist: point at a TensorRT-LLM checkpoint directory "
                              "(the trtllm_checkpoint/ written by `nvlm-deploy convert llm`).")
        raw = json.loads(path.read_text())
        missing = [k for k in REQUIRED_CONFIG if k not in raw]
        if missing:
            raise DeployError(f"{path}: field(s) {missing} are missing; re-run `nvlm-deploy convert llm`.")
        if raw["architecture"] not in ("Qwen2ForCausalLM", "QWenForCausalLM"):
            raise DeployError(f"{path}: architecture {raw['architecture']!r} is not a Qwen2 decoder.")
        if raw.get("rotary_scaling") is not None:
            raise DeployError(f"{path}: rotary_scaling {raw['rotary_scaling']} is not supported by the CPU "
                              "runtime, which implements plain RoPE (rotary_scaling null).")
        mapping = raw["mapping"]
        return cls(vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
                   num_layers=raw["num_hidden_layers"], num_heads=raw["num_attention_heads"],
                   num_kv_heads=raw["num_key_value_heads"],
                   head_size=raw.get("head_size") or raw["hidden_size"] // raw["num_attention_heads"],
                   intermediate_size=raw["intermediate_size"], norm_epsilon=raw["norm_epsilon"],
                   rotary_base=raw["rotary_base"], rotary_scaling=raw.get("rotary_scaling"),
                   dtype=raw.get("dtype", "float32"), tp=mapping.get("tp_size", 1), pp=mapping.get("pp_size", 1),
                   attn_bias=raw.get("attn_bias", True))


def expected_rank_names(config: TrtllmDecoderConfig, rank: int) -> set[str]:
    pp_rank = rank // config.tp
    layers = tp_split.pp_layer_range(config.num_layers, pp=config.pp, pp_rank=pp_rank)
    suffixes = [s for s, _ in LAYER_NAMES.values() if config.attn_bias or not s.endswith(".bias")]
    names = {f"transformer.layers.{i}.{suffix}" for i in range(len(layers)) for suffix in suffixes}
    if pp_rank == 0:
        names.add("transformer.vocab_embedding.weight")
    if pp_rank == config.pp - 1:
        names |= {"transformer.ln_f.weight", "lm_head.weight"}
    return names


def load_trtllm_checkpoint(checkpoint_dir: str | Path, *, dtype: torch.dtype | None = None
                           ) -> tuple[TrtllmDecoderConfig, dict[str, torch.Tensor]]:
    """(config, full tensors by TensorRT-LLM name with global layer numbers).

    Args:
        checkpoint_dir: directory with config.json and rank{N}.safetensors (or the target directory holding it).
        dtype: cast every tensor to this dtype; None keeps the stored dtype.
    """
    from nvlm_deploy.model.checkpoint import check_names

    root = Path(checkpoint_dir)
    if not (root / "config.json").is_file() and (root / "trtllm_checkpoint" / "config.json").is_file():
        root = root / "trtllm_checkpoint"  # the target directory that holds the checkpoint
    config = TrtllmDecoderConfig.from_json(root / "config.json")
    ranks = [_read_rank(root, r) for r in range(config.tp * config.pp)]
    for r, tensors in enumerate(ranks):
        check_names(expected=expected_rank_names(config, r), found=tensors, where=str(root / f"rank{r}.safetensors"))
    merged: dict[str, torch.Tensor] = {}
    for pp_rank in range(config.pp):
        row = ranks[pp_rank * config.tp:(pp_rank + 1) * config.tp]
        first = tp_split.pp_layer_range(config.num_layers, pp=config.pp, pp_rank=pp_rank).start
        for local in row[0]:
            pieces = [tensors[local] for tensors in row]
            name, split = _global_name(local, first)
            merged[name] = _merge(name, split, pieces, config, root)
    return config, {k: (v.to(dtype) if dtype else v) for k, v in merged.items()}


def _read_rank(root: Path, rank: int) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = root / f"rank{rank}.safetensors"
    if not path.is_file():
        raise DeployError(f"{path} does not exist, but config.json's mapping has {rank + 1}+ ranks: "
                          "the checkpoint is incomplete; re-run `nvlm-deploy convert llm`.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DeployError(f"{path} is not a readable safetensors file ({exc}).") from None


def _global_name(local: str, first_layer: int) -> tuple[str, str]:
    if local in SPLIT_OF:
        return local, SPLIT_OF[local]
    _, _, layer, suffix = local.split(".", 3)
    return f"transformer.layers.{int(layer) + first_layer}.{suffix}", SPLIT_OF[suffix]


def _merge(name: str, split: str, pieces: list[torch.Tensor], config: TrtllmDecoderConfig, root: Path) -> torch.Tensor:
    if split == "replicate" and any(not torch.equal(pieces[0], p) for p in pieces[1:]):
        raise DeployError(f"{root}: {name} should be the same on every tensor-parallel rank but differs.")
    return tp_split.merge_pieces(split, pieces, num_heads=config.num_heads, num_kv_heads=config.num_kv_heads,
                                 vocab_size=config.vocab_size)
