"""Next-token choice with TensorRT-LLM's sampling semantics.

top_k == 0 and top_p == 0 means greedy (argmax). Otherwise the logits are divided by the
temperature, cut to the top_k most likely tokens (when top_k > 0), then to the smallest set whose
probability reaches top_p (when top_p > 0), and one token is drawn with the request's own seeded
generator, so a seed reproduces its tokens regardless of the other requests in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nvlm_deploy.errors import DeployError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int | None = None

    def __post_init__(self):
        if self.top_k < 0:
            raise DeployError(f"top_k must be >= 0 (0 disables it), got {self.top_k}.")
        if not 0.0 <= self.top_p <= 1.0:
            raise DeployError(f"top_p must be in [0, 1] (0 disables it), got {self.top_p}.")
        if not self.greedy and self.temperature <= 0:
            raise DeployError(f"temperature must be > 0 when sampling (top_k or top_p set), got {self.temperature}.")

    @property
    def greedy(self) -> bool:
        return self.top_k == 0 and self.top_p == 0.0

    def generator(self) -> torch.Generator | None:
        if self.greedy:
            return None
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """[V] -> [V] with every logit below the k-th largest set to -inf."""
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


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from last-position logits [V]."""
    logits = logits.float()
    if params.greedy:
        return int(logits.argmax())
    logits = filter_top_p(filter_top_k(logits / params.temperature, params.top_k), params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
