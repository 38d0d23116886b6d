"""OpenAI chat-completions requests -> the parts of one NVLM-D request. Pure functions, no I/O.

A conversation becomes NVLM-D's chat format (client.tensors.ChatRequest): the last message is the
user's `prompt`, the messages before it are `history` as (role, content) pairs, and every image of
every turn goes into one list in order. A message's image parts become `<image>` markers in front
of its text, one per image, in the order the parts come (HF NVLM-D puts a single image first too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nvlm_deploy.errors import DeployError
from nvlm_deploy.preprocess.prompt import IMAGE_MARKER

DEFAULT_MODEL_NAME = "nvlm-d"  # what clients send as `model` unless the server is told another name
MAX_STOP_STRINGS = 4  # OpenAI's limit
# OpenAI role -> NVLM-D chat role ("developer" is OpenAI's newer name for the system message)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class OpenAIError(DeployError):
    """One failed request, answered as OpenAI's `{"error": {message, type, param, code}}`.

    Args:
        message: what is wrong and how to fix it.
        status: the HTTP status.
        type: OpenAI's error type (invalid_request_error, server_error, ...).
        param: the request field at fault, e.g. "messages[1].content[0].image_url".
        code: a short machine-readable code, e.g. "model_not_found".
    """

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ImagePart:
    url: str  # a data: URL or an http(s) URL
    param: str  # where it is in the request, for errors


@dataclass(frozen=True)
class Conversation:
    history: tuple[tuple[str, str], ...]  # (role, content) before the last user message
    prompt: str  # the last user message
    images: tuple[ImagePart, ...]  # of every turn, in order; one `<image>` marker each


@dataclass(frozen=True)
class Sampling:
    """ChatRequest's sampling fields (TensorRT-LLM semantics: top_k 0 and top_p 0 is greedy)."""

    temperature: float | None = None
    top_k: int = 0
    top_p: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    conversation: Conversation
    max_tokens: int | None  # None: the server's default
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # streaming: a last chunk with the token counts


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object."""
    import json

    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OpenAIError(f"We could not parse the JSON body of your request ({exc}). The body must be a "
                          "JSON object such as {\"model\": ..., \"messages\": [...]}.") from None
    if not isinstance(body, dict):
        raise OpenAIError(f"The request body must be a JSON object, not {type(body).__name__}.")
    return body


def check_model(body: Mapping, served: str) -> str:
    """The requested model's name; 404 unless it is the one served here."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(f"You must provide a model parameter (this server serves {served!r}).", param="model")
    if model != served:
        raise unknown_model(model, served)
    return model


def unknown_model(model: str, served: str) -> OpenAIError:
    return OpenAIError(f"The model `{model}` does not exist; this server serves `{served}` (GET /v1/models).",
                       status=404, param="model", code="model_not_found")


def parse_request(body: Mapping, *, served: str) -> CompletionRequest:
    """Validate a /v1/chat/completions body.

    Args:
        body: the JSON object.
        served: the model name this server answers to.
    """
    model = check_model(body, served)
    check_supported(body)
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise OpenAIError("stream_options must be an object such as {\"include_usage\": true}.", param="stream_options")
    return CompletionRequest(
        model=model, conversation=conversation(body.get("messages")), max_tokens=max_tokens(body),
        sampling=sampling(temperature=_number(body, "temperature", 0.0, 2.0), top_p=_number(body, "top_p", 0.0, 1.0),
                          seed=_seed(body)),
        stop=stop_strings(body.get("stop")), stream=stream,
        include_usage=stream and bool(options and _boolean(options, "include_usage", False, prefix="stream_options.")))


# request field -> accepted values; anything else is refused rather than silently ignored
SUPPORTED: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v in (None, 1),
    "tools": lambda v: not v,
    "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: not v,
    "function_call": lambda v: v in (None, "none"),
    "logprobs": lambda v: v in (None, False),
    "top_logprobs": lambda v: v in (None, 0),
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "audio": lambda v: v is None,
    "modalities": lambda v: v in (None, ["text"]),
    "frequency_penalty": lambda v: v in (None, 0),
    "presence_penalty": lambda v: v in (None, 0),
    "logit_bias": lambda v: not v,
}


def check_supported(body: Mapping) -> None:
    for name, accepted in SUPPORTED.items():
        if name in body and not accepted(body[name]):
            only = "only n = 1 is supported (one answer per request); send n separate requests" if name == "n" \
                else f"{name} is not supported by this server; leave it out"
            raise OpenAIError(f"{name} = {body[name]!r}: {only}.", param=name, code="unsupported_parameter")


