"""package --prompt-table-extra-ids (GPU): the rendered configs and the extra ids our code computes against the
upstream facts (serve/upstream/prompt_table_extra_ids_1.2.json, each read from TensorRT-LLM's source at a named
commit; tensorrtllm_backend_1.2.json); off by default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from nvlm_deploy.errors import DeployError
from nvlm_deploy.serve import package as pkg
from tests.serve.test_package import gpu_engines  # noqa: F401  (fixture)

FACTS = json.loads((Path(pkg.__file__).parent / "upstream" / "prompt_table_extra_ids_1.2.json").read_text())


def parsed(repo: Path, model: str):
    from nvlm_deploy.serve.template import parse_model_config

    return parse_model_config((repo / model / "config.pbtxt").read_text())


def tensor(config, name, kind="input"):
    return next(t for t in getattr(config, kind) if t.name == name)


def test_extra_ids_on_render_upstreams_tensor_and_turn_kv_cache_reuse_on(gpu_engines, tmp_path):  # noqa: F811
    from tritonclient.grpc import model_config_pb2

    repo = pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None,
                                  options=pkg.PackageOptions(prompt_table_extra_ids=True))
    llm = parsed(repo, "tensorrt_llm")
    want = FACTS["tensor"]
    got = tensor(llm, want["name"])
    assert model_config_pb2.DataType.Name(got.data_type) == want["data_type"]
    assert list(got.dims) == want["dims"] and got.optional == want["optional"]
    assert got.allow_ragged_batch == want["allow_ragged_batch"]
    assert llm.parameters[FACTS["kv_cache_reuse_parameter"]["key"]].string_value == "true"
    # the vision encoder produces them for the ensemble, the BLS computes them itself
    vision = parsed(repo, "vision_encoder")
    assert model_config_pb2.DataType.Name(tensor(vision, want["name"], "output").data_type) == want["data_type"]
    assert tensor(vision, "input_ids").optional
    steps = {s.model_name: s for s in parsed(repo, "ensemble").ensemble_scheduling.step}
    assert dict(steps["vision_encoder"].input_map)["input_ids"] == dict(steps["preprocessing"].output_map)["INPUT_ID"]
    llm_in = dict(steps["tensorrt_llm"].input_map)
    assert llm_in[want["name"]] == dict(steps["vision_encoder"].output_map)[want["name"]]
    # upstream keeps the extra ids only beside a prompt table and only at one per input token: the decoder gets
    # both from the same request, the ids computed from the very input_ids it is given
    assert llm_in["prompt_embedding_table"] == dict(steps["vision_encoder"].output_map)["prompt_embedding_table"]
    assert llm_in["input_ids"] == dict(steps["vision_encoder"].input_map)["input_ids"]
    assert parsed(repo, "tensorrt_llm_bls").parameters["prompt_table_extra_ids"].string_value == "true"


def test_extra_ids_are_off_by_default_and_kv_cache_reuse_with_them(gpu_engines, tmp_path):  # noqa: F811
    repo = pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None)
    assert parsed(repo, "tensorrt_llm").parameters[FACTS["kv_cache_reuse_parameter"]["key"]].string_value == "false"
    steps = {s.model_name: s for s in parsed(repo, "ensemble").ensemble_scheduling.step}
    assert "input_ids" not in dict(steps["vision_encoder"].input_map)
    assert FACTS["tensor"]["name"] not in dict(steps["tensorrt_llm"].input_map)
    assert parsed(repo, "tensorrt_llm_bls").parameters["prompt_table_extra_ids"].string_value == "false"


def test_extra_ids_are_refused_on_the_cpu_runtime(engines, tmp_path):
    with pytest.raises(DeployError, match="--runtime gpu"):
        pkg.package_repository(engines, tmp_path / "repo", runtime="cpu", log=lambda line: None,
                               options=pkg.PackageOptions(prompt_table_extra_ids=True))


def test_the_upstream_io_facts_include_the_tensor():
    from nvlm_deploy.serve.upstream import TENSORRTLLM_BACKEND

    io = TENSORRTLLM_BACKEND["tensorrt_llm_io"]["inputs"][FACTS["tensor"]["name"]]
    assert io["data_type"] == FACTS["tensor"]["data_type"] and io["dims"] == FACTS["tensor"]["dims"]


def test_every_fact_names_the_commit_it_was_read_at():
    sources = [FACTS["tensor"]["source"], FACTS["kv_cache_reuse_parameter"]["source"]]
    for fact in FACTS["facts"].values():
        sources += fact.get("sources", [fact.get("source")])
    for source in sources:
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]), source
        known = FACTS["commits"][source["commit"]]
        assert known["repository"] == source["repository"] and source["version"] == known["version"]
        assert source["path"] and "version_from" in known
    assert any(c["version"] and c["version"].startswith("1.2.") for c in FACTS["commits"].values())


def test_our_extra_ids_are_what_llm_request_keeps_and_the_block_key_tells_apart():
    """token_extra_ids (what the vision encoder and the BLS send) against the facts: one uint64 per input token
    (else the backend drops them and the request fails validate with reuse on), text tokens at the default extra
    id, image tokens at >= the documented minimum, and equal only for equal pixels."""
    from tritonclient.utils import triton_to_np_dtype

    from nvlm_deploy.backend.tile_cache import token_extra_ids

    facts, vocab = FACTS["facts"], 50
    rng = np.random.default_rng(5)
    tiles = rng.random((2, 3, 4, 4), dtype=np.float32)
    input_ids = np.array([[1, 2, 50, 51, 52, 53, 9]], np.int32)  # 2 tiles x 2 image tokens between text
    got = token_extra_ids(input_ids, tiles, vocab_size=vocab)
    assert facts["backend_drops_them_unless_one_per_input_token"]["length_must_equal"] == "input_ids"
    assert got.shape == input_ids.shape
    assert got.dtype == triton_to_np_dtype(FACTS["tensor"]["data_type"].removeprefix("TYPE_"))
    text = input_ids[0] < vocab
    assert (got[0, text] == facts["unique_tokens_pair_each_token_with_its_extra_id"]["default_extra_id"]).all()
    assert (got[0, ~text] >= facts["values_minimum_one_is_a_documented_convention"]["minimum_image_id"]).all()
    # BlockKey compares (token id, extra id): other pixels behind the same fake ids must give other extra ids
    assert "uniqueTokens" in facts["block_key_mixes_the_extra_ids"]["key_fields"]
    other = token_extra_ids(input_ids, rng.random((2, 3, 4, 4), dtype=np.float32), vocab_size=vocab)
    assert (other[0, ~text] != got[0, ~text]).all()
    assert (token_extra_ids(input_ids, tiles.copy(), vocab_size=vocab) == got).all()
