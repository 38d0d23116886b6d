"""THE name table: HF Qwen2 decoder tensors -> TensorRT-LLM checkpoint tensors.

Renames are data (STYLE.md rule 3). Every HF decoder tensor maps to exactly one TensorRT-LLM
tensor or raises; `plan_tensors` reports missing and unexpected tensors by name. The split kind
says how a tensor is cut across tensor-parallel ranks (the functions are in `tp_split`):

    qkv       q/k/v fused per rank: each chunked along dim 0 (KV heads duplicated when fewer than tp)
    column    chunked along dim 0 (column-parallel linear: output features)
    row       chunked along dim 1 (row-parallel linear: input features)
    vocab     padded to a multiple of tp along dim 0, then chunked along dim 0 (lm_head)
    replicate the same tensor on every rank (norms; vocab_embedding without use_parallel_embedding)

TensorRT-LLM's Qwen MLP naming is inverted with respect to HF: `mlp.fc` is `gate_proj` (the
branch that goes through SiLU) and `mlp.gate` is `up_proj` (tensorrt-llm.md §3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nvlm_deploy.errors import DeployError

HF_PREFIX = "language_model."

# TensorRT-LLM tensor names. Global tensors:
VOCAB_EMBEDDING = "transformer.vocab_embedding.weight"
LN_F = "transformer.ln_f.weight"
LM_HEAD = "lm_head.weight"
# ... and per-layer suffixes under `transformer.layers.{i}.`:
QKV_WEIGHT, QKV_BIAS, DENSE = "attention.qkv.weight", "attention.qkv.bias", "attention.dense.weight"
MLP_FC, MLP_GATE, MLP_PROJ = "mlp.fc.weight", "mlp.gate.weight", "mlp.proj.weight"  # fc = gate_proj (SiLU)
INPUT_LAYERNORM, POST_LAYERNORM = "input_layernorm.weight", "post_layernorm.weight"

# HF name (after `language_model.`) -> (TensorRT-LLM name, split kind). Not per layer.
GLOBAL_NAMES: dict[str, tuple[str, str]] = {
    "model.embed_tokens.weight": (VOCAB_EMBEDDING, "replicate"),
    "model.norm.weight": (LN_F, "replicate"),
    "lm_head.weight": (LM_HEAD, "vocab"),
}

# HF suffix under `model.layers.{i}.` -> (suffix under `transformer.layers.{i}.`, split kind).
LAYER_NAMES: dict[str, tuple[str, str]] = {
    "self_attn.q_proj.weight": (QKV_WEIGHT, "qkv"),
    "self_attn.k_proj.weight": (QKV_WEIGHT, "qkv"),
    "self_attn.v_proj.weight": (QKV_WEIGHT, "qkv"),
    "self_attn.q_proj.bias": (QKV_BIAS, "qkv"),
    "self_attn.k_proj.bias": (QKV_BIAS, "qkv"),
    "self_attn.v_proj.bias": (QKV_BIAS, "qkv"),
    "self_attn.o_proj.weight": (DENSE, "row"),
    "mlp.gate_proj.weight": (MLP_FC, "column"),
    "mlp.up_proj.weight": (MLP_GATE, "column"),
    "mlp.down_proj.weight": (MLP_PROJ, "row"),
    "input_layernorm.weight": (INPUT_LAYERNORM, "replicate"),
    "post_attention_layernorm.weight": (POST_LAYERNORM, "replicate"),
}
# split kind of every TensorRT-LLM name (global) or layer suffix
SPLIT_OF: dict[str, str] = {name: split for name, split in (*GLOBAL_NAMES.values(), *LAYER_NAMES.values())}


def layer_tensor(layer: int, suffix: str) -> str:
    """`transformer.layers.{layer}.{suffix}`."""
    return f"transformer.layers.{layer}.{suffix}"

# Order of the fused parts of qkv tensors: q, then k, then v.
QKV_ORDER = ("q_proj", "k_proj", "v_proj")

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class PlannedTensor:
    """One TensorRT-LLM tensor and the HF tensors it is made of (in fused order)."""

    name: str              # global name, layers numbered 0..num_layers-1
    split: str             # one of tp_split.SPLITS
    sources: tuple[str, ...]  # full HF names (with `language_model.`)
    layer: int | None = None  # decoder layer, None for embedding / ln_f / lm_head

    def local_name(self, first_layer: int) -> str:
        """The name inside a pipeline rank's file: layers renumbered from 0 per rank."""
        if self.layer is None:
            return self.name
        suffix = self.name.split(".", 3)[3]
        return layer_tensor(self.layer - first_layer, suffix)


