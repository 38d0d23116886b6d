"""HF NVLM-D decoder -> TensorRT-LLM checkpoint (`config.json` + `rank{N}.safetensors`), streamed.

Peak memory stays near the largest tensor: source tensors are read one at a time
(`trtllm.safetensors_io.ShardReader`), and each rank file is written tensor by tensor into a header
fixed up front (`trtllm.rank_files.rank_specs` runs the real split code on meta tensors). The files
are then re-read with safetensors' own reader, and layer 0 is merged back and compared with the
source. Names, splits and the config format are `nvlm_deploy.trtllm`'s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nvlm_deploy.config import LlmConfig, NvlmConfig
from nvlm_deploy.contracts.precision import Precision, precision
from nvlm_deploy.trtllm import splits
from nvlm_deploy.trtllm.config import ROTARY_SCALING_REASON, TrtllmConfig
from nvlm_deploy.trtllm.names import HF_PREFIX, PlannedTensor, plan_tensors
from nvlm_deploy.trtllm.rank_files import RankLayout, rank_file, rank_specs, verify_rank_files
from nvlm_deploy.trtllm.safetensors_io import SafetensorsWriter, ShardReader

CHECKPOINT_STAGE = "trtllm_checkpoint"


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
    from nvlm_deploy.artifacts import atomic_output_dir
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
    specs = rank_specs(tensors, reader, layout, dtype=torch_dtype, num_kv_heads=llm.num_key_value_heads)
    target = Target(out_dir)
    target.settle_limits(config, model_dir=model_dir, choices={})
    try:
        with atomic_output_dir(target.dir(CHECKPOINT_STAGE), force=force) as tmp:
            TrtllmConfig.from_llm(llm, tp=tp, pp=pp, precision=prec).write(tmp)
            writers = [SafetensorsWriter(tmp / rank_file(r), specs[r]) for r in layout.ranks()]
            try:
                for planned in progress(tensors, desc=f"convert llm tp{tp} pp{pp}", unit="tensor"):
                    _write_tensor(planned, reader, writers, layout, dtype=torch_dtype,
                                  num_kv_heads=llm.num_key_value_heads)
            finally:
                for w in writers:
                    w.file.close()
            for w in writers:
                w.close()  # checks that every planned tensor was written
            verify_rank_files(tmp, specs)
            checked = check_first_layer(tmp, specs, tensors, reader, layout, dtype=torch_dtype, llm=llm)
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
                  *, dtype: torch.dtype, num_kv_heads: int) -> None:
    sources = [reader.get(n).to(dtype) for n in planned.sources]  # one tensor's sources in memory at a time
    for rank in layout.ranks():
        if layout.holds(rank, planned):
            piece = splits.rank_piece(planned.split, sources, tp=layout.tp, rank=rank % layout.tp,
                                        num_kv_heads=num_kv_heads)
            writers[rank].write(planned.local_name(layout.layers(rank).start), piece)
            del piece


def check_first_layer(directory: Path, specs: list[dict], tensors: list[PlannedTensor], source: ShardReader,
                      layout: RankLayout, *, dtype: torch.dtype, llm: LlmConfig) -> list[str]:
    """Read layer 0 back from the tp ranks, merge the splits, and require equality with the source.

    Layer 0 has every split kind but the vocabulary ones (which the runtime tests cover), at the
    size of one layer, so the check costs little memory even at 72B. Returns the checked names.
    """
    readers = [ShardReader(directory, {n: rank_file(r) for n in specs[r]}) for r in range(layout.tp)]
    checked = []
    try:
        for planned in (t for t in tensors if t.layer == 0):
            name = planned.local_name(0)
            merged = splits.merge_pieces(planned.split, [r.get(name) for r in readers],
                                           num_heads=llm.num_attention_heads,
                                          num_kv_heads=llm.num_key_value_heads)
            expected = torch.cat([source.get(n).to(dtype) for n in planned.sources])
            if not torch.equal(merged, expected):
                same_shape = merged.shape == expected.shape
                diff = (merged.float() - expected.float()).abs().max().item() if same_shape else None
                raise AssertionError(f"{name}: rank files merged back differ from the source "
                                     f"(shapes {tuple(merged.shape)} vs {tuple(expected.shape)}, max diff {diff})")
            checked.append(name)
    finally:
        for r in readers:
            r.close()
    return checked
