"""TensorRT-LLM's decoding rules on small logits, against hand computations."""

import math

import pytest
import torch

from nvlm_deploy.errors import DeployError
from nvlm_deploy.runtime.sampling import (FLT_MIN, RequestSampler, SamplingParams, apply_penalties,
                                          apply_temperature, ban_bad_words, choose, ends_with_any, filter_top_k,
                                          filter_top_p, mask_end_id, occurrences, penalize, sample_next)

LOGITS = torch.tensor([2.0, -1.0, 0.5, 3.0])
COUNTS = torch.tensor([2, 1, 0, 0])  # token 0 seen twice, token 1 once


def test_top_k_and_top_p_filters():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [True, False, False, True]
    probs = torch.softmax(logits, 0)  # [0.087, 0.644, 0.237, 0.032]
    kept = ~torch.isinf(filter_top_p(logits, 0.7))
    assert kept.tolist() == [False, True, True, False] and probs[1] < 0.7
    assert (~torch.isinf(filter_top_p(logits, 0.5))).tolist() == [False, True, False, False]
    assert sample_next(logits, SamplingParams(), None) == 1
    wide = torch.arange(3000, dtype=torch.float32)
    assert int((~torch.isinf(filter_top_k(wide, 2000))).sum()) == 1024  # TensorRT-LLM clamps k to 1024


def test_temperature_multiplies_by_the_inverse_and_default_is_untouched():
    scaled = apply_temperature(LOGITS, 0.5)
    torch.testing.assert_close(scaled, LOGITS / (0.5 + 1e-6))
    assert apply_temperature(LOGITS, 1.0) is LOGITS


def test_repetition_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    out = apply_penalties(LOGITS, COUNTS, SamplingParams(repetition_penalty=2.0))
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0]


def test_presence_subtracts_once_and_frequency_per_occurrence():
    assert apply_penalties(LOGITS, COUNTS, SamplingParams(presence_penalty=0.5)).tolist() == [1.5, -1.5, 0.5, 3.0]
    assert apply_penalties(LOGITS, COUNTS, SamplingParams(frequency_penalty=0.5)).tolist() == [1.0, -1.5, 0.5, 3.0]
    negative = apply_penalties(LOGITS, COUNTS, SamplingParams(presence_penalty=-1.0))  # < 0 encourages repeats
    assert negative.tolist() == [3.0, 0.0, 0.5, 3.0]


