"""ONNX export of the vision encoder: graph I/O, the self-check against torch, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from nvlm_deploy.contracts.precision import precision
from nvlm_deploy.convert import onnx_check, vision_onnx
from nvlm_deploy.errors import DeployError
from nvlm_deploy.runtime.vision import OnnxVisionEncoder


@pytest.fixture(scope="module")
def export(tiny_checkpoint, tmp_path_factory):
    """dtype -> target directory with onnx/ exported (each dtype once per module)."""
    done = {}

    def get(dtype: str):
        if dtype not in done:
            out = tmp_path_factory.mktemp(f"vision-{dtype}")
            vision_onnx.export_vision_onnx(tiny_checkpoint, out, dtype=dtype)
            done[dtype] = out
        return done[dtype]

    return get


def manifest(target) -> dict:
    return json.loads((target / "onnx" / "manifest.json").read_text())


def test_wrapper_is_the_reference_extract_feature(tiny_checkpoint, tiny_model):
    x = torch.randn(2, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = tiny_model.extract_feature(x)
        shared = vision_onnx.VisionEncoder.from_model(tiny_model)(x)
        loaded = vision_onnx.load_vision_encoder(tiny_checkpoint, dtype="fp32")(x)
    assert torch.equal(shared, expected)
    assert torch.equal(loaded, expected)
    assert not any(n.startswith("language_model.") for n in vision_onnx.load_vision_encoder(
        tiny_checkpoint, dtype="fp32").state_dict())


def test_fp32_graph_matches_torch_within_1e4(export, tiny_model):
    target = export("fp32")
    check = manifest(target)["check"]
    assert [d["tiles"] for d in check["diffs"]] == [1, 3, 7]
    for d in check["diffs"]:
        assert d["shape"] == [d["tiles"], 256, 128]
        assert d["max_rel"] <= 1e-4, d
    # independently of the export's own check: ONNX Runtime vs NvlmModel.extract_feature
    x = np.random.default_rng(5).standard_normal((3, 3, 448, 448), dtype=np.float32)
    actual = OnnxVisionEncoder(target).encode(x)
    with torch.no_grad():
        expected = tiny_model.extract_feature(torch.from_numpy(x)).numpy()
    assert np.abs(actual - expected).max() / np.abs(expected).max() <= 1e-4


def test_graph_io_and_opset(export):
    import onnx

    model = onnx.load(str(export("fp32") / "onnx" / "vision_encoder.onnx"))
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert (inp.name, out.name) == ("pixel_values", "image_embeddings")
    assert dims(inp)[1:] == [3, 448, 448] and isinstance(dims(inp)[0], str)  # T is symbolic
    assert dims(out)[1:] == [256, 128] and dims(out)[0] == dims(inp)[0]
    assert [o.version for o in model.opset_import if o.domain == ""] == [18]
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "Softmax", "LayerNormalization", "Erf"} <= ops  # InternViT + mlp1 in one graph


@pytest.mark.parametrize("dtype, elem", [("bf16", 16), ("fp16", 10)])
def test_half_graphs_within_their_tolerance(export, dtype, elem):
    import onnx

    target = export(dtype)
    info = manifest(target)
    check = info["check"]
    tol = precision(dtype).tolerance
    assert check["passed"] and [d["tiles"] for d in check["diffs"]] == [1, 3, 7]
    for d in check["diffs"]:
        assert d["max_abs"] <= tol.atol or d["max_rel"] <= tol.rtol, d
        print(f"{dtype} T={d['tiles']}: max abs {d['max_abs']:.3g}, max rel {d['max_rel']:.3g}")
    model = onnx.load(str(target / "onnx" / "vision_encoder.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == elem
    assert model.graph.output[0].type.tensor_type.elem_type == elem
    big = [t for t in model.graph.initializer if np.prod(t.dims) >= 1024]
    assert big and all(t.data_type == elem for t in big)  # weights stored in the model dtype
    assert info["precision"] == dtype and info["tokens_per_tile"] == 256


def test_external_data_and_large_weights_kept_out_of_folding(tiny_checkpoint, tmp_path):
    import onnx

    encoder = vision_onnx.load_vision_encoder(tiny_checkpoint, dtype="fp32")
    model = vision_onnx.export_graph(encoder)
    names = {t.name for t in model.graph.initializer}
    large = {t.name for t in model.graph.initializer if vision_onnx._tensor_bytes(t) > 4096}
    model = vision_onnx.fold_constants(model, limit=4096)  # the path 6B-size weights take
    assert large and {t.name for t in model.graph.initializer} >= large
    assert {t.name for t in model.graph.initializer} <= names | {i for n in model.graph.node for i in n.input}
    onnx.checker.check_model(model)
    assert vision_onnx.save_graph(model, tmp_path / "vision_encoder.onnx", limit=0)
    data = (tmp_path / vision_onnx.EXTERNAL_DATA_FILE).stat().st_size
    assert data >= 0.99 * vision_onnx.weight_bytes(model)  # tensors under 1 KiB stay in the graph file
    assert (tmp_path / "vision_encoder.onnx").stat().st_size < data / 10
    report = onnx_check.check_against_torch(tmp_path, encoder, dtype="fp32", tiles=(2,))
    assert report.passed and report.diffs[0].max_rel <= 1e-4


def test_shape_mismatch_and_excess_error_are_errors():
    tol = precision("fp32").tolerance
    with pytest.raises(DeployError, match="shape"):
        onnx_check.compare_output(np.zeros((1, 4, 2)), np.zeros((1, 4, 3)), tiles=1, output="y", tolerance=tol)
    bad = onnx_check.compare_output(np.ones((1, 4)), np.full((1, 4), 0.5), tiles=1, output="y", tolerance=tol)
    assert not bad.passed and bad.max_rel == pytest.approx(1.0)
    with pytest.raises(DeployError, match="beyond the fp32 tolerance"):
        onnx_check.require_passed(onnx_check.CheckReport("fp32", tol, (bad,), 0.0), where="x")


def test_checkpoint_without_vision_weights(tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file

    from nvlm_deploy.model.checkpoint import CheckpointIndex

    index = CheckpointIndex.open(tiny_checkpoint)
    ckpt = tmp_path / "llm-only"
    ckpt.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", ckpt / "config.json")
    save_file({n: index.get(n).contiguous() for n in index.names("language_model.")}, str(ckpt / "model.safetensors"))
    with pytest.raises(DeployError, match="no vision weights"):
        vision_onnx.export_vision_onnx(ckpt, tmp_path / "out", dtype="fp32")
    assert not (tmp_path / "out" / "onnx").exists()


def test_bad_max_tiles_and_dtype(tiny_checkpoint, tmp_path, capsys):
    from nvlm_deploy.cli import main

    rc = main(["convert", "vision", "--model", str(tiny_checkpoint), "--out", str(tmp_path),
               "--max-tiles-before-thumbnail", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "max_tiles_before_thumbnail must be a positive integer, got 0" in err
    assert "--max-tiles-before-thumbnail" in err and not (tmp_path / "manifest.json").exists()
    with pytest.raises(DeployError, match="precision 'int8'"):
        vision_onnx.export_vision_onnx(tiny_checkpoint, tmp_path, dtype="int8")
    assert not (tmp_path / "onnx").exists()


def test_unwritable_output(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(DeployError, match="cannot create"):
        vision_onnx.export_vision_onnx(tiny_checkpoint, blocker / "target", dtype="fp32")


def test_existing_output_needs_force(export, tiny_checkpoint, capsys):
    from nvlm_deploy.cli import main

    target = export("fp32")
    before = manifest(target)["created"]
    with pytest.raises(DeployError, match="already exists.*--force"):
        vision_onnx.export_vision_onnx(tiny_checkpoint, target, dtype="fp32")
    assert manifest(target)["created"] == before
    rc = main(["convert", "vision", "--model", str(tiny_checkpoint), "--out", str(target), "--dtype", "fp32",
               "--max-tiles-before-thumbnail", "4", "--force"])
    out = capsys.readouterr().out
    assert rc == 0 and "image_embeddings" in out and "vision_encoder.onnx" in out
    assert "4 + thumbnail" in out  # the target's limits, stated
    limits = json.loads((target / "manifest.json").read_text())["limits"]
    assert limits["max_tiles_before_thumbnail"] == 4 and limits["derived"]["max_tiles_per_image"] == 5


def test_folder_named_triton_on_path_is_reported(tmp_path, monkeypatch):
    (tmp_path / "triton").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DeployError, match="named 'triton'"):
        vision_onnx.check_no_triton_shadow()