def conversation(messages: Any) -> Conversation:
    """OpenAI `messages` -> (history, prompt, images); the last message must be the user's."""
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("messages must be a non-empty list of {\"role\", \"content\"} objects, the last one "
                          "from the user.", param="messages")
    turns, images = [], []
    for k, message in enumerate(messages):
        role, text, found = message_turn(message, param=f"messages[{k}]")
        turns.append((role, text))
        images += found
    systems = [text for role, text in turns if role == "system"]
    rest = [(role, text) for role, text in turns if role != "system"]
    if not rest or rest[-1][0] != "user":
        raise OpenAIError("The last message must have role \"user\": NVLM-D answers the user's last message.",
                          param=f"messages[{len(messages) - 1}].role")
    head = (("system", "\n".join(systems)),) if systems else ()  # several system messages read as one
    return Conversation(history=head + tuple(rest[:-1]), prompt=rest[-1][1], images=tuple(images))


def message_turn(message: Any, *, param: str) -> tuple[str, str, list[ImagePart]]:
    """One message -> (NVLM-D role, text with `<image>` markers, its image parts)."""
    if not isinstance(message, dict):
        raise OpenAIError(f"{param} must be an object with \"role\" and \"content\".", param=param)
    role = ROLES.get(message.get("role"))
    if role is None:
        raise OpenAIError(f"{param}.role is {message.get('role')!r}; this server takes the roles "
                          f"{sorted(ROLES)} (no tools or functions).", param=f"{param}.role")
    content = message.get("content")
    if isinstance(content, str):
        texts, images = [content], []
    elif isinstance(content, list):
        texts, images = content_parts(content, param=f"{param}.content", images_allowed=role == "user")
    else:
        raise OpenAIError(f"{param}.content must be a string or a list of content parts, not "
                          f"{type(content).__name__}.", param=f"{param}.content")
    for text in texts:
        if IMAGE_MARKER in text:
            raise OpenAIError(f"{param}.content contains the text {IMAGE_MARKER!r}, which NVLM-D reads as an "
                              "image's place; send images as image_url parts and remove the marker from the text.",
                              param=f"{param}.content")
    text = (IMAGE_MARKER + "\n") * len(images) + "\n".join(texts)
    if role == "user" and not text.strip():
        raise OpenAIError(f"{param} is empty; a user message needs text or an image.", param=f"{param}.content")
    return role, text, images


def content_parts(parts: list, *, param: str, images_allowed: bool) -> tuple[list[str], list[ImagePart]]:
    """The text and image parts of a content list, in order."""
    texts, images = [], []
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and images_allowed:
            images.append(image_part(part.get("image_url"), param=f"{where}.image_url"))
        elif kind == "image_url":
            raise OpenAIError(f"{where} is an image in a message that is not the user's; only user messages "
                              "carry images.", param=where)
        else:
            raise OpenAIError(f"{where} must be {{\"type\": \"text\", \"text\": ...}} or {{\"type\": \"image_url\", "
                              f"\"image_url\": {{\"url\": ...}}}}; got {_short(part)}.", param=where)
    return texts, images


def image_part(value: Any, *, param: str) -> ImagePart:
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
        raise OpenAIError(f"{param} must be {{\"url\": ...}} with a base64 data: URL "
                          "(data:image/png;base64,...) or an http(s) URL; got " + _short(value) + ".", param=param)
    return ImagePart(url=url, param=param)


def sampling(*, temperature: float | None, top_p: float | None, seed: int | None) -> Sampling:
    """OpenAI temperature/top_p -> TensorRT-LLM's (temperature, top_k, top_p).

    Neither set, or temperature 0: greedy (top_k 0, top_p 0), the reference's answer. Otherwise
    sampling over the whole vocabulary: top_k 0 is "no top-k cut" and top_p 1.0 "no nucleus cut"
    (top_p 0 would mean greedy), temperature 1.0 when only top_p is given (OpenAI's default).
    """
    if temperature == 0 or (temperature is None and top_p is None):
        return Sampling(seed=seed)
    return Sampling(temperature=1.0 if temperature is None else temperature, top_k=0,
                    top_p=1.0 if top_p is None else top_p, seed=seed)


def max_tokens(body: Mapping) -> int | None:
    """max_completion_tokens, else the older max_tokens; None when neither is set."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OpenAIError(f"{name} must be an integer >= 1, got {value!r}.", param=name)
        return value
    return None


def stop_strings(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return ()
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise OpenAIError(f"stop must be a non-empty string or a list of up to {MAX_STOP_STRINGS} non-empty strings, "
                          f"got {_short(value)}.", param="stop")
    return tuple(stops)


def _number(body: Mapping, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise OpenAIError(f"{name} must be a number between {low:g} and {high:g}, got {value!r}.", param=name)
    return float(value)


def _seed(body: Mapping) -> int | None:
    value = body.get("seed")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64):
        raise OpenAIError(f"seed must be an integer between 0 and 2**64 - 1, got {value!r}.", param="seed")
    return value


def _boolean(body: Mapping, name: str, default: bool, *, prefix: str = "") -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise OpenAIError(f"{prefix}{name} must be true or false, got {value!r}.", param=prefix + name)
    return value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
