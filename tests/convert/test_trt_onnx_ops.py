"""The exported graph against TensorRT's ONNX-parser operator table (kept as data)."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from nvlm_deploy.convert import trt_onnx_ops
from nvlm_deploy.errors import DeployError


def graph(nodes, inputs, outputs, *, opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vinfo(name, elem=TensorProto.FLOAT, shape=(4,)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_table_records_its_source():
    assert trt_onnx_ops.TENSORRT_VERSION.startswith("10.")
    assert "onnx/onnx-tensorrt" in trt_onnx_ops.SOURCE_URL and trt_onnx_ops.SOURCE_URL.endswith("operators.md")
    assert len(trt_onnx_ops.SOURCE_COMMIT) == 40
    assert not set(trt_onnx_ops.SUPPORTED_OPS) & trt_onnx_ops.UNSUPPORTED_OPS
    assert "BF16" in trt_onnx_ops.SUPPORTED_OPS["MatMul"] and "Unique" in trt_onnx_ops.UNSUPPORTED_OPS


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_exported_vision_graph_is_parseable(tiny_checkpoint, dtype):
    from nvlm_deploy.convert import vision_onnx

    encoder = vision_onnx.load_vision_encoder(tiny_checkpoint, dtype=dtype)
    model = vision_onnx.fold_constants(vision_onnx.export_graph(encoder))
    if dtype == "bf16":
        model = vision_onnx.bf16_storage(model)
    result = trt_onnx_ops.require_trt_compatible(model)
    assert result.ok and result.opset == 18
    assert set(result.op_counts) <= set(trt_onnx_ops.SUPPORTED_OPS)
    assert result.op_counts["MatMul"] >= 4


def test_unsupported_op_fails():
    model = graph([helper.make_node("Unique", ["x"], ["y"], name="dedup")], [vinfo("x")], [vinfo("y")])
    result = trt_onnx_ops.check_trt_compatibility(model)
    assert not result.ok and result.problems[0].node == "dedup"
    with pytest.raises(DeployError, match="dedup \\(Unique\\): listed as unsupported"):
        trt_onnx_ops.require_trt_compatible(model)


def test_unknown_and_custom_domain_ops_fail():
    nodes = [helper.make_node("FancyAttention", ["x"], ["y"], name="a", domain="com.example"),
             helper.make_node("NotAnOnnxOp", ["y"], ["z"], name="b")]
    model = graph(nodes, [vinfo("x")], [vinfo("z")])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    reasons = {p.node: p.reason for p in trt_onnx_ops.check_trt_compatibility(model).problems}
    assert "plugin" in reasons["a"] and reasons["b"] == "not in the table"


def test_element_type_and_opset_are_checked():
    bool_on_float = graph([helper.make_node("Not", ["x"], ["y"], name="n")], [vinfo("x")], [vinfo("y")])
    (problem,) = trt_onnx_ops.check_trt_compatibility(bool_on_float).problems
    assert "FP32" in problem.reason
    too_new = graph([helper.make_node("Relu", ["x"], ["y"])], [vinfo("x")], [vinfo("y")], opset=21)
    (problem,) = trt_onnx_ops.check_trt_compatibility(too_new).problems
    assert problem.op_type == "opset" and "21" in problem.reason


def test_reads_graph_without_external_data(tmp_path):
    model = graph([helper.make_node("Relu", ["x"], ["y"])], [vinfo("x")], [vinfo("y")])
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert trt_onnx_ops.check_trt_compatibility(tmp_path / "m.onnx").op_counts == {"Relu": 1}
