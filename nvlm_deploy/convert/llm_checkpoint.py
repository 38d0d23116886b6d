"""HF NVLM-D decoder -> TensorRT-LLM checkpoint (`config.json` + `rank{N}.safetensors`), streamed.

Peak memory stays near the largest tensor: source tensors are read one at a time with plain
positioned reads (pages of a memory map would stay resident and count against the process), and
each rank file is written in the safetensors format directly — header first (every output shape
is known up front by running the same split functions on meta tensors), then each tensor's bytes
at its offset as soon as it is ready. `safetensors.safe_open` re-reads every file as the check.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import torch

from nvlm_deploy.config import LlmConfig, NvlmConfig
from nvlm_deploy.convert import tp_split
from nvlm_deploy.convert.llm_names import HF_PREFIX, Target, plan_tensors
from nvlm_deploy.errors import DeployError

CHECKPOINT_DIR = "trtllm_checkpoint"
# --dtype -> (torch dtype, TensorRT-LLM config dtype). fp32 is for exact parity checks only.
DTYPES = {"bf16": (torch.bfloat16, "bfloat16"), "fp16": (torch.float16, "float16"),
          "fp32": (torch.float32, "float32")}
ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
             "U8": torch.uint8, "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
# Why rotary_scaling is null: the numerical reference (HF NVLM-D, transformers Qwen2) applies plain
# RoPE with rope_theta and ignores the checkpoint's {"type": "dynamic", "factor": 3.0} below
# max_position_embeddings (32768); null is TensorRT-LLM's plain RoPE, which reproduces that exactly.
ROTARY_SCALING_REASON = ("null = plain RoPE (theta = rotary_base), as the HF NVLM-D reference computes "
                         "below max_position_embeddings; the HF rope_scaling entry is not applied there")


def trtllm_config(llm: LlmConfig, *, tp: int, pp: int, dtype: str) -> dict:
    """TensorRT-LLM `config.json` of a Qwen2 decoder (PretrainedConfig + QWenConfig fields, §3)."""
    return {
        "architecture": "Qwen2ForCausalLM",
        "dtype": DTYPES[dtype][1],
        "vocab_size": llm.vocab_size,  # unpadded; lm_head rows are padded to a multiple of tp
        "hidden_size": llm.hidden_size,
        "num_hidden_layers": llm.num_hidden_layers,
        "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_key_value_heads,
        "head_size": llm.head_dim,
        "intermediate_size": llm.intermediate_size,
        "hidden_act": llm.hidden_act,
        "logits_dtype": "float32",
        "norm_epsilon": llm.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": llm.max_position_embeddings,
        "rotary_embedding_dim": llm.head_dim,
        "rotary_base": llm.rope_theta,
        "rotary_scaling": None,  # see ROTARY_SCALING_REASON
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "qk_layernorm": False,
        "mlp_bias": False,
        "attn_bias": llm.attention_bias,
        "disable_weight_only_quant_plugin": False,
        "use_logn_attn": False,
        "moe": {"num_experts": 0, "top_k": 0, "shared_expert_intermediate_size": 0},
        "moe_intermediate_size": 0,
        "moe_shared_expert_intermediate_size": 0,
        "seq_length": llm.max_position_embeddings,
        "qwen_type": "qwen2",
        "num_labels": 1,
        "tie_word_embeddings": llm.tie_word_embeddings,
        "mapping": {"world_size": tp * pp, "gpus_per_node": 8, "cp_size": 1, "tp_size": tp, "pp_size": pp,
                    "moe_tp_size": tp, "moe_ep_size": 1},
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None, "group_size": 128,
                         "smoothquant_val": 0.5, "clamp_val": None, "use_meta_recipe": False,
                         "has_zero_point": False, "pre_quant_scale": False, "exclude_modules": None},
    }


class ShardReader:
    """Reads single tensors of a sharded safetensors checkpoint with positioned reads (no mmap)."""

    def __init__(self, root: Path, weight_map: dict[str, str]):
        self.root, self.weight_map = root, weight_map
        self._headers: dict[str, tuple[int, dict]] = {}
        self._files: dict[str, object] = {}

    def _header(self, shard: str) -> tuple[int, dict]:
        if shard not in self._headers:
            path = self.root / shard
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise DeployError(f"{path} is not a safetensors file (shorter than 8 bytes).")
                (n,) = struct.unpack("<Q", raw)
                try:
                    header = json.loads(f.read(n))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise DeployError(f"{path} has an unreadable safetensors header ({exc}); re-copy it.") from None
            self._headers[shard] = (8 + n, header)
        return self._headers[shard]

    def check(self, names: list[str]) -> None:
        """Raise one DeployError naming every tensor whose shard does not hold it."""
        missing = [n for n in names if n not in self._header(self.weight_map[n])[1]]
        if missing:
            raise DeployError(f"{self.root}: {len(missing)} tensor(s) listed in the index are missing from "
                              f"their shard: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}. "
                              "A shard is incomplete or the index is stale; re-copy the checkpoint.")

    def spec(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        entry = self._header(self.weight_map[name])[1][name]
        if entry["dtype"] not in ST_DTYPES:
            raise DeployError(f"{self.root}: tensor {name!r} has dtype {entry['dtype']}, which is not supported.")
        return ST_DTYPES[entry["dtype"]], tuple(entry["shape"])

    def get(self, name: str) -> torch.Tensor:
        """The tensor in its stored dtype, in freshly allocated memory."""
        shard = self.weight_map[name]
        start, header = self._header(shard)
        begin, end = header[name]["data_offsets"]
        dtype, shape = self.spec(name)
        buf = torch.empty(end - begin, dtype=torch.uint8)
        if shard not in self._files:
            self._files[shard] = open(self.root / shard, "rb")
        f = self._files[shard]
        f.seek(start + begin)
        if f.readinto(memoryview(buf.numpy())) != end - begin:
            raise DeployError(f"{self.root / shard} is truncated: tensor {name!r} is cut short; re-copy the shard.")
        return buf.view(dtype).reshape(shape)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class SafetensorsWriter:
    """Writes one safetensors file tensor by tensor: the header is fixed up front from the specs."""

    def __init__(self, path: Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, (dtype, shape) in specs.items():
            nbytes = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
            header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format allows space padding; keeps data 8-byte aligned
        self.path, self.specs, self.header = path, specs, header
        self.data_start = 8 + len(raw)
        self.written: set[str] = set()
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(raw)) + raw)
        self.file.truncate(self.data_start + offset)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        dtype, shape = self.specs[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise AssertionError(f"{self.path.name}:{name} is {tensor.dtype}{tuple(tensor.shape)}, "
                                 f"its header says {dtype}{shape}")
        self.file.seek(self.data_start + self.header[name]["data_offsets"][0])
        if tensor.numel():
            self.file.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
        self.written.add(name)

    def close(self) -> None:
        self.file.close()
        unwritten = sorted(set(self.specs) - self.written)
        if unwritten:
            raise AssertionError(f"{self.path.name}: tensors never written: {unwritten[:10]}")


@dataclasses.dataclass(frozen=True)
class RankLayout:
    """Which tensors a rank holds. TensorRT-LLM: rank = pp_rank * tp + tp_rank."""

    tp: int
    pp: int
    num_layers: int

    def ranks(self) -> range:
        return range(self.tp * self.pp)

    def layers(self, rank: int) -> range:
        return tp_split.pp_layer_range(self.num_layers, pp=self.pp, pp_rank=rank // self.tp)

    def holds(self, rank: int, target: Target) -> bool:
        pp_rank = rank // self.tp
        if target.layer is not None:
            return target.layer in self.layers(rank)
        if target.name == "transformer.vocab_embedding.weight":
            return pp_rank == 0
        return pp_rank == self.pp - 1  # ln_f, lm_head


def rank_specs(targets: list[Target], reader: ShardReader, layout: RankLayout, *, dtype: torch.dtype,
               num_kv_heads: int) -> list[dict[str, tuple[torch.dtype, tuple[int, ...]]]]:
    """Per rank: local tensor name -> (dtype, shape), computed on meta tensors by the real split code."""
    specs: list[dict] = [{} for _ in layout.ranks()]
    for target in targets:
        sources = [torch.empty(reader.spec(n)[1], dtype=dtype, device="meta") for n in target.sources]
        for rank in layout.ranks():
            if layout.holds(rank, target):
                piece = tp_split.rank_piece(target.split, sources, tp=layout.tp, rank=rank % layout.tp,
                                            num_kv_heads=num_kv_heads)
                specs[rank][target.local_name(layout.layers(rank).start)] = (dtype, tuple(piece.shape))
    return specs


def convert_llm_checkpoint(model_dir: str | Path, out_dir: str | Path, *, tp: int = 1, pp: int = 1,
                           dtype: str = "bf16", force: bool = False) -> Path:
    """Write `<out_dir>/trtllm_checkpoint/{config.json, rank{N}.safetensors, manifest.json}`.

    Args:
        model_dir: HF NVLM-D checkpoint directory.
        out_dir: the target directory (engines/<model>/<target>); this stage owns its trtllm_checkpoint/.
        tp: tensor-parallel ranks; must divide the attention heads.
        pp: pipeline-parallel ranks; at most the number of layers.
        dtype: "bf16" (default), "fp16", or "fp32" (exact parity checks).
        force: replace an existing trtllm_checkpoint/.
    """
    from nvlm_deploy.artifacts import atomic_output_dir
    from nvlm_deploy.model.checkpoint import CheckpointIndex
    from nvlm_deploy.progress import progress

    if dtype not in DTYPES:
        raise DeployError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}.")
    model_dir = Path(model_dir)
    llm = NvlmConfig.from_hf(model_dir).llm
    tp_split.check_tp(num_heads=llm.num_attention_heads, num_kv_heads=llm.num_key_value_heads, tp=tp,
                      intermediate_size=llm.intermediate_size)
    tp_split.check_pp(num_layers=llm.num_hidden_layers, pp=pp)
    index = CheckpointIndex.open(model_dir)
    targets = plan_tensors(index.names(HF_PREFIX), num_layers=llm.num_hidden_layers,
                           attention_bias=llm.attention_bias, tie_word_embeddings=llm.tie_word_embeddings,
                           where=str(model_dir))
    reader = ShardReader(model_dir, index.weight_map)
    reader.check(sorted({n for t in targets for n in t.sources}))
    layout = RankLayout(tp=tp, pp=pp, num_layers=llm.num_hidden_layers)
    torch_dtype = DTYPES[dtype][0]
    specs = rank_specs(targets, reader, layout, dtype=torch_dtype, num_kv_heads=llm.num_key_value_heads)
    final = Path(out_dir) / CHECKPOINT_DIR
    try:
        with atomic_output_dir(final, force=force) as tmp:
            (tmp / "config.json").write_text(json.dumps(trtllm_config(llm, tp=tp, pp=pp, dtype=dtype), indent=2))
            writers = [SafetensorsWriter(tmp / f"rank{r}.safetensors", specs[r]) for r in layout.ranks()]
            try:
                for target in progress(targets, desc=f"convert llm tp{tp} pp{pp}", unit="tensor"):
                    _write_target(target, reader, writers, layout, dtype=torch_dtype,
                                  num_kv_heads=llm.num_key_value_heads)
            finally:
                for w in writers:
                    w.file.close()
            for w in writers:
                w.close()  # checks that every planned tensor was written
            verify_rank_files(tmp, specs)
            checked = check_first_layer(tmp, specs, targets, reader, layout, dtype=torch_dtype, llm=llm)
            _write_manifest(tmp, model_dir, layout, dtype=dtype, llm=llm, checked=checked)
    finally:
        reader.close()
    return final


def _write_manifest(directory: Path, model_dir: Path, layout: RankLayout, *, dtype: str, llm: LlmConfig,
                    checked: list[str]) -> None:
    from nvlm_deploy.artifacts import input_hashes, write_manifest

    ranks = {f"rank{r}": {"tp_rank": r % layout.tp, "pp_rank": r // layout.tp,
                          "layers": [layout.layers(r).start, layout.layers(r).stop]} for r in layout.ranks()}
    write_manifest(directory, stage="trtllm_checkpoint",
                   settings={"tp": layout.tp, "pp": layout.pp, "dtype": dtype, "world_size": layout.tp * layout.pp,
                             "rotary_scaling": None, "rotary_scaling_reason": ROTARY_SCALING_REASON},
                   inputs={"model_dir": str(model_dir.resolve()), "files": input_hashes(model_dir)},
                   tools=("torch", "safetensors"),
                   extra={"ranks": ranks, "source_rope_scaling": llm.rope_scaling,
                          "self_check": {"merged_equal_to_source": checked}})


def _write_target(target: Target, reader: ShardReader, writers: list[SafetensorsWriter], layout: RankLayout,
                  *, dtype: torch.dtype, num_kv_heads: int) -> None:
    sources = [reader.get(n).to(dtype) for n in target.sources]  # one target's sources in memory at a time
    for rank in layout.ranks():
        if layout.holds(rank, target):
            piece = tp_split.rank_piece(target.split, sources, tp=layout.tp, rank=rank % layout.tp,
                                        num_kv_heads=num_kv_heads)
            writers[rank].write(target.local_name(layout.layers(rank).start), piece)
            del piece


def verify_rank_files(directory: Path, specs: list[dict]) -> None:
    """Re-open every rank file with safetensors' own reader; names, dtypes and shapes must match."""
    from safetensors import safe_open

    for rank, expected in enumerate(specs):
        path = directory / f"rank{rank}.safetensors"
        with safe_open(str(path), framework="pt") as f:
            found = {n: (ST_DTYPES[f.get_slice(n).get_dtype()], tuple(f.get_slice(n).get_shape())) for n in f.keys()}
        if found != expected:
            raise AssertionError(f"{path}: written tensors differ from the plan: "
                                 f"{sorted(set(found.items()) ^ set(expected.items()))[:10]}")


def check_first_layer(directory: Path, specs: list[dict], targets: list[Target], source: ShardReader,
                      layout: RankLayout, *, dtype: torch.dtype, llm: LlmConfig) -> list[str]:
    """Read layer 0 back from the tp ranks, merge the splits, and require equality with the source.

    Layer 0 has every split kind but the vocabulary ones (which the runtime tests cover), at the
    size of one layer, so the check costs little memory even at 72B. Returns the checked names.
    """
    readers = [ShardReader(directory, {n: f"rank{r}.safetensors" for n in specs[r]}) for r in range(layout.tp)]
    checked = []
    try:
        for target in (t for t in targets if t.layer == 0):
            name = target.local_name(0)
            merged = tp_split.merge_pieces(target.split, [r.get(name) for r in readers],
                                           num_heads=llm.num_attention_heads, num_kv_heads=llm.num_key_value_heads)
            expected = torch.cat([source.get(n).to(dtype) for n in target.sources])
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
