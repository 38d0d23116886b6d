"""THE precision registry: one spelling per floating-point precision, and its name in every library.

Every command spells a precision as its registry name (`fp32`, `fp16`, `bf16`); every other
name (torch, NumPy, ONNX, ONNX Runtime, TensorRT, TensorRT-LLM, Triton, safetensors) is looked up
here. Quantization recipes (fp8, int4_awq) are a registry of their own, not precisions.

Sources of the foreign names: ONNX `TensorProto.DataType` (FLOAT 1, FLOAT16 10, BFLOAT16 16);
ONNX Runtime's type strings (`tensor(float)`, ...); TensorRT 10 `trt.DataType` members and
`trt.BuilderFlag` (FP16, BF16); TensorRT-LLM checkpoint `config.json` `dtype` strings
(`tensorrt_llm/_utils.py` str_dtype_to_torch); Triton `model_config.proto` `TYPE_*`; the
safetensors header dtype codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nvlm_deploy.errors import DeployError

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class Tolerance:
    atol: float  # on max|export - torch|
    rtol: float  # on max|export - torch| / max|torch|


@dataclass(frozen=True)
class Precision:
    name: str  # the one CLI spelling
    torch: str  # attribute of the torch module
    numpy: str | None  # NumPy dtype name; None: NumPy has no such type (bf16 goes through torch / dlpack)
    onnx: int  # onnx.TensorProto data type
    onnx_runtime: str  # ONNX Runtime's NodeArg.type
    tensorrt: str  # trt.DataType member
    tensorrt_flag: str | None  # trt.BuilderFlag that enables it (None: TensorRT's default, fp32/tf32)
    trtllm: str  # TensorRT-LLM config.json "dtype"
    triton: str  # Triton model config data_type
    safetensors: str  # safetensors header dtype
    itemsize: int  # bytes per element
    # Export self-check (same-dtype comparison, ONNX graph vs torch). fp32: accumulation order only;
    # fp16 / bf16: about 5 units in the last place at the output's scale (2^-10, 2^-8), since kernels
    # round intermediates differently (the bf16 graph computes in fp32 on stored bf16 weights).
    tolerance: Tolerance

    def torch_dtype(self) -> "torch.dtype":
        import torch

        return getattr(torch, self.torch)

    def numpy_dtype(self) -> "np.dtype":
        """NumPy dtype; bf16 has none, so asking for it is an error naming the way round it."""
        import numpy as np

        if self.numpy is None:
            raise DeployError(f"{self.name} has no NumPy dtype: move {self.name} data as torch tensors (dlpack).")
        return np.dtype(self.numpy)


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", torch="float32", numpy="float32", onnx=1, onnx_runtime="tensor(float)", tensorrt="float32",
              tensorrt_flag=None, trtllm="float32", triton="TYPE_FP32", safetensors="F32", itemsize=4,
              tolerance=Tolerance(atol=1e-5, rtol=1e-4)),
    Precision("fp16", torch="float16", numpy="float16", onnx=10, onnx_runtime="tensor(float16)", tensorrt="float16",
              tensorrt_flag="FP16", trtllm="float16", triton="TYPE_FP16", safetensors="F16", itemsize=2,
              tolerance=Tolerance(atol=1e-3, rtol=5e-3)),
    Precision("bf16", torch="bfloat16", numpy=None, onnx=16, onnx_runtime="tensor(bfloat16)", tensorrt="bfloat16",
              tensorrt_flag="BF16", trtllm="bfloat16", triton="TYPE_BF16", safetensors="BF16", itemsize=2,
              tolerance=Tolerance(atol=8e-3, rtol=2e-2)),
)}
CHOICES = tuple(PRECISIONS)
DEFAULT = "bf16"  # NVLM-D ships bf16
COMPUTE = "fp32"  # the CPU runtimes compute in fp32 (exact on CPU; the stored values are kept)


def precision(name: "str | Precision") -> Precision:
    """The registry entry for a CLI name; a Precision passes through."""
    if isinstance(name, Precision):
        return name
    if name not in PRECISIONS:
        raise DeployError(f"precision {name!r} is not one of {list(CHOICES)}.")
    return PRECISIONS[name]


def _by(field: str, value: object, *, what: str) -> Precision:
    for p in PRECISIONS.values():
        if getattr(p, field) == value:
            return p
    raise DeployError(f"{what} {value!r} is not a supported precision "
                      f"(known: {[getattr(p, field) for p in PRECISIONS.values()]}).")


def from_trtllm(dtype: str) -> Precision:
    return _by("trtllm", dtype, what="TensorRT-LLM dtype")


def from_triton(data_type: str) -> Precision:
    return _by("triton", data_type, what="Triton data type")


def from_onnx_runtime(type_string: str) -> Precision:
    return _by("onnx_runtime", type_string, what="ONNX Runtime type")


def from_torch_name(name: str) -> Precision:
    """From torch's (and HF config.json's `torch_dtype`) spelling: "bfloat16", "float16", "float32"."""
    return _by("torch", name, what="torch dtype")


def from_torch(dtype: "torch.dtype") -> Precision:
    return from_torch_name(str(dtype).removeprefix("torch."))
