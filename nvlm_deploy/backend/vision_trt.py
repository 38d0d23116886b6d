"""The vision encoder's TensorRT plan inside the `vision_encoder` Python model (GPU deployments).

Thin on purpose: TensorRT and CUDA torch exist only in NVIDIA's container; the TensorRT calls are
checked against TensorRT 10's Python API (`ICudaEngine.get_tensor_profile_shape`,
`IExecutionContext.set_input_shape` returning False for a shape outside the profile,
`execute_async_v3`). Engine I/O is the ONNX graph's (contracts.vision_io).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nvlm_deploy.contracts.precision import PRECISIONS
from nvlm_deploy.contracts.vision_io import INPUT_NAME, OUTPUT_NAME, PLAN_FILE
from nvlm_deploy.errors import DeployError
from nvlm_deploy.lazy import require

TENSORRT_IN_CONTAINER = "use NVIDIA's Triton TensorRT-LLM container (it ships TensorRT)"


class TrtPlanVisionEncoder:
    """Args: path: the vision/ directory (holding model.plan) or the plan file; engine: an already
    deserialized engine (tests pass a stand-in; serving loads the plan)."""

    def __init__(self, path: str | Path, *, engine=None, trt=None, torch=None):
        trt = trt or require("tensorrt", install=TENSORRT_IN_CONTAINER, purpose="running the vision engine")
        if torch is None:
            import torch
        self.trt, self.torch = trt, torch
        path = Path(path)
        if engine is None:
            plan = path / PLAN_FILE if path.is_dir() else path
            if not plan.is_file():
                raise DeployError(f"no TensorRT plan at {plan}: build it with `nvlm-deploy build vision`.")
            engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
            if engine is None:
                raise DeployError(f"TensorRT could not load {plan}; it was built for another GPU or TensorRT "
                                  "version: rebuild it here with `nvlm-deploy build vision`.")
        self.engine = engine
        self.context = engine.create_execution_context()
        dtypes = {getattr(trt, p.tensorrt): p.torch_dtype() for p in PRECISIONS.values()}
        for name in (INPUT_NAME, OUTPUT_NAME):
            if engine.get_tensor_dtype(name) not in dtypes:
                raise DeployError(f"the vision engine's {name} is {engine.get_tensor_dtype(name)}; nvlm-deploy runs "
                                  f"{sorted(PRECISIONS)} engines: rebuild it with `nvlm-deploy build vision`.")
        self.input_dtype = dtypes[engine.get_tensor_dtype(INPUT_NAME)]
        self.output_dtype = dtypes[engine.get_tensor_dtype(OUTPUT_NAME)]
        _, _, most = engine.get_tensor_profile_shape(INPUT_NAME, 0)  # (min, opt, max) of profile 0
        self.max_tiles = int(most[0])

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [T, 3, S, S] -> float32 [T, tokens, hidden]."""
        torch = self.torch
        tiles = int(np.shape(pixel_values)[0])
        if tiles > self.max_tiles:
            raise DeployError(f"{tiles} tiles exceed the vision engine's profile (at most {self.max_tiles} per call); "
                              "send fewer images, or rebuild the engine with larger limits (`nvlm-deploy build vision`).")
        x = torch.from_numpy(np.ascontiguousarray(pixel_values)).cuda().to(self.input_dtype)
        if not self.context.set_input_shape(INPUT_NAME, tuple(x.shape)):
            raise DeployError(f"the vision engine refused input shape {list(x.shape)} (outside its optimization "
                              "profile); rebuild it with `nvlm-deploy build vision` for these limits.")
        out = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), dtype=self.output_dtype, device="cuda")
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise DeployError("the vision engine failed to run (see the TensorRT log above).")
        stream.synchronize()
        return out.float().cpu().numpy()
