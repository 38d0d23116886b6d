"""The request tensors, shaped as tensorrtllm_backend clients send them (`[[x]]`).

`text_input` BYTES [1, 1]; `image_files_input` UINT8 [1, num_images, max_bytes] (each image's
encoded file, zero-padded on the right) with `image_files_lengths` INT32 [1, num_images]; scalars
[1, 1]. Sampling inputs are sent only when set, so the server's defaults apply otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nvlm_deploy.contracts.client_tensors import (CHAT_HISTORY, CLIENT_INPUTS, STOP_WORDS, IMAGE_FILES, IMAGE_FILES_LENGTHS, NUM_INPUT_TOKENS,
                                                  NUM_OUTPUT_TOKENS, TEXT_INPUT, TEXT_OUTPUT)
from nvlm_deploy.errors import DeployError

DEFAULT_MODEL = "tensorrt_llm_bls"
OUTPUT = TEXT_OUTPUT.name


# Seconds a client waits for the next response of a stream before it calls the stream stalled. The
# first response includes the prompt's prefill and the images' vision encoding, so this is generous.
DEFAULT_TIMEOUT_S = 120.0


class ServerError(DeployError):
    """The server refused or failed a request; the message is the server's, unchanged."""


class ServerUnavailable(DeployError):
    """The server cannot be reached, went away mid-request, or its stream stalled."""


# gRPC status codes that mean the connection, not the request, failed
TRANSPORT_STATUSES = ("UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED")


def transport_failure(url: str, status: str | None, message: str) -> ServerUnavailable | None:
    """A clear ServerUnavailable when a gRPC error is about the connection; None for the server's own errors."""
    status = (status or "").removeprefix("StatusCode.")
    if status not in TRANSPORT_STATUSES and "Socket closed" not in message and "failed to connect" not in message:
        return None
    if "failed to connect" in message or "Connection refused" in message:
        return ServerUnavailable(f"cannot reach the server at {url} ({message}). Is `nvlm-deploy serve` running there "
                                 "(it prints the gRPC address when ready)? Check --url.")
    return ServerUnavailable(f"the server at {url} went away during the request ({status or 'connection lost'}: "
                             f"{message}); `nvlm-deploy serve` restarts a crashed server: retry in a few seconds.")


def stalled(url: str, timeout: float) -> ServerUnavailable:
    return ServerUnavailable(f"the stream from {url} stalled: no response for {timeout:g} s (--timeout). The server "
                             "is overloaded or stuck; its log says which.")


@dataclass(frozen=True)
class ChatRequest:
    prompt: str
    images: tuple[bytes, ...] = ()  # encoded image files (PNG, JPEG, ...)
    max_tokens: int = 64
    stream: bool = False
    exclude_input_in_output: bool = True
    temperature: float | None = None
    top_k: int | None = None  # 0 with top_p 0: greedy
    top_p: float | None = None
    seed: int | None = None
    end_id: int | None = None
    pad_id: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_tokens: int | None = None
    return_log_probs: bool | None = None
    history: tuple[tuple[str, str], ...] = ()  # earlier turns (role, content): system / user / assistant
    stop: tuple[str, ...] = ()  # stop strings: generation ends after one (TensorRT-LLM keeps it in the output)


@dataclass(frozen=True)
class ChatChunk:
    """One response: its text; the final one also carries the token counts (tensorrt_llm_bls)."""

    text: str
    final: bool
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def read_images(images: Sequence[bytes | str | os.PathLike]) -> tuple[bytes, ...]:
    """Image files' bytes (paths are read; bytes pass through)."""
    out = []
    for image in images:
        if isinstance(image, (bytes, bytearray)):
            out.append(bytes(image))
            continue
        path = Path(image)
        if not path.is_file():
            raise DeployError(f"--image {path}: no such file.")
        out.append(path.read_bytes())
    return tuple(out)


def image_arrays(images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [1, n, max_bytes], int32 [1, n]) for n >= 1 encoded images."""
    width = max(len(b) for b in images)
    data = np.zeros((1, len(images), width), dtype=np.uint8)
    for k, b in enumerate(images):
        data[0, k, :len(b)] = np.frombuffer(b, dtype=np.uint8)
    return data, np.array([[len(b) for b in images]], dtype=np.int32)


# wire type -> NumPy dtype of the scalars the client sends
_NUMPY = {"INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64, "BOOL": bool}


def input_arrays(request: ChatRequest) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (triton dtype, array) of every tensor the request sends (contracts.client_tensors)."""
    arrays = {TEXT_INPUT: ("BYTES", np.array([[request.prompt.encode("utf-8")]], dtype=object))}
    if request.stop:
        arrays[STOP_WORDS] = ("BYTES", np.array([[w.encode("utf-8") for w in request.stop]], dtype=object))
    if request.history:
        history = json.dumps([list(turn) for turn in request.history])
        arrays[CHAT_HISTORY] = ("BYTES", np.array([[history.encode("utf-8")]], dtype=object))
    if request.images:
        data, lengths = image_arrays(request.images)
        arrays[IMAGE_FILES] = ("UINT8", data)
        arrays[IMAGE_FILES_LENGTHS] = ("INT32", lengths)
    for tensor in CLIENT_INPUTS:
        value = getattr(request, tensor.request_field) if tensor.request_field else None
        if value is not None:
            arrays[tensor.name] = (tensor.wire_type, np.array([[value]], dtype=_NUMPY[tensor.wire_type]))
    return arrays


def infer_inputs(module, request: ChatRequest) -> list:
    """tritonclient InferInput objects (`module` is tritonclient.grpc; its aio client uses the same class)."""
    inputs = []
    for name, (triton_type, array) in input_arrays(request).items():
        tensor = module.InferInput(name, list(array.shape), triton_type)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def chunk_text(result) -> str:
    """The text of one response ("" for an empty final response)."""
    array = result.as_numpy(OUTPUT)
    if array is None or array.size == 0:
        return ""
    return b"".join(v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)).decode("utf-8")


def chunk(result) -> ChatChunk:
    """A gRPC result as a ChatChunk (token counts when the response has them)."""
    def count(name: str) -> int | None:
        array = result.as_numpy(name)
        return None if array is None or array.size == 0 else int(array.reshape(-1)[0])

    return ChatChunk(chunk_text(result), is_final(result), count(NUM_INPUT_TOKENS.name), count(NUM_OUTPUT_TOKENS.name))


def is_final(result) -> bool:
    params = result.get_response().parameters
    return "triton_final_response" in params and params["triton_final_response"].bool_param
