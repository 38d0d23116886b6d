"""Tensor/pipeline-parallel splits and their inverses (TensorRT-LLM layout)."""

import pytest
import torch

from nvlm_deploy.trtllm import splits as tp_split
from nvlm_deploy.errors import DeployError


def test_valid_tp_sizes_for_nvlm_d_72b_and_tiny():
    assert tp_split.valid_tp_sizes(num_heads=64, num_kv_heads=8, intermediate_size=29568) == [1, 2, 4, 8, 16, 32, 64]
    assert tp_split.valid_tp_sizes(num_heads=4, num_kv_heads=2) == [1, 2, 4]
    assert tp_split.valid_tp_sizes(num_heads=12, num_kv_heads=4) == [1, 2, 4, 12]  # 3 does not split 4 KV heads


def test_bad_tp_says_which_values_work():
    with pytest.raises(DeployError, match=r"--tp 3 .*Values that work: \[1, 2, 4\]"):
        tp_split.check_tp(num_heads=4, num_kv_heads=2, tp=3)


def test_pp_larger_than_layers_is_refused():
    with pytest.raises(DeployError, match="--pp 3 .* 2 layers"):
        tp_split.check_pp(num_layers=2, pp=3)


@pytest.mark.parametrize("layers,pp", [(2, 2), (5, 2), (80, 3), (7, 7)])
def test_pp_ranges_match_tensorrt_llm_tensor_split(layers, pp):
    ranges = [tp_split.pp_layer_range(layers, pp=pp, pp_rank=r) for r in range(pp)]
    expected = torch.tensor_split(torch.arange(layers), pp)
    assert [list(r) for r in ranges] == [e.tolist() for e in expected]


def test_kv_heads_are_duplicated_when_fewer_than_tp():
    k = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(6, 5)  # 2 heads of dim 3
    dup = tp_split.duplicate_kv_heads(k, num_kv_heads=2, tp=4)
    assert dup.shape == (12, 5)
    assert torch.equal(dup[0:3], k[0:3]) and torch.equal(dup[3:6], k[0:3]) and torch.equal(dup[6:9], k[3:6])
    assert tp_split.duplicate_kv_heads(k, num_kv_heads=2, tp=2) is k


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("bias", [False, True])
def test_qkv_split_then_merge_is_identity(tp, bias):
    heads, kv, hd, hidden = 8, 2, 4, 16
    shape = lambda n: (n * hd,) if bias else (n * hd, hidden)  # noqa: E731
    q, k, v = torch.randn(shape(heads)), torch.randn(shape(kv)), torch.randn(shape(kv))
    pieces = [tp_split.fused_qkv(q, k, v, num_kv_heads=kv, tp=tp, rank=r) for r in range(tp)]
    per_rank_kv = max(kv // tp, 1)
    assert pieces[0].shape[0] == (heads // tp + 2 * per_rank_kv) * hd
    if tp == 4:  # rank 1 holds q heads 2-3 and (duplicated) KV head 0
        assert torch.equal(pieces[1][:2 * hd], q[2 * hd:4 * hd])
        assert torch.equal(pieces[1][2 * hd:3 * hd], k[:hd])
    merged = tp_split.merge_pieces("qkv", pieces, num_heads=heads, num_kv_heads=kv)
    assert torch.equal(merged, torch.cat([q, k, v]))


@pytest.mark.parametrize("split,dim", [("column", 0), ("row", 1)])
def test_linear_splits(split, dim):
    w = torch.randn(8, 12)
    pieces = [tp_split.rank_piece(split, [w], tp=4, rank=r, num_kv_heads=1) for r in range(4)]
    assert pieces[2].shape[dim] == w.shape[dim] // 4
    assert torch.equal(tp_split.merge_pieces(split, pieces, num_heads=4, num_kv_heads=1), w)


def test_lm_head_is_zero_padded_to_a_multiple_of_tp():
    w = torch.randn(1030, 8)
    pieces = [tp_split.vocab_split(w, tp=4, rank=r) for r in range(4)]
    assert [p.shape[0] for p in pieces] == [258] * 4
    assert torch.count_nonzero(pieces[3][-2:]) == 0
    assert torch.equal(tp_split.merge_pieces("vocab", pieces, num_heads=4, num_kv_heads=1, vocab_size=1030), w)


def test_uneven_split_is_an_error_not_a_silent_chunk():
    with pytest.raises(DeployError, match="size 10"):
        tp_split.column_split(torch.zeros(10, 2), tp=4, rank=0)


def test_splits_run_on_meta_tensors_for_shape_planning():
    q = torch.empty(64 * 128, 8192, device="meta")
    k = torch.empty(8 * 128, 8192, device="meta")
    piece = tp_split.fused_qkv(q, k, k, num_kv_heads=8, tp=16, rank=3)
    assert piece.shape == ((4 + 2) * 128, 8192) and piece.device.type == "meta"
    assert tp_split.vocab_split(torch.empty(152064, 8192, device="meta"), tp=4, rank=0).shape == (38016, 8192)
