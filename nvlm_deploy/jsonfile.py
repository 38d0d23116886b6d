"""Reading the project's JSON files (manifests, TensorRT-LLM configs) into frozen dataclasses, with
errors that name the file and the fix instead of tracebacks.

Every way such a file can be broken is one DeployError: missing, unreadable, empty, cut mid-JSON,
not JSON, not an object, a required field missing, a field of the wrong type (checked against the
dataclass's annotations, nested dataclasses included).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from nvlm_deploy.errors import DeployError


def read_json_object(path: Path, *, fix: str) -> dict[str, Any]:
    """The JSON object in `path`; DeployError (naming `path` and `fix`) when missing, not JSON, or not an object."""
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"{path} does not exist: {fix}.")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeployError(f"{path} cannot be read ({exc.strerror}): {fix}.") from None
    except UnicodeDecodeError:
        raise DeployError(f"{path} is not a JSON text file (not UTF-8): {fix}.") from None
    if not text.strip():
        raise DeployError(f"{path} is empty (a write was interrupted, or the file was truncated): {fix}.")
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        cut = " - it ends mid-document, as a cut-off write leaves it" if isinstance(exc, json.JSONDecodeError) \
            and (exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")) else ""
        raise DeployError(f"{path} is not valid JSON ({exc}{cut}): {fix}.") from None
    if not isinstance(raw, dict):
        raise DeployError(f"{path} is not a JSON object (it holds a {type(raw).__name__}): {fix}.")
    return raw


def dataclass_values(kind: type, raw: dict[str, Any], *, path: Path, fix: str) -> dict[str, Any]:
    """`raw`'s values for `kind`'s fields; DeployError naming missing required fields and wrongly typed ones."""
    fields = {f.name: f for f in dataclasses.fields(kind)}
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in raw]
    if missing:
        raise DeployError(f"{path} lacks field(s) {missing}: it was written by another version or damaged; {fix}.")
    wrong = type_problems(kind, raw)
    if wrong:
        raise DeployError(f"{path} has field(s) missing or of the wrong type ({'; '.join(wrong[:8])}): it was edited "
                          f"by hand "
                          f"or damaged; {fix}.")
    return {n: raw[n] for n in fields if n in raw}


def type_problems(kind: type, raw: dict[str, Any], *, prefix: str = "") -> list[str]:
    """'field: expected X, found Y' for each of `raw`'s values that does not fit `kind`'s annotation."""
    hints = typing.get_type_hints(kind)
    problems = []
    for f in dataclasses.fields(kind):
        nested = dataclasses.is_dataclass(hints[f.name])
        if f.name not in raw or nested and raw[f.name] is None:  # a null nested object: the reader's default
            continue
        if not _fits(raw[f.name], hints[f.name]):
            problems.append(f"{prefix}{f.name}: expected {_describe(hints[f.name])}, found "
                            f"{type(raw[f.name]).__name__} {json.dumps(raw[f.name])[:40]}")
        elif nested:
            inner = {g.name for g in dataclasses.fields(hints[f.name])
                     if g.default is dataclasses.MISSING and g.default_factory is dataclasses.MISSING}
            problems += [f"{prefix}{f.name}.{n}: missing" for n in sorted(inner - set(raw[f.name]))]
            problems += type_problems(hints[f.name], raw[f.name], prefix=f"{prefix}{f.name}.")
    return problems


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict or hint is dict:
        return isinstance(value, dict) and (not args or all(_fits(k, args[0]) and _fits(v, args[1])
                                                            for k, v in value.items()))
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, list) and (not args or args[-1] is Ellipsis and all(_fits(v, args[0]) for v in value)
                                            or origin is list and all(_fits(v, args[0]) for v in value)
                                            or origin is tuple and len(args) == len(value)
                                            and all(_fits(v, a) for v, a in zip(value, args)))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this checker does not model


def _describe(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
                "dict": "an object", "list": "a list"}.get(hint.__name__, "an object")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(hint))
    return {dict: "an object", list: "a list", tuple: "a list"}.get(origin, str(hint))
