"""The `vision_encoder` model's work: tiles -> prompt table, on ONNX Runtime (cpu) or a TensorRT plan (gpu).

A request's tiles `[1, T, 3, S, S]` become its prompt table `[1, T * tokens_per_tile, hidden]`
(every image's tokens in order, DESIGN.md "Image slots") and `prompt_vocab_size` `[1, 1]`.
Zero tiles (a text-only request reaching it through the ensemble) give an empty table without
running the encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from nvlm_deploy.backend.request_inputs import RequestError
from nvlm_deploy.errors import DeployError

# runtime name -> factory(model_path, params) returning an object with .encode(pixel_values [T,3,S,S])
ENCODERS: dict[str, Callable[[Path, Mapping[str, str]], object]] = {}


def register(name: str):
    def wrap(factory):
        ENCODERS[name] = factory
        return factory
    return wrap


@register("cpu")
def _onnx_encoder(path: Path, params: Mapping[str, str]):
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    threads = int(params.get("threads", "0")) or None
    return OnnxVisionEncoder(path, threads=threads)


@register("gpu")
def _plan_encoder(path: Path, params: Mapping[str, str]):
    from nvlm_deploy.backend.vision_trt import TrtPlanVisionEncoder

    return TrtPlanVisionEncoder(path)


class VisionHandler:
    """Args: encoder: has .encode(pixel_values [T,3,S,S]) -> [T, tokens, hidden] and may have .max_tiles
    (its profile's largest T); hidden_size: LLM width; max_tiles: most tiles one call takes (the
    repository's tiles per request)."""

    def __init__(self, encoder, *, hidden_size: int, max_tiles: int):
        self.encoder = encoder
        self.hidden_size = hidden_size
        self.max_tiles = min(max_tiles, getattr(encoder, "max_tiles", None) or max_tiles)

    @classmethod
    def from_parameters(cls, root: Path, params: Mapping[str, str]) -> "VisionHandler":
        from nvlm_deploy.backend.request_inputs import repository_limits

        runtime = params["runtime"]
        if runtime not in ENCODERS:
            raise DeployError(f"vision_encoder: runtime {runtime!r} is not one of {sorted(ENCODERS)}.")
        encoder = ENCODERS[runtime](root / params["model_path"], params)
        return cls(encoder, hidden_size=int(params["hidden_size"]),
                   max_tiles=repository_limits(root).max_tiles_per_request)

    def run(self, pixel_values: np.ndarray):
        """pixel_values [1, T, 3, S, S] -> (prompt_embedding_table float32 [1, T*tokens, hidden],
        prompt_vocab_size [1, 1]); the caller converts the table to the decoder's precision."""
        tiles = np.asarray(pixel_values)
        if tiles.ndim == 5:
            tiles = tiles[0]
        if tiles.shape[0] > self.max_tiles:
            raise RequestError(f"vision_encoder got {tiles.shape[0]} tiles in one request; this repository takes at "
                               f"most {self.max_tiles} (max images x tiles per image, and the engine's profile): "
                               "send fewer or smaller images.")
        if tiles.shape[0] == 0:  # text-only: nothing to encode
            table = np.zeros((0, self.hidden_size), dtype=np.float32)
        else:
            table = self.encoder.encode(tiles.astype(np.float32, copy=False))  # [T, tokens, hidden]
            table = np.asarray(table, dtype=np.float32).reshape(-1, self.hidden_size)
        return table[None], np.array([[table.shape[0]]], dtype=np.int32)
