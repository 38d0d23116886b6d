"""CPU stand-in for the TensorRT-LLM engine: a plain-torch Qwen2 decoder over a TRT-LLM checkpoint.

Semantics follow the engine: ids >= vocab_size read rows (id - vocab_size) of the request's
prompt table; top_k == 0 and top_p == 0 is greedy; generation stops at end_id (not returned) or
after max_new_tokens. Several requests run together: each prompt is prefilled alone, then all
active requests decode one token per step against a shared, length-masked KV cache.

Weights use TensorRT-LLM names: `mlp.fc` is gate_proj (through SiLU), `mlp.gate` is up_proj.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nvlm_deploy.errors import DeployError
from nvlm_deploy.runtime.sampling import SamplingParams, sample_next
from nvlm_deploy.trtllm import names
from nvlm_deploy.trtllm.config import TrtllmConfig
from nvlm_deploy.trtllm.rank_files import load_trtllm_checkpoint


@dataclass
class GenerationRequest:
    input_ids: list[int]
    prompt_table: np.ndarray | None = None  # [num_image_tokens, hidden]
    max_new_tokens: int = 64
    end_id: int | None = None
    pad_id: int | None = None  # outputs are per-request lists, so nothing is padded here
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int | None = None  # top_k == 0 and top_p == 0 -> greedy (TensorRT-LLM semantics)

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class RotaryEmbedding:
    """GPT-NeoX RoPE (rotate halves), inv_freq = base^(-2i/d): TensorRT-LLM rope_gpt_neox, HF Qwen2."""

    def __init__(self, head_size: int, base: float):
        self.inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.int64).float() / head_size))

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, H, L, D], positions [B, L]."""
        freqs = positions[:, None, :, None].float() * self.inv_freq  # [B, 1, L, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        return x * cos + rotate_half(x) * sin


