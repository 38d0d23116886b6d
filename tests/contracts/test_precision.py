"""The precision registry: one spelling per precision, every library's name for it, and round trips."""

import numpy as np
import pytest
import torch

from nvlm_deploy.contracts import precision as reg
from nvlm_deploy.errors import DeployError


def test_every_name_is_the_librarys_own():
    from onnx import TensorProto
    from tritonclient.grpc import model_config_pb2

    from nvlm_deploy.trtllm.safetensors_io import ST_DTYPES

    for p in reg.PRECISIONS.values():
        assert p.torch_dtype() == getattr(torch, p.torch) and p.torch_dtype().itemsize == p.itemsize
        assert TensorProto.DataType.Name(p.onnx) == {"fp32": "FLOAT", "fp16": "FLOAT16", "bf16": "BFLOAT16"}[p.name]
        assert p.triton in model_config_pb2.DataType.keys()
        assert ST_DTYPES[p.safetensors] == p.torch_dtype()
        assert p.trtllm == p.torch  # TensorRT-LLM's config.json spells dtypes as torch does
        if p.numpy:
            assert np.dtype(p.numpy).itemsize == p.itemsize


def test_lookups_round_trip_and_refuse_unknown_names():
    for p in reg.PRECISIONS.values():
        assert reg.precision(p.name) is p
        assert reg.from_trtllm(p.trtllm) is reg.from_triton(p.triton) is reg.from_onnx_runtime(p.onnx_runtime) is p
        assert reg.from_torch(p.torch_dtype()) is p
    with pytest.raises(DeployError, match=r"precision 'float32' is not one of \['fp32', 'fp16', 'bf16'\]"):
        reg.precision("float32")  # one spelling on every command
    with pytest.raises(DeployError, match="Triton data type 'TYPE_INT8'"):
        reg.from_triton("TYPE_INT8")
    with pytest.raises(DeployError, match="no NumPy dtype"):
        reg.precision("bf16").numpy_dtype()


def test_every_command_offers_the_registry_spelling():
    from nvlm_deploy.cli import build_parser

    parser = build_parser()
    for argv in (["convert", "vision"], ["convert", "llm"], ["generate"]):
        sub = parser
        for word in argv:
            sub = next(a for a in sub._actions if a.dest in ("command", f"{argv[0]}_command")).choices[word]
        dtype = next(a for a in sub._actions if a.dest == "dtype")
        assert tuple(dtype.choices) == reg.CHOICES, argv
