"""Tensor- and pipeline-parallel splits of a Qwen2 decoder, as TensorRT-LLM lays them out.

Facts (shared/reference/tensorrt-llm.md §3): splits are `torch.chunk`; with GQA and fewer KV heads
than tp, KV heads are replicated first; q, k and v are chunked separately and concatenated per rank
(bias the same way); row-parallel weights split along dim 1, column-parallel along dim 0; lm_head
is zero-padded to a multiple of tp; pipeline ranks own contiguous layer ranges, the first ranks one
layer more when the count does not divide (TensorRT-LLM's `Mapping.pp_layers`, `tensor_split`).
Every function works on meta tensors too, so output shapes are known before any data is read.
"""

from __future__ import annotations

import torch

from nvlm_deploy.errors import DeployError

SPLITS = ("qkv", "column", "row", "vocab", "replicate")


def check_tp(*, num_heads: int, num_kv_heads: int, tp: int, intermediate_size: int | None = None) -> None:
    """Raise a DeployError when `tp` cannot split these attention heads (lists the values that can)."""
    if tp < 1:
        raise DeployError(f"--tp must be at least 1, got {tp}.")
    ok = valid_tp_sizes(num_heads=num_heads, num_kv_heads=num_kv_heads, intermediate_size=intermediate_size)
    if tp not in ok:
        raise DeployError(
            f"--tp {tp} does not divide the decoder's attention heads ({num_heads} query heads, "
            f"{num_kv_heads} key/value heads"
            + (f", intermediate size {intermediate_size}" if intermediate_size else "") + "). "
            f"tp must divide the query heads, and the KV heads must divide by tp or tp by the KV heads. "
            f"Values that work: {ok}.")


def valid_tp_sizes(*, num_heads: int, num_kv_heads: int, intermediate_size: int | None = None) -> list[int]:
    """Every tp that splits the heads (and the MLP width) evenly."""
    out = []
    for tp in range(1, num_heads + 1):
        kv_ok = num_kv_heads % tp == 0 if num_kv_heads >= tp else tp % num_kv_heads == 0
        mlp_ok = intermediate_size is None or intermediate_size % tp == 0
        if num_heads % tp == 0 and kv_ok and mlp_ok:
            out.append(tp)
    return out


def check_pp(*, num_layers: int, pp: int) -> None:
    if pp < 1 or pp > num_layers:
        raise DeployError(f"--pp {pp} is not possible for a decoder with {num_layers} layers: "
                          f"every pipeline rank needs at least one layer; choose --pp between 1 and {num_layers}.")


def pp_layer_range(num_layers: int, *, pp: int, pp_rank: int) -> range:
    """Layers of one pipeline rank; with a remainder n, the first n ranks get one more layer."""
    base, extra = divmod(num_layers, pp)
    start = pp_rank * base + min(pp_rank, extra)
    return range(start, start + base + (1 if pp_rank < extra else 0))


def chunk(t: torch.Tensor, *, tp: int, rank: int, dim: int) -> torch.Tensor:
    """Rank's part of `t` along `dim` (torch.chunk; the size must divide by tp)."""
    if t.shape[dim] % tp:
        raise DeployError(f"cannot split a dimension of size {t.shape[dim]} (shape {tuple(t.shape)}) "
                          f"into {tp} equal tensor-parallel parts.")
    return t.chunk(tp, dim=dim)[rank]


def column_split(t: torch.Tensor, *, tp: int, rank: int) -> torch.Tensor:
    """Column-parallel linear [out, in]: output rows split."""
    return chunk(t, tp=tp, rank=rank, dim=0)


def row_split(t: torch.Tensor, *, tp: int, rank: int) -> torch.Tensor:
    """Row-parallel linear [out, in]: input columns split."""
    return chunk(t, tp=tp, rank=rank, dim=1)


