"""A TensorRT-LLM Qwen2 checkpoint's `config.json`, as frozen dataclasses.

Fields are TensorRT-LLM's `PretrainedConfig` (models/modeling_utils.py) plus `QWenConfig`'s
(models/qwen/config.py), `mapping` (tensorrt_llm/mapping.py) and `quantization`
(`QuantConfig`, tensorrt_llm/models/modeling_utils.py); shared/reference/tensorrt-llm.md §3.
`TrtllmConfig.from_llm` is the one place that builds it from our model config; `from_json` the one
place that reads it back.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvlm_deploy.contracts.precision import Precision, from_trtllm
from nvlm_deploy.errors import DeployError

CONFIG_FILE = "config.json"
ARCHITECTURE = "Qwen2ForCausalLM"
READABLE_ARCHITECTURES = ("Qwen2ForCausalLM", "QWenForCausalLM")
# Why rotary_scaling is null: the numerical reference (HF NVLM-D, transformers Qwen2) applies plain
# RoPE with rope_theta and ignores the checkpoint's {"type": "dynamic", "factor": 3.0} below
# max_position_embeddings (32768); null is TensorRT-LLM's plain RoPE, which reproduces that exactly.
ROTARY_SCALING_REASON = ("null = plain RoPE (theta = rotary_base), as the HF NVLM-D reference computes "
                         "below max_position_embeddings; the HF rope_scaling entry is not applied there")


@dataclass(frozen=True)
class QuantConfig:
    """`quantization`: TensorRT-LLM's `QuantConfig` fields (models/modeling_utils.py, read at commit 01ea6d79).

    null quant_algo for `convert llm`; `quant.recipes.Recipe.quant_config` fills it for fp8 (FP8) and
    int4_awq / int4_rtn (W4A16_AWQ, group_size, pre_quant_scale true), kv_cache_quant_algo FP8 with an
    FP8 KV cache. Layouts: docs/quantization-formats.md.
    """

    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    group_size: int = 128
    smoothquant_val: float = 0.5
    clamp_val: list | None = None
    use_meta_recipe: bool = False
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: list[str] | None = None


@dataclass(frozen=True)
class MappingConfig:
    """`mapping`: rank = pp_rank * tp_size + tp_rank."""

    world_size: int
    tp_size: int
    pp_size: int
    gpus_per_node: int = 8
    cp_size: int = 1
    moe_tp_size: int | None = None
    moe_ep_size: int = 1

    def __post_init__(self):
        if self.moe_tp_size is None:
            object.__setattr__(self, "moe_tp_size", self.tp_size)
        if self.world_size != self.tp_size * self.pp_size:
            raise DeployError(f"mapping: world_size {self.world_size} is not tp_size {self.tp_size} x "
                              f"pp_size {self.pp_size}.")


@dataclass(frozen=True)
class TrtllmConfig:
    dtype: str  # TensorRT-LLM spelling (precision.trtllm)
    vocab_size: int  # unpadded; lm_head rows are padded to a multiple of tp
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_size: int
    intermediate_size: int
    norm_epsilon: float
    max_position_embeddings: int
    rotary_base: float
    mapping: MappingConfig
    quantization: QuantConfig = field(default_factory=QuantConfig)
    architecture: str = ARCHITECTURE
    hidden_act: str = "silu"
    logits_dtype: str = "float32"
    position_embedding_type: str = "rope_gpt_neox"
    rotary_embedding_dim: int | None = None  # None: head_size
    rotary_scaling: dict | None = None  # see ROTARY_SCALING_REASON
    use_parallel_embedding: bool = False
    embedding_sharding_dim: int = 0
    qk_layernorm: bool = False
    mlp_bias: bool = False
    attn_bias: bool = True
    disable_weight_only_quant_plugin: bool = False
    use_logn_attn: bool = False
    moe: dict = field(default_factory=lambda: {"num_experts": 0, "top_k": 0, "shared_expert_intermediate_size": 0})
    moe_intermediate_size: int = 0
    moe_shared_expert_intermediate_size: int = 0
    seq_length: int | None = None  # None: max_position_embeddings
    qwen_type: str = "qwen2"
    num_labels: int = 1
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.rotary_embedding_dim is None:
            object.__setattr__(self, "rotary_embedding_dim", self.head_size)
        if self.seq_length is None:
            object.__setattr__(self, "seq_length", self.max_position_embeddings)

    @property
    def tp(self) -> int:
        return self.mapping.tp_size

    @property
    def pp(self) -> int:
        return self.mapping.pp_size

    @property
    def precision(self) -> Precision:
        return from_trtllm(self.dtype)

    @classmethod
    def from_llm(cls, llm, *, tp: int, pp: int, precision: Precision) -> "TrtllmConfig":
        """From our `LlmConfig` (the HF llm_config)."""
        return cls(dtype=precision.trtllm, vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
                   num_hidden_layers=llm.num_hidden_layers, num_attention_heads=llm.num_attention_heads,
                   num_key_value_heads=llm.num_key_value_heads, head_size=llm.head_dim,
                   intermediate_size=llm.intermediate_size, norm_epsilon=llm.rms_norm_eps,
                   max_position_embeddings=llm.max_position_embeddings, rotary_base=llm.rope_theta,
                   mapping=MappingConfig(world_size=tp * pp, tp_size=tp, pp_size=pp),
                   hidden_act=llm.hidden_act, attn_bias=llm.attention_bias,
                   tie_word_embeddings=llm.tie_word_embeddings)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.as_dict(), indent=2), encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> "TrtllmConfig":
        """Read a checkpoint's config.json; clear errors for what this project cannot run."""
        from nvlm_deploy.jsonfile import dataclass_values, read_json_object

        path = Path(path)
        fix = "point at a trtllm_checkpoint/ written by `nvlm-deploy convert llm` (or re-run it)"
        raw = read_json_object(path, fix=fix)
        if raw.get("architecture", ARCHITECTURE) not in READABLE_ARCHITECTURES:
            raise DeployError(f"{path}: architecture {raw['architecture']!r} is not a Qwen2 decoder.")
        values = dataclass_values(cls, raw, path=path, fix=fix)
        mapping = raw["mapping"]
        values["mapping"] = MappingConfig(**{k: mapping[k] for k in ("world_size", "tp_size", "pp_size", "gpus_per_node",
                                                                      "cp_size", "moe_tp_size", "moe_ep_size")
                                            if k in mapping})
        quant = raw.get("quantization") or {}
        known = {f.name for f in dataclasses.fields(QuantConfig)}
        values["quantization"] = QuantConfig(**{k: v for k, v in quant.items() if k in known})
        config = cls(**values)
        config.precision  # noqa: B018 -- an unknown dtype is an error here, not later
        return config
