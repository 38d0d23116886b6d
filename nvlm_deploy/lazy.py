"""Lazy imports of heavy or optional libraries (TensorRT, TensorRT-LLM, modelopt)."""

import importlib
from types import ModuleType

from nvlm_deploy.errors import DeployError


def require(module: str, *, install: str, purpose: str) -> ModuleType:
    """Import `module` now, or raise a DeployError saying what to install.

    Args:
        module: dotted module name, e.g. "tensorrt".
        install: the install instruction shown to the user.
        purpose: what the module is needed for, e.g. "building the vision engine".
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DeployError(
            f"{purpose} needs the Python module '{module}', which is not importable here ({exc}).\n"
            f"Install it with: {install}"
        ) from None
