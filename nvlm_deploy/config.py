"""Model configuration: frozen dataclasses, read from a Hugging Face NVLM-D checkpoint by `from_hf`.

`NvlmConfig.from_hf` is the only place that reads a HF `config.json`. Structure that the config
file does not state (dummy attention heads, projector width and biases, norm type) is read from the
checkpoint's tensor shapes by `detect_structure` (below), never from names.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvlm_deploy.errors import DeployError

SUPPORTED_LLM_ARCHITECTURES = ("Qwen2ForCausalLM",)
PS_VERSIONS = ("v1", "v2")


@dataclass(frozen=True)
class VisionConfig:
    """InternViT. `num_attention_heads` counts the real heads; dummy heads come on top."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    qk_normalization: bool = True
    qkv_bias: bool = False
    norm_type: str = "rms_norm"  # "rms_norm" (NVLM-D, InternViT-6B) | "layer_norm" (InternViT-300M)
    initializer_factor: float = 0.1
    num_dummy_heads: int = 0  # NVLM-D: 7 zero heads so that 25 + 7 = 32 divides TP 8

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def total_heads(self) -> int:
        return self.num_attention_heads + self.num_dummy_heads

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.patches_per_side**2


@dataclass(frozen=True)
class LlmConfig:
    """Qwen2 decoder."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    # Kept for the record only. The numerical reference is HF NVLM-D (transformers 4.39), which
    # ignores rope_scaling: plain RoPE with rope_theta below max_position_embeddings (DESIGN.md).
    rope_scaling: dict | None = None
    max_position_embeddings: int = 32768
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    architecture: str = "Qwen2ForCausalLM"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class NvlmConfig:
    vision: VisionConfig
    llm: LlmConfig
    downsample_ratio: float = 0.5
    ps_version: str = "v2"
    select_layer: int = -1
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6
    dynamic_image_size: bool = True
    use_thumbnail: bool = True
    template: str = "chatml"
    torch_dtype: str = "bfloat16"
    architecture: str = "NVLM_D"
    # mlp1: LayerNorm -> Linear(hidden) -> GELU -> Linear(llm_hidden). NVLM-D: no biases and
    # hidden = LLM intermediate size; InternVL: biases and hidden = LLM hidden size.
    projector_hidden_size: int = 0  # 0 means: the LLM intermediate size (NVLM-D)
    projector_bias: bool = False
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # unknown HF keys, kept

    def __post_init__(self):
        if self.ps_version not in PS_VERSIONS:
            raise DeployError(f"config.json: ps_version {self.ps_version!r} is not one of {PS_VERSIONS}.")
        if self.projector_hidden_size == 0:
            object.__setattr__(self, "projector_hidden_size", self.llm.intermediate_size)

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def shuffle_factor(self) -> int:
        """Channels multiply by this in pixel shuffle (4 for downsample_ratio 0.5)."""
        return round(1 / self.downsample_ratio**2)

    @property
    def tokens_per_tile(self) -> int:
        return int(self.vision.num_patches * self.downsample_ratio**2)

    @classmethod
    def from_hf(cls, model_dir: str | Path) -> "NvlmConfig":
        """Read `<model_dir>/config.json` (NVLM-D or InternVL-chat layout).

        Structure not stated in the config (dummy heads, projector shape, norm type) is filled
        from the checkpoint's tensor shapes when the checkpoint's weights are present.
        """
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise DeployError(f"{path} does not exist: point --model at a HF NVLM-D checkpoint directory.")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DeployError(f"{path} is not valid JSON ({exc}).") from None
        config = cls.from_hf_dict(raw, source=str(path))
        from nvlm_deploy.model.checkpoint import CheckpointIndex

        if CheckpointIndex.exists(model_dir):
            config = detect_structure(config, CheckpointIndex.open(model_dir))
        return config

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], *, source: str = "config.json") -> "NvlmConfig":
        for key in ("vision_config", "llm_config"):
            if not isinstance(raw.get(key), dict):
                raise DeployError(
                    f"{source}: field '{key}' is missing. An NVLM-D checkpoint's config.json has "
                    "'vision_config' and 'llm_config'; is this the HF NVLM-D (or InternVL-chat) model?"
                )
        llm_raw = raw["llm_config"]
        archs = llm_raw.get("architectures") or []
        if not any(a in SUPPORTED_LLM_ARCHITECTURES for a in archs):
            raise DeployError(
                f"{source}: llm_config.architectures is {archs}; nvlm-deploy supports "
                f"{list(SUPPORTED_LLM_ARCHITECTURES)} decoders (NVLM-D's Qwen2)."
            )
        vision = _from_fields(VisionConfig, raw["vision_config"], source=f"{source}: vision_config")
        llm = _from_fields(LlmConfig, llm_raw, source=f"{source}: llm_config")
        top = {f.name for f in dataclasses.fields(cls)} - {"vision", "llm", "extra"}
        known = {k: raw[k] for k in top if k in raw}
        known.pop("projector_hidden_size", None)
        known.pop("projector_bias", None)
        if "force_image_size" in raw and raw["force_image_size"] != vision.image_size:
            vision = dataclasses.replace(vision, image_size=raw["force_image_size"])
        arch = (raw.get("architectures") or [raw.get("model_type", "NVLM_D")])[0]
        known["architecture"] = arch
        extra = {k: v for k, v in raw.items() if k not in top and k not in ("vision_config", "llm_config")}
        config = cls(vision=vision, llm=llm, extra=extra, **known)
        _check_geometry(config, source)
        return config

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` content (NVLM-D key layout)."""
        vision = dataclasses.asdict(self.vision)
        vision.pop("num_dummy_heads")  # not a HF key: dummy heads are read from the weights
        vision.update(architectures=["InternVisionModel"], model_type="intern_vit_6b")
        llm = dataclasses.asdict(self.llm)
        llm["architectures"] = [llm.pop("architecture")]
        llm["model_type"] = "qwen2"
        top = dataclasses.asdict(self)
        for key in ("vision", "llm", "extra", "projector_hidden_size", "projector_bias", "architecture"):
            top.pop(key)
        out = dict(self.extra)
        out.update(
            architectures=[self.architecture],
            model_type=self.architecture,
            force_image_size=self.vision.image_size,
            **top,
            vision_config=vision,
            llm_config=llm,
        )
        return out


