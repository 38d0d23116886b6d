"""The CPU decoder runtime over TensorRT-LLM checkpoints against the PyTorch reference model."""

import numpy as np
import pytest
import torch

from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint
from nvlm_deploy.errors import DeployError
from nvlm_deploy.model.generate import greedy_generate
from nvlm_deploy.runtime.decoder import GenerationRequest, TrtllmCheckpointRuntime
from nvlm_deploy.trtllm.rank_files import load_trtllm_checkpoint

LAYOUTS = [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2), (4, 2)]


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("trtllm")
    return {(tp, pp): convert_llm_checkpoint(tiny_checkpoint, root / f"tp{tp}pp{pp}", tp=tp, pp=pp, dtype="fp32")
            for tp, pp in LAYOUTS}


@pytest.fixture(scope="module")
def runtime(checkpoints):
    return TrtllmCheckpointRuntime.load(checkpoints[(2, 2)])


def _prompt_with_image(model, rng):
    table = torch.from_numpy(rng.standard_normal((6, model.config.llm.hidden_size)).astype(np.float32))
    v = model.vocab_size
    return [11, 40, v, v + 1, v + 2, 7, v + 3, v + 4, v + 5, 99, 3], table


@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_logits_match_the_reference_model(checkpoints, tiny_model, tp, pp):
    rt = TrtllmCheckpointRuntime.load(checkpoints[(tp, pp)])
    ids, table = _prompt_with_image(tiny_model, np.random.default_rng(0))
    with torch.no_grad():
        ref = tiny_model(torch.tensor([ids]), table)[0, -1]
    h = rt.embed(torch.tensor([ids]), table)
    logits = rt.forward(h, torch.arange(len(ids))[None], rt.new_cache(1, len(ids)))[0]
    assert logits.shape == ref.shape == (1030,)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def test_merged_checkpoint_equals_tp1(checkpoints):
    _, full = load_trtllm_checkpoint(checkpoints[(1, 1)])
    _, merged = load_trtllm_checkpoint(checkpoints[(4, 2)])
    assert set(full) == set(merged)
    assert all(torch.equal(full[n], merged[n]) for n in full)


def test_greedy_matches_reference_generate(runtime, tiny_model):
    ids, table = _prompt_with_image(tiny_model, np.random.default_rng(1))
    ref = greedy_generate(tiny_model, ids, table, max_new_tokens=12, end_id=None)
    out = runtime.generate([GenerationRequest(ids, prompt_table=table.numpy(), max_new_tokens=12)])
    assert out == [ref] and len(ref) == 12


def test_batch_equals_requests_run_alone_and_streams_each_token(runtime):
    requests = [GenerationRequest([5, 6, 7, 8, 9], max_new_tokens=6),
                GenerationRequest([100], max_new_tokens=9),
                GenerationRequest([3, 1, 4, 1, 5, 9, 2, 6], max_new_tokens=4, top_k=5, temperature=0.8, seed=3),
                GenerationRequest([11, 12, 11, 12], max_new_tokens=7, top_p=0.9, seed=5, repetition_penalty=1.5,
                                  presence_penalty=0.5, frequency_penalty=0.25, bad_words=[[903]], min_tokens=3)]
    alone = [runtime.generate([r])[0] for r in requests]
    streamed = []
    together = runtime.generate(requests, on_token=lambda k, tok: streamed.append((k, tok)))
    assert together == alone
    assert [len(t) for t in together] == [6, 9, 4, 7]
    for k, tokens in enumerate(together):
        assert [tok for j, tok in streamed if j == k] == tokens
    assert runtime.generate([]) == []


def test_end_id_stops_and_is_not_returned(runtime):
    first = runtime.generate([GenerationRequest([5, 6, 7], max_new_tokens=8)])[0]
    end = first[3]
    stopped = runtime.generate([GenerationRequest([5, 6, 7], max_new_tokens=8, end_id=end, pad_id=0)])[0]
    assert stopped == first[:first.index(end)]
    assert end not in stopped


def test_sampling_is_reproducible_with_a_seed(runtime):
    req = dict(input_ids=[9, 8, 7], max_new_tokens=10, temperature=1.5, top_p=0.95)
    a = runtime.generate([GenerationRequest(**req, seed=1)])[0]
    assert runtime.generate([GenerationRequest(**req, seed=1)])[0] == a
    others = {tuple(runtime.generate([GenerationRequest(**req, seed=s)])[0]) for s in range(2, 6)}
    assert others - {tuple(a)}  # random weights give a flat distribution: seeds differ
    greedy = runtime.generate([GenerationRequest([9, 8, 7], max_new_tokens=10)])[0]
    assert runtime.generate([GenerationRequest([9, 8, 7], max_new_tokens=10, top_k=1, seed=4)])[0] == greedy


