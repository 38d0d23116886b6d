"""NVLM-D as one nn.Module: InternViT + pixel shuffle + mlp1 + Qwen2 decoder. The numerical truth.

Attribute names give the HF checkpoint's tensor names (`vision_model.`, `mlp1.`, `language_model.`).
Image features enter the decoder the way TensorRT-LLM's prompt table does: ids >= vocab_size
index rows of `prompt_table` (shared/DESIGN.md, "Image slots in the prompt").
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nvlm_deploy.config import LlmConfig, NvlmConfig
from nvlm_deploy.errors import DeployError
from nvlm_deploy.model.checkpoint import CheckpointIndex, check_names
from nvlm_deploy.model.internvit import InternVisionModel
from nvlm_deploy.model.projector import Projector, pixel_shuffle

def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """A precision name (contracts.precision) as a torch dtype; a torch dtype passes through."""
    from nvlm_deploy.contracts.precision import precision

    return name if isinstance(name, torch.dtype) else precision(name).torch_dtype()


def hf_torch_dtype(name: str) -> torch.dtype:
    """The HF config's `torch_dtype` ("bfloat16", ...) as a torch dtype (contracts.precision)."""
    from nvlm_deploy.contracts.precision import from_torch_name

    return from_torch_name(name).torch_dtype()


def qwen2_config(llm: LlmConfig):
    """transformers Qwen2Config for the decoder: plain RoPE with rope_theta (DESIGN.md RoPE decision)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=llm.vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads,
        hidden_act=llm.hidden_act,
        max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": llm.rope_theta},
        tie_word_embeddings=llm.tie_word_embeddings,
        bos_token_id=llm.bos_token_id,
        eos_token_id=llm.eos_token_id,
        architectures=[llm.architecture],
        attn_implementation="eager",
    )


class NvlmModel(nn.Module):
    def __init__(self, config: NvlmConfig):
        super().__init__()
        from transformers import Qwen2ForCausalLM

        self.config = config
        self.vision_model = InternVisionModel(config.vision)
        in_features = config.vision.hidden_size * config.shuffle_factor
        self.mlp1 = Projector(in_features, config.projector_hidden_size, config.llm.hidden_size,
                              bias=config.projector_bias)
        self.language_model = Qwen2ForCausalLM(qwen2_config(config.llm))

    @property
    def vocab_size(self) -> int:
        return self.config.llm.vocab_size

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[T, 3, S, S] -> image embeddings [T, tokens_per_tile, llm_hidden]."""
        h = self.vision_model(pixel_values, select_layer=self.config.select_layer)[:, 1:, :]  # drop CLS
        t, p, c = h.shape
        side = int(p**0.5)
        h = h.reshape(t, side, side, c)  # row-major patch grid
        h = pixel_shuffle(h, ratio=self.config.downsample_ratio, ps_version=self.config.ps_version)
        h = h.reshape(t, -1, h.shape[-1])  # [T, tokens_per_tile, c * 4]
        return self.mlp1(h)

    def embed(self, input_ids: torch.Tensor, prompt_table: torch.Tensor | None = None, *,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """Token embeddings; ids >= vocab_size take row (id - vocab_size) of `prompt_table` [N, hidden].

        `dtype`: the result's dtype (default the embedding's), e.g. float32 rows from a bf16 embedding.
        """
        emb = self.language_model.get_input_embeddings()
        is_image = input_ids >= self.vocab_size
        out = emb(torch.where(is_image, torch.zeros_like(input_ids), input_ids))
        out = out if dtype is None else out.to(dtype)
        if is_image.any():
            if prompt_table is None:
                raise DeployError("the prompt has image slots (ids >= vocab_size) but no image features were given.")
            rows = input_ids[is_image] - self.vocab_size
            if int(rows.max()) >= prompt_table.shape[0]:
                raise DeployError(f"image slot {int(rows.max())} is past the {prompt_table.shape[0]} image "
                                  "features given: the prompt and the images do not match.")
            out[is_image] = prompt_table[rows].to(out.dtype)
        return out

    def forward(self, input_ids: torch.Tensor, prompt_table: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, L, vocab] of a batch of equal-length prompts (no padding)."""
        return self.language_model(inputs_embeds=self.embed(input_ids, prompt_table)).logits

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, dtype: str | torch.dtype | None = None) -> "NvlmModel":
        """Load a HF NVLM-D checkpoint directory (memory-mapped; no network, no remote code).

        Args:
            model_dir: directory with config.json and safetensors (sharded with an index, or single).
            dtype: compute dtype; None means the checkpoint's torch_dtype.
        """
        config = NvlmConfig.from_hf(model_dir)
        index = CheckpointIndex.open(model_dir)
        dtype = torch_dtype(dtype) if dtype else hf_torch_dtype(config.torch_dtype)
        with torch.device("meta"):
            model = cls(config)
        expected = set(model.state_dict())
        if config.llm.tie_word_embeddings:
            expected.discard("language_model.lm_head.weight")
        check_names(expected=expected, found=index.names(), where=str(model_dir))
        state = {name: index.get(name).to(dtype) for name in sorted(expected)}
        model.load_state_dict(state, strict=False, assign=True)
        model.finish_loading()
        return model.eval()

    def finish_loading(self) -> None:
        """Rebuild non-persistent buffers (RoPE) after a meta-device load and re-tie embeddings."""
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

        lm = self.language_model
        lm.model.rotary_emb = Qwen2RotaryEmbedding(config=lm.config)
        if self.config.llm.tie_word_embeddings:
            lm.lm_head.weight = lm.model.embed_tokens.weight
