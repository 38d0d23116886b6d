"""The vision encoder's TensorRT plan inside the `vision_encoder` Python model (GPU deployments).

Thin on purpose: TensorRT and CUDA torch exist only in NVIDIA's container; tested by `gpu` tests.
Engine I/O is the ONNX graph's: `pixel_values` [T, 3, S, S] -> `image_embeddings` [T, tokens, hidden].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nvlm_deploy.errors import DeployError
from nvlm_deploy.lazy import require

PLAN_FILE = "model.plan"


class TrtPlanVisionEncoder:
    """Args: path: the vision/ directory (holding model.plan) or the plan file."""

    def __init__(self, path: str | Path):
        trt = require("tensorrt", install="use NVIDIA's Triton TensorRT-LLM container (it ships TensorRT)",
                      purpose="running the vision engine")
        import torch

        path = Path(path)
        plan = path / PLAN_FILE if path.is_dir() else path
        if not plan.is_file():
            raise DeployError(f"no TensorRT plan at {plan}: build it with `nvlm-deploy build vision`.")
        self.torch = torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise DeployError(f"TensorRT could not load {plan}; it was built for another GPU or TensorRT "
                              "version: rebuild it here with `nvlm-deploy build vision`.")
        self.context = self.engine.create_execution_context()
        self.input_dtype = _torch_dtype(torch, trt, self.engine.get_tensor_dtype("pixel_values"))
        self.output_dtype = _torch_dtype(torch, trt, self.engine.get_tensor_dtype("image_embeddings"))

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [T, 3, S, S] -> float32 [T, tokens, hidden]."""
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(pixel_values)).cuda().to(self.input_dtype)
        self.context.set_input_shape("pixel_values", tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape("image_embeddings")), dtype=self.output_dtype,
                          device="cuda")
        self.context.set_tensor_address("pixel_values", x.data_ptr())
        self.context.set_tensor_address("image_embeddings", out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise DeployError("the vision engine failed to run (see the TensorRT log above).")
        stream.synchronize()
        return out.float().cpu().numpy()


def _torch_dtype(torch, trt, dtype):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
    return table[dtype]