def test_image_slots_without_table_or_past_its_end_are_errors(runtime):
    v = runtime.vocab_size
    with pytest.raises(DeployError, match="no prompt_table"):
        runtime.generate([GenerationRequest([1, v, 2])])
    with pytest.raises(DeployError, match="past the 2 rows"):
        runtime.generate([GenerationRequest([1, v + 2], prompt_table=np.zeros((2, runtime.hidden_size), np.float32))])
    with pytest.raises(DeployError, match="expected \\[num_image_tokens, 128\\]"):
        runtime.generate([GenerationRequest([1, v], prompt_table=np.zeros((2, 64), np.float32))])
    with pytest.raises(DeployError, match="max_new_tokens"):
        runtime.generate([GenerationRequest([1], max_new_tokens=0)])


def test_checkpoint_missing_rank_tensor_is_reported(checkpoints, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    ckpt = shutil.copytree(checkpoints[(2, 1)], tmp_path / "c")
    tensors = load_file(ckpt / "rank1.safetensors")
    del tensors["transformer.layers.1.mlp.proj.weight"]
    save_file(tensors, ckpt / "rank1.safetensors")
    # the manifest's size check (artifacts that cannot lie) or the tensor check names the file
    missing = "(?s)rank1.safetensors.*(Missing \\(1\\): transformer.layers.1.mlp.proj.weight|the manifest records)"
    with pytest.raises(DeployError, match=missing):
        TrtllmCheckpointRuntime.load(ckpt)


# ---- TensorRT-LLM request inputs: penalties, stop and bad words, min_tokens, log-probs, beams ----

PROMPT = [11, 12, 11, 12, 11, 12]  # greedy continues 903, 771, 903, 406, 903, 406, ...


def _greedy(runtime, **kwargs):
    return runtime.generate_results([GenerationRequest(PROMPT, max_new_tokens=12, **kwargs)])[0]


def test_stop_word_ends_generation_and_stays_in_the_output(runtime):
    base = _greedy(runtime)
    assert base.finish_reason == "length" and len(base.tokens) == 12
    stop = base.tokens[3:5]
    out = _greedy(runtime, stop_words=[[1, 2, 3], stop])
    assert out.finish_reason == "stop_words"
    assert out.tokens == base.tokens[:len(out.tokens)] and out.tokens[-2:] == stop and len(out.tokens) <= 5
    across = _greedy(runtime, stop_words=[[PROMPT[-1], base.tokens[0]]])  # may begin in the prompt
    assert across.tokens == base.tokens[:1] and across.finish_reason == "stop_words"


def test_bad_words_never_appear(runtime):
    base = _greedy(runtime).tokens
    banned = base[0]
    out = _greedy(runtime, bad_words=[[banned]]).tokens
    assert banned in base and banned not in out and len(out) == 12
    pair = base[2:4]
    out = _greedy(runtime, bad_words=[pair]).tokens
    assert out[:3] == base[:3] and not any(out[i:i + 2] == pair for i in range(len(out) - 1))


def test_min_tokens_delays_end_id(runtime):
    base = _greedy(runtime).tokens
    end = base[1]  # 771: first generated second
    stopped = _greedy(runtime, end_id=end)
    assert stopped.tokens == base[:1] and stopped.finish_reason == "end_id"
    delayed = _greedy(runtime, end_id=end, min_tokens=4)
    assert len(delayed.tokens) >= 4 and end not in delayed.tokens[:4] and delayed.tokens[:1] == base[:1]
    assert _greedy(runtime, end_id=end, min_tokens=1).tokens == stopped.tokens  # the default


def test_repetition_penalty_changes_greedy_output_as_computed_by_hand(runtime, tiny_model):
    base = _greedy(runtime).tokens
    out = _greedy(runtime, repetition_penalty=3.0).tokens
    assert len(set(base)) < len(base) and out != base and len(set(out)) == len(out)
    with torch.no_grad():
        ref = tiny_model(torch.tensor([PROMPT + out]), None)[0, len(PROMPT) - 1:-1]  # [12, V]: logits before each token
    for i, logits in enumerate(ref):
        seen = list(set(PROMPT + out[:i]))
        logits = logits.clone()
        logits[seen] = torch.where(logits[seen] < 0, logits[seen] * 3.0, logits[seen] / 3.0)
        assert int(logits.argmax()) == out[i], f"step {i}"


def test_log_probs_sum_to_cum_and_match_the_reference_log_softmax(runtime, tiny_model):
    streamed = []
    (out,) = runtime.generate_results([GenerationRequest(PROMPT, max_new_tokens=12, return_log_probs=True)],
                                      on_token=lambda k, tok, lp: streamed.append((tok, lp)))
    assert out.tokens == _greedy(runtime).tokens and len(out.output_log_probs) == 12
    assert sum(out.output_log_probs) == pytest.approx(out.cum_log_probs, abs=1e-5)
    assert streamed == list(zip(out.tokens, out.output_log_probs))
    with torch.no_grad():
        ref = torch.log_softmax(tiny_model(torch.tensor([PROMPT + out.tokens]), None)[0, len(PROMPT) - 1:-1], -1)
    expected = ref[torch.arange(12), torch.tensor(out.tokens)]
    torch.testing.assert_close(torch.tensor(out.output_log_probs), expected, atol=1e-4, rtol=1e-4)
    assert _greedy(runtime).output_log_probs is None and _greedy(runtime).cum_log_probs is None


def test_log_probs_normalized_and_with_end_id(runtime):
    (plain,) = runtime.generate_results([GenerationRequest(PROMPT, max_new_tokens=12, return_log_probs=True)])
    (norm,) = runtime.generate_results([GenerationRequest(PROMPT, max_new_tokens=12, return_log_probs=True)],
                                       normalize_log_probs=True)
    assert norm.output_log_probs == [0.0] * 12 and norm.cum_log_probs == plain.cum_log_probs  # greedy: top-1
    stopped = _greedy(runtime, end_id=plain.tokens[1], return_log_probs=True)
    assert stopped.tokens == plain.tokens[:1] and stopped.output_log_probs == plain.output_log_probs[:1]
    # cum_log_probs includes the end_id's log-prob (TensorRT-LLM adds it before testing for EOS)
    assert stopped.cum_log_probs == pytest.approx(sum(plain.output_log_probs[:2]), abs=1e-5)


def test_beam_search_is_refused_and_its_settings_are_ignored_with_one_beam(runtime):
    with pytest.raises(DeployError, match="request 1: beam_width 2 is not supported.*--max_beam_width 1"):
        runtime.generate([GenerationRequest([1]), GenerationRequest([1], beam_width=2)])
    with pytest.raises(DeployError, match="request 0: num_return_sequences 3"):
        runtime.generate([GenerationRequest([1], num_return_sequences=3)])
    with pytest.raises(DeployError, match="request 0: stop_words has an empty sequence"):
        runtime.generate([GenerationRequest([1], stop_words=[[]])])
    with pytest.raises(DeployError, match="request 0: temperature must be a finite number"):
        runtime.generate([GenerationRequest([1], temperature=float("nan"))])
    beams = _greedy(runtime, beam_width=1, length_penalty=1.0, early_stopping=0, beam_search_diversity_rate=0.5)
    assert beams.tokens == _greedy(runtime).tokens


# ---- in-flight batching: requests join between steps and leave without moving anyone's cache ----

def test_requests_joining_between_steps_get_the_tokens_they_get_alone(runtime):
    from nvlm_deploy.runtime.decoder import InflightBatch

    requests = [GenerationRequest([5, 6, 7, 8, 9], max_new_tokens=10),
                GenerationRequest([100], max_new_tokens=3),
                GenerationRequest([3, 1, 4, 1, 5, 9, 2, 6], max_new_tokens=6, top_k=5, temperature=0.8, seed=3),
                GenerationRequest([11, 12, 11, 12], max_new_tokens=5, top_p=0.9, seed=5, repetition_penalty=1.5)]
    alone = [runtime.generate([r])[0] for r in requests]
    batch = InflightBatch(runtime, slots=2, max_len=32)
    cache_storage = [keys.data_ptr() for keys, _ in batch.cache]
    first = batch.add(requests[0])
    batch.step()
    second = batch.add(requests[1])  # joins a running batch
    assert not batch.has_room
    finished, steps = [], 0
    while second not in finished:
        finished += batch.step()
        steps += 1
    assert steps == 2 and first.slot == 0 and second.slot is None  # the short one left; the long one stayed put
    third = batch.add(requests[2])  # takes the freed slot
    assert third.slot == 1
    fourth = None
    while batch.active or fourth is None:
        batch.step()
        if fourth is None and batch.has_room:
            fourth = batch.add(requests[3])
    assert [s.result.tokens for s in (first, second, third, fourth)] == alone
    assert [keys.data_ptr() for keys, _ in batch.cache] == cache_storage  # never reallocated or compacted


def test_a_removed_request_frees_its_slot_and_the_others_go_on(runtime):
    from nvlm_deploy.runtime.decoder import InflightBatch

    long = GenerationRequest([5, 6, 7, 8, 9], max_new_tokens=10)
    batch = InflightBatch(runtime, slots=2, max_len=32)
    a, b = batch.add(long), batch.add(GenerationRequest([100], max_new_tokens=10))
    batch.step()
    batch.remove(a)  # cancelled: slot 0 is free, b keeps slot 1
    assert batch.has_room and b.slot == 1 and batch.active == [b]
    c = batch.add(long)
    while batch.active:
        batch.step()
    assert c.result.tokens == runtime.generate([long])[0] and b.result.tokens == runtime.generate(
        [GenerationRequest([100], max_new_tokens=10)])[0]
    with pytest.raises(DeployError, match="exceeds the batch's 32 cache positions"):
        batch.add(GenerationRequest([1] * 30, max_new_tokens=5))


def test_end_and_pad_ids_outside_the_vocabulary_are_refused(runtime):
    with pytest.raises(DeployError, match="request 0: end_id 5000 is outside the vocabulary \\[0, 1030\\)"):
        runtime.generate([GenerationRequest([1], end_id=5000)])
    with pytest.raises(DeployError, match="pad_id 1030 is outside the vocabulary"):
        runtime.generate([GenerationRequest([1], pad_id=1030)])
