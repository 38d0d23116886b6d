"""Which ONNX operators TensorRT's ONNX parser accepts, as data, and a check of a graph against it.

Source (kept verbatim as data below, grouped by the element types the table lists):
    onnx/onnx-tensorrt, tag release/10.1-GA (commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c),
    docs/operators.md: "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20".
    https://github.com/onnx/onnx-tensorrt/blob/release/10.1-GA/docs/operators.md
We target TensorRT 10.x (the TensorRT-LLM 1.x releases that still build engines ship 10.x). The 10.1
table is the oldest 10.x table with BF16 types; later 10.x tables only add operators and opsets
(10.15: opsets 9-24, Attention, RMSNormalization, ...), so a graph that passes here parses on every
TensorRT 10.x we build with. One typo of the source (ConstantOfShape "INF64") is read as INT64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nvlm_deploy.errors import DeployError

if TYPE_CHECKING:
    import onnx

TENSORRT_VERSION = "10.1"
SOURCE_URL = "https://github.com/onnx/onnx-tensorrt/blob/release/10.1-GA/docs/operators.md"
SOURCE_COMMIT = "96e781103cfc4adf4a6bb557e94bac8e693f6f4c"
OPSET_RANGE = (9, 20)  # inclusive, default ONNX domain

# (element types the table lists, operators with "Supported: Y")
_SUPPORTED_GROUPS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("FP32", "FP16", "BF16"), """
        Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv
        ConvTranspose Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool
        GlobalLpPool GlobalMaxPool GroupNormalization GRU HardSigmoid HardSwish Hardmax ImageScaler
        InstanceNormalization IsInf LayerNormalization LeakyRelu Log LogSoftmax LRN LSTM LpNormalization
        LpPool MatMul MaxPool MeanVarianceNormalization ParametricSoftplus Pow PRelu QuantizeLinear
        RandomNormal RandomNormalLike RandomUniform RandomUniformLike Reciprocal Resize RNN Round
        ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu
        Upsample
    """),
    (("FP32", "FP16", "BF16", "INT32", "INT64"), """
        Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual Max
        Min Mod Mul Neg Pad Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
        ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Scatter ScatterElements ScatterND Shrink
        Sign SpaceToDepth Sub Sum TopK
    """),
    (("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"), """
        Concat Constant ConstantOfShape Expand EyeLike Flatten Gather GatherElements GatherND Identity
        If Loop OneHot Reshape ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu
        Unsqueeze Where
    """),
    (("FP32", "FP16"), "DeformConv GridSample Mish NonMaxSuppression NonZero RoiAlign"),
    (("BOOL",), "And Not Or Xor"),
    (("FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"), "Cast CastLike"),
    (("INT8", "FP8", "INT4"), "DequantizeLinear"),
    (("FP32", "FP16", "BF16", "INT8", "INT32", "INT64"), "Gelu"),
    (("FP32", "FP16", "BF16", "FP8", "INT32", "INT64"), "Mean"),
)

# "Supported: N" in the same table.
UNSUPPORTED_OPS = frozenset("""
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Col2Im
    CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
    HammingWindow HannWindow ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix
    Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv
    QLinearMatMul RegexFullMatch STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase
    SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat
    StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

SUPPORTED_OPS: dict[str, frozenset[str]] = {
    op: frozenset(types) for types, ops in _SUPPORTED_GROUPS for op in ops.split()
}

# ONNX TensorProto element type -> the table's spelling (types the table never names map to None).
_ONNX_TYPE_NAMES = {1: "FP32", 10: "FP16", 16: "BF16", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8",
                    9: "BOOL", 17: "FP8", 22: "INT4", 11: "DOUBLE"}


@dataclass(frozen=True)
class OpProblem:
    node: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class TrtCompatibility:
    """Result of `check_trt_compatibility`: ops used (with counts), opset, and every problem found."""

    tensorrt_version: str
    opset: int
    op_counts: dict[str, int]
    problems: tuple[OpProblem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return (f"all {sum(self.op_counts.values())} nodes ({len(self.op_counts)} op types) are in "
                    f"TensorRT {self.tensorrt_version}'s ONNX parser table; opset {self.opset}")
        lines = [f"{len(self.problems)} node(s) TensorRT {self.tensorrt_version}'s ONNX parser rejects "
                 f"(table: {SOURCE_URL}):"]
        lines += [f"  {p.node} ({p.op_type}): {p.reason}" for p in self.problems[:20]]
        return "\n".join(lines)


def check_trt_compatibility(model: "onnx.ModelProto | str | Path") -> TrtCompatibility:
    """Check every node's op type, its data input's element type, and the opset against the table.

    Args:
        model: an ONNX ModelProto or a path (external data is not loaded: only the graph is read).
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    types = _element_types(model)
    problems: list[OpProblem] = []
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(OpProblem("<model>", "opset", f"opset {opset} is outside {OPSET_RANGE}"))
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        problem = _node_problem(node, types)
        if problem:
            problems.append(problem)
    return TrtCompatibility(TENSORRT_VERSION, opset, dict(sorted(counts.items())), tuple(problems))


def require_trt_compatible(model: "onnx.ModelProto | str | Path") -> TrtCompatibility:
    """`check_trt_compatibility`, raising a DeployError that lists the offending nodes."""
    result = check_trt_compatibility(model)
    if not result.ok:
        raise DeployError(result.summary())
    return result


def _node_problem(node, types: dict[str, int]) -> OpProblem | None:
    name = node.name or node.output[0]
    if node.domain not in ("", "ai.onnx"):
        return OpProblem(name, node.op_type, f"custom domain {node.domain!r} needs a TensorRT plugin")
    if node.op_type not in SUPPORTED_OPS:
        listed = "listed as unsupported" if node.op_type in UNSUPPORTED_OPS else "not in the table"
        return OpProblem(name, node.op_type, listed)
    data = node.input[0] if node.input else ""
    elem = _ONNX_TYPE_NAMES.get(types.get(data, 0)) if data else None
    if elem is not None and elem not in SUPPORTED_OPS[node.op_type]:
        return OpProblem(name, node.op_type, f"input {data!r} is {elem}; the table lists "
                                             f"{sorted(SUPPORTED_OPS[node.op_type])}")
    return None


def _element_types(model) -> dict[str, int]:
    """Element type of every named tensor the graph states or shape inference can give."""
    import onnx

    graph = model.graph
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except onnx.onnx_cpp2py_export.shape_inference.InferenceError:  # keep the stated types only
        pass
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.output, *graph.value_info):
        types[info.name] = info.type.tensor_type.elem_type
    return types
