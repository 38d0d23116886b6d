"""Streaming conversion to a TensorRT-LLM checkpoint: config, rank files, manifest, bad input."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nvlm_deploy.cli import main
from nvlm_deploy.contracts.precision import precision
from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint
from nvlm_deploy.trtllm.config import TrtllmConfig
from nvlm_deploy.trtllm.safetensors_io import SafetensorsWriter
from nvlm_deploy.errors import DeployError
from nvlm_deploy.model.checkpoint import CheckpointIndex

CONFIG_FIELDS = ("architecture", "dtype", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "hidden_act", "logits_dtype", "norm_epsilon", "position_embedding_type",
                 "max_position_embeddings", "rotary_embedding_dim", "intermediate_size", "head_size",
                 "use_parallel_embedding", "embedding_sharding_dim", "qk_layernorm", "mapping", "quantization",
                 "mlp_bias", "attn_bias", "rotary_base", "rotary_scaling", "disable_weight_only_quant_plugin",
                 "use_logn_attn", "moe", "seq_length", "qwen_type", "num_labels", "tie_word_embeddings")


@pytest.fixture(scope="module")
def tp2pp2(tiny_checkpoint, tmp_path_factory):
    return convert_llm_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("tp2pp2"), tp=2, pp=2)


def test_config_has_every_field(tp2pp2, tiny_model):
    config = json.loads((tp2pp2 / "config.json").read_text())
    assert set(CONFIG_FIELDS) <= set(config)
    llm = tiny_model.config.llm
    assert config["rotary_base"] == llm.rope_theta and config["rotary_scaling"] is None
    assert llm.rope_scaling is not None  # the HF entry exists and is deliberately not applied
    assert config["qwen_type"] == "qwen2" and config["position_embedding_type"] == "rope_gpt_neox"
    assert config["dtype"] == "bfloat16" and config["vocab_size"] == 1030
    assert {k: config["mapping"][k] for k in ("world_size", "tp_size", "pp_size")} == {
        "world_size": 4, "tp_size": 2, "pp_size": 2}
    assert config["quantization"]["quant_algo"] is None


def test_rank_files_hold_their_layers_with_local_numbering(tp2pp2):
    names = [set(load_file(tp2pp2 / f"rank{r}.safetensors")) for r in range(4)]
    assert names[0] == names[1] and names[2] == names[3]
    assert "transformer.vocab_embedding.weight" in names[0] and "lm_head.weight" not in names[0]
    assert "lm_head.weight" in names[2] and "transformer.ln_f.weight" in names[2]
    assert "transformer.vocab_embedding.weight" not in names[2]
    assert all(not n.startswith("transformer.layers.1.") for n in names[0] | names[2])  # one layer each, renumbered
    rank3 = load_file(tp2pp2 / "rank3.safetensors")
    assert rank3["lm_head.weight"].shape == (515, 128) and rank3["lm_head.weight"].dtype == torch.bfloat16
    assert rank3["transformer.layers.0.attention.qkv.weight"].shape == ((2 + 1 + 1) * 32, 128)
    assert rank3["transformer.layers.0.attention.dense.weight"].shape == (128, 64)


def test_values_are_the_hf_tensors_renamed_and_fused(tiny_checkpoint, tmp_path):
    out = convert_llm_checkpoint(tiny_checkpoint, tmp_path, dtype="fp32")
    rank0 = load_file(out / "rank0.safetensors")
    hf = CheckpointIndex.open(tiny_checkpoint)
    p = "language_model.model.layers.1."
    qkv = torch.cat([hf.get(p + f"self_attn.{x}_proj.weight").float() for x in "qkv"])
    assert torch.equal(rank0["transformer.layers.1.attention.qkv.weight"], qkv)
    assert torch.equal(rank0["transformer.layers.1.mlp.fc.weight"], hf.get(p + "mlp.gate_proj.weight").float())
    assert torch.equal(rank0["transformer.layers.1.mlp.gate.weight"], hf.get(p + "mlp.up_proj.weight").float())
    assert torch.equal(rank0["lm_head.weight"], hf.get("language_model.lm_head.weight").float())


def test_manifest_records_settings_and_source_hashes(tp2pp2, tiny_checkpoint):
    from nvlm_deploy.contracts.target import Target

    assert json.loads((tp2pp2 / "manifest.json").read_text())["stage"] == "trtllm_checkpoint"
    manifest = Target.of(tp2pp2, stage="trtllm_checkpoint").manifest("trtllm_checkpoint")
    assert (manifest.tp, manifest.pp, manifest.precision) == (2, 2, "bf16")
    assert "model.safetensors.index.json" in manifest.input_hashes
    assert manifest.ranks["rank2"] == {"tp_rank": 0, "pp_rank": 1, "layers": [1, 2]}
    assert "transformer.layers.0.attention.qkv.weight" in manifest.self_check


def test_streaming_writer_matches_safetensors_reader(tmp_path):
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "empty": torch.zeros(0, 4), "c": torch.randn(2, 3, 4).half()}
    writer = SafetensorsWriter(tmp_path / "x.safetensors", {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()})
    for name in ["c", "a", "empty", "b"]:  # any order: each lands at its header offset
        writer.write(name, tensors[name])
    writer.close()
    back = load_file(tmp_path / "x.safetensors")
    assert set(back) == set(tensors) and all(torch.equal(back[n], tensors[n]) for n in tensors)
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    save_file(tensors, tmp_path / "ref.safetensors")
    assert (tmp_path / "x.safetensors").stat().st_size >= (tmp_path / "ref.safetensors").stat().st_size - 64


def _no_output(root):
    return not (root / "trtllm_checkpoint").exists() and not list(root.glob(".trtllm_checkpoint.tmp-*"))


def test_tp_that_does_not_divide_heads_explains_and_writes_nothing(tiny_checkpoint, tmp_path, capsys):
    assert main(["convert", "llm", "--model", str(tiny_checkpoint), "--out", str(tmp_path), "--tp", "3"]) == 1
    err = capsys.readouterr().err
    assert "--tp 3" in err and "Values that work: [1, 2, 4]" in err and "Traceback" not in err
    assert _no_output(tmp_path)


def test_pp_larger_than_layers_writes_nothing(tiny_checkpoint, tmp_path):
    with pytest.raises(DeployError, match="--pp 3 .* 2 layers"):
        convert_llm_checkpoint(tiny_checkpoint, tmp_path, pp=3)
    assert _no_output(tmp_path)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_checkpoint_without_llm_config(tiny_checkpoint, tmp_path):
    model = _copy(tiny_checkpoint, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    del config["llm_config"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(DeployError, match="llm_config"):
        convert_llm_checkpoint(model, tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_shard_missing_tensors_is_named(tiny_checkpoint, tmp_path):
    model = _copy(tiny_checkpoint, tmp_path / "model")
    index = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
    victim = "language_model.model.layers.1.mlp.down_proj.weight"
    shard = model / index[victim]
    tensors = load_file(shard)
    del tensors[victim]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(DeployError, match=f"missing from their shard: {victim}"):
        convert_llm_checkpoint(model, tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_failure_midway_leaves_no_complete_looking_directory(tiny_checkpoint, tmp_path):
    model = _copy(tiny_checkpoint, tmp_path / "model")
    index = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
    shard = model / index["language_model.lm_head.weight"]
    with safe_open(str(shard), "pt") as f:
        names = list(f.keys())
    header_len = int.from_bytes(shard.read_bytes()[:8], "little")
    begin = json.loads(shard.read_bytes()[8:8 + header_len])["language_model.lm_head.weight"]["data_offsets"][0]
    shard.write_bytes(shard.read_bytes()[:8 + header_len + begin + 10])  # cut inside lm_head, the last target
    assert "language_model.lm_head.weight" in names
    with pytest.raises(DeployError, match="truncated"):
        convert_llm_checkpoint(model, tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_existing_output_needs_force(tiny_checkpoint, tmp_path):
    convert_llm_checkpoint(tiny_checkpoint, tmp_path)
    with pytest.raises(DeployError, match="--force"):
        convert_llm_checkpoint(tiny_checkpoint, tmp_path)
    assert convert_llm_checkpoint(tiny_checkpoint, tmp_path, tp=2, force=True).is_dir()
    assert json.loads((tmp_path / "trtllm_checkpoint" / "config.json").read_text())["mapping"]["tp_size"] == 2


def test_config_dtype_names():
    from nvlm_deploy.config import LlmConfig

    llm = LlmConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=100)
    assert TrtllmConfig.from_llm(llm, tp=1, pp=1, precision=precision("fp16")).as_dict()["dtype"] == "float16"
    config = TrtllmConfig.from_llm(llm, tp=2, pp=1, precision=precision("bf16"))
    assert config.head_size == 16 and config.as_dict()["mapping"]["tp_size"] == 2
    assert config.as_dict()["quantization"]["quant_algo"] is None


# ---- file records, kernel copies, and what a loader refuses ----

def test_manifest_records_every_file_hashed_while_written(tiny_checkpoint, tmp_path, monkeypatch):
    import blake3

    from nvlm_deploy import artifacts

    read_back = []
    real = artifacts.file_digest
    monkeypatch.setattr(artifacts, "file_digest", lambda p, **k: read_back.append(p.name) or real(p))
    out = convert_llm_checkpoint(tiny_checkpoint, tmp_path, tp=2, pp=2)
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert sorted(files) == ["config.json", *(f"rank{r}.safetensors" for r in range(4))]
    for name, record in files.items():
        assert record == {"bytes": (out / name).stat().st_size,
                          "blake3": blake3.blake3((out / name).read_bytes()).hexdigest()}
    assert not [n for n in read_back if n.startswith("rank")]  # never read back to be hashed


def test_unchanged_pieces_are_kernel_copies_and_give_the_same_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    from nvlm_deploy.contracts.target import Target
    from nvlm_deploy.convert import llm_checkpoint
    from nvlm_deploy.trtllm import safetensors_io
    from nvlm_deploy.trtllm.rank_files import load_trtllm_checkpoint

    _, plain = load_trtllm_checkpoint(convert_llm_checkpoint(tiny_checkpoint, tmp_path / "fp32", tp=4, dtype="fp32"))
    copied, hashed = [], []
    real = safetensors_io.copy_range_to
    monkeypatch.setattr(safetensors_io, "copy_range_to", lambda *a: copied.append(a[-1]) or real(*a))
    real_hash = safetensors_io.SafetensorsWriter.hash_ranges
    monkeypatch.setattr(safetensors_io.SafetensorsWriter, "hash_ranges",
                        lambda self, name, *a, **k: hashed.append((self.path.name, name)) or real_hash(self, name, *a, **k))
    monkeypatch.setattr(llm_checkpoint, "COPY_CHUNK", 3000)  # many chunks per tensor, none page-aligned
    out = convert_llm_checkpoint(tiny_checkpoint, tmp_path / "bf16", tp=4, dtype="bf16")
    _, fast = load_trtllm_checkpoint(out)
    # bf16 in the source (embedding, lm_head with vocab padding, MLP rows) passes through file to file (the
    # embedding's chunks read once for its 4 ranks); fp32 q/k/v are cast
    assert len(copied) > 100 and max(copied) <= 3000
    # the replicated embedding (first in every rank file, same headers) is hashed on rank 0 only; the
    # other ranks continue from its state, and their records below are still their files' digests
    embedding = {f for f, n in hashed if n == "transformer.vocab_embedding.weight"}
    assert embedding == {"rank0.safetensors"} and {f for f, _ in hashed} == {f"rank{r}.safetensors" for r in range(4)}
    assert set(fast) == set(plain) and all(torch.equal(fast[n], plain[n].to(torch.bfloat16)) for n in plain)
    Target.of(out, stage="trtllm_checkpoint").manifest("trtllm_checkpoint", hashes=True)  # hashes made chunk by chunk


def test_chunked_ranges_cover_the_same_bytes_in_order():
    from nvlm_deploy.convert.llm_checkpoint import chunk_ranges
    from nvlm_deploy.trtllm.safetensors_io import SourceRange

    ranges = [SourceRange("a", 100, 250), SourceRange(None, 0, 30), SourceRange("b", 7, 95)]
    chunks = chunk_ranges(ranges, 100)
    assert [start for start, _ in chunks] == [0, 100, 200, 300] and all(sum(r.nbytes for r in c) <= 100 for _, c in chunks)
    flat = [(r.path, r.offset + i) for _, c in chunks for r in c for i in range(r.nbytes) if r.path]
    assert flat == [("a", 100 + i) for i in range(250)] + [("b", 7 + i) for i in range(95)]


def _tampered(tp2pp2, tmp_path):
    return shutil.copytree(tp2pp2, tmp_path / "trtllm_checkpoint")


@pytest.mark.parametrize("keep_manifest", [True, False])
def test_a_truncated_rank_file_is_refused_at_load(tp2pp2, tmp_path, keep_manifest):
    from nvlm_deploy.trtllm.rank_files import load_trtllm_checkpoint

    root = _tampered(tp2pp2, tmp_path)
    if not keep_manifest:  # a checkpoint from other tools: the rank file's own header still tells
        (root / "manifest.json").unlink()
    victim = root / "rank1.safetensors"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(DeployError, match="truncated") as exc:
        load_trtllm_checkpoint(root)
    assert str(victim) in str(exc.value) and "convert llm" in str(exc.value)


@pytest.mark.parametrize("field, value, tensor", [
    ("vocab_size", 1031, "transformer.vocab_embedding.weight"),  # same file size: only the shapes tell
    ("hidden_size", 96, "transformer.vocab_embedding.weight"),
])
def test_a_config_that_no_longer_fits_the_rank_files_is_refused_at_load(tp2pp2, tmp_path, field, value, tensor):
    from nvlm_deploy.trtllm.rank_files import load_trtllm_checkpoint

    root = _tampered(tp2pp2, tmp_path)
    config = json.loads((root / "config.json").read_text())
    text = (root / "config.json").read_text().replace(f'"{field}": {config[field]}', f'"{field}": {value}')
    (root / "config.json").write_text(text)
    (root / "manifest.json").unlink()  # sizes alone may not catch it; the shapes must
    with pytest.raises(DeployError, match=f"{tensor} is BF16") as exc:
        load_trtllm_checkpoint(root)
    assert f"{field} {value}" in str(exc.value) and "rank0.safetensors" in str(exc.value)


@pytest.mark.parametrize("tp, pp", [(1, 1), (4, 2), (8, 3)])
def test_piece_specs_are_rank_specs_without_meta_tensors(tp, pp):
    """The converter's and the loader's header plan (row labels) equals rank_files.rank_specs (meta tensors)
    at NVLM-D-72B's widths, vocabulary padding and KV-head duplication included."""
    from nvlm_deploy.trtllm.checkpoint_check import _ShapesOnly, expected_rank_specs, hf_decoder_shapes
    from nvlm_deploy.model.tiny import preset_config
    from nvlm_deploy.trtllm.names import plan_tensors
    from nvlm_deploy.trtllm.rank_files import RankLayout, rank_specs

    llm = preset_config("72b").llm
    config = TrtllmConfig.from_llm(llm, tp=tp, pp=pp, precision=precision("bf16"))
    config = TrtllmConfig(**{**config.__dict__, "vocab_size": 152061})  # not a multiple of tp: padded
    shapes = hf_decoder_shapes(config)
    tensors = plan_tensors(list(shapes), num_layers=llm.num_hidden_layers)
    layout = RankLayout(tp=tp, pp=pp, num_layers=llm.num_hidden_layers)
    meta = rank_specs(tensors, _ShapesOnly(shapes, torch.bfloat16), layout, dtype=torch.bfloat16,
                      num_kv_heads=llm.num_key_value_heads)
    ours = expected_rank_specs(config, layout)
    assert [list(s.items()) for s in ours] == [list(s.items()) for s in meta]  # same tensors, shapes and order


