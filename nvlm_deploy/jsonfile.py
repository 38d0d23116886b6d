"""Reading the project's JSON files (manifests, TensorRT-LLM configs) into frozen dataclasses, with
errors that name the file and the fix instead of tracebacks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from nvlm_deploy.errors import DeployError


def read_json_object(path: Path, *, fix: str) -> dict[str, Any]:
    """The JSON object in `path`; DeployError (naming `path` and `fix`) when missing, not JSON, or not an object."""
    if not path.is_file():
        raise DeployError(f"{path} does not exist: {fix}.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeployError(f"{path} is not valid JSON ({exc}): {fix}.") from None
    if not isinstance(raw, dict):
        raise DeployError(f"{path} is not a JSON object: {fix}.")
    return raw


def dataclass_values(kind: type, raw: dict[str, Any], *, path: Path, fix: str) -> dict[str, Any]:
    """`raw`'s values for `kind`'s fields; DeployError naming the required fields that are missing."""
    fields = {f.name: f for f in dataclasses.fields(kind)}
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in raw]
    if missing:
        raise DeployError(f"{path} lacks field(s) {missing}: it was written by another version or damaged; {fix}.")
    return {n: raw[n] for n in fields if n in raw}
