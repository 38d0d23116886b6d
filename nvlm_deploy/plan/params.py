"""Parameter counts of an NVLM-D checkpoint, from its config.json, checked against its tensors.

`hf_tensor_shapes(config)` names every tensor of the HF checkpoint with its shape, computed from
the config alone (users plan before downloading 150 GB). When the safetensors are present, the
headers' shapes must equal these, name by name, and the counts come from the headers.

Shapes (HF names; D vision width, E = (real + dummy heads) x head_dim, F vision MLP width,
h LLM width, q = heads x head_dim, kv = KV heads x head_dim, I LLM MLP width, V vocabulary):
  InternViT  patch_embedding [D, 3, p, p] + bias; position_embedding [1, patches + 1, D];
             class_embedding [1, 1, D]; per layer: qkv [3E, D] (+ bias), q_norm/k_norm [E],
             proj [D, E] + bias, ls1/ls2 [D], norm1/norm2 [D] (+ bias), fc1 [F, D] + bias, fc2 [D, F] + bias
  mlp1       LayerNorm [4D] weight + bias; Linear [H, 4D]; Linear [h, H] (biases for InternVL only)
  Qwen2      embed_tokens [V, h]; per layer: q_proj [q, h] + bias, k/v_proj [kv, h] + bias,
             o_proj [h, q], gate/up_proj [I, h], down_proj [h, I], 2 RMSNorms [h]; norm [h]; lm_head [V, h]
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from nvlm_deploy.config import NvlmConfig, VisionConfig
from nvlm_deploy.errors import DeployError

VISION, PROJECTOR, LLM = "vision_model.", "mlp1.", "language_model."
EMBED = LLM + "model.embed_tokens.weight"
LM_HEAD = LLM + "lm_head.weight"
DUMMY_HEAD_MULTIPLE = 8  # NVLM-D pads 25 vision heads to 32 so they split over 8 GPUs (Megatron internvit.py)


@dataclass(frozen=True)
class Linear:
    """One decoder linear layer [out, in] and how tensor parallelism splits it (trtllm/splits.py)."""

    name: str  # HF name inside a layer, e.g. "self_attn.q_proj"
    out_features: int
    in_features: int
    split: str  # "column": out split | "row": in split | "kv": out split over KV heads, copied when tp > heads
    bias: bool


def llm_linears(config: NvlmConfig, *, intermediate_size: int | None = None) -> tuple[Linear, ...]:
    """Qwen2's seven linear layers of one decoder layer (intermediate_size: padded width, if any)."""
    llm = config.llm
    h, hd, inter = llm.hidden_size, llm.head_dim, intermediate_size or llm.intermediate_size
    q, kv = llm.num_attention_heads * hd, llm.num_key_value_heads * hd
    bias = llm.attention_bias
    return (Linear("self_attn.q_proj", q, h, "column", bias), Linear("self_attn.k_proj", kv, h, "kv", bias),
            Linear("self_attn.v_proj", kv, h, "kv", bias), Linear("self_attn.o_proj", h, q, "row", False),
            Linear("mlp.gate_proj", inter, h, "column", False), Linear("mlp.up_proj", inter, h, "column", False),
            Linear("mlp.down_proj", h, inter, "row", False))


def vision_shapes(v: VisionConfig) -> dict[str, tuple[int, ...]]:
    d, e, f = v.hidden_size, v.total_heads * v.head_dim, v.intermediate_size
    norm_bias = v.norm_type == "layer_norm"
    out = {"embeddings.class_embedding": (1, 1, d),
           "embeddings.patch_embedding.weight": (d, v.num_channels, v.patch_size, v.patch_size),
           "embeddings.patch_embedding.bias": (d,),
           "embeddings.position_embedding": (1, v.num_patches + 1, d)}
    layer = {"attn.qkv.weight": (3 * e, d), "attn.proj.weight": (d, e), "attn.proj.bias": (d,),
             "ls1": (d,), "ls2": (d,), "norm1.weight": (d,), "norm2.weight": (d,),
             "mlp.fc1.weight": (f, d), "mlp.fc1.bias": (f,), "mlp.fc2.weight": (d, f), "mlp.fc2.bias": (d,)}
    if v.qkv_bias:
        layer["attn.qkv.bias"] = (3 * e,)
    if v.qk_normalization:
        layer.update({"attn.q_norm.weight": (e,), "attn.k_norm.weight": (e,)})
    if norm_bias:
        layer.update({"norm1.bias": (d,), "norm2.bias": (d,)})
    for i in range(v.num_hidden_layers):
        out.update({f"encoder.layers.{i}.{k}": s for k, s in layer.items()})
    return {VISION + k: s for k, s in out.items()}


def projector_shapes(config: NvlmConfig) -> dict[str, tuple[int, ...]]:
    c_in = config.vision.hidden_size * config.shuffle_factor  # pixel shuffle: 4 patches per token
    hidden, c_out = config.projector_hidden_size, config.llm.hidden_size
    out = {"0.weight": (c_in,), "0.bias": (c_in,), "1.weight": (hidden, c_in), "3.weight": (c_out, hidden)}
    if config.projector_bias:
        out.update({"1.bias": (hidden,), "3.bias": (c_out,)})
    return {PROJECTOR + k: s for k, s in out.items()}


