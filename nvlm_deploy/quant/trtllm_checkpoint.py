"""Write a quantized TensorRT-LLM checkpoint through the project's name table, splits and writer.

Unquantized tensors (embedding, norms, biases, lm_head) go exactly as `convert llm` writes them.
Each quantized linear stores, per rank (layouts: `quant.formats`, docs/quantization-formats.md):

| recipe | `<linear>.weight` | `weights_scaling_factor` | other |
|---|---|---|---|
| FP8 | e4m3 bytes as int8, split like the weight | [1] fp32, replicated | `activation_scaling_factor` [1] fp32 |
| W4A16_AWQ | int8 [N_r/2, K_r] packed | [N_r, K_r/G] model dtype, split like the weight | `prequant_scaling_factor` [K_r] model dtype |

Splits are done on the unpacked int4 values and on the scale rows/columns with the same split
functions as the float weights (scale row j belongs to weight row j; scale column g to the weight
columns of group g), then each rank's piece is packed. `attention.kv_cache_scaling_factor` [1]
fp32 is replicated on every rank of its layer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from nvlm_deploy.quant import formats
from nvlm_deploy.quant.linears import CalibratedDecoder
from nvlm_deploy.trtllm import names, splits
from nvlm_deploy.trtllm.names import PlannedTensor
from nvlm_deploy.trtllm.rank_files import RankLayout, rank_file, verify_rank_files
from nvlm_deploy.trtllm.safetensors_io import SafetensorsWriter


def rank_tensors(targets: list[PlannedTensor], source, decoder: CalibratedDecoder, layout: RankLayout, *,
                 dtype: torch.dtype, num_kv_heads: int, int4: bool, group_size: int) -> list[dict[str, torch.Tensor]]:
    """Every rank's tensors by local name.

    Args:
        targets: the name table's plan (`names.plan_tensors`).
        source: callable HF name -> float tensor, for tensors that are not calibrated linears.
        decoder: the calibrated linears and KV scales.
        layout: tp / pp layout.
        dtype: the checkpoint's model dtype.
        num_kv_heads: for the qkv split.
        int4: W4A16_AWQ layout (else FP8).
        group_size: int4 group size.
    """
    out: list[dict[str, torch.Tensor]] = [{} for _ in layout.ranks()]
    for target in targets:
        quantized = target.sources[0] in decoder.linears
        for rank in layout.ranks():
            if not layout.holds(rank, target):
                continue
            local = target.local_name(layout.layers(rank).start)
            tp_rank = rank % layout.tp

            def piece(tensors, split=target.split):
                return splits.rank_piece(split, tensors, tp=layout.tp, rank=tp_rank, num_kv_heads=num_kv_heads)

            if not quantized:
                out[rank][local] = piece([source(n).to(dtype) for n in target.sources])
                continue
            lins = [decoder.linears[n] for n in target.sources]
            if int4:
                values = [lin.stored_values(int4=True, group_size=group_size) for lin in lins]
                out[rank][local] = formats.pack_int4(piece(values))
                out[rank][names.scale_name(local, names.WEIGHTS_SCALING_FACTOR)] = \
                    piece([lin.weight_scale for lin in lins]).to(dtype)
                pqs = lins[0].pre_quant_scale  # fused parts share it (preprocess_linear_fusion)
                pqs_piece = splits.chunk(pqs, tp=layout.tp, rank=tp_rank, dim=0) if target.split == "row" else pqs
                out[rank][names.scale_name(local, names.PREQUANT_SCALING_FACTOR)] = pqs_piece.to(dtype).contiguous()
            else:
                scale = torch.stack([lin.weight_scale for lin in lins]).max()
                act = torch.stack([lin.activation_scale for lin in lins]).max()
                # fused parts quantize with one scale, the max; compacted parts were quantized with their own,
                # which is that max after modelopt's preprocess_linear_fusion (checked, not assumed)
                if any(lin.values is not None for lin in lins) and not scale.is_meta and \
                        not all(torch.equal(lin.weight_scale.reshape(()), scale) for lin in lins):
                    raise ValueError(f"{target.name}: compacted FP8 parts {target.sources} have different weight scales")
                values = [(formats.fp8_quantize(lin.weight, scale) if lin.values is None else lin.values).view(torch.int8)
                          for lin in lins]
                out[rank][local] = piece(values).contiguous()
                out[rank][names.scale_name(local, names.WEIGHTS_SCALING_FACTOR)] = scale.reshape(1).float()
                out[rank][names.scale_name(local, names.ACTIVATION_SCALING_FACTOR)] = act.reshape(1).float()
    for layer, scale in decoder.kv_scales.items():
        for rank in layout.ranks():
            layers = layout.layers(rank)
            if layer in layers:
                local = names.layer_tensor(layer - layers.start, names.KV_CACHE_SCALING_FACTOR)
                out[rank][local] = scale.reshape(1).float()
    return out


def padded_mlp_width(llm, options) -> int:
    """The MLP width the checkpoint holds: zero-padded for int4 with tp > 1 so each rank holds whole groups."""
    from nvlm_deploy.quant.recipes import padded_intermediate, recipe

    if recipe(options.recipe).int4 and options.tp > 1:
        return padded_intermediate(llm.intermediate_size, group_size=options.group_size, tp=options.tp)
    return llm.intermediate_size


def checkpoint_config(llm, options, *, padded: int, dtype):
    """The quantized checkpoint's TrtllmConfig: the decoder's, with the padded MLP width and the recipe's QuantConfig."""
    from nvlm_deploy.quant.recipes import recipe
    from nvlm_deploy.trtllm.config import TrtllmConfig

    config = TrtllmConfig.from_llm(llm, tp=options.tp, pp=options.pp, precision=dtype)
    return dataclasses.replace(config, intermediate_size=padded, quantization=recipe(options.recipe).quant_config(
        group_size=options.group_size, kv_cache=options.kv_cache))


