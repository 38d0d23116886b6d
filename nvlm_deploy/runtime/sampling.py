"""Next-token choice with TensorRT-LLM's decoding semantics (executor::SamplingConfig, one beam).

Each step runs TensorRT-LLM's decoding layers in their order (cpp/tensorrt_llm/layers/
layersFactory.h: PENALTY_LAYER, BAN_WORDS_LAYER, DECODING_LAYER, STOP_CRITERIA_LAYER):
1. `penalize`: temperature, then repetition, presence and frequency penalties over the prompt and
   the tokens generated so far, then min_tokens masks end_id (kernels/penaltyKernels.cu);
2. `ban_bad_words` (kernels/banBadWords.cu);
3. `choose`: top_k == 0 and top_p == 0 is greedy (argmax); otherwise the top_k most likely tokens,
   then within them the smallest set reaching top_p, renormalized, and one token drawn with the
   request's own seeded generator, so a seed reproduces its tokens regardless of the batch;
4. stop words end generation (`ends_with_any`, kernels/stopCriteriaKernels.cu).
Log-probabilities are those of the distribution the token was drawn from: log-softmax over the
whole vocabulary of the logits after steps 1-2 (so temperature and penalties included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

# the request's settings and their checks (torch-free: the BLS checks requests with them before generating)
from nvlm_deploy.runtime.sampling_params import SamplingParams, word_list  # noqa: F401  (re-exported)

TOP_K_MAX = 1024  # kernels/samplingTopKKernels.h TOP_K_MAX; clampTopK clips larger k to it
FLT_MIN = torch.finfo(torch.float32).min  # penaltyKernels.cu MASK_VAL (-FLT_MAX) and its clamp bounds
FLT_MAX = torch.finfo(torch.float32).max


# ---- 1. penalty layer (cpp/tensorrt_llm/kernels/penaltyKernels.cu, batchApplyPenalty) ----

def occurrences(ids: Sequence[int], vocab_size: int) -> torch.Tensor:
    """[V] int64 count of each id in `ids`; ids >= vocab_size (prompt-table rows) are not tokens.

    penaltyKernels.cu counts the whole prompt in the context phase and adds each generated token
    ("if (penaltyIndex < vocabSize)"); presence and frequency use the same counts (TensorRT-LLM 1.2's
    Triton backend sends no prompt_ignore_length, so no prompt token is left out).
    """
    ids = np.asarray(ids, dtype=np.int64)
    return torch.from_numpy(np.bincount(ids[ids < vocab_size], minlength=vocab_size))


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits * 1/(T + 1e-6) in float32, skipped at T == 1 (penaltyKernels.cu invTemperature, hasTemperature).

    T == 0 is only accepted for greedy decoding (where it changes nothing) and is skipped too;
    TensorRT-LLM's penalty layer would reject it (penaltyTypes.h limits temperature to (0, FLT_MAX]).
    """
    if temperature == 1.0 or temperature == 0.0:
        return logits
    inv = float(np.float32(1.0) / (np.float32(temperature) + np.float32(1e-6)))
    return logits * inv


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[V] logits after temperature -> penalized, for tokens with counts > 0 (penaltyKernels.cu order).

    repetition: logit < 0 ? logit * penalty : logit / penalty; presence: - penalty once;
    frequency: - penalty * count.
    """
    seen = counts > 0
    if params.repetition_penalty != 1.0:
        rp = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits < 0, logits * rp, logits / rp), logits)
    if params.presence_penalty != 0.0:
        logits = torch.where(seen, logits - params.presence_penalty, logits)
    if params.frequency_penalty != 0.0:
        logits = torch.where(seen, logits - params.frequency_penalty * counts.float(), logits)
    return logits


def mask_end_id(logits: torch.Tensor, end_id: int | None, generated: int, min_tokens: int) -> torch.Tensor:
    """end_id gets -FLT_MAX while fewer than min_tokens tokens were generated (penaltyKernels.cu "Min length").

    min_tokens <= 1 has no effect: TensorRT-LLM passes no min lengths when every request keeps the
    default 1 (penaltyLayer.cpp GET_PENALTIES), and end_id < 0 never stops anything.
    """
    if min_tokens <= 1 or end_id is None or end_id < 0 or generated >= min_tokens:
        return logits
    logits = logits.clone()
    logits[end_id] = FLT_MIN
    return logits


def penalize(logits: torch.Tensor, params: SamplingParams, counts: torch.Tensor | None, *,
             end_id: int | None, generated: int) -> torch.Tensor:
    """The penalty layer on last-position logits [V] (float32): temperature, penalties, clamp, min_tokens."""
    logits = apply_temperature(logits.float(), params.temperature)
    if counts is not None:
        logits = apply_penalties(logits, counts, params)
    logits = logits.clamp(FLT_MIN, FLT_MAX)  # "do clamp to prevent overflow"
    return mask_end_id(logits, end_id, generated, params.min_tokens)


# ---- 2. ban words layer (cpp/tensorrt_llm/kernels/banBadWords.cu) ----

def ban_bad_words(logits: torch.Tensor, sequence: Sequence[int], bad_words: Sequence[Sequence[int]]) -> torch.Tensor:
    """The last id of each bad word gets -inf when `sequence` (prompt + output) ends with the word's other ids.

    A one-token bad word is always banned; the match may start in the prompt (banBadWords.cu reads
    the whole sequence, prompt included).
    """
    banned = [word[-1] for word in bad_words if word[-1] < logits.shape[-1] and ends_with(sequence, word[:-1])]
    if not banned:
        return logits
    logits = logits.clone()
    logits[banned] = float("-inf")
    return logits


def ends_with(sequence: Sequence[int], word: Sequence[int]) -> bool:
    n = len(word)
    return n <= len(sequence) and (n == 0 or list(sequence[-n:]) == list(word))


def ends_with_any(sequence: Sequence[int], words: Sequence[Sequence[int]]) -> bool:
    """Stop criterion: the sequence (prompt + output) ends with one of `words` (stopCriteriaKernels.cu)."""
    return any(ends_with(sequence, word) for word in words)


# ---- 3. decoding layer: top-k / top-p draw (kernels/samplingTopKKernels.cu, samplingTopPKernels.cu) ----

def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """[V] -> [V] with every logit below the k-th largest set to -inf."""
    k = min(k, TOP_K_MAX)
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """[V] -> [V] keeping the most likely tokens whose cumulative probability first reaches p."""
    if p <= 0.0 or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly more likely tokens
    drop_sorted = before >= p  # the token that crosses p is kept; the first token always is
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class Choice(NamedTuple):
    token: int
    log_prob: float | None = None  # log-softmax of the processed logits at token; None unless asked
    normalized_log_prob: float | None = None  # log_prob renormalized over the top-k candidates


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None, *,
           log_probs: bool = False) -> Choice:
    """One token from processed logits [V] (after `penalize` and `ban_bad_words`)."""
    logits = logits.float()
    if params.greedy:
        token = int(logits.argmax())
    else:
        kept = filter_top_p(filter_top_k(logits, params.top_k), params.top_p)
        token = int(torch.multinomial(torch.softmax(kept, dim=-1), 1, generator=generator))
    if not log_probs:
        return Choice(token)
    log_softmax = torch.log_softmax(logits, dim=-1)
    log_prob = float(log_softmax[token])
    # samplingTopKKernels.cu (greedy runs as top_k 1, regularizeTopKTopP): normalizeLogProbs gives
    # log(p / sum of the top-k candidates' p); samplingTopPKernels.cu (top_k 0) never normalizes.
    k = 1 if params.greedy else min(params.top_k, TOP_K_MAX, logits.shape[-1])
    norm = log_prob if k == 0 else log_prob - float(torch.logsumexp(torch.topk(log_softmax, k).values, 0))
    return Choice(token, log_prob, norm)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from raw last-position logits [V]: temperature and the draw, no penalties."""
    return choose(penalize(logits, params, None, end_id=None, generated=0), params, generator).token


