"""The CPU decoder runtime over TensorRT-LLM checkpoints against the PyTorch reference model."""

import numpy as np
import pytest
import torch

from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint
from nvlm_deploy.errors import DeployError
from nvlm_deploy.model.generate import greedy_generate
from nvlm_deploy.runtime.decoder import GenerationRequest, TrtllmCheckpointRuntime
from nvlm_deploy.runtime.sampling import SamplingParams, filter_top_k, filter_top_p, sample_next
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
                GenerationRequest([3, 1, 4, 1, 5, 9, 2, 6], max_new_tokens=4, top_k=5, temperature=0.8, seed=3)]
    alone = [runtime.generate([r])[0] for r in requests]
    streamed = []
    together = runtime.generate(requests, on_token=lambda k, tok: streamed.append((k, tok)))
    assert together == alone
    assert [len(t) for t in together] == [6, 9, 4]
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
    missing = "(?s)rank1.safetensors.*Missing \\(1\\): transformer.layers.1.mlp.proj.weight"
    with pytest.raises(DeployError, match=missing):
        TrtllmCheckpointRuntime.load(ckpt)


def test_top_k_and_top_p_filters():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [True, False, False, True]
    probs = torch.softmax(logits, 0)  # [0.087, 0.644, 0.237, 0.032]
    kept = ~torch.isinf(filter_top_p(logits, 0.7))
    assert kept.tolist() == [False, True, True, False] and probs[1] < 0.7
    assert (~torch.isinf(filter_top_p(logits, 0.5))).tolist() == [False, True, False, False]
    assert sample_next(logits, SamplingParams(), None) == 1
    with pytest.raises(DeployError, match="temperature"):
        SamplingParams(temperature=0.0, top_k=3)