def trtllm_name(hf_name: str) -> tuple[str, str, int | None]:
    """(TensorRT-LLM name, split kind, layer) of one HF decoder tensor; raises for unknown names.

    Args:
        hf_name: full HF name, e.g. "language_model.model.layers.3.mlp.up_proj.weight".
    """
    if not hf_name.startswith(HF_PREFIX):
        raise DeployError(f"tensor {hf_name!r} is not a decoder tensor (no '{HF_PREFIX}' prefix).")
    name = hf_name[len(HF_PREFIX):]
    if name in GLOBAL_NAMES:
        target, split = GLOBAL_NAMES[name]
        return target, split, None
    match = _LAYER.match(name)
    if match and match.group(2) in LAYER_NAMES:
        layer = int(match.group(1))
        suffix, split = LAYER_NAMES[match.group(2)]
        return layer_tensor(layer, suffix), split, layer
    raise DeployError(f"tensor {hf_name!r} has no TensorRT-LLM name: nvlm-deploy maps only the "
                      f"Qwen2 decoder tensors {sorted(GLOBAL_NAMES)} and model.layers.N.{{{', '.join(LAYER_NAMES)}}}.")


def expected_hf_names(*, num_layers: int, attention_bias: bool = True,
                      tie_word_embeddings: bool = False) -> list[str]:
    """Every HF decoder tensor a Qwen2 checkpoint with these settings must contain."""
    names = [HF_PREFIX + n for n in GLOBAL_NAMES if not (tie_word_embeddings and n == "lm_head.weight")]
    for i in range(num_layers):
        for suffix in LAYER_NAMES:
            if suffix.endswith(".bias") and not attention_bias:
                continue
            names.append(f"{HF_PREFIX}model.layers.{i}.{suffix}")
    return sorted(names)


def plan_tensors(found: list[str], *, num_layers: int, attention_bias: bool = True,
                 tie_word_embeddings: bool = False, where: str = "checkpoint") -> list[PlannedTensor]:
    """Group the checkpoint's decoder tensors into TensorRT-LLM targets, in file order.

    Raises one DeployError naming every missing and every unexpected decoder tensor.

    Args:
        found: the checkpoint's tensor names starting with `language_model.`.
        num_layers: decoder layers stated by llm_config.
        attention_bias: whether q/k/v have biases (Qwen2: yes).
        tie_word_embeddings: lm_head is the embedding matrix (then lm_head.weight is not stored).
        where: the checkpoint path, for messages.
    """
    from nvlm_deploy.model.checkpoint import check_names

    expected = expected_hf_names(num_layers=num_layers, attention_bias=attention_bias,
                                 tie_word_embeddings=tie_word_embeddings)
    check_names(expected=expected, found=found, where=f"{where} (decoder tensors)")
    grouped: dict[str, list[str]] = {}
    meta: dict[str, tuple[str, int | None]] = {}
    for hf_name in expected:
        target, split, layer = trtllm_name(hf_name)
        grouped.setdefault(target, []).append(hf_name)
        meta[target] = (split, layer)
    if tie_word_embeddings:
        grouped[LM_HEAD] = [HF_PREFIX + "model.embed_tokens.weight"]
        meta[LM_HEAD] = ("vocab", None)
    targets = [PlannedTensor(name, meta[name][0], _fused_order(sources), meta[name][1])
               for name, sources in grouped.items()]
    return sorted(targets, key=_file_order)


def _fused_order(sources: list[str]) -> tuple[str, ...]:
    if len(sources) == 1:
        return tuple(sources)
    return tuple(sorted(sources, key=lambda n: next(i for i, p in enumerate(QKV_ORDER) if f".{p}." in n)))


def _file_order(target: PlannedTensor) -> tuple[int, int, str]:
    if target.name == VOCAB_EMBEDDING:
        return (0, 0, target.name)
    if target.layer is not None:
        return (1, target.layer, target.name)
    return (2, 0, target.name)


# ---- quantized checkpoints: scale tensors beside each quantized linear ----
# Names from TensorRT-LLM's docs/source/architecture/checkpoint.md and the loader that consumes them,
# `preprocess_perlayer_weights` / `preprocess_weights` in tensorrt_llm/models/modeling_utils.py
# (NVIDIA/TensorRT-LLM, read at commit 01ea6d79; docs/quantization-formats.md has the layouts).
WEIGHTS_SCALING_FACTOR = "weights_scaling_factor"  # FP8: [1] fp32; W4A16_AWQ: [N, K/G] model dtype
ACTIVATION_SCALING_FACTOR = "activation_scaling_factor"  # FP8: [1] fp32
PREQUANT_SCALING_FACTOR = "prequant_scaling_factor"  # W4A16_AWQ: [K] model dtype (loader reshapes to [1, K])
KV_CACHE_SCALING_FACTOR = "attention.kv_cache_scaling_factor"  # per layer, [1] fp32
# The linears a recipe quantizes (suffix of their weight under `transformer.layers.{i}.`); lm_head
# and the embedding stay in the model dtype (modelopt's configs disable `*lm_head*`).
QUANTIZED_LINEARS = (QKV_WEIGHT, DENSE, MLP_FC, MLP_GATE, MLP_PROJ)


def scale_name(weight_name: str, kind: str) -> str:
    """`...attention.qkv.weight` -> `...attention.qkv.{kind}` (kind: one of the *_SCALING_FACTOR names)."""
    if not weight_name.endswith(".weight"):
        raise ValueError(f"{weight_name!r} is not a weight name")
    return weight_name[: -len("weight")] + kind
