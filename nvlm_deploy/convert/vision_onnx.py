"""Export the vision encoder (InternViT + CLS drop + pixel shuffle + mlp1) to one ONNX graph.

The exported module is the reference's own `NvlmModel.extract_feature` path, run on the
reference's own `vision_model` and `mlp1` modules; the decoder is never loaded. I/O (DESIGN.md):
`pixel_values [T,3,S,S]` -> `image_embeddings [T,tokens_per_tile,llm_hidden]`, T dynamic, in the
model dtype. torch's dynamo exporter at opset 18 (TensorRT 10.x parses 9-20; dynamo cannot go
lower), constants folded with onnx-graphsurgeon, weights over 2 GB in external data.

bf16: ONNX Conv takes no bf16 before opset 22 and ONNX Runtime's CPU kernels have no bf16 math,
so the bf16 graph stores its weights and I/O in bf16 and computes in fp32 behind Cast nodes
(`bf16_storage`); TensorRT picks bf16 kernels from the BF16 builder flag.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch
from torch import nn

from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.errors import DeployError
from nvlm_deploy.contracts.precision import Precision, precision
from nvlm_deploy.contracts.vision_io import EXTERNAL_DATA_FILE, INPUT_NAME, ONNX_FILE, OUTPUT_NAME

OPSET = 18
EXAMPLE_TILES = 2  # dynamo specialises a dimension whose example size is 1
PROTOBUF_LIMIT = 2 * 1024**3  # weights above this go to external data
FOLD_SIZE_LIMIT = 16 * 1024**2  # never fold into constants larger than this (no weight copies)
VISION_PREFIXES = ("vision_model.", "mlp1.")


class VisionEncoder(nn.Module):
    """`NvlmModel.extract_feature` as a module of its own: vision_model + mlp1, no decoder."""

    def __init__(self, config: NvlmConfig, vision_model: nn.Module, mlp1: nn.Module):
        super().__init__()
        self.config = config
        self.vision_model = vision_model
        self.mlp1 = mlp1

    @classmethod
    def from_model(cls, model) -> "VisionEncoder":
        """Share the modules of a loaded `NvlmModel`."""
        return cls(model.config, model.vision_model, model.mlp1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        from nvlm_deploy.model.nvlm import NvlmModel

        return NvlmModel.extract_feature(self, pixel_values)  # [T, tokens_per_tile, llm_hidden]


def load_vision_encoder(model_dir: str | Path, *, dtype: str = "bf16") -> VisionEncoder:
    """Load only `vision_model.*` and `mlp1.*` of a HF NVLM-D checkpoint (memory-mapped).

    Args:
        model_dir: HF checkpoint directory.
        dtype: a precision name ("fp32" | "fp16" | "bf16").
    """
    from nvlm_deploy.model.checkpoint import CheckpointIndex, check_names
    from nvlm_deploy.model.nvlm import NvlmModel

    config = NvlmConfig.from_hf(model_dir)
    index = CheckpointIndex.open(model_dir)
    found = [n for p in VISION_PREFIXES for n in index.names(p)]
    if not index.names("vision_model."):
        raise DeployError(f"{model_dir} has no vision weights (no tensor named vision_model.*): it looks like "
                          "a decoder-only checkpoint. Point --model at the full NVLM-D checkpoint.")
    with torch.device("meta"):
        full = NvlmModel(config)  # the reference's own modules; the decoder stays on meta
    encoder = VisionEncoder(config, full.vision_model, full.mlp1)
    del full
    check_names(expected=encoder.state_dict().keys(), found=found, where=str(model_dir))
    target = precision(dtype).torch_dtype()
    state = {name: index.get(name).to(target) for name in found}
    encoder.load_state_dict(state, assign=True)
    return encoder.eval()


def check_no_triton_shadow() -> None:
    """A folder named `triton` on sys.path imports as a namespace package, and torch's dynamo then
    takes it for OpenAI Triton and fails (toolchain.md §2). Say so before exporting."""
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin in (None, "namespace"):
        where = ", ".join(spec.submodule_search_locations or [])
        raise DeployError(f"a directory named 'triton' on the Python path ({where}) shadows OpenAI Triton and "
                          "breaks torch's ONNX exporter. Rename it, or run from another directory.")


def export_graph(encoder: VisionEncoder):
    """torch -> onnx.ModelProto (dynamo, opset 18, T dynamic), in the encoder's dtype."""
    import warnings

    check_no_triton_shadow()
    dtype = next(encoder.parameters()).dtype
    size = encoder.config.image_size
    example = torch.zeros(EXAMPLE_TILES, 3, size, size, dtype=dtype)
    tiles = torch.export.Dim("num_tiles", min=1)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(encoder, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes={"pixel_values": {0: tiles}}, opset_version=OPSET,
                                    dynamo=True, optimize=True, verbose=False)
    return program.model_proto


