"""A TensorRT-LLM checkpoint as a loader finds it: its files as written, its shapes as config.json says.

`verify_checkpoint` runs before any rank file is loaded (`rank_files.load_trtllm_checkpoint`, so the
CPU runtime and every test load): the files against the stage manifest (sizes; digests on request),
each rank file's header against its length (truncation), and every tensor's shape and dtype
against what `config.json` implies (an edited `vocab_size` or `hidden_size` would otherwise load
and give wrong answers). The expected shapes come from the converter's own plan: `piece_specs` runs
the real split code (`trtllm.splits`) on row labels, one int64 per source row, without meta tensors
(whose first torch.cat imports torch._dynamo: seconds in every conversion and every load).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nvlm_deploy.errors import DeployError
from nvlm_deploy.trtllm import names, splits
from nvlm_deploy.trtllm.config import TrtllmConfig
from nvlm_deploy.trtllm.names import PlannedTensor, plan_tensors
from nvlm_deploy.trtllm.safetensors_io import ST_NAMES, ShardReader


def piece_specs(tensors: list[PlannedTensor], reader, layout, *, dtype: torch.dtype,
                num_kv_heads: int) -> list[dict[str, tuple[torch.dtype, tuple[int, ...]]]]:
    """`rank_files.rank_specs` without meta tensors: the real split code runs on one row label per source
    row (every split but "row" works along dim 0) or, for "row", on one row of labels; the other
    dimensions are the source's. Same result (tests/convert), but no torch.cat on meta tensors,
    whose first call imports torch._dynamo (seconds, in every conversion and every load)."""
    specs: list[dict] = [{} for _ in layout.ranks()]
    for planned in tensors:
        shapes = [reader.spec(n)[1] for n in planned.sources]
        for rank in layout.ranks():
            if not layout.holds(rank, planned):
                continue
            if planned.split == "row":
                (shape,) = shapes
                cols = splits.rank_piece("row", [torch.empty(1, shape[1], dtype=torch.int8)], tp=layout.tp,
                                         rank=rank % layout.tp, num_kv_heads=num_kv_heads).shape[1]
                shape = (shape[0], cols)
            else:
                rows = splits.rank_piece(planned.split, row_labels(shapes), tp=layout.tp, rank=rank % layout.tp,
                                         num_kv_heads=num_kv_heads).shape[0]
                shape = (rows, *shapes[0][1:])
            specs[rank][planned.local_name(layout.layers(rank).start)] = (dtype, tuple(shape))
    return specs


def row_labels(shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Per source: int64 [rows, 1, ...] holding k * _SOURCE_STRIDE + row + 1 (0 is left for padding).

    Made by numpy: torch's arange and add run on its intra-op thread pool, whose wake-ups on a busy
    machine cost ~1-2 ms a call (0.19 s of the quick tp 4 conversion's planning, measured 2026-12-01)."""
    import numpy

    return [torch.from_numpy(numpy.arange(k * _SOURCE_STRIDE + 1, k * _SOURCE_STRIDE + 1 + shape[0], dtype=numpy.int64)
                             ).reshape(shape[0], *([1] * (len(shape) - 1))) for k, shape in enumerate(shapes)]


_SOURCE_STRIDE = 1 << 40  # row labels: source k's row i is k * stride + i + 1; 0 marks padding



def hf_decoder_shapes(config: TrtllmConfig) -> dict[str, tuple[int, ...]]:
    """HF Qwen2 decoder tensor name (with `language_model.`) -> shape, for a config's widths."""
    from nvlm_deploy.trtllm.names import expected_hf_names

    hidden, hd = config.hidden_size, config.head_size
    q, kv, inter = config.num_attention_heads * hd, config.num_key_value_heads * hd, config.intermediate_size
    by_suffix = {"embed_tokens.weight": (config.vocab_size, hidden), "norm.weight": (hidden,),
                 "lm_head.weight": (config.vocab_size, hidden),
                 "q_proj.weight": (q, hidden), "k_proj.weight": (kv, hidden), "v_proj.weight": (kv, hidden),
                 "q_proj.bias": (q,), "k_proj.bias": (kv,), "v_proj.bias": (kv,), "o_proj.weight": (hidden, q),
                 "gate_proj.weight": (inter, hidden), "up_proj.weight": (inter, hidden),
                 "down_proj.weight": (hidden, inter), "input_layernorm.weight": (hidden,),
                 "post_attention_layernorm.weight": (hidden,)}
    names = expected_hf_names(num_layers=config.num_hidden_layers, attention_bias=config.attn_bias,
                              tie_word_embeddings=config.tie_word_embeddings)
    return {n: by_suffix[".".join(n.split(".")[-2:])] for n in names}