def write_rank_files(directory: Path, tensors: list[dict[str, torch.Tensor]]) -> None:
    """Write rank{N}.safetensors with the project's writer, then re-read them with safetensors' reader."""
    specs = []
    for rank, rank_tensors_ in enumerate(tensors):
        spec = {name: (t.dtype, tuple(t.shape)) for name, t in rank_tensors_.items()}
        writer = SafetensorsWriter(directory / rank_file(rank), spec)
        try:
            for name, t in rank_tensors_.items():
                writer.write(name, t.contiguous())
        finally:
            writer.file.close()
        writer.close()
        specs.append(spec)
    verify_rank_files(directory, specs)


class StreamingRankFiles:
    """Every rank file open at once, headers planned up front, tensors written as their layer is ready.

    Layer-by-layer calibration hands each finished layer here, so no finished layer stays in memory.
    The files are byte for byte what `write_rank_files` writes for the same tensors: the same order
    (`names.plan_tensors`' file order, KV scales last), written in that order so every file is
    hashed on the way out.
    """

    def __init__(self, directory: Path, targets: list[PlannedTensor], source, layout: RankLayout, *, shape,
                 plan: CalibratedDecoder, dtype: torch.dtype, num_kv_heads: int, int4: bool, group_size: int):
        """`source` as `rank_tensors`'; `shape`: HF name -> its shape (read from the header, no data);
        `plan`: a decoder of meta tensors with the real shapes (`linears.meta_decoder`)."""
        self.directory, self.targets, self.source, self.layout = directory, targets, source, layout
        self.kw = dict(dtype=dtype, num_kv_heads=num_kv_heads, int4=int4, group_size=group_size)
        meta_source = lambda name: torch.empty(shape(name), device="meta")  # noqa: E731 (shapes only)
        self.specs = [{n: (t.dtype, tuple(t.shape)) for n, t in planned.items()}
                      for planned in rank_tensors(targets, meta_source, plan, layout, **self.kw)]
        self.writers = [SafetensorsWriter(directory / rank_file(r), spec) for r, spec in enumerate(self.specs)]
        self.kv_scales: dict[int, torch.Tensor] = {}
        first_layer = next(i for i, t in enumerate(targets) if t.layer is not None)
        self._write(targets[:first_layer], CalibratedDecoder({}, {}))  # the embedding: file order puts it first

    def add_layer(self, layer: int, decoder: CalibratedDecoder) -> None:
        """Write one calibrated layer's tensors on every rank that holds it (layers must come in order)."""
        self._write([t for t in self.targets if t.layer == layer], CalibratedDecoder(decoder.linears, {}))
        self.kv_scales.update(decoder.kv_scales)

    def finish(self) -> list[dict]:
        """Write ln_f, lm_head and the KV scales, close and re-read every file; returns the specs."""
        last_layer = max(i for i, t in enumerate(self.targets) if t.layer is not None)
        self._write(self.targets[last_layer + 1:], CalibratedDecoder({}, self.kv_scales))
        for writer in self.writers:
            writer.close()
        verify_rank_files(self.directory, self.specs)
        return self.specs

    def abort(self) -> None:
        for writer in self.writers:
            writer.file.close()

    def _write(self, targets: list[PlannedTensor], decoder: CalibratedDecoder) -> None:
        tensors = rank_tensors(targets, self.source, decoder, self.layout, **self.kw)
        for writer, rank_tensors_ in zip(self.writers, tensors):
            for name, t in rank_tensors_.items():
                writer.write(name, t.contiguous())
