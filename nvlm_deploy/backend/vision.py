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
    from nvlm_deploy.serve.vision_trt import TrtPlanVisionEncoder

    return TrtPlanVisionEncoder(path)


class VisionHandler:
    """Args: encoder: has .encode(pixel_values [T,3,S,S]) -> [T, tokens, hidden]; hidden_size: LLM width;
    table_dtype: numpy dtype of the prompt table sent on."""

    def __init__(self, encoder, *, hidden_size: int, table_dtype=np.float32):
        self.encoder = encoder
        self.hidden_size = hidden_size
        self.table_dtype = table_dtype

    @classmethod
    def from_parameters(cls, root: Path, params: Mapping[str, str]) -> "VisionHandler":
        runtime = params["runtime"]
        if runtime not in ENCODERS:
            raise DeployError(f"vision_encoder: runtime {runtime!r} is not one of {sorted(ENCODERS)}.")
        encoder = ENCODERS[runtime](root / params["model_path"], params)
        return cls(encoder, hidden_size=int(params["hidden_size"]))

    def run(self, pixel_values: np.ndarray):
        """pixel_values [1, T, 3, S, S] -> (prompt_embedding_table [1, T*tokens, hidden], prompt_vocab_size [1, 1])."""
        tiles = np.asarray(pixel_values)
        if tiles.ndim == 5:
            tiles = tiles[0]
        if tiles.shape[0] == 0:  # text-only: nothing to encode
            table = np.zeros((0, self.hidden_size), dtype=self.table_dtype)
        else:
            table = self.encoder.encode(tiles.astype(np.float32, copy=False))  # [T, tokens, hidden]
            table = np.asarray(table).reshape(-1, self.hidden_size).astype(self.table_dtype, copy=False)
        return table[None], np.array([[table.shape[0]]], dtype=np.int32)
