"""Lazy imports of heavy or optional libraries (TensorRT, TensorRT-LLM, modelopt).

An optional library that PyPI provides belongs to one of nvlm-deploy's extras (pyproject.toml:
`quant` for modelopt, `gpu` for TensorRT); pass `extra=` and the error names it, e.g.
`require("modelopt.torch.quantization", extra="quant", purpose="FP8 calibration")`.
"""

import importlib
from types import ModuleType

from nvlm_deploy.errors import DeployError


def extra_install(extra: str) -> str:
    """The pip line that installs nvlm-deploy's optional extra `extra`, e.g. "quant"."""
    return f"pip install 'nvlm-deploy[{extra}]'"


def require(module: str, *, install: str | None = None, purpose: str, extra: str | None = None) -> ModuleType:
    """Import `module` now, or raise a DeployError saying what to install.

    Args:
        module: dotted module name, e.g. "tensorrt".
        install: the install instruction shown to the user (optional when `extra` is given).
        purpose: what the module is needed for, e.g. "building the vision engine".
        extra: the nvlm-deploy extra that provides `module`, e.g. "quant"; its pip line comes first.
    """
    hints = [h for h in (extra and extra_install(extra), install) if h]
    if not hints:
        raise ValueError(f"require({module!r}) needs install= or extra= to tell the user what to install")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DeployError(
            f"{purpose} needs the Python module '{module}', which is not importable here ({exc}).\n"
            f"Install it with: " + "\n  or: ".join(hints)
        ) from None
