"""Small glue between Triton's `triton_python_backend_utils` and the handlers (used by model.py files).

`pb` is the `triton_python_backend_utils` module, passed in: it exists only inside the stub.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def model_setup(args: dict) -> tuple[dict, dict[str, str], Path]:
    """(model_config, string parameters, repository root) from initialize()'s args."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    root = Path(args["model_repository"]).resolve().parent  # args["model_repository"] is <repo>/<model>
    return config, params, root


def input_names(config: dict) -> list[str]:
    return [i["name"] for i in config["input"]]


def request_inputs(pb, request, names: list[str]) -> dict[str, np.ndarray | None]:
    """name -> numpy array (None when an optional input was not sent)."""
    return _arrays(pb.get_input_tensor_by_name, request, names)


def response_inputs(pb, response, names: list[str]) -> dict[str, np.ndarray | None]:
    """A BLS response's outputs, name -> numpy array (None when absent)."""
    return _arrays(pb.get_output_tensor_by_name, response, names)


def _arrays(get, source, names: list[str]) -> dict[str, np.ndarray | None]:
    tensors_by_name = {name: get(source, name) for name in names}
    return {name: None if t is None else t.as_numpy() for name, t in tensors_by_name.items()}


def tensors(pb, arrays: dict) -> list:
    """pb_utils.Tensor per name; values already pb_utils.Tensor (same name) pass through."""
    return [value if isinstance(value, pb.Tensor) else pb.Tensor(name, np.ascontiguousarray(value))
            for name, value in arrays.items()]


def error_response(pb, message: str):
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))


def text_tensor(text: str) -> np.ndarray:
    """`text_output` of one response: 1-D, one entry per beam (tensorrtllm_backend's clients read
    `output[0].decode()`)."""
    return np.array([text.encode("utf-8")], dtype=object)  # [beam = 1]


def table_tensor(pb, name: str, table: np.ndarray, data_type: str):
    """A float32 prompt table as a pb_utils.Tensor of the decoder's precision (Triton `data_type`).

    The C++ backend refuses a table whose dtype differs from the engine's
    (serve/upstream/tensorrtllm_backend_1.2.json, prompt_table_dtype); NumPy has no bf16, so a bf16
    table goes through torch and dlpack.
    """
    from nvlm_deploy.contracts.precision import from_triton

    target = from_triton(data_type)
    if target.numpy is None:
        import torch

        return pb.Tensor.from_dlpack(name, torch.from_numpy(np.ascontiguousarray(table)).to(target.torch_dtype()))
    return pb.Tensor(name, np.ascontiguousarray(table, dtype=target.numpy_dtype()))


def is_decoupled(config: dict) -> bool:
    """The model config's transaction policy (package --decoupled-mode)."""
    return bool((config.get("model_transaction_policy") or {}).get("decoupled", False))


class CollectedResponses:
    """A response sender's stand-in for non-decoupled models: keeps what would be sent, so `execute` can
    return one response per request (Triton's rule without a decoupled transaction policy)."""

    def __init__(self):
        self.responses: list = []

    def send(self, response=None, flags: int = 0) -> None:
        if response is not None:
            self.responses.append(response)

    def single(self, pb):
        """The one response to return: an error if any was sent, else the tensors of every response
        concatenated along the first axis (one row per answer)."""
        for response in self.responses:
            if response.has_error():
                return response
        if len(self.responses) == 1:
            return self.responses[0]
        merged: dict[str, list] = {}
        for response in self.responses:
            for tensor in response.output_tensors():
                merged.setdefault(tensor.name(), []).append(tensor.as_numpy())
        return pb.InferenceResponse(output_tensors=[pb.Tensor(name, np.concatenate(arrays))
                                                    for name, arrays in merged.items()])
