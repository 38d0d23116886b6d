"""OpenAI response bodies: `chat.completion`, `chat.completion.chunk`, server-sent events, the model list."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Completion:
    """What every body of one answer shares."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> "Completion":
        return cls(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model)

    def head(self, object: str) -> dict:
        return {"id": self.id, "object": object, "created": self.created, "model": self.model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish_reason(completion_tokens: int, max_tokens: int) -> str:
    """"length" when the answer used every token it was allowed, else "stop" (end token or stop string)."""
    return "length" if completion_tokens >= max_tokens else "stop"


def completion(c: Completion, *, text: str, finish: str, counts: dict) -> dict:
    """The whole answer (stream=false)."""
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
    return {**c.head("chat.completion"), "choices": [choice], "usage": counts}


def chunk(c: Completion, *, delta: dict, finish: str | None = None) -> dict:
    """One streamed piece; the first carries the role, the last the finish reason and an empty delta."""
    return {**c.head("chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def usage_chunk(c: Completion, counts: dict) -> dict:
    """The last chunk when stream_options.include_usage is true: no choices, the token counts."""
    return {**c.head("chat.completion.chunk"), "choices": [], "usage": counts}


def event(body: dict) -> bytes:
    """One server-sent event: `data: {json}` and a blank line."""
    return b"data: " + json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n\n"


def model_card(name: str, *, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "nvlm-deploy"}


def model_list(name: str, *, created: int) -> dict:
    return {"object": "list", "data": [model_card(name, created=created)]}
