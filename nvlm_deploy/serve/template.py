"""`${var}` config templates that refuse to leave a placeholder unfilled.

tensorrtllm_backend's fill_template uses `string.Template.safe_substitute`, which leaves unknown
`${x}` in place; unquoted ones then break protobuf parsing at server start, quoted ones are silently
treated as "not set" (shared/reference/triton.md §4). Here every placeholder must be given, every
given value must be used, and the result must parse as a Triton `ModelConfig`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from pathlib import Path

from nvlm_deploy.errors import DeployError

# `${name}` only: `$name` is not a placeholder in our templates (a literal `$` is written `$$`).
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(text: str) -> set[str]:
    """Names of the `${name}` placeholders in `text`."""
    return set(PLACEHOLDER.findall(text))


def fill(text: str, values: Mapping[str, object], *, source: str = "template") -> str:
    """Substitute every `${name}`; raise when one is missing or a value is not used.

    Args:
        text: template text.
        values: name -> value; values are written with str() (bool as true/false).
        source: shown in error messages (e.g. the template's path).
    """
    wanted = placeholders(text)
    missing = sorted(wanted - set(values))
    if missing:
        raise DeployError(f"{source}: no value for placeholder(s) {', '.join('${' + m + '}' for m in missing)}; "
                          "the packager must fill every one (a left-over placeholder breaks the server's "
                          "config parser or silently falls back to a default).")
    unused = sorted(set(values) - wanted)
    if unused:
        raise DeployError(f"{source}: value(s) {unused} have no placeholder in the template "
                          "(a typo in a name, or a template out of date).")
    text_values = {k: _text(v) for k, v in values.items()}
    out = string.Template(text).substitute(text_values)
    left = PLACEHOLDER.findall(out)
    if left:  # a value itself contained `${...}`
        raise DeployError(f"{source}: value(s) contain placeholder text {left}.")
    return out


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_model_config(text: str, *, source: str = "config.pbtxt"):
    """Parse `text` as a Triton `inference.ModelConfig` (tritonclient's model_config_pb2)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise DeployError(f"{source} is not a valid Triton model config: {exc}") from None


def render_config(template_path: str | Path, values: Mapping[str, object]):
    """Fill a `config.pbtxt.template` and check it parses; returns (text, ModelConfig)."""
    path = Path(template_path)
    text = fill(path.read_text(encoding="utf-8"), values, source=str(path))
    return text, parse_model_config(text, source=f"{path} (filled)")
