"""The `vision_encoder` model's work: tiles -> prompt table, on ONNX Runtime (cpu) or a TensorRT plan (gpu).

A request's tiles `[1, T, 3, S, S]` become its prompt table `[1, T * tokens_per_tile, hidden]`
(every image's tokens in order, DESIGN.md "Image slots") and `prompt_vocab_size` `[1, 1]`.
Zero tiles (a text-only request reaching it through the ensemble) give an empty table without
running the encoder.

Reuse: each tile's embeddings are kept in a byte-bounded LRU cache (backend.tile_cache) keyed by the
tile's pixels and the encoder's files, so a repeated image skips the encoder. Several requests
(Triton's dynamic batcher) are encoded together: their uncached tiles go through the encoder in
calls of at most `max_tiles` tiles, the cap one call may take.
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
    spinning = params.get("onnx_spinning", "false").lower() == "true"
    return OnnxVisionEncoder(path, threads=threads, spinning=spinning)


@register("gpu")
def _plan_encoder(path: Path, params: Mapping[str, str]):
    from nvlm_deploy.backend.vision_trt import TrtPlanVisionEncoder

    return TrtPlanVisionEncoder(path)


class VisionHandler:
    """Args: encoder: has .encode(pixel_values [T,3,S,S]) -> [T, tokens, hidden] and may have .max_tiles
    (its profile's largest T); hidden_size: LLM width; max_tiles: most tiles one call takes (the
    repository's tiles per request)."""

    def __init__(self, encoder, *, hidden_size: int, max_tiles: int, cache=None, identity: str = "",
                 vocab_size: int = 0):
        self.encoder = encoder
        self.hidden_size = hidden_size
        self.max_tiles = min(max_tiles, getattr(encoder, "max_tiles", None) or max_tiles)
        self.cache = cache  # TileEmbeddingCache or None
        self.identity = identity  # the encoder's files (tile_cache.encoder_identity): part of every key
        self.encoder_calls = 0
        self.vocab_size = vocab_size  # the decoder's: image slots are vocab_size + k (prompt_table_extra_ids)

    @classmethod
    def from_parameters(cls, root: Path, params: Mapping[str, str]) -> "VisionHandler":
        from nvlm_deploy.backend.request_inputs import repository_limits

        runtime = params["runtime"]
        if runtime not in ENCODERS:
            raise DeployError(f"vision_encoder: runtime {runtime!r} is not one of {sorted(ENCODERS)}.")
        from nvlm_deploy.backend.tile_cache import TileEmbeddingCache, encoder_identity

        model_path = root / params["model_path"]
        encoder = ENCODERS[runtime](model_path, params)
        cache_bytes = int(params.get("cache_bytes", "0"))  # package writes it (DEFAULT_VISION_CACHE_BYTES); absent: off
        vocab_size = int(params.get("vocab_size", "0") or 0)
        return cls(encoder, hidden_size=int(params["hidden_size"]),
                   max_tiles=repository_limits(root).max_tiles_per_request,
                   cache=TileEmbeddingCache(cache_bytes) if cache_bytes > 0 else None,
                   identity=encoder_identity(model_path) if cache_bytes > 0 else "", vocab_size=vocab_size)

    def run(self, pixel_values: np.ndarray):
        """pixel_values [1, T, 3, S, S] -> (prompt_embedding_table float32 [1, T*tokens, hidden],
        prompt_vocab_size [1, 1]); the caller converts the table to the decoder's precision.
        Raises RequestError for a request over the tile cap, DeployError when the encoder refuses it."""
        (result,) = self.run_many([pixel_values])
        if isinstance(result, Exception):
            raise result
        return result[:2]

    def extra_ids(self, input_ids: np.ndarray, pixel_values: np.ndarray) -> np.ndarray:
        """prompt_table_extra_ids [1, L] uint64 of one request (backend.tile_cache.token_extra_ids)."""
        from nvlm_deploy.backend.tile_cache import token_extra_ids

        if not self.vocab_size:
            raise DeployError("vision_encoder: prompt_table_extra_ids needs the vocab_size parameter "
                              "(re-package the repository with `nvlm-deploy package`).")
        try:
            return token_extra_ids(input_ids, pixel_values, vocab_size=self.vocab_size)
        except ValueError as exc:
            raise RequestError(f"vision_encoder: input_ids do not match the tiles: {exc}") from None

    def run_many(self, batch: list[np.ndarray]) -> list:
        """Several requests' pixel_values (each [1, T_i, 3, S, S]) -> per request (table, vocab) as `run`,
        or the RequestError refusing it (the others are still answered). The uncached tiles of all
        requests are encoded together, at most `max_tiles` per encoder call."""
        from nvlm_deploy.backend.tile_cache import encode_with_cache, tile_keys

        tiles_of, results = [], [None] * len(batch)
        for k, pixel_values in enumerate(batch):
            tiles = np.asarray(pixel_values)
            if tiles.ndim == 5:
                tiles = tiles[0]
            if tiles.shape[0] > self.max_tiles:
                results[k] = RequestError(
                    f"vision_encoder got {tiles.shape[0]} tiles in one request; this repository takes at most "
                    f"{self.max_tiles} per request (max images x tiles per image, and the engine's profile): send "
                    "fewer or smaller images, or split the tiles over several requests.")
                continue
            tiles_of.append((k, tiles.astype(np.float32, copy=False)))
        counts = [t.shape[0] for _, t in tiles_of]
        if sum(counts):
            try:
                tiles = np.concatenate([t for _, t in tiles_of if t.shape[0]])
                keys = tile_keys(tiles, self.identity) if self.cache is not None and self.cache.enabled else None
                embeddings = encode_with_cache(tiles, self._encode_capped, self.cache, keys)  # [T, tokens, hidden]
            except (DeployError, ValueError) as exc:
                if len(tiles_of) == 1:  # this request's own error
                    results[tiles_of[0][0]] = exc if isinstance(exc, DeployError) else RequestError(str(exc))
                    return results
                for k, _ in tiles_of:  # one bad request in a batch: encode each alone, so only it fails
                    results[k] = self.run_many([batch[k]])[0]
                return results
            table = embeddings.reshape(tiles.shape[0], -1, self.hidden_size)
        start = 0
        for (k, _), count in zip(tiles_of, counts):
            part = np.zeros((0, self.hidden_size), dtype=np.float32) if count == 0 else \
                table[start:start + count].reshape(-1, self.hidden_size)
            start += count
            results[k] = (part[None], np.array([[part.shape[0]]], dtype=np.int32))
        return results

    def _encode_capped(self, tiles: np.ndarray) -> np.ndarray:
        """The encoder over `tiles` [T, 3, S, S] in calls of at most max_tiles tiles (its profile's cap)."""
        parts = []
        for start in range(0, tiles.shape[0], self.max_tiles):
            self.encoder_calls += 1
            parts.append(np.asarray(self.encoder.encode(tiles[start:start + self.max_tiles]), dtype=np.float32))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def cache_stats(self) -> dict[str, int]:
        """hits, misses, evictions, entries, bytes, capacity_bytes (zeros without a cache) and encoder calls."""
        stats = self.cache.stats() if self.cache is not None else \
            {"hits": 0, "misses": 0, "evictions": 0, "entries": 0, "bytes": 0, "capacity_bytes": 0}
        return {**stats, "encoder_calls": self.encoder_calls}
