"""A request's sampling settings as TensorRT-LLM's executor::SamplingConfig takes them, and their checks.

Torch-free, so that the BLS refuses out-of-range settings before it asks tensorrt_llm to generate
(a stream tensorrt_llm ends at once with an error is the decoupled BLS path that python_backend
r24.10 handles worst), with the very checks the CPU runtime applies (`runtime.sampling` decodes).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from nvlm_deploy.contracts.limits import MAX_BEAM_WIDTH
from nvlm_deploy.errors import DeployError


@dataclass(frozen=True)
class SamplingParams:
    """executor::SamplingConfig for one beam; defaults are TensorRT-LLM's (layers/defaultDecodingParams.h)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 1
    bad_words: tuple[tuple[int, ...], ...] = ()  # token-id sequences never to complete
    beam_width: int = 1
    num_return_sequences: int | None = None
    length_penalty: float = 0.0  # beam search only: accepted, no effect with one beam
    early_stopping: int = 1  # beam search only: accepted, no effect with one beam
    beam_search_diversity_rate: float = 0.0  # beam search only: accepted, no effect with one beam

    def __post_init__(self):
        self._check_draw()
        self._check_penalties()
        self._check_beams()
        object.__setattr__(self, "bad_words", word_list("bad_words", self.bad_words))

    def _check_draw(self):
        # executor/samplingConfig.cpp: checkTopK (>= 0), checkTopP (<= 1; 0 = off, regularizeTopKTopP),
        # checkTemperature (>= 0); penaltyLayer.cpp fills temperatures within (0, FLT_MAX] (penaltyTypes.h).
        _integer("top_k", self.top_k, least=0, note="0 disables it")
        if not 0.0 <= self.top_p <= 1.0:
            raise DeployError(f"top_p must be in [0, 1] (0 disables it), got {self.top_p}.")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise DeployError(f"temperature must be a finite number >= 0, got {self.temperature}.")
        if not self.greedy and self.temperature <= 0:
            raise DeployError(f"temperature must be > 0 when sampling (top_k or top_p set), got {self.temperature}.")

    def _check_penalties(self):
        # samplingConfig.cpp checkRepetitionPenalty (> 0); presence/frequency take any value;
        # checkMinTokens (>= 0).
        for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise DeployError(f"{name} must be a finite number, got {getattr(self, name)}.")
        if self.repetition_penalty <= 0:
            raise DeployError(f"repetition_penalty must be > 0 (1 disables it; > 1 discourages repeats), "
                              f"got {self.repetition_penalty}.")
        _integer("min_tokens", self.min_tokens, least=0, note="values <= 1 have no effect")

    def _check_beams(self):
        # samplingConfig.cpp checkBeamWidth (> 0), checkNumReturnSequences (> 0),
        # checkBeamSearchDiversityRate (>= 0), checkEarlyStopping (>= 0).
        _integer("beam_width", self.beam_width, least=1)
        if self.beam_width > MAX_BEAM_WIDTH:
            raise DeployError(
                f"beam_width {self.beam_width} is not supported: the decoder engine is built with "
                f"trtllm-build --max_beam_width {MAX_BEAM_WIDTH} and the CPU runtime decodes one beam. Send "
                f"beam_width 1 (greedy, or sampling with top_k/top_p). Beam search needs an engine rebuilt with "
                f"trtllm-build --max_beam_width {self.beam_width} (or more) served with the same max_beam_width "
                "in the tensorrt_llm model's config.pbtxt, which this deployment does not build.")
        if self.num_return_sequences is not None:
            _integer("num_return_sequences", self.num_return_sequences, least=1)
            if self.num_return_sequences > 1:
                raise DeployError(
                    f"num_return_sequences {self.num_return_sequences} is not supported: this deployment returns "
                    "one sequence per request. Send the request that many times with different seeds instead.")
        if not math.isfinite(self.length_penalty):
            raise DeployError(f"length_penalty must be a finite number, got {self.length_penalty}.")
        _integer("early_stopping", self.early_stopping, least=0)
        if not (math.isfinite(self.beam_search_diversity_rate) and self.beam_search_diversity_rate >= 0):
            raise DeployError(f"beam_search_diversity_rate must be a finite number >= 0, "
                              f"got {self.beam_search_diversity_rate}.")

    @property
    def greedy(self) -> bool:
        return self.top_k == 0 and self.top_p == 0.0

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def generator(self):
        """The request's torch.Generator (None when greedy); torch is imported here, not at import."""
        if self.greedy:
            return None
        import torch

        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def _integer(name: str, value, *, least: int, note: str = "") -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise DeployError(f"{name} must be an integer, got {value!r}.") from None
    if value < least:
        raise DeployError(f"{name} must be >= {least}{f' ({note})' if note else ''}, got {value}.")
    return value


def word_list(name: str, words: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Stop or bad words as token-id sequences -> a tuple of non-empty tuples of ids >= 0."""
    out = tuple(tuple(_integer(f"{name} ids", i, least=0) for i in word) for word in words)
    if any(not word for word in out):
        raise DeployError(f"{name} has an empty sequence; each entry is a non-empty list of token ids.")
    return out