def fold_constants(model, *, limit: int = FOLD_SIZE_LIMIT):
    """Constant folding with onnx-graphsurgeon, on a skeleton without the large weights.

    Constants over `limit` bytes are never folded, so they stay out of graphsurgeon, whose
    import/export would copy them twice: the folded skeleton's nodes and small constants are put
    back into `model` (changed in place and returned) next to its untouched large initializers.
    """
    import onnx
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.logger import G_LOGGER

    graph = model.graph
    large = {t.name for t in graph.initializer if _tensor_bytes(t) > limit}
    skeleton = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    for field in ("node", "input", "output", "value_info"):
        getattr(skeleton.graph, field).extend(getattr(graph, field))
    skeleton.graph.initializer.extend(t for t in graph.initializer if t.name not in large)
    severity, G_LOGGER.severity = G_LOGGER.severity, G_LOGGER.ERROR  # it warns on each bf16 constant
    try:
        folded = gs.export_onnx(gs.import_onnx(skeleton).fold_constants(size_threshold=limit)
                                .cleanup().toposort()).graph
    finally:
        G_LOGGER.severity = severity
    used = {name for node in folded.node for name in node.input}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in large or graph.initializer[i].name not in used:
            del graph.initializer[i]
    graph.initializer.extend(folded.initializer)
    for field in ("node", "input", "output", "value_info"):
        del getattr(graph, field)[:]
        getattr(graph, field).extend(getattr(folded, field))
    return model