def test_self_check_compares_every_rank_bit_for_bit(tp2pp2, tiny_checkpoint, tmp_path):
    """The layer-0 check reads each rank's piece back: one flipped bit on one rank is caught and named;
    the comparison is on raw bits (torch.equal alone takes -0.0 for 0.0)."""
    from nvlm_deploy.config import NvlmConfig
    from nvlm_deploy.convert.llm_checkpoint import _raw, check_first_layer
    from nvlm_deploy.trtllm.checkpoint_check import piece_specs
    from nvlm_deploy.trtllm.names import HF_PREFIX, plan_tensors
    from nvlm_deploy.trtllm.rank_files import RankLayout
    from nvlm_deploy.trtllm.safetensors_io import ShardReader

    zeros = torch.tensor([0.0, -0.0], dtype=torch.bfloat16)
    assert torch.equal(zeros[:1], zeros[1:]) and not torch.equal(_raw(zeros[:1]), _raw(zeros[1:]))
    root = _tampered(tp2pp2, tmp_path)
    llm = NvlmConfig.from_hf(tiny_checkpoint).llm
    index = CheckpointIndex.open(tiny_checkpoint)
    tensors = plan_tensors(index.names(HF_PREFIX), num_layers=llm.num_hidden_layers)
    layout = RankLayout(tp=2, pp=2, num_layers=llm.num_hidden_layers)
    source = ShardReader(tiny_checkpoint, index.weight_map)
    specs = piece_specs(tensors, source, layout, dtype=torch.bfloat16, num_kv_heads=llm.num_key_value_heads)
    try:
        checked = check_first_layer(root, specs, tensors, source, layout, dtype=torch.bfloat16, llm=llm)
        assert "transformer.layers.0.mlp.proj.weight" in checked
        rank1 = root / "rank1.safetensors"
        reader = ShardReader(root, {n: "rank1.safetensors" for n in specs[1]})
        _, offset, _ = reader.location("transformer.layers.0.post_layernorm.weight")
        reader.close()
        data = bytearray(rank1.read_bytes())
        data[offset + 1] ^= 0x80  # the sign bit of rank 1's first weight (bf16, little-endian)
        rank1.write_bytes(bytes(data))
        with pytest.raises(AssertionError, match="rank1.safetensors:transformer.layers.0.post_layernorm.weight"):
            check_first_layer(root, specs, tensors, source, layout, dtype=torch.bfloat16, llm=llm)
    finally:
        source.close()


def test_a_source_cut_inside_a_cast_tensor_fails_the_conversion_and_writes_nothing(tiny_checkpoint, tmp_path):
    """fp32 q/k/v are read and cast by the preparing thread: its error reaches the caller, no output stays."""
    model = _copy(tiny_checkpoint, tmp_path / "model")
    index = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
    victim = "language_model.model.layers.1.self_attn.q_proj.weight"
    shard = model / index[victim]
    raw = shard.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert header[victim]["dtype"] == "F32"  # cast to bf16, so not a kernel copy
    shard.write_bytes(raw[:8 + header_len + header[victim]["data_offsets"][0] + 10])
    with pytest.raises(DeployError, match="truncated"):
        convert_llm_checkpoint(model, tmp_path / "out", tp=2)
    assert _no_output(tmp_path / "out")
