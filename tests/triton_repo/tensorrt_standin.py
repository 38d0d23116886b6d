"""STAND-INS for the `tensorrt` module and a deserialized vision engine, for the GPU vision path.

Stand-ins because TensorRT cannot be installed here (it needs an NVIDIA GPU and CUDA); the real
engine is tested by tests/backend/test_vision.py::test_tensorrt_plan_matches_onnx_runtime (marker
`gpu`). They follow TensorRT 10's Python API where TrtPlanVisionEncoder uses it
(`ICudaEngine.create_execution_context`, `get_tensor_dtype`, `get_tensor_profile_shape` ->
(min, opt, max), `IExecutionContext.set_input_shape` returning False outside the profile) and
compute nothing: running the engine raises, so no test can pass on a faked GPU result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from nvlm_deploy.contracts.precision import PRECISIONS
from nvlm_deploy.contracts.vision_io import INPUT_NAME, OUTPUT_NAME


@dataclass(frozen=True)
class DataType:
    """A stand-in `trt.DataType` member: distinct per precision, equal only to itself."""

    name: str


# the stand-in `tensorrt` module: only the DataType members TrtPlanVisionEncoder maps
STANDIN_TENSORRT = SimpleNamespace(**{p.tensorrt: DataType(f"trt.{p.tensorrt}") for p in PRECISIONS.values()})


def trt_dtype(precision: str) -> DataType:
    """The stand-in trt.DataType of a precision registry name ("fp32", "fp16", "bf16")."""
    return getattr(STANDIN_TENSORRT, PRECISIONS[precision].tensorrt)


Shape = tuple[int, ...]


@dataclass
class StandInContext:
    """A stand-in IExecutionContext: checks input shapes against the profile and records the calls."""

    profile: tuple[Shape, Shape, Shape]
    calls: list[tuple] = field(default_factory=list)

    def set_input_shape(self, name: str, shape: Shape) -> bool:
        self.calls.append(("set_input_shape", name, tuple(shape)))
        low, _, high = self.profile
        return name == INPUT_NAME and len(shape) == len(high) and all(a <= s <= b for a, s, b in zip(low, shape, high))

    def __getattr__(self, name: str):  # get_tensor_shape, set_tensor_address, execute_async_v3, ...
        raise NotImplementedError(f"the stand-in vision engine cannot {name}: it computes nothing "
                                  "(run the real engine with the `gpu` tests)")


@dataclass
class StandInVisionEngine:
    """A stand-in ICudaEngine with the vision graph's I/O (contracts.vision_io) and one optimization profile.

    Args:
        input_dtype / output_dtype: stand-in trt.DataType of pixel_values / image_embeddings.
        profile: (min, opt, max) shapes of pixel_values in profile 0.
    """

    input_dtype: DataType
    output_dtype: DataType
    profile: tuple[Shape, Shape, Shape]
    contexts: list[StandInContext] = field(default_factory=list)

    def create_execution_context(self) -> StandInContext:
        self.contexts.append(StandInContext(self.profile))
        return self.contexts[-1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return {INPUT_NAME: self.input_dtype, OUTPUT_NAME: self.output_dtype}[name]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> tuple[Shape, Shape, Shape]:
        assert (name, profile_index) == (INPUT_NAME, 0), f"the engine has one profile, on {INPUT_NAME}"
        return self.profile


class UntouchableTorch:
    """Passed as TrtPlanVisionEncoder's `torch` where a test must show that nothing reached torch or CUDA
    (CUDA torch cannot run here): any use raises AssertionError, never the DeployError a check raises."""

    def __getattr__(self, name: str):
        raise AssertionError(f"torch.{name} was used: the request reached torch / CUDA before being refused")