def llm_shapes(config: NvlmConfig) -> dict[str, tuple[int, ...]]:
    llm = config.llm
    h, v = llm.hidden_size, llm.vocab_size
    layer = {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}
    for lin in llm_linears(config):
        layer[lin.name + ".weight"] = (lin.out_features, lin.in_features)
        if lin.bias:
            layer[lin.name + ".bias"] = (lin.out_features,)
    out = {EMBED: (v, h), LLM + "model.norm.weight": (h,)}
    if not llm.tie_word_embeddings:
        out[LM_HEAD] = (v, h)
    for i in range(llm.num_hidden_layers):
        out.update({f"{LLM}model.layers.{i}.{k}": s for k, s in layer.items()})
    return out


def hf_tensor_shapes(config: NvlmConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the HF checkpoint, name -> shape, from the config alone."""
    return {**vision_shapes(config.vision), **projector_shapes(config), **llm_shapes(config)}


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts (elements). The vision engine computes its dummy heads too, so they count."""

    vision_params: int  # InternViT as stored and run (dummy heads included)
    vision_real_params: int  # the same without the dummy heads
    projector_params: int  # mlp1
    llm_params: int  # Qwen2 decoder, embeddings and lm_head included
    embedding_params: int
    lm_head_params: int  # 0 when tied to the embeddings
    source: str  # where the counts come from
    stored_bytes: int | None = None  # on-disk tensor bytes (safetensors headers), None without weights

    @property
    def total_params(self) -> int:
        return self.vision_params + self.projector_params + self.llm_params


def count(shapes: dict[str, tuple[int, ...]], prefix: str = "") -> int:
    return sum(math.prod(s) for name, s in shapes.items() if name.startswith(prefix))


def sizes_from_shapes(shapes: dict[str, tuple[int, ...]], config: NvlmConfig, *, source: str,
                      stored_bytes: int | None = None) -> ModelSizes:
    real = dataclasses.replace(config.vision, num_dummy_heads=0)
    return ModelSizes(vision_params=count(shapes, VISION), vision_real_params=count(vision_shapes(real)),
                      projector_params=count(shapes, PROJECTOR), llm_params=count(shapes, LLM),
                      embedding_params=math.prod(shapes[EMBED]),
                      lm_head_params=math.prod(shapes[LM_HEAD]) if LM_HEAD in shapes else 0,
                      source=source, stored_bytes=stored_bytes)


def sizes_from_checkpoint(config: NvlmConfig, index) -> ModelSizes:
    """Counts from the safetensors headers (`index`: a CheckpointIndex), checked against the config."""
    from nvlm_deploy.model.checkpoint import check_names

    expected = hf_tensor_shapes(config)
    check_names(expected=expected, found=index.weight_map, where=f"{index.root}")
    found = {name: tuple(index.shape(name)) for name in expected}
    wrong = [f"{n} {found[n]} (config.json gives {expected[n]})" for n in expected if found[n] != expected[n]]
    if wrong:
        raise DeployError(f"{index.root}: tensor shapes disagree with config.json: " + "; ".join(wrong[:10])
                          + (" ..." if len(wrong) > 10 else "") + ". Is config.json the one of these weights?")
    stored = sum(index.nbytes(name) for name in expected)
    return sizes_from_shapes(found, config, source=f"safetensors headers ({len(found)} tensors, match config.json)",
                             stored_bytes=stored)


@dataclass(frozen=True)
class PlannedModel:
    """What the planner knows of a checkpoint directory."""

    path: str
    config: NvlmConfig
    sizes: ModelSizes
    assumptions: tuple[str, ...]


def load_model(model_dir: str | Path) -> PlannedModel:
    """Config (NvlmConfig.from_hf) and sizes; with config.json only, state what is assumed."""
    from nvlm_deploy.model.checkpoint import CheckpointIndex

    config = NvlmConfig.from_hf(model_dir)
    if CheckpointIndex.exists(model_dir):
        sizes = sizes_from_checkpoint(config, CheckpointIndex.open(model_dir))
        return PlannedModel(str(model_dir), config, sizes, ())
    config, assumptions = assume_dummy_heads(config)
    sizes = sizes_from_shapes(hf_tensor_shapes(config), config, source="config.json (no weights in the directory)")
    return PlannedModel(str(model_dir), config, sizes, assumptions)


def assume_dummy_heads(config: NvlmConfig) -> tuple[NvlmConfig, tuple[str, ...]]:
    """Without weights the dummy-head count is unknown: NVLM-D pads its heads to a multiple of 8."""
    v = config.vision
    if v.num_dummy_heads or not config.architecture.upper().startswith("NVLM"):
        return config, ()
    padded = -(-v.num_attention_heads // DUMMY_HEAD_MULTIPLE) * DUMMY_HEAD_MULTIPLE
    dummies = padded - v.num_attention_heads
    if not dummies:
        return config, ()
    vision = dataclasses.replace(v, num_dummy_heads=dummies)
    note = (f"vision dummy heads: config.json does not state them and there are no weights to read them from; "
            f"assumed {dummies} zero heads ({v.num_attention_heads} real heads padded to {padded}, as NVLM-D-72B's "
            f"25 + 7 = 32)")
    return dataclasses.replace(config, vision=vision), (note,)