class TrtllmCheckpointRuntime:
    def __init__(self, config: TrtllmConfig, weights: dict[str, torch.Tensor], *, dtype: torch.dtype):
        self.config, self.w, self.dtype = config, weights, dtype
        self.rope = RotaryEmbedding(config.head_size, config.rotary_base)

    @classmethod
    def load(cls, checkpoint_dir: str | Path, *, dtype: str | torch.dtype | None = None) -> "TrtllmCheckpointRuntime":
        """Load every rank of a TensorRT-LLM checkpoint (merged) for CPU execution.

        Args:
            checkpoint_dir: a trtllm_checkpoint/ directory.
            dtype: compute precision name (or torch dtype); None means fp32 (exact on CPU; the
                checkpoint's values are kept).
        """
        from nvlm_deploy.contracts.precision import COMPUTE, precision

        dtype = dtype if isinstance(dtype, torch.dtype) else precision(dtype or COMPUTE).torch_dtype()
        config, weights = load_trtllm_checkpoint(checkpoint_dir, dtype=dtype)
        if config.rotary_scaling is not None:
            raise DeployError(f"{checkpoint_dir}: rotary_scaling {config.rotary_scaling} is not supported by the "
                              "CPU runtime, which implements plain RoPE (rotary_scaling null).")
        return cls(config, weights, dtype=dtype)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    # ---- model ----

    def embed(self, ids: torch.Tensor, prompt_table: torch.Tensor | None) -> torch.Tensor:
        """ids [B, L] -> [B, L, hidden]; ids >= vocab_size take prompt_table rows."""
        is_prompt = ids >= self.vocab_size
        out = self.w[names.VOCAB_EMBEDDING][torch.where(is_prompt, 0, ids)]
        if is_prompt.any():
            out[is_prompt] = prompt_table[ids[is_prompt] - self.vocab_size].to(out.dtype)
        return out

    def _attention(self, x, i, positions, cache):
        """x [B, L, hidden]; writes k/v at `positions` into cache[i]; each query sees cache rows <= its position."""
        c = self.config
        heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
        b, n, _ = x.shape
        qkv = torch.nn.functional.linear(x, self.w[names.layer_tensor(i, names.QKV_WEIGHT)],
                                         self.w.get(names.layer_tensor(i, names.QKV_BIAS)))
        q, k, v = qkv.split([heads * c.head_size, kv_heads * c.head_size, kv_heads * c.head_size], dim=-1)
        q = self.rope(q.view(b, n, heads, c.head_size).transpose(1, 2), positions)  # [B, H, L, D]
        k = self.rope(k.view(b, n, kv_heads, c.head_size).transpose(1, 2), positions)
        v = v.view(b, n, kv_heads, c.head_size).transpose(1, 2)
        keys, values = cache[i]
        rows = torch.arange(b)[:, None]
        keys[rows, :, positions] = k.transpose(1, 2)  # [B, L, Hkv, D] into [B, Hkv, Lmax, D]
        values[rows, :, positions] = v.transpose(1, 2)
        reps = heads // kv_heads
        kk, vv = keys.repeat_interleave(reps, dim=1), values.repeat_interleave(reps, dim=1)
        scores = (q @ kk.transpose(-1, -2)).float() / c.head_size**0.5  # [B, H, L, Lmax]
        visible = torch.arange(keys.shape[2])[None, None, :] <= positions[:, :, None]  # [B, L, Lmax]
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
        out = torch.softmax(scores, dim=-1).to(x.dtype) @ vv  # [B, H, L, D]
        out = out.transpose(1, 2).reshape(b, n, heads * c.head_size)
        return torch.nn.functional.linear(out, self.w[names.layer_tensor(i, names.DENSE)])

    def _mlp(self, x, i):
        w = {suffix: self.w[names.layer_tensor(i, suffix)] for suffix in (names.MLP_FC, names.MLP_GATE, names.MLP_PROJ)}
        act = torch.nn.functional.silu(torch.nn.functional.linear(x, w[names.MLP_FC]))  # fc = gate_proj
        return torch.nn.functional.linear(act * torch.nn.functional.linear(x, w[names.MLP_GATE]), w[names.MLP_PROJ])

    def forward(self, h: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """Embeddings [B, L, hidden] at positions [B, L] -> last-position logits [B, vocab] (float32)."""
        eps = self.config.norm_epsilon
        for i in range(self.config.num_hidden_layers):
            norm1, norm2 = (self.w[names.layer_tensor(i, s)] for s in (names.INPUT_LAYERNORM, names.POST_LAYERNORM))
            h = h + self._attention(rms_norm(h, norm1, eps), i, positions, cache)
            h = h + self._mlp(rms_norm(h, norm2, eps), i)
        h = rms_norm(h[:, -1], self.w[names.LN_F], eps)
        return torch.nn.functional.linear(h, self.w[names.LM_HEAD]).float()

    def new_cache(self, batch: int, max_len: int):
        c = self.config
        shape = (batch, c.num_key_value_heads, max_len, c.head_size)
        return [(torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype))
                for _ in range(c.num_hidden_layers)]

    # ---- generation ----

    def _check(self, k: int, req: GenerationRequest) -> torch.Tensor | None:
        if not req.input_ids:
            raise DeployError(f"request {k}: input_ids is empty.")
        if req.max_new_tokens < 1:
            raise DeployError(f"request {k}: max_new_tokens must be at least 1, got {req.max_new_tokens}.")
        if min(req.input_ids) < 0:
            raise DeployError(f"request {k}: input_ids has a negative id.")
        slots = [i - self.vocab_size for i in req.input_ids if i >= self.vocab_size]
        table = None if req.prompt_table is None else torch.as_tensor(np.asarray(req.prompt_table))
        if slots and table is None:
            raise DeployError(f"request {k}: the prompt has image slots (ids >= vocab_size {self.vocab_size}) "
                              "but no prompt_table.")
        if table is not None and (table.ndim != 2 or table.shape[1] != self.hidden_size):
            raise DeployError(f"request {k}: prompt_table has shape {tuple(table.shape)}; "
                              f"expected [num_image_tokens, {self.hidden_size}].")
        if slots and max(slots) >= table.shape[0]:
            raise DeployError(f"request {k}: image slot {max(slots)} is past the {table.shape[0]} rows of "
                              "prompt_table: the prompt and the images do not match.")
        return table

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest], *,
                 on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
        """New tokens per request (end_id excluded); on_token(request_index, token_id) as they come.

        Args:
            requests: the batch.
            on_token: streaming callback, called once per returned token, in generation order.
        """
        if not requests:
            return []
        tables = [self._check(k, r) for k, r in enumerate(requests)]
        params = [r.sampling() for r in requests]
        gens = [p.generator() for p in params]
        b = len(requests)
        max_len = max(len(r.input_ids) + r.max_new_tokens for r in requests)
        cache = self.new_cache(b, max_len)
        lengths = torch.zeros(b, dtype=torch.long)
        outputs: list[list[int]] = [[] for _ in requests]
        active, last = [], torch.zeros(b, dtype=torch.long)
        for k, req in enumerate(requests):  # prefill each prompt alone (lengths differ)
            ids = torch.tensor([req.input_ids])
            view = [(keys[k:k + 1], values[k:k + 1]) for keys, values in cache]
            logits = self.forward(self.embed(ids, tables[k]).to(self.dtype), torch.arange(ids.shape[1])[None], view)
            lengths[k] = ids.shape[1]
            if self._emit(k, sample_next(logits[0], params[k], gens[k]), requests[k], outputs, on_token):
                active.append(k)
                last[k] = outputs[k][-1]
        while active:
            idx = torch.tensor(active)
            subset = len(active) < b  # finished requests drop out of the step; their rows are copied
            view = [(keys[idx], values[idx]) for keys, values in cache] if subset else cache
            h = self.embed(last[idx][:, None], None).to(self.dtype)
            logits = self.forward(h, lengths[idx][:, None], view)
            if subset:  # advanced indexing copied the rows: write them back
                for (keys, values), (vk, vv) in zip(cache, view):
                    keys[idx], values[idx] = vk, vv
            lengths[idx] += 1
            still = []
            for row, k in enumerate(active):
                if self._emit(k, sample_next(logits[row], params[k], gens[k]), requests[k], outputs, on_token):
                    still.append(k)
                    last[k] = outputs[k][-1]
            active = still
        return outputs

    @staticmethod
    def _emit(k, token, req, outputs, on_token) -> bool:
        """Record `token` for request k; True while the request goes on."""
        if req.end_id is not None and token == req.end_id:
            return False
        outputs[k].append(token)
        if on_token:
            on_token(k, token)
        return len(outputs[k]) < req.max_new_tokens