class _ShapesOnly:
    """What rank_specs asks of a reader, from shapes alone."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype):
        self.shapes, self.dtype = shapes, dtype

    def spec(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        return self.dtype, self.shapes[name]


def expected_rank_specs(config: TrtllmConfig, layout) -> list[dict[str, tuple[torch.dtype, tuple[int, ...]]]]:
    """Per rank: tensor -> (dtype, shape) that config.json implies, by the converter's own split code.

    Args:
        config: the checkpoint's config.
        layout: its `rank_files.RankLayout` (passed in: rank_files imports this module).
    """
    shapes = hf_decoder_shapes(config)
    tensors = plan_tensors(list(shapes), num_layers=config.num_hidden_layers, attention_bias=config.attn_bias,
                           tie_word_embeddings=config.tie_word_embeddings)
    dtype = config.precision.torch_dtype()
    return piece_specs(tensors, _ShapesOnly(shapes, dtype), layout, dtype=dtype,
                       num_kv_heads=config.num_key_value_heads)


# tensors no quantization recipe changes: their shapes are checked on quantized checkpoints too
_NEVER_QUANTIZED = (names.VOCAB_EMBEDDING, names.LN_F, names.INPUT_LAYERNORM, names.POST_LAYERNORM)


def verify_checkpoint(root: str | Path, config: TrtllmConfig, *, layout, rank_file, hashes: bool = False) -> None:
    """Refuse, at load, a checkpoint whose files are not what was written or do not fit config.json.

    Three checks, each a DeployError naming the file and the fix: the files against the manifest
    (sizes always, digests with `hashes`; skipped for a checkpoint written by other tools, which has
    none); every rank file's header against its own length (a truncated file); every tensor's shape
    and dtype against what config.json implies (a vocab_size or hidden_size edited after conversion).

    Args:
        root: the trtllm_checkpoint/ directory.
        config: its config.json, read.
        layout: `rank_files.RankLayout` of the config; rank_file: `rank_files.rank_file` (both passed
            in by rank_files, which imports this module).
        hashes: also compare every file's digest with the manifest.
    """
    from nvlm_deploy.artifacts import MANIFEST
    from nvlm_deploy.contracts.manifest import TrtllmCheckpointManifest, read_manifest, verify_manifest_files

    root = Path(root)
    fix = "re-run `nvlm-deploy convert llm ... --force` to write it again"
    if (root / MANIFEST).is_file():
        manifest = read_manifest(root, TrtllmCheckpointManifest, writer="nvlm-deploy convert llm")
        verify_manifest_files(root, manifest, hashes=hashes, writer="nvlm-deploy convert llm")
    expected = expected_rank_specs(config, layout)
    quantized = config.quantization.quant_algo is not None
    problems = []
    for rank, wanted in enumerate(expected):
        path = root / rank_file(rank)
        if not path.is_file():
            problems.append(f"{path} is missing (config.json's mapping has {len(expected)} ranks)")
            continue
        reader = ShardReader(root, {})
        data_start, header = reader._header(path.name)
        size = path.stat().st_size
        end = max((e["data_offsets"][1] for n, e in header.items() if n != "__metadata__"), default=0)
        if data_start + end > size:
            problems.append(f"{path} is truncated: its header describes {data_start + end} bytes, the file has {size}")
            continue
        for name, (dtype, shape) in wanted.items():
            if quantized and not name.endswith(_NEVER_QUANTIZED):
                continue
            found = header.get(name)
            if found is None:
                problems.append(f"{path} lacks {name}")
            elif tuple(found["shape"]) != shape or (not quantized and found["dtype"] != ST_NAMES[dtype]):
                problems.append(f"{path}: {name} is {found['dtype']} {found['shape']}, but config.json "
                                f"(vocab_size {config.vocab_size}, hidden_size {config.hidden_size}, "
                                f"dtype {config.dtype}, tp {config.tp}) implies {ST_NAMES[dtype]} {list(shape)}")
        if len(problems) > 12:
            break
    if problems:
        raise DeployError(f"{root} cannot be loaded: its files do not fit {root / 'config.json'}:\n  - "
                          + "\n  - ".join(problems[:12]) + f"\nThe config was edited or a file damaged; {fix}.")
