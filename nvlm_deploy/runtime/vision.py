"""The vision encoder on CPU: the exported ONNX graph under ONNX Runtime, same I/O as the engine.

The graph's I/O is in the model dtype (bf16 for NVLM-D). numpy has no bf16, so bf16 tensors cross
the ONNX Runtime boundary as raw 16-bit words: the input is rounded to bf16 (round to nearest even,
as torch does) and the output is widened back to float32, which is exact.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from nvlm_deploy.contracts.precision import from_onnx_runtime, precision
from nvlm_deploy.contracts.vision_io import INPUT_NAME, ONNX_FILE, OUTPUT_NAME
from nvlm_deploy.errors import DeployError

# ONNX Runtime element type string -> numpy dtype used at the boundary (bf16: see module docstring)
_BFLOAT16 = precision("bf16").onnx  # onnx.TensorProto.BFLOAT16


def resolve_onnx_path(path: str | Path) -> Path:
    """`path` itself if it is a file, else `<path>/vision_encoder.onnx` or `<path>/onnx/vision_encoder.onnx`."""
    path = Path(path)
    for candidate in (path, path / ONNX_FILE, path / "onnx" / ONNX_FILE):
        if candidate.is_file():
            return candidate
    raise DeployError(f"no {ONNX_FILE} at {path}: point at the onnx/ directory written by "
                      "`nvlm-deploy convert vision` (or at the target directory that holds it).")


class OnnxVisionEncoder:
    """pixel_values float32 [T, 3, S, S] -> image_embeddings float32 [T, tokens_per_tile, llm_hidden].

    Args:
        path: an onnx/ directory, a target directory holding onnx/, or the .onnx file.
        threads: intra-op threads of ONNX Runtime; None lets it choose.
        spinning: let ONNX Runtime's idle worker threads spin-wait for work (its default). Off here by
            default: in a server the spinning threads take the cores the decoder needs between calls.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, spinning: bool = False):
        import onnxruntime as ort

        from nvlm_deploy.contracts.target import verify_stage_dir

        self.path = resolve_onnx_path(path)
        verify_stage_dir(self.path.parent)  # files as `convert vision` wrote them (sizes), before loading
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: bf16 graphs make it warn about every large Cast it keeps
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:  # documented session config keys of ONNX Runtime (onnxruntime_session_options_config_keys.h)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        (inp,), (out,) = self.session.get_inputs(), self.session.get_outputs()
        if (inp.name, out.name) != (INPUT_NAME, OUTPUT_NAME):
            raise DeployError(f"{self.path} has I/O {inp.name} -> {out.name}; expected {INPUT_NAME} -> "
                              f"{OUTPUT_NAME}. Re-export it with `nvlm-deploy convert vision`.")
        self.input_type, self.output_type = inp.type, out.type
        self.image_size = int(inp.shape[-1])
        self.output_shape = tuple(out.shape)  # [T, tokens_per_tile, llm_hidden], T symbolic

    @property
    def dtype(self) -> str:
        return from_onnx_runtime(self.input_type).name

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """Run the graph on `pixel_values` [T, 3, S, S] (float32); returns float32 [T, tokens, hidden]."""
        x = np.asarray(pixel_values)
        expected = (3, self.image_size, self.image_size)
        if x.ndim != 4 or x.shape[1:] != expected or x.shape[0] < 1:
            raise DeployError(f"pixel_values has shape {list(x.shape)}; the vision encoder takes "
                              f"[T >= 1, {', '.join(map(str, expected))}].")
        import onnxruntime as ort

        feed = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(_to_bf16_bits(x), _BFLOAT16) \
            if self.input_type == "tensor(bfloat16)" else \
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, dtype=from_onnx_runtime(self.input_type).numpy_dtype()))
        (out,) = self.session.run_with_ort_values([OUTPUT_NAME], {INPUT_NAME: feed})
        if self.output_type == "tensor(bfloat16)":
            return _bf16_bits_to_float32(_ort_words(out))
        return out.numpy().astype(np.float32, copy=False)


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))
    out = (rounded >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), out)


def _bf16_bits_to_float32(words: np.ndarray) -> np.ndarray:
    return (words.astype(np.uint32) << 16).view(np.float32)


def _ort_words(value) -> np.ndarray:
    """Copy a 16-bit OrtValue on CPU into a uint16 array of its shape (numpy cannot view bf16)."""
    shape = tuple(value.shape())
    count = int(np.prod(shape))
    buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.ctypeslib.as_array(buffer).copy().reshape(shape)