def duplicate_kv_heads(t: torch.Tensor, *, num_kv_heads: int, tp: int) -> torch.Tensor:
    """[kv*hd, ...] -> [tp*hd, ...] repeating each KV head tp/kv times when kv < tp, else unchanged."""
    if num_kv_heads >= tp:
        return t
    reps = tp // num_kv_heads
    head_dim = t.shape[0] // num_kv_heads
    heads = t.reshape(num_kv_heads, head_dim, *t.shape[1:])  # [kv, hd, ...]
    return heads.repeat_interleave(reps, dim=0).reshape(tp * head_dim, *t.shape[1:])


def fused_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_kv_heads: int,
              tp: int, rank: int) -> torch.Tensor:
    """Rank's qkv: cat(q_r, k_r, v_r) along dim 0 (weights [out, hidden] or biases [out])."""
    k = duplicate_kv_heads(k, num_kv_heads=num_kv_heads, tp=tp)
    v = duplicate_kv_heads(v, num_kv_heads=num_kv_heads, tp=tp)
    return torch.cat([chunk(x, tp=tp, rank=rank, dim=0) for x in (q, k, v)], dim=0)


def padded_vocab(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp) * tp


def pad_vocab(t: torch.Tensor, *, tp: int) -> torch.Tensor:
    """[vocab, hidden] -> [vocab padded to a multiple of tp, hidden], zero rows appended."""
    rows = padded_vocab(t.shape[0], tp)
    if rows == t.shape[0]:
        return t
    pad = torch.zeros(rows - t.shape[0], *t.shape[1:], dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=0)


def vocab_split(t: torch.Tensor, *, tp: int, rank: int) -> torch.Tensor:
    """lm_head: pad the vocabulary to a multiple of tp, then split rows."""
    return chunk(pad_vocab(t, tp=tp), tp=tp, rank=rank, dim=0)


def rank_piece(split: str, sources: list[torch.Tensor], *, tp: int, rank: int, num_kv_heads: int) -> torch.Tensor:
    """The tensor one tp rank stores for a target of this split kind (llm_names.SPLITS)."""
    if split == "qkv":
        return fused_qkv(*sources, num_kv_heads=num_kv_heads, tp=tp, rank=rank)
    (t,) = sources
    return SPLIT_FUNCTIONS[split](t, tp=tp, rank=rank)


SPLIT_FUNCTIONS = {
    "column": column_split,
    "row": row_split,
    "vocab": vocab_split,
    "replicate": lambda t, *, tp, rank: t,
}


# ---- inverse: rank pieces back to the full (tp 1) tensor, for the runtime and the checks ----

def merge_pieces(split: str, pieces: list[torch.Tensor], *, num_heads: int, num_kv_heads: int,
                 vocab_size: int | None = None) -> torch.Tensor:
    """Undo `rank_piece` over all tp ranks (ranks in order)."""
    if split == "qkv":
        return _merge_qkv(pieces, num_heads=num_heads, num_kv_heads=num_kv_heads)
    if split == "replicate":
        return pieces[0]
    if split == "row":
        return torch.cat(pieces, dim=1)
    if split not in ("column", "vocab"):
        raise DeployError(f"unknown split kind {split!r}; expected one of {SPLITS}.")
    full = torch.cat(pieces, dim=0)
    return full[:vocab_size] if split == "vocab" and vocab_size is not None else full


def _merge_qkv(pieces: list[torch.Tensor], *, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    tp = len(pieces)
    kv_per_rank = max(num_kv_heads // tp, 1)
    rows = pieces[0].shape[0]
    head_dim = rows // (num_heads // tp + 2 * kv_per_rank)
    q_rows, kv_rows = num_heads // tp * head_dim, kv_per_rank * head_dim
    qs, ks, vs = [], [], []
    # With duplicated KV heads, ranks r*reps .. r*reps+reps-1 hold copies of KV head r: keep one.
    reps = tp // num_kv_heads if num_kv_heads < tp else 1
    for rank, p in enumerate(pieces):
        q, k, v = p.split([q_rows, kv_rows, kv_rows], dim=0)
        qs.append(q)
        if rank % reps == 0:
            ks.append(k)
            vs.append(v)
    return torch.cat([torch.cat(qs), torch.cat(ks), torch.cat(vs)], dim=0)