def _tensor_bytes(t) -> int:
    import numpy as np
    from onnx import helper

    return int(np.prod(t.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def weight_bytes(model) -> int:
    return sum(_tensor_bytes(t) for t in model.graph.initializer)


EXTERNAL_MIN_BYTES = 1024  # initializers at least this large go to the external data file (as onnx.save_model's default)


def save_graph(model, path: Path, *, limit: int = PROTOBUF_LIMIT) -> bool:
    """Write the graph; weights go to `<name>.data` when over `limit` bytes. Returns that choice.

    Both files are hashed as they are written (`artifacts.write_recorded`, `StreamHash`), so the
    stage's manifest records them without reading gigabytes back. The external data follows the
    ONNX external-data format (onnx/docs/ExternalData.md): each large initializer's raw bytes at
    an offset of one file, named by `location`, `offset` and `length` entries; the raw bytes leave
    the in-memory graph as they are written, so its memory goes down as the file grows.
    """
    from onnx import TensorProto

    from nvlm_deploy.artifacts import StreamHash, remember, write_recorded

    external = weight_bytes(model) > limit
    if external:
        data_path = path.parent / EXTERNAL_DATA_FILE
        stream, offset = StreamHash(), 0
        with open(data_path, "wb") as f:
            for tensor in model.graph.initializer:
                if tensor.data_location == TensorProto.EXTERNAL or len(tensor.raw_data) < EXTERNAL_MIN_BYTES:
                    continue  # typed-field or small tensors stay inline, as onnx.save_model leaves them
                raw = tensor.raw_data
                f.write(raw)
                stream.update_at(offset, raw)
                del tensor.external_data[:]
                for key, value in (("location", EXTERNAL_DATA_FILE), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                tensor.data_location = TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
                offset += len(raw)
        remember(data_path, stream.finish(offset))
    write_recorded(path, model.SerializeToString())
    return external




def bf16_storage(model):
    """A bf16 graph -> the same graph computing in fp32: bf16 weights and I/O, Casts at the edges.

    Every bf16 initializer `w` becomes `w.bf16` + Cast(to=FLOAT) named `w`; casts to bf16 inside the
    graph become casts to fp32 (identity on fp32 values); the input is cast up after entering and
    the output cast down before leaving, so the I/O stays bf16.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    bf16, fp32 = TensorProto.BFLOAT16, TensorProto.FLOAT
    graph = model.graph
    casts = []
    for t in graph.initializer:
        if t.data_type == bf16:
            name = t.name
            t.name = name + ".bf16"
            casts.append(helper.make_node("Cast", [t.name], [name], to=fp32, name=f"/bf16_storage/{name}"))
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == bf16:
                attr.i = fp32
            elif attr.type == attr.TENSOR and attr.t.data_type == bf16:
                attr.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
        node.input[:] = [f"{INPUT_NAME}.fp32" if i == INPUT_NAME else i for i in node.input]
        node.output[:] = [f"{OUTPUT_NAME}.fp32" if o == OUTPUT_NAME else o for o in node.output]
    casts.append(helper.make_node("Cast", [INPUT_NAME], [f"{INPUT_NAME}.fp32"], to=fp32, name="/bf16_storage/input"))
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + body)
    graph.node.append(helper.make_node("Cast", [f"{OUTPUT_NAME}.fp32"], [OUTPUT_NAME], to=bf16,
                                       name="/bf16_storage/output"))
    del graph.value_info[:]  # intermediate types changed; shape inference restates what it needs
    return model


def export_vision_onnx(model_dir: str | Path, out_dir: str | Path, *, dtype: str | Precision = "bf16",
                       force: bool = False, check_tiles: tuple[int, ...] | None = None) -> Path:
    """Write `<out_dir>/onnx/` (vision_encoder.onnx [+ .data], manifest.json) and check it against torch.

    The graph takes any T >= 1; the engine's tile profile comes from the target's limits.

    Args:
        model_dir: HF NVLM-D checkpoint directory.
        out_dir: the target directory; this stage owns its `onnx/` subdirectory.
        dtype: precision of the graph's weights and I/O ("bf16" | "fp16" | "fp32").
        force: replace an existing `<out_dir>/onnx`.
        check_tiles: tile counts of the self-check; None means onnx_check.CHECK_TILES.
    Returns:
        the `onnx/` directory.
    """
    from nvlm_deploy.artifacts import atomic_output_dir, input_hashes
    from nvlm_deploy.contracts.manifest import OnnxManifest, tool_versions, write_manifest
    from nvlm_deploy.contracts.target import Target
    from nvlm_deploy.convert.onnx_check import CHECK_TILES, check_against_torch, require_passed

    prec = precision(dtype)
    config = NvlmConfig.from_hf(model_dir)
    target = Target(out_dir)
    target.settle_limits(config, model_dir=model_dir, choices={})
    with atomic_output_dir(target.dir("onnx"), force=force) as tmp:
        encoder = load_vision_encoder(model_dir, dtype=prec.name)
        facts = write_graph(encoder, tmp / ONNX_FILE, dtype=prec.name)
        report = require_passed(check_against_torch(tmp / ONNX_FILE, encoder, dtype=prec.name,
                                                    tiles=check_tiles or CHECK_TILES), where=str(model_dir))
        write_manifest(tmp, OnnxManifest(
            model_dir=str(Path(model_dir).resolve()), input_hashes=input_hashes(model_dir), precision=prec.name,
            image_size=config.image_size, tokens_per_tile=config.tokens_per_tile, hidden_size=config.llm.hidden_size,
            opset=OPSET, exporter="torch.onnx.export(dynamo=True)", compute=_COMPUTE[prec.name],
            check=report.as_dict(), tools=tool_versions("torch", "onnx", "onnxruntime", "onnxscript", "onnx-graphsurgeon"),
            **facts))
    return target.dir("onnx")


def write_graph(encoder: VisionEncoder, path: Path, *, dtype: str) -> dict:
    """Export, fold, (bf16: bf16_storage), save, check ops against TensorRT's table.

    Returns the facts the manifest records about the graph.
    """
    from nvlm_deploy.convert.trt_onnx_ops import SOURCE_URL, require_trt_compatible

    start = time.perf_counter()
    model = fold_constants(export_graph(encoder))
    if dtype == "bf16":
        model = bf16_storage(model)
    external = save_graph(model, path)
    n_bytes, n_nodes = weight_bytes(model), len(model.graph.node)
    del model
    compat = require_trt_compatible(path)  # the saved graph, without its external data
    return {
        "onnx_file": path.name, "external_data_file": EXTERNAL_DATA_FILE if external else None,
        "weight_bytes": n_bytes, "nodes": n_nodes, "export_seconds": round(time.perf_counter() - start, 2),
        "tensorrt_onnx_ops": {"tensorrt": compat.tensorrt_version, "source": SOURCE_URL, "ops": compat.op_counts},
    }


_COMPUTE = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16 weights and I/O, fp32 math behind Cast nodes"}
