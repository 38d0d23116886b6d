"""package --prompt-table-extra-ids (GPU): the rendered configs against the upstream facts
(serve/upstream/prompt_table_extra_ids_1.2.json, tensorrtllm_backend_1.2.json); off by default."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert llm.parameters["enable_kv_cache_reuse"].string_value == "true"
    # the vision encoder produces them for the ensemble, the BLS computes them itself
    vision = parsed(repo, "vision_encoder")
    assert model_config_pb2.DataType.Name(tensor(vision, want["name"], "output").data_type) == want["data_type"]
    assert tensor(vision, "input_ids").optional
    steps = {s.model_name: s for s in parsed(repo, "ensemble").ensemble_scheduling.step}
    assert dict(steps["vision_encoder"].input_map)["input_ids"] == dict(steps["preprocessing"].output_map)["INPUT_ID"]
    assert dict(steps["tensorrt_llm"].input_map)[want["name"]] == dict(steps["vision_encoder"].output_map)[want["name"]]
    assert parsed(repo, "tensorrt_llm_bls").parameters["prompt_table_extra_ids"].string_value == "true"


def test_extra_ids_are_off_by_default_and_kv_cache_reuse_with_them(gpu_engines, tmp_path):  # noqa: F811
    repo = pkg.package_repository(gpu_engines, tmp_path / "repo", runtime="gpu", log=lambda line: None)
    assert parsed(repo, "tensorrt_llm").parameters["enable_kv_cache_reuse"].string_value == "false"
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