class RequestSampler:
    """One request's token choice over its steps: its generator, its token counts and its sequence.

    Args:
        params: the request's sampling parameters.
        prompt: the prompt ids (ids >= vocab_size are prompt-table rows).
        vocab_size: the decoder's vocabulary size.
        end_id: the request's end id (None: no end id), masked by min_tokens.
        log_probs: compute each chosen token's log-probability.
    """

    def __init__(self, params: SamplingParams, prompt: Sequence[int], *, vocab_size: int,
                 end_id: int | None, log_probs: bool = False):
        self.params, self.end_id, self.log_probs, self.vocab_size = params, end_id, log_probs, vocab_size
        self.generator = params.generator()
        self.sequence = list(prompt)  # prompt + accepted tokens: bad and stop words match across both
        self.generated = 0
        self.counts = occurrences(prompt, vocab_size) if params.penalized else None

    def next(self, logits: torch.Tensor) -> Choice:
        """The next token from raw last-position logits [V]; call `accept` unless it ends the request."""
        logits = penalize(logits, self.params, self.counts, end_id=self.end_id, generated=self.generated)
        logits = ban_bad_words(logits, self.sequence, self.params.bad_words)
        return choose(logits, self.params, self.generator, log_probs=self.log_probs)

    def accept(self, token: int) -> None:
        self.sequence.append(token)
        self.generated += 1
        if self.counts is not None and token < self.vocab_size:
            self.counts[token] += 1
