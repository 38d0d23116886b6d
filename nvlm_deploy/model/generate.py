"""Reference generation: greedy decoding with the PyTorch NVLM-D model. The truth the engines match.

`ReferencePipeline` takes a prompt and images through the same preprocessing as the server
(`Preprocessor.prepare`), runs the vision encoder, and decodes greedily with a KV cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from nvlm_deploy.errors import DeployError
from nvlm_deploy.model.nvlm import NvlmModel


@torch.no_grad()
def greedy_generate(
    model: NvlmModel,
    input_ids: list[int],
    prompt_table: torch.Tensor | None,
    *,
    max_new_tokens: int,
    end_id: int | None,
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """New token ids of a greedy continuation; stops at `end_id` (not included) or `max_new_tokens`.

    Args:
        model: the reference model.
        input_ids: prompt ids, image slots as vocab_size + k.
        prompt_table: [num_image_tokens, llm_hidden] image features, or None for text-only prompts.
        max_new_tokens: upper bound on generated tokens.
        end_id: token that ends generation (NVLM-D: <|im_end|>).
        on_token: called with each new token id as it is produced.
    """
    if max_new_tokens < 1:
        raise DeployError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    lm = model.language_model
    embeds = model.embed(torch.tensor([input_ids]), prompt_table)  # [1, L, hidden]
    out = lm(inputs_embeds=embeds, use_cache=True)
    tokens: list[int] = []
    while True:
        token = int(out.logits[0, -1].float().argmax())
        if token == end_id:
            break
        tokens.append(token)
        if on_token:
            on_token(token)
        if len(tokens) >= max_new_tokens:
            break
        out = lm(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


class ReferencePipeline:
    """Prompt + images -> answer, with the PyTorch reference model."""

    def __init__(self, model: NvlmModel, preprocessor, tokenizer):
        self.model = model
        self.preprocessor = preprocessor
        self.tokenizer = tokenizer

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, dtype: str = "fp32",
                       **preprocessor_kwargs) -> "ReferencePipeline":
        """Load model, tokenizer and preprocessing of a HF NVLM-D checkpoint directory.

        Args:
            model_dir: the checkpoint.
            dtype: compute dtype of the model (a precision name: "fp32" default; "bf16" as NVLM-D ships).
            preprocessor_kwargs: Preprocessor options (max_tiles, max_pixels, max_images, system_message).
        """
        from nvlm_deploy.preprocess.request import Preprocessor
        from nvlm_deploy.preprocess.tokenizer import Tokenizer

        model = NvlmModel.from_pretrained(model_dir, dtype=dtype)
        tokenizer = Tokenizer.load(model_dir)
        return cls(model, Preprocessor(model.config, tokenizer, **preprocessor_kwargs), tokenizer)

    @torch.no_grad()
    def image_features(self, pixel_values) -> torch.Tensor | None:
        """[T, 3, S, S] -> prompt table [T * tokens_per_tile, llm_hidden], or None without tiles."""
        if pixel_values is None or len(pixel_values) == 0:
            return None
        dtype = self.model.mlp1[1].weight.dtype
        feats = self.model.extract_feature(torch.as_tensor(pixel_values).to(dtype))
        return feats.reshape(-1, feats.shape[-1])

    def generate_ids(self, prepared, *, max_new_tokens: int = 64,
                     on_token: Callable[[int], None] | None = None) -> list[int]:
        """Greedy new tokens for a PreparedRequest."""
        table = self.image_features(prepared.pixel_values) if prepared.num_image_tokens else None
        return greedy_generate(self.model, list(prepared.input_ids), table, max_new_tokens=max_new_tokens,
                               end_id=self.tokenizer.eos_id, on_token=on_token)

    def generate(self, prompt: str, images: Sequence = (), *, max_new_tokens: int = 64) -> str:
        """The answer text (special tokens skipped, stripped as HF chat() does)."""
        ids = self.generate_ids(self.preprocessor.prepare(prompt, images), max_new_tokens=max_new_tokens)
        return self.tokenizer.decode(ids).strip()
