"""Rank files of a TensorRT-LLM checkpoint: which tensors each rank holds, and reading them back.

Writing side: `RankLayout` says which tensors a rank holds (rank = pp_rank * tp + tp_rank; layers
renumbered from 0 per pipeline rank), `rank_specs` computes every rank file's header up front
with the real split code on meta tensors, `verify_rank_files` re-reads what was written.

Reading side: `load_trtllm_checkpoint` returns the tp 1 / pp 1 layout (global layer numbers, full
tensors, lm_head trimmed to vocab_size). Quantized checkpoints (FP8, W4A16_AWQ) are dequantized
rank by rank with each rank's own scales before merging (`quant.emulate.dequantize_rank`); the
per-tensor activation and KV-cache scales stay, for the runtime's FP8 emulation. Replicated tensors must be identical on every rank and
every rank must hold exactly the tensors its place in the mapping calls for, so this is also the
executable check of every checkpoint the converter writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from nvlm_deploy.errors import DeployError
from nvlm_deploy.trtllm import names, splits
from nvlm_deploy.trtllm.config import CONFIG_FILE, TrtllmConfig
from nvlm_deploy.trtllm.names import PlannedTensor
from nvlm_deploy.trtllm.safetensors_io import ST_DTYPES, ShardReader


def rank_file(rank: int) -> str:
    return f"rank{rank}.safetensors"


@dataclasses.dataclass(frozen=True)
class RankLayout:
    """Which tensors a rank holds. TensorRT-LLM: rank = pp_rank * tp + tp_rank."""

    tp: int
    pp: int
    num_layers: int

    def ranks(self) -> range:
        return range(self.tp * self.pp)

    def layers(self, rank: int) -> range:
        return splits.pp_layer_range(self.num_layers, pp=self.pp, pp_rank=rank // self.tp)

    def holds(self, rank: int, target: PlannedTensor) -> bool:
        pp_rank = rank // self.tp
        if target.layer is not None:
            return target.layer in self.layers(rank)
        if target.name == names.VOCAB_EMBEDDING:
            return pp_rank == 0
        return pp_rank == self.pp - 1  # ln_f, lm_head


def rank_specs(targets: list[PlannedTensor], reader: ShardReader, layout: RankLayout, *, dtype: torch.dtype,
               num_kv_heads: int) -> list[dict[str, tuple[torch.dtype, tuple[int, ...]]]]:
    """Per rank: local tensor name -> (dtype, shape), computed on meta tensors by the real split code."""
    specs: list[dict] = [{} for _ in layout.ranks()]
    for target in targets:
        sources = [torch.empty(reader.spec(n)[1], dtype=dtype, device="meta") for n in target.sources]
        for rank in layout.ranks():
            if layout.holds(rank, target):
                piece = splits.rank_piece(target.split, sources, tp=layout.tp, rank=rank % layout.tp,
                                            num_kv_heads=num_kv_heads)
                specs[rank][target.local_name(layout.layers(rank).start)] = (dtype, tuple(piece.shape))
    return specs



def verify_rank_files(directory: Path, specs: list[dict]) -> None:
    """Re-open every rank file with safetensors' own reader; names, dtypes and shapes must match."""
    from safetensors import safe_open

    for rank, expected in enumerate(specs):
        path = directory / rank_file(rank)
        with safe_open(str(path), framework="pt") as f:
            found = {n: (ST_DTYPES[f.get_slice(n).get_dtype()], tuple(f.get_slice(n).get_shape())) for n in f.keys()}
        if found != expected:
            raise AssertionError(f"{path}: written tensors differ from the plan: "
                                 f"{sorted(set(found.items()) ^ set(expected.items()))[:10]}")


def expected_rank_names(config: TrtllmConfig, rank: int) -> set[str]:
    pp_rank = rank // config.tp
    layers = splits.pp_layer_range(config.num_hidden_layers, pp=config.pp, pp_rank=pp_rank)
    suffixes = [s for s, _ in names.LAYER_NAMES.values() if config.attn_bias or s != names.QKV_BIAS]
    expected = {names.layer_tensor(i, suffix) for i in range(len(layers)) for suffix in suffixes}
    if pp_rank == 0:
        expected.add(names.VOCAB_EMBEDDING)
    if pp_rank == config.pp - 1:
        expected |= {names.LN_F, names.LM_HEAD}
    return expected | _expected_quant_names(config, expected, local_layers=range(len(layers)))


