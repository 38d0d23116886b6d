"""HF NVLM-D decoder -> TensorRT-LLM checkpoint (`config.json` + `rank{N}.safetensors`), streamed.

Peak memory stays near the largest tensor that needs a cast or a column split: source tensors are
read one at a time (`trtllm.safetensors_io.ShardReader`), and each rank file is written tensor by
tensor into a header fixed up front (`trtllm.checkpoint_check.piece_specs` runs the real split code
on row labels). The files are then re-read with safetensors' own reader, and layer 0 of every rank
is compared, bit for bit, with what the split code makes of the source. Names, splits and the
config format are `nvlm_deploy.trtllm`'s.

Speed (benchmarks/llm_convert_speed.py): a piece that is the source's bytes unchanged (same dtype,
whole rows: replicated, row-chunked, fused q/k/v, vocabulary with zero padding) is copied file to
file by the calling thread (`safetensors_io.copy_range_to`: in the kernel where source and rank
file line up in a page, else from a memory map of the source to one file, or through a small
buffer read once for every rank of a replicated tensor); the rest is read, cast and split by a
background thread (its torch operations single-threaded: the cores are busy with copies and
hashes) and written by the hashing lanes (one per rank file), and the layer-0 self-check runs in the
background as soon as layer 0 is written, so all of it overlaps the copies. Every rank file's digest
(BLAKE3) is computed on the way, for the manifest; the replicated embedding, first in every tp
rank's file under the same header, is hashed once and its state handed to the other ranks.

Where a quick tp 1 conversion's time goes (2026-12-01, per-thread CPU, medians of 5 runs on the 2
shared cores): copies 0.43-0.47 s on the main thread, BLAKE3 of the 1.38 GB written 0.38-0.41 s on
the lane, reading + casting q/k/v and the layer-0 self-check 0.24 s on the preparing thread; wall
0.65-0.77 s, of which 0.15 s at the end is the lane finishing the last tensor's hash.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy
import torch

from nvlm_deploy.config import LlmConfig, NvlmConfig
from nvlm_deploy.contracts.precision import Precision, precision
from nvlm_deploy.trtllm import splits
from nvlm_deploy.trtllm.config import ROTARY_SCALING_REASON, TrtllmConfig
from nvlm_deploy.trtllm.names import HF_PREFIX, PlannedTensor, plan_tensors
from nvlm_deploy.trtllm.checkpoint_check import _SOURCE_STRIDE, piece_specs, row_labels
from nvlm_deploy.trtllm.rank_files import RankLayout, rank_file, verify_rank_files
from nvlm_deploy.trtllm.safetensors_io import BackgroundWriter, SafetensorsWriter, ShardReader, SourceRange

CHECKPOINT_STAGE = "trtllm_checkpoint"
WRITE_BUDGET = 1 << 30  # bytes of converted pieces waiting for the writer thread, at most (plus one piece)


def convert_llm_checkpoint(model_dir: str | Path, out_dir: str | Path, *, tp: int = 1, pp: int = 1,
                           dtype: str | Precision = "bf16", force: bool = False) -> Path:
    """Write `<out_dir>/trtllm_checkpoint/{config.json, rank{N}.safetensors, manifest.json}`.

    Args:
        model_dir: HF NVLM-D checkpoint directory.
        out_dir: the target directory (engines/<model>/<target>); this stage owns its trtllm_checkpoint/.
        tp: tensor-parallel ranks; must divide the attention heads.
        pp: pipeline-parallel ranks; at most the number of layers.
        dtype: a precision name: "bf16" (default), "fp16", or "fp32" (exact parity checks).
        force: replace an existing trtllm_checkpoint/.
    """
    from nvlm_deploy.artifacts import atomic_output_dir, fault_point
    from nvlm_deploy.contracts.target import Target
    from nvlm_deploy.model.checkpoint import CheckpointIndex
    from nvlm_deploy.progress import progress

    prec = precision(dtype)
    model_dir = Path(model_dir)
    config = NvlmConfig.from_hf(model_dir)
    llm = config.llm
    splits.check_tp(num_heads=llm.num_attention_heads, num_kv_heads=llm.num_key_value_heads, tp=tp,
                    intermediate_size=llm.intermediate_size)
    splits.check_pp(num_layers=llm.num_hidden_layers, pp=pp)
    index = CheckpointIndex.open(model_dir)
    tensors = plan_tensors(index.names(HF_PREFIX), num_layers=llm.num_hidden_layers,
                           attention_bias=llm.attention_bias, tie_word_embeddings=llm.tie_word_embeddings,
                           where=str(model_dir))
    reader = ShardReader(model_dir, index.weight_map)
    reader.check(sorted({n for t in tensors for n in t.sources}))
    layout = RankLayout(tp=tp, pp=pp, num_layers=llm.num_hidden_layers)
    torch_dtype = prec.torch_dtype()
    specs = piece_specs(tensors, reader, layout, dtype=torch_dtype, num_kv_heads=llm.num_key_value_heads)
    target = Target(out_dir)
    target.settle_limits(config, model_dir=model_dir, choices={})
    try:
        with atomic_output_dir(target.dir(CHECKPOINT_STAGE), force=force) as tmp:
            TrtllmConfig.from_llm(llm, tp=tp, pp=pp, precision=prec).write(tmp)
            writers = [SafetensorsWriter(tmp / rank_file(r), specs[r]) for r in layout.ranks()]
            background = BackgroundWriter(WRITE_BUDGET, lanes=min(layout.tp * layout.pp, os.cpu_count() or 1, 8))
            last_of_layer0 = max(i for i, t in enumerate(tensors) if t.layer == 0)
            try:
                for i, planned in enumerate(progress(tensors, desc=f"convert llm tp{tp} pp{pp}", unit="tensor")):
                    _write_tensor(planned, reader, writers, layout, dtype=torch_dtype,
                                  num_kv_heads=llm.num_key_value_heads, background=background)
                    fault_point("convert-tensor")
                    if i == last_of_layer0:  # checked in the background once the lanes have written it
                        written = background.barrier()

                        def check_when_written() -> list[str]:
                            written.wait()
                            return check_first_layer(tmp, specs, tensors, reader, layout, dtype=torch_dtype, llm=llm)

                        self_check = background.prepare(check_when_written)
                background.close()  # every piece in place; a writing error is raised here, before the check's
                checked = self_check.result()
            finally:
                try:
                    background.close()
                finally:
                    for w in writers:
                        w.file.close()
            for w in writers:
                w.close()  # checks that every planned tensor was written; records size + digest
            verify_rank_files(tmp, specs)
            _write_manifest(tmp, model_dir, layout, prec=prec, llm=llm, checked=checked)
    finally:
        reader.close()
    return target.dir(CHECKPOINT_STAGE)


def _write_manifest(directory: Path, model_dir: Path, layout: RankLayout, *, prec: Precision, llm: LlmConfig,
                    checked: list[str]) -> None:
    from nvlm_deploy.artifacts import input_hashes
    from nvlm_deploy.contracts.manifest import TrtllmCheckpointManifest, tool_versions, write_manifest

    ranks = {f"rank{r}": {"tp_rank": r % layout.tp, "pp_rank": r // layout.tp,
                          "layers": [layout.layers(r).start, layout.layers(r).stop]} for r in layout.ranks()}
    write_manifest(directory, TrtllmCheckpointManifest(
        model_dir=str(model_dir.resolve()), input_hashes=input_hashes(model_dir), precision=prec.name,
        tp=layout.tp, pp=layout.pp, world_size=layout.tp * layout.pp, ranks=ranks, rotary_scaling=None,
        rotary_scaling_reason=ROTARY_SCALING_REASON, source_rope_scaling=llm.rope_scaling, self_check=checked,
        tools=tool_versions("torch", "safetensors")))


def _write_tensor(planned: PlannedTensor, reader: ShardReader, writers: list[SafetensorsWriter], layout: RankLayout,
                  *, dtype: torch.dtype, num_kv_heads: int, background: BackgroundWriter | None = None) -> None:
    """Every rank's piece of one target tensor: file-to-file copies where the bytes pass through unchanged,
    else read + cast + split (one tensor's sources in memory at a time) and written, in the background
    when there is one (the preparing thread cuts, each rank's lane writes and hashes its piece)."""
    holders = [r for r in layout.ranks() if layout.holds(r, planned)]
    run = background.submit if background else (lambda nbytes, job, lane=0, always=False: job())
    copies = {r: passthrough_ranges(planned, reader, layout, rank=r, dtype=dtype, num_kv_heads=num_kv_heads)
              for r in holders}
    if all(ranges is not None for ranges in copies.values()):
        # Chunk by chunk, every rank in turn: a replicated chunk is read from disk once and is still in
        # the page cache when it is hashed; the hashing lanes lag the copies by at most the budget.
        chunked = {r: chunk_ranges(ranges, COPY_CHUNK) for r, ranges in copies.items()}
        for i in range(max(len(c) for c in chunked.values())):
            same: dict[tuple, list[int]] = {}  # ranks given the same bytes (replicated): read once for all
            for rank, chunks in chunked.items():
                if i < len(chunks):
                    same.setdefault((chunks[i][0], tuple(chunks[i][1]), i == len(chunks) - 1), []).append(rank)
            for (start, part, last), ranks in same.items():
                part, names = list(part), {r: planned.local_name(layout.layers(r).start) for r in ranks}
                others = [(writers[r], names[r]) for r in ranks[1:]]
                writers[ranks[0]].copy(names[ranks[0]], part, reader.fileno, start=start, whole=last, also=others)
                # one lane per file (its hash is a stream); a replicated chunk is hashed once where the
                # files' hashes are in the same state (`hash_jobs`), the first rank's job submitted first
                jobs = writers[ranks[0]].hash_jobs(names[ranks[0]], part, reader.fileno, start=start, also=others)
                for rank, (job, always) in zip(ranks, jobs):
                    run(sum(r.nbytes for r in part), job, lane=rank, always=always)
        return

    def cut() -> dict[int, torch.Tensor]:
        sources = [reader.get(n).to(dtype) for n in planned.sources]
        return {rank: splits.rank_piece(planned.split, sources, tp=layout.tp, rank=rank % layout.tp,
                                        num_kv_heads=num_kv_heads).contiguous() for rank in holders}

    if background is None:
        for rank, piece in cut().items():
            writers[rank].write(planned.local_name(layout.layers(rank).start), piece)
        return
    background.wait_room(sum(reader.location(n)[2] for n in planned.sources))  # before the sources are read
    pieces = background.prepare(cut)
    for rank in holders:
        name = planned.local_name(layout.layers(rank).start)
        piece_dtype, shape = writers[rank].specs[name]
        nbytes = torch.Size(shape).numel() * torch.empty(0, dtype=piece_dtype).element_size()
        # each lane takes its rank's piece out of the result, so it is freed once written
        run(nbytes, lambda w=writers[rank], n=name, r=rank: w.write(n, pieces.result().pop(r)), lane=rank)


COPY_CHUNK = 64 << 20  # bytes per copy call and hashing job


def chunk_ranges(ranges: list[SourceRange], size: int) -> list[tuple[int, list[SourceRange]]]:
    """`ranges` cut into consecutive groups of at most `size` bytes: (byte offset in the tensor, ranges)."""
    out: list[tuple[int, list[SourceRange]]] = []
    at, group, room = 0, [], size
    start = 0
    for r in ranges:
        offset, left = r.offset, r.nbytes
        while left:
            n = min(left, room)
            group.append(SourceRange(r.path, offset if r.path is not None else 0, n))
            offset, left, room, at = offset + n, left - n, room - n, at + n
            if room == 0:
                out.append((start, group))
                start, group, room = at, [], size
    if group or not out:
        out.append((start, group))
    return out


def passthrough_ranges(planned: PlannedTensor, reader: ShardReader, layout: RankLayout, *, rank: int,
                       dtype: torch.dtype, num_kv_heads: int) -> list[SourceRange] | None:
    """The source byte ranges that make up `rank`'s piece unchanged, or None when it needs a cast or a
    column split.

    The real split code runs on row labels (one int64 per source row), so whatever it does along
    dim 0 (chunk, q/k/v fusion, KV-head duplication, vocabulary padding) is followed exactly;
    consecutive labels become one byte range.
    """
    specs = [reader.spec(n) for n in planned.sources]
    if any(d != dtype for d, _ in specs) or (planned.split == "row" and layout.tp > 1):
        return None
    piece = splits.rank_piece(planned.split, row_labels([shape for _, shape in specs]), tp=layout.tp,
                              rank=rank % layout.tp,
                              num_kv_heads=num_kv_heads).reshape(-1)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    row_bytes = [torch.Size(shape[1:]).numel() * itemsize for _, shape in specs]
    where = [reader.location(n) for n in planned.sources]
    ranges: list[SourceRange] = []
    values = piece.numpy()
    # a run continues where the label is the previous one + 1 (the next source row) or both are padding
    goes_on = ((values[1:] == values[:-1] + 1) & (values[:-1] != 0)) | ((values[1:] == 0) & (values[:-1] == 0))
    starts = [0, *(numpy.flatnonzero(~goes_on) + 1).tolist()]
    for start, stop in zip(starts, [*starts[1:], len(values)]):
        first, rows = int(values[start]), stop - start
        if first == 0:
            ranges.append(SourceRange(None, 0, rows * row_bytes[0]))
        else:
            k, row = divmod(first - 1, _SOURCE_STRIDE)
            path, offset, _ = where[k]
            ranges.append(SourceRange(path, offset + row * row_bytes[k], rows * row_bytes[k]))
    return ranges


def check_first_layer(directory: Path, specs: list[dict], tensors: list[PlannedTensor], source: ShardReader,
                      layout: RankLayout, *, dtype: torch.dtype, llm: LlmConfig) -> list[str]:
    """Read layer 0 back from every tp rank and require each piece to be, bit for bit, what the real
    split code makes of the source (cast to `dtype`).

    Layer 0 has every split kind but the vocabulary ones (which the runtime tests cover), at the
    size of one layer, so the check costs little memory even at 72B. Every rank's piece is compared
    (duplicated KV heads included), as raw bytes: no merge copies, and -0.0 / NaN payloads count.
    Returns the checked names.
    """
    readers = [ShardReader(directory, {n: rank_file(r) for n in specs[r]}) for r in range(layout.tp)]
    checked = []
    try:
        for planned in (t for t in tensors if t.layer == 0):
            name = planned.local_name(0)
            sources = [source.get(n).to(dtype) for n in planned.sources]
            for rank, reader in enumerate(readers):
                written = reader.get(name)
                expected = splits.rank_piece(planned.split, sources, tp=layout.tp, rank=rank,
                                             num_kv_heads=llm.num_key_value_heads)
                if written.shape != expected.shape or not torch.equal(_raw(written), _raw(expected)):
                    same_shape = written.shape == expected.shape
                    diff = (written.float() - expected.float()).abs().max().item() if same_shape else None
                    raise AssertionError(f"{rank_file(rank)}:{name}: the written piece differs from the source's "
                                         f"(shapes {tuple(written.shape)} vs {tuple(expected.shape)}, max diff {diff})")
            checked.append(name)
    finally:
        for r in readers:
            r.close()
    return checked


def _raw(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as integers (bitwise comparison, elementwise speed): 8 bytes at a time where
    they divide evenly (2.5x faster than 2 here, on one thread), else the element's width."""
    flat = t.contiguous().reshape(-1).view(torch.uint8)
    for ints, width in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if width >= t.element_size() and flat.numel() % width == 0 and flat.storage_offset() % width == 0:
            return flat.view(ints)
    return flat