def _from_fields(cls, raw: dict[str, Any], *, source: str):
    names = {f.name for f in dataclasses.fields(cls)}
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    missing = [n for n in required if n not in raw]
    if missing:
        raise DeployError(f"{source}: required field(s) {missing} are missing.")
    values = {k: raw[k] for k in names if k in raw}
    if cls is LlmConfig:
        values.update(_llm_aliases(raw))
    return cls(**values)


def _llm_aliases(raw: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 moved rope_theta into rope_parameters; accept both layouts."""
    out = {}
    params = raw.get("rope_parameters") or {}
    if "rope_theta" not in raw and "rope_theta" in params:
        out["rope_theta"] = params["rope_theta"]
    archs = raw.get("architectures") or []
    if archs:
        out["architecture"] = archs[0]
    if isinstance(raw.get("eos_token_id"), list):
        out["eos_token_id"] = raw["eos_token_id"][0]
    return out


def _check_geometry(config: NvlmConfig, source: str) -> None:
    v, llm = config.vision, config.llm
    if v.hidden_size % v.num_attention_heads:
        raise DeployError(f"{source}: vision hidden_size {v.hidden_size} is not divisible by "
                          f"num_attention_heads {v.num_attention_heads}.")
    if v.image_size % v.patch_size:
        raise DeployError(f"{source}: image size {v.image_size} is not a multiple of patch_size {v.patch_size}.")
    side = v.patches_per_side * config.downsample_ratio
    if side != int(side):
        raise DeployError(f"{source}: {v.patches_per_side} patches per side cannot be pixel-shuffled "
                          f"with downsample_ratio {config.downsample_ratio}.")
    if llm.num_attention_heads % llm.num_key_value_heads:
        raise DeployError(f"{source}: llm num_attention_heads {llm.num_attention_heads} is not a "
                          f"multiple of num_key_value_heads {llm.num_key_value_heads}.")
    if not math.isclose(1 / config.downsample_ratio**2, config.shuffle_factor):
        raise DeployError(f"{source}: downsample_ratio {config.downsample_ratio} must be 1/k for an integer k.")


def detect_structure(config: NvlmConfig, index) -> NvlmConfig:
    """Fill what the config file does not state from the tensor shapes (`index`: a CheckpointIndex).

    Dummy heads: qkv rows = 3 * (real + dummy) * head_dim. Projector: width and biases from mlp1.
    Norm type: LayerNorm has a bias, RMSNorm has none.
    """
    v = config.vision
    layer0 = "vision_model.encoder.layers.0."
    vision = v
    if layer0 + "attn.qkv.weight" in index:
        rows = index.shape(layer0 + "attn.qkv.weight")[0]
        total_heads, rest = divmod(rows, 3 * v.head_dim)
        if rest or total_heads < v.num_attention_heads:
            raise DeployError(f"{index.root}: {layer0}attn.qkv.weight has {rows} rows, which is not "
                              f"3 x heads x head_dim {v.head_dim} for at least {v.num_attention_heads} heads.")
        vision = dataclasses.replace(
            v,
            num_dummy_heads=total_heads - v.num_attention_heads,
            qkv_bias=layer0 + "attn.qkv.bias" in index,
            qk_normalization=layer0 + "attn.q_norm.weight" in index,
            norm_type="layer_norm" if layer0 + "norm1.bias" in index else "rms_norm",
        )
    projector = {}
    if "mlp1.1.weight" in index:
        projector = dict(projector_hidden_size=index.shape("mlp1.1.weight")[0],
                         projector_bias="mlp1.1.bias" in index)
    return dataclasses.replace(config, vision=vision, **projector)
