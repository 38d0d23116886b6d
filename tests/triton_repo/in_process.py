"""Run a `triton_repo/<model>/1/model.py` in-process, as Triton's Python backend would.

`load_model` imports the file under a unique module name with the pb_utils stand-in as
`triton_python_backend_utils` (sys.modules is restored afterwards) and calls `initialize` with the
args Triton gives: the model's config as JSON (parsed from a packaged repository's config.pbtxt)
and `model_repository` = `<repo>/<model>`.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np

from tests.triton_repo import pb_utils_standin as pb

PB_MODULE = "triton_python_backend_utils"
# every model of triton_repo/ with a 1/model.py (the ensemble has none)
PYTHON_MODELS = ("preprocessing", "vision_encoder", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")
FINAL = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
_serial = itertools.count()
_MISSING = object()


def model_source(model: str) -> Path:
    from nvlm_deploy.resources import templates_dir

    return templates_dir() / model / "1" / "model.py"


def model_config(repo: Path, model: str):
    """The packaged `<repo>/<model>/config.pbtxt` as a Triton ModelConfig."""
    from nvlm_deploy.serve.template import parse_model_config

    path = repo / model / "config.pbtxt"
    return parse_model_config(path.read_text(encoding="utf-8"), source=str(path))


def write_model_config(repo: Path, model: str, config) -> None:
    from google.protobuf import text_format

    (repo / model / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")


def initialize_args(repo: Path, model: str, parameters: dict[str, str] | None = None) -> dict[str, str]:
    """initialize()'s args as Triton passes them (every value a string); `parameters` override the config's."""
    from google.protobuf.json_format import MessageToJson

    config = model_config(repo, model)
    for name, value in (parameters or {}).items():
        assert name in config.parameters, f"{model} has no parameter {name!r} to override"
        config.parameters[name].string_value = value
    return {"model_config": MessageToJson(config, preserving_proto_field_name=True),
            "model_repository": str(repo / model), "model_name": model, "model_version": "1",
            "model_instance_kind": "CPU", "model_instance_name": f"{model}_0_0", "model_instance_device_id": "0"}


def import_model(model: str):
    """The module of `triton_repo/<model>/1/model.py`, imported with the stand-in pb_utils."""
    path = model_source(model)
    spec = importlib.util.spec_from_file_location(f"triton_model_{model}_{next(_serial)}", path)
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get(PB_MODULE, _MISSING)
    sys.modules[PB_MODULE] = pb
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is _MISSING:
            del sys.modules[PB_MODULE]
        else:
            sys.modules[PB_MODULE] = saved
    return module


def load_model(repo: Path, model: str, parameters: dict[str, str] | None = None):
    """An initialized TritonPythonModel of `model`, configured from the packaged repository `repo`
    (`parameters`: string parameters that replace the config's)."""
    instance = import_model(model).TritonPythonModel()
    instance.initialize(initialize_args(repo, model, parameters))
    return instance


def is_decoupled(repo: Path, model: str) -> bool:
    return model_config(repo, model).model_transaction_policy.decoupled


def request(**arrays: np.ndarray) -> pb.InferenceRequest:
    """An incoming request with one tensor per named array."""
    return pb.InferenceRequest(inputs=[pb.Tensor(name, array) for name, array in arrays.items()])


def outputs(response: pb.InferenceResponse) -> dict[str, pb.Tensor]:
    assert not response.has_error(), response.error().message()
    return {t.name(): t for t in response.output_tensors()}


def error_message(response: pb.InferenceResponse) -> str:
    assert response.has_error(), f"expected an error, got outputs {[t.name() for t in response.output_tensors()]}"
    return response.error().message()


def check_final_once_and_last(sent: list) -> None:
    """A decoupled request's sends: the final flag exactly once, on the last send."""
    flags = [f for _, f in sent]
    assert flags and flags[-1] & FINAL, f"the last send has no final flag: {flags}"
    assert sum(1 for f in flags if f & FINAL) == 1, f"the final flag was sent more than once: {flags}"