def test_penalty_layer_order_temperature_then_repetition_presence_frequency():
    params = SamplingParams(temperature=0.5, repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    out = penalize(LOGITS, params, COUNTS, end_id=None, generated=0)
    # token 0: 2 / 0.5 = 4 -> / 2 = 2 -> - 0.5 = 1.5 -> - 0.25 * 2 = 1.0
    # token 1: -1 / 0.5 = -2 -> * 2 = -4 -> - 0.5 = -4.5 -> - 0.25 = -4.75; tokens 2, 3: only / 0.5
    torch.testing.assert_close(out, torch.tensor([1.0, -4.75, 1.0, 6.0]), atol=1e-4, rtol=0)


def test_defaults_leave_the_logits_bit_identical():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(penalize(logits, SamplingParams(), None, end_id=3, generated=0), logits)
    assert torch.equal(ban_bad_words(logits, [1, 2], ()), logits)


def test_prompt_table_ids_are_not_counted():
    assert occurrences([1, 1, 3, 7, 5], vocab_size=5).tolist() == [0, 2, 0, 1, 0]


def test_min_tokens_masks_end_id_until_that_many_were_generated():
    logits = torch.tensor([0.0, 1.0, 5.0])
    assert mask_end_id(logits, 2, 0, 3)[2] == FLT_MIN
    assert mask_end_id(logits, 2, 2, 3)[2] == FLT_MIN
    assert mask_end_id(logits, 2, 3, 3) is logits
    assert mask_end_id(logits, 2, 0, 1) is logits  # the default 1 has no effect
    assert mask_end_id(logits, None, 0, 3) is logits
    params = SamplingParams(min_tokens=2)
    assert choose(penalize(logits, params, None, end_id=2, generated=1), params, None).token == 1
    assert choose(penalize(logits, params, None, end_id=2, generated=2), params, None).token == 2


def test_bad_words_ban_the_last_id_after_the_prefix():
    logits = torch.zeros(6)
    words = ((4,), (1, 2), (7, 8, 3))
    assert torch.isinf(ban_bad_words(logits, [0, 1], words)).nonzero().flatten().tolist() == [2, 4]
    assert torch.isinf(ban_bad_words(logits, [7, 8], words)).nonzero().flatten().tolist() == [3, 4]
    assert torch.isinf(ban_bad_words(logits, [8, 7], words)).nonzero().flatten().tolist() == [4]


def test_stop_words_match_the_end_of_the_sequence():
    assert ends_with_any([5, 6, 7], [(9,), (6, 7)])
    assert not ends_with_any([5, 6, 7], [(7, 6), (4, 5, 6, 7)])
    assert not ends_with_any([5, 6, 7], [])


def test_log_probs_are_log_softmax_and_normalize_over_top_k():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    log_z = math.log(math.e + math.e**3 + math.e**2 + 1)
    greedy = choose(logits, SamplingParams(), None, log_probs=True)
    assert greedy.token == 1 and greedy.log_prob == pytest.approx(3 - log_z, abs=1e-6)
    assert greedy.normalized_log_prob == 0.0  # top-1: p / p
    params = SamplingParams(top_k=2, seed=0)
    top_k = choose(logits, params, params.generator(), log_probs=True)
    assert top_k.token in (1, 2)
    assert top_k.log_prob == pytest.approx(logits[top_k.token].item() - log_z, abs=1e-6)
    assert top_k.normalized_log_prob == pytest.approx(logits[top_k.token].item() - math.log(math.e**3 + math.e**2),
                                                      abs=1e-6)
    params = SamplingParams(top_p=0.9, seed=0)
    top_p = choose(logits, params, params.generator(), log_probs=True)
    assert top_p.normalized_log_prob == top_p.log_prob  # the top-p kernel does not normalize
    assert choose(logits, SamplingParams(), None).log_prob is None


def test_log_probs_see_temperature_and_penalties():
    params = SamplingParams(temperature=2.0, presence_penalty=1.0)
    sampler = RequestSampler(params, [3], vocab_size=4, end_id=None, log_probs=True)
    choice = sampler.next(LOGITS)
    processed = LOGITS / 2.0 - torch.tensor([0.0, 0.0, 0.0, 1.0])  # [1, -0.5, 0.25, 0.5]: 3 loses to 0
    assert choice.token == 0
    assert choice.log_prob == pytest.approx(torch.log_softmax(processed, 0)[0].item(), abs=1e-5)


def test_request_sampler_counts_prompt_and_output_and_bans_across_them():
    sampler = RequestSampler(SamplingParams(frequency_penalty=2.0, bad_words=[[1, 2]]), [0, 0, 1],
                             vocab_size=4, end_id=None)
    logits = torch.tensor([3.0, 2.0, 2.5, 0.0])
    assert sampler.counts.tolist() == [2, 1, 0, 0]
    choice = sampler.next(logits)  # 0: 3 - 4 = -1; 1: 0; 2 banned after the prompt's 1; 3: 0 -> argmax 1
    assert choice.token == 1
    sampler.accept(choice.token)
    assert sampler.counts.tolist() == [2, 2, 0, 0] and sampler.sequence == [0, 0, 1, 1]
    assert sampler.next(logits).token == 3  # 1: 2 - 4 = -2, 2 still banned


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(temperature=0.0, top_k=3), "temperature must be > 0 when sampling"),
    (dict(top_p=1.5), "top_p must be in \\[0, 1\\]"),
    (dict(top_p=float("nan")), "top_p must be in \\[0, 1\\]"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(top_k=2.5), "top_k must be an integer"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty must be a finite number"),
    (dict(presence_penalty=float("nan")), "presence_penalty must be a finite number"),
    (dict(frequency_penalty=float("-inf")), "frequency_penalty must be a finite number"),
    (dict(min_tokens=-1), "min_tokens must be >= 0"),
    (dict(beam_width=0), "beam_width must be >= 1"),
    (dict(beam_width=4), "trtllm-build --max_beam_width 1 .*beam_width 1"),
    (dict(num_return_sequences=2), "num_return_sequences 2 is not supported"),
    (dict(length_penalty=float("nan")), "length_penalty must be a finite number"),
    (dict(beam_search_diversity_rate=-0.1), "beam_search_diversity_rate must be a finite number >= 0"),
    (dict(bad_words=[[1], []]), "bad_words has an empty sequence"),
    (dict(bad_words=[[1, -2]]), "bad_words ids must be >= 0"),
])
def test_out_of_range_values_are_refused(kwargs, match):
    with pytest.raises(DeployError, match=match):
        SamplingParams(**kwargs)


def test_beam_search_settings_are_accepted_with_one_beam():
    params = SamplingParams(beam_width=1, num_return_sequences=1, length_penalty=-0.5, early_stopping=0,
                            beam_search_diversity_rate=0.3, temperature=0.0, bad_words=[[1, 2]])
    assert params.greedy and params.bad_words == ((1, 2),)
