"""CPU stand-in for the TensorRT-LLM engine: a plain-torch Qwen2 decoder over a TRT-LLM checkpoint.

Semantics follow the engine: ids >= vocab_size read rows (id - vocab_size) of the request's
prompt table; each step's token is chosen with TensorRT-LLM's decoding layers
(`runtime.sampling`: penalties, min_tokens, bad words, greedy or top-k/top-p); generation stops at
end_id (not returned), after a stop word (returned, as TensorRT-LLM keeps it) or after
max_new_tokens. Several requests run together (`InflightBatch`): each holds one slot of a
preallocated KV cache, its prompt is prefilled alone into that slot, then every active request
decodes one token per step; requests may join between steps and a finished one frees its slot
without moving anyone else's cache (in-flight batching, as the engine's batch manager).

Weights use TensorRT-LLM names: `mlp.fc` is gate_proj (through SiLU), `mlp.gate` is up_proj.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from nvlm_deploy.errors import DeployError
from nvlm_deploy.quant import emulate  # quantized checkpoints: FP8 input / KV-cache quantization with stored scales
from nvlm_deploy.runtime.sampling import RequestSampler, SamplingParams, ends_with_any, word_list
from nvlm_deploy.trtllm import names
from nvlm_deploy.trtllm.config import TrtllmConfig
from nvlm_deploy.trtllm.rank_files import load_trtllm_checkpoint

FINISH_REASONS = ("end_id", "stop_words", "length")  # executor::FinishReason kEND_ID, kSTOP_WORDS, kLENGTH


@dataclass
class GenerationRequest:
    """One request as tensorrtllm_backend's tensorrt_llm model takes it; defaults are TensorRT-LLM's.

    The sampling fields (temperature ... beam_search_diversity_rate) are `SamplingParams`'s, by name.
    """

    input_ids: list[int]
    prompt_table: np.ndarray | None = None  # [num_image_tokens, hidden]
    max_new_tokens: int = 64
    end_id: int | None = None
    pad_id: int | None = None  # outputs are per-request lists, so nothing is padded here
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int | None = None  # top_k == 0 and top_p == 0 -> greedy (TensorRT-LLM semantics)
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 1
    bad_words: Sequence[Sequence[int]] = ()  # token-id sequences; the last id is banned after the others
    stop_words: Sequence[Sequence[int]] = ()  # token-id sequences; generation ends after one (kept in output)
    beam_width: int = 1  # > 1 is refused: the engine has max beam width 1
    num_return_sequences: int | None = None  # > 1 is refused: one sequence per request
    length_penalty: float = 0.0  # beam search only: accepted, no effect with beam_width 1
    early_stopping: int = 1  # beam search only: accepted, no effect with beam_width 1
    beam_search_diversity_rate: float = 0.0  # beam search only: accepted, no effect with beam_width 1
    return_log_probs: bool = False  # fill GenerationResult.output_log_probs and cum_log_probs

    def sampling(self) -> SamplingParams:
        return SamplingParams(**{f.name: getattr(self, f.name) for f in fields(SamplingParams)})


@dataclass
class GenerationResult:
    """One request's output, as tensorrtllm_backend's output_ids / output_log_probs / cum_log_probs.

    output_log_probs[i] is the log-probability of tokens[i] under the distribution it was drawn from
    (log-softmax of the logits after temperature, penalties, min_tokens and bad words; normalized
    over the top-k candidates when `normalize_log_probs`). cum_log_probs sums the unnormalized
    values and, as TensorRT-LLM's sampling kernels do, includes the end_id's when end_id ended the
    request (end_id is not in tokens, so not in output_log_probs).
    """

    tokens: list[int] = field(default_factory=list)  # generated ids: end_id excluded, stop words included
    finish_reason: str = ""  # one of FINISH_REASONS
    output_log_probs: list[float] | None = None  # [len(tokens)] when return_log_probs
    cum_log_probs: float | None = None  # when return_log_probs


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
        qkv = emulate.linear(x, self.w, names.layer_tensor(i, names.QKV_WEIGHT),
                             self.w.get(names.layer_tensor(i, names.QKV_BIAS)))
        q, k, v = qkv.split([heads * c.head_size, kv_heads * c.head_size, kv_heads * c.head_size], dim=-1)
        q = self.rope(q.view(b, n, heads, c.head_size).transpose(1, 2), positions)  # [B, H, L, D]
        k = self.rope(k.view(b, n, kv_heads, c.head_size).transpose(1, 2), positions)
        v = v.view(b, n, kv_heads, c.head_size).transpose(1, 2)
        k, v = emulate.kv_fake_quant(self.w, i, k, v)  # what an FP8 KV cache holds (unchanged otherwise)
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
        return emulate.linear(out, self.w, names.layer_tensor(i, names.DENSE))

    def _mlp(self, x, i):
        fc, gate, proj = (names.layer_tensor(i, s) for s in (names.MLP_FC, names.MLP_GATE, names.MLP_PROJ))
        act = torch.nn.functional.silu(emulate.linear(x, self.w, fc))  # fc = gate_proj
        return emulate.linear(act * emulate.linear(x, self.w, gate), self.w, proj)

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

    def check(self, req: GenerationRequest) -> tuple[torch.Tensor | None, SamplingParams]:
        """(prompt table as a tensor, sampling parameters) of a request the engine would accept; else DeployError."""
        if not req.input_ids:
            raise DeployError("input_ids is empty.")
        if req.max_new_tokens < 1:
            raise DeployError(f"max_new_tokens must be at least 1, got {req.max_new_tokens}.")
        if min(req.input_ids) < 0:
            raise DeployError("input_ids has a negative id.")
        for name in ("end_id", "pad_id"):  # TensorRT-LLM reads them as token ids: in [0, vocab_size)
            value = getattr(req, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise DeployError(f"{name} {value} is outside the vocabulary [0, {self.vocab_size}): send a token id "
                                  f"of the tokenizer (e.g. its end-of-turn id) or -1 for none.")
        slots = [i - self.vocab_size for i in req.input_ids if i >= self.vocab_size]
        table = None if req.prompt_table is None else torch.as_tensor(np.asarray(req.prompt_table))
        if slots and table is None:
            raise DeployError(f"the prompt has image slots (ids >= vocab_size {self.vocab_size}) but no prompt_table.")
        if table is not None and (table.ndim != 2 or table.shape[1] != self.hidden_size):
            raise DeployError(f"prompt_table has shape {tuple(table.shape)}; "
                              f"expected [num_image_tokens, {self.hidden_size}].")
        if slots and max(slots) >= table.shape[0]:
            raise DeployError(f"image slot {max(slots)} is past the {table.shape[0]} rows of "
                              "prompt_table: the prompt and the images do not match.")
        params = req.sampling()
        word_list("stop_words", req.stop_words)
        return table, params

    def _check(self, k: int, req: GenerationRequest) -> tuple[torch.Tensor | None, SamplingParams]:
        try:
            return self.check(req)
        except DeployError as exc:
            raise DeployError(f"request {k}: {exc}") from None

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest], *,
                 on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
        """New tokens per request (end_id excluded); on_token(request_index, token_id) as they come.

        Args:
            requests: the batch.
            on_token: streaming callback, called once per returned token, in generation order.
        """
        stream = None if on_token is None else (lambda k, token, _log_prob: on_token(k, token))
        return [result.tokens for result in self.generate_results(requests, on_token=stream)]

    @torch.no_grad()
    def generate_results(self, requests: Sequence[GenerationRequest], *,
                         on_token: Callable[[int, int, float | None], None] | None = None,
                         normalize_log_probs: bool = False) -> list[GenerationResult]:
        """One GenerationResult per request: tokens, finish reason and (if asked) log-probabilities.

        Every request is checked before any runs; then all are admitted to one `InflightBatch` and
        stepped until the last finishes.

        Args:
            requests: the batch.
            on_token: streaming callback on_token(request_index, token_id, log_prob), once per returned
                token in generation order; log_prob is None unless the request has return_log_probs.
            normalize_log_probs: the tensorrt_llm model's `normalize_log_probs` parameter: output_log_probs
                of top-k and greedy tokens are renormalized over the top-k candidates (greedy ones become 0),
                cum_log_probs never is. tensorrtllm_backend documents it on by default; TensorRT-LLM's
                executor turned it off by default (PR #12366), as here.
        """
        if not requests:
            return []
        for k, req in enumerate(requests):
            self._check(k, req)
        batch = InflightBatch(self, slots=len(requests), max_len=max(len(r.input_ids) + r.max_new_tokens for r in requests),
                              normalize_log_probs=normalize_log_probs)
        sequences = [batch.add(req, on_token=None if on_token is None else _indexed(on_token, k))
                     for k, req in enumerate(requests)]
        while batch.active:
            batch.step()
        return [seq.result for seq in sequences]


def _indexed(on_token, k: int):
    return lambda token, log_prob: on_token(k, token, log_prob)


class InflightBatch:
    """Requests decoding together in the slots of one preallocated KV cache (in-flight batching).

    `add` puts a request in the lowest free slot and prefills its prompt alone; `step` advances every
    active request by one token; a finished (or `remove`d) request frees its slot and nothing else
    moves. A step runs the rows of slots lowest..highest active (a free slot in between costs one
    masked dummy row) against keys up to the longest active length: the cache is only ever viewed
    (`keys[lo:hi, :, :span]`), never gathered or copied.

    Args:
        runtime: the decoder.
        slots: how many requests may be active at once.
        max_len: the longest prompt + max_new_tokens a request may have.
        normalize_log_probs: see TrtllmCheckpointRuntime.generate_results.
    """

    def __init__(self, runtime: TrtllmCheckpointRuntime, *, slots: int, max_len: int, normalize_log_probs: bool = False):
        self.runtime, self.max_len, self.normalize = runtime, max_len, normalize_log_probs
        self.cache = runtime.new_cache(slots, max_len)  # per layer (keys, values) [slots, Hkv, max_len, D]
        self.free = list(range(slots))
        self.by_slot: dict[int, Decoding] = {}

    @property
    def active(self) -> list["Decoding"]:
        return [self.by_slot[s] for s in sorted(self.by_slot)]

    @property
    def has_room(self) -> bool:
        return bool(self.free)

    @torch.no_grad()
    def add(self, request: GenerationRequest, *, on_token: Callable[[int, float | None], None] | None = None,
            checked: tuple[torch.Tensor | None, SamplingParams] | None = None) -> "Decoding":
        """Check and prefill one request (its first token comes out here); DeployError if it is refused.

        The returned sequence is `done` already when its first token ended it.
        """
        table, params = checked or self.runtime.check(request)
        if len(request.input_ids) + request.max_new_tokens > self.max_len:
            raise DeployError(f"input length {len(request.input_ids)} + max_new_tokens {request.max_new_tokens} "
                              f"exceeds the batch's {self.max_len} cache positions.")
        if not self.free:
            raise DeployError("every slot of the batch is taken; wait for a request to finish.")
        seq = Decoding(request, params, vocab_size=self.runtime.vocab_size, normalize=self.normalize,
                        on_token=on_token)
        seq.slot = self.free.pop(0)
        try:
            n = len(request.input_ids)
            ids = torch.tensor([request.input_ids])
            view = [(keys[seq.slot:seq.slot + 1, :, :n], values[seq.slot:seq.slot + 1, :, :n]) for keys, values in self.cache]
            logits = self.runtime.forward(self.runtime.embed(ids, table).to(self.runtime.dtype), torch.arange(n)[None], view)
            seq.length = n
            seq.advance(logits[0])
        except BaseException:
            self._release(seq)
            raise
        if seq.done:
            self._release(seq)
        else:
            self.by_slot[seq.slot] = seq
        return seq

    @torch.no_grad()
    def step(self) -> list["Decoding"]:
        """One token for every active request; returns those that finished."""
        active = self.active
        if not active:
            return []
        lo, hi = active[0].slot, active[-1].slot + 1
        last = torch.zeros(hi - lo, dtype=torch.long)  # a free slot in between decodes token 0 at position 0
        positions = torch.zeros(hi - lo, dtype=torch.long)
        for seq in active:
            last[seq.slot - lo], positions[seq.slot - lo] = seq.result.tokens[-1], seq.length
        span = int(positions.max()) + 1
        view = [(keys[lo:hi, :, :span], values[lo:hi, :, :span]) for keys, values in self.cache]
        logits = self.runtime.forward(self.runtime.embed(last[:, None], None).to(self.runtime.dtype),
                                      positions[:, None], view)
        finished = []
        for seq in active:
            seq.length += 1
            seq.advance(logits[seq.slot - lo])
            if seq.done:
                self._release(seq)
                finished.append(seq)
        return finished

    def remove(self, seq: "Decoding") -> None:
        """Drop an active request (cancelled): its slot is free for the next one."""
        if self.by_slot.get(seq.slot) is seq:
            self._release(seq)

    def _release(self, seq: "Decoding") -> None:
        self.by_slot.pop(seq.slot, None)
        if seq.slot is not None and seq.slot not in self.free:
            self.free.append(seq.slot)
            self.free.sort()
        seq.slot = None


class Decoding:
    """One request's progress through generation: its slot, sampler and result so far.

    on_token(token, log_prob) is called for each returned token (log_prob None unless return_log_probs).
    """

    def __init__(self, req: GenerationRequest, params: SamplingParams, *, vocab_size: int, normalize: bool,
                 on_token: Callable[[int, float | None], None] | None = None):
        self.req, self.normalize, self.on_token = req, normalize, on_token
        self.slot: int | None = None
        self.length = 0  # cache positions filled
        self.stop_words = word_list("stop_words", req.stop_words)
        self.sampler = RequestSampler(params, req.input_ids, vocab_size=vocab_size, end_id=req.end_id,
                                      log_probs=req.return_log_probs)
        self.result = GenerationResult(output_log_probs=[] if req.return_log_probs else None,
                                       cum_log_probs=0.0 if req.return_log_probs else None)

    @property
    def done(self) -> bool:
        return bool(self.result.finish_reason)

    def advance(self, logits: torch.Tensor) -> None:
        """Choose the next token from last-position logits [V]; sets result.finish_reason when it ends."""
        choice, result = self.sampler.next(logits), self.result
        if choice.log_prob is not None:
            result.cum_log_probs += choice.log_prob  # end_id's too (samplingTopKKernels.cu adds before its EOS test)
        if self.req.end_id is not None and choice.token == self.req.end_id:
            result.finish_reason = "end_id"
            return
        self.sampler.accept(choice.token)
        result.tokens.append(choice.token)
        log_prob = choice.normalized_log_prob if self.normalize else choice.log_prob
        if result.output_log_probs is not None:
            result.output_log_probs.append(log_prob)
        if ends_with_any(self.sampler.sequence, self.stop_words):  # stop words stay in the output
            result.finish_reason = "stop_words"
        elif len(result.tokens) >= self.req.max_new_tokens:
            result.finish_reason = "length"
        if self.on_token:
            self.on_token(choice.token, log_prob)