def _expected_quant_names(config: TrtllmConfig, expected: set[str], *, local_layers: range) -> set[str]:
    """Scale tensors of a quantized checkpoint (`quant.emulate`); none for an unquantized one."""
    q = config.quantization
    if q.quant_algo is None and q.kv_cache_quant_algo is None:
        return set()
    from nvlm_deploy.quant.emulate import expected_scale_names, quantized_weight_names

    return expected_scale_names(quantized_weight_names(expected, quant_algo=q.quant_algo), quant_algo=q.quant_algo,
                                kv_layers=local_layers, kv_quant_algo=q.kv_cache_quant_algo)


def load_trtllm_checkpoint(checkpoint_dir: str | Path, *, dtype: torch.dtype | None = None
                           ) -> tuple[TrtllmConfig, dict[str, torch.Tensor]]:
    """(config, full tensors by TensorRT-LLM name with global layer numbers).

    Args:
        checkpoint_dir: directory with config.json and rank{N}.safetensors (or the target directory holding it).
        dtype: cast every tensor to this dtype; None keeps the stored dtype.
    """
    from nvlm_deploy.model.checkpoint import check_names

    from nvlm_deploy.contracts.target import Target

    root = Target.of(checkpoint_dir, stage="trtllm_checkpoint").dir("trtllm_checkpoint") \
        if not (Path(checkpoint_dir) / CONFIG_FILE).is_file() else Path(checkpoint_dir)
    config = TrtllmConfig.from_json(root / CONFIG_FILE)
    from nvlm_deploy.trtllm.checkpoint_check import verify_checkpoint

    verify_checkpoint(root, config, layout=RankLayout(tp=config.tp, pp=config.pp, num_layers=config.num_hidden_layers),
                      rank_file=rank_file)  # files as written (manifest sizes), shapes as config.json says
    ranks = [_read_rank(root, r) for r in range(config.tp * config.pp)]
    for r, tensors in enumerate(ranks):
        check_names(expected=expected_rank_names(config, r), found=tensors, where=str(root / rank_file(r)))
    if config.quantization.quant_algo is not None:  # each rank dequantized with its own scales, then merged
        from nvlm_deploy.quant.emulate import dequantize_rank

        ranks = [dequantize_rank(t, quant_algo=config.quantization.quant_algo,
                                 group_size=config.quantization.group_size) for t in ranks]
    merged: dict[str, torch.Tensor] = {}
    for pp_rank in range(config.pp):
        row = ranks[pp_rank * config.tp:(pp_rank + 1) * config.tp]
        first = splits.pp_layer_range(config.num_hidden_layers, pp=config.pp, pp_rank=pp_rank).start
        for local in row[0]:
            pieces = [tensors[local] for tensors in row]
            name, split = _global_name(local, first)
            merged[name] = _merge(name, split, pieces, config, root)
    from nvlm_deploy.quant.emulate import is_scale

    return config, {k: (v.to(dtype) if dtype and not is_scale(k) else v) for k, v in merged.items()}


def _read_rank(root: Path, rank: int) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = root / rank_file(rank)
    if not path.is_file():
        raise DeployError(f"{path} does not exist, but config.json's mapping has {rank + 1}+ ranks: "
                          "the checkpoint is incomplete; re-run `nvlm-deploy convert llm`.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DeployError(f"{path} is not a readable safetensors file ({exc}).") from None


def _global_name(local: str, first_layer: int) -> tuple[str, str]:
    if local in names.SPLIT_OF:
        return local, names.SPLIT_OF[local]
    _, _, layer, suffix = local.split(".", 3)
    # per-tensor scales left after dequantization (activation, KV cache) are the same on every tp rank
    return names.layer_tensor(int(layer) + first_layer, suffix), names.SPLIT_OF.get(suffix, "replicate")


def _merge(name: str, split: str, pieces: list[torch.Tensor], config: TrtllmConfig, root: Path) -> torch.Tensor:
    if split == "replicate" and any(not torch.equal(pieces[0], p) for p in pieces[1:]):
        raise DeployError(f"{root}: {name} should be the same on every tensor-parallel rank but differs.")
    return splits.merge_pieces(split, pieces, num_heads=config.num_attention_heads,
                               num_kv_heads=config.num_key_value_heads,
                                 vocab_size=config.vocab_size)
