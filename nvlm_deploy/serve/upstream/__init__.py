"""Upstream facts the packaged configs depend on, kept as data with their source (file, commit, version).

`TENSORRTLLM_BACKEND`: tensorrtllm_backend's C++ backend in the TensorRT-LLM 1.2 line (read from
its source; never run here). Tests check the generated GPU configs against it.
"""

from __future__ import annotations

import json
from pathlib import Path

TENSORRTLLM_BACKEND = json.loads((Path(__file__).parent / "tensorrtllm_backend_1.2.json").read_text(encoding="utf-8"))


def missing_required_parameters(config) -> list[str]:
    """Parameters the tensorrtllm backend reads without a fallback that `config` (a ModelConfig) lacks."""
    return sorted(set(TENSORRTLLM_BACKEND["required_parameters"]) - set(config.parameters))


def io_mismatches(config) -> list[str]:
    """How `config`'s tensors differ from upstream's tensorrt_llm model (name, data_type, dims, reshape,
    optional, allow_ragged_batch); [] when they agree. The prompt table's data_type and width are the
    engine's by design (the C++ side requires the engine's dtype), so only its rank is compared."""
    from tritonclient.grpc import model_config_pb2

    facts, problems = TENSORRTLLM_BACKEND["tensorrt_llm_io"], []
    for kind, tensors in (("inputs", config.input), ("outputs", config.output)):
        for tensor in tensors:
            upstream = facts[kind].get(tensor.name)
            if upstream is None:
                problems.append(f"{tensor.name}: not a tensor of upstream's tensorrt_llm model")
                continue
            ours = {"data_type": model_config_pb2.DataType.Name(tensor.data_type), "dims": list(tensor.dims),
                    "reshape": list(tensor.reshape.shape) if tensor.HasField("reshape") else None,
                    "optional": tensor.optional if kind == "inputs" else None,
                    "allow_ragged_batch": tensor.allow_ragged_batch if kind == "inputs" else None}
            if tensor.name == "prompt_embedding_table":
                ours["data_type"], ours["dims"] = upstream["data_type"], [ours["dims"][0], -1]
            problems += [f"{tensor.name}: {key} {ours[key]} (upstream {upstream[key]})"
                         for key in ours if ours[key] != upstream[key]]
    return problems
