"""Per-tile embedding cache of the vision encoder: a repeated image (or a shared crop) skips the encoder.

Keyed by a hash of the tile's exact float32 pixels (shape and bytes) and of the encoder's identity
(`encoder_identity`: its files' names, sizes and modification times), so a rebuilt encoder never
serves stale embeddings. Bounded in bytes (the embeddings' `nbytes`), least recently used first out;
0 disables it. Counts hits, misses and evictions for the server's metrics.

Why per tile and not per image: the tiles are what the encoder sees, and the same image sent again
(or the same page in a multi-turn chat, or the thumbnail of a crop) gives bit-identical tiles.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

KEY_BYTES = 16  # blake2b digest size: 128-bit keys, collisions out of reach


def encoder_identity(path: str | Path) -> str:
    """A short hash of the encoder's files (path, size, mtime): changes whenever the model file does."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.blake2b(str(path.resolve()).encode(), digest_size=8)
    for f in files:
        if not f.is_file():  # an encoder given an engine object in tests: its path names it
            continue
        stat = f.stat()
        h.update(f"{f.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def tile_keys(tiles: np.ndarray, identity: str) -> list[bytes]:
    """One key per tile of `tiles` [T, 3, S, S]: blake2b(identity, dtype, shape, pixel bytes)."""
    tiles = np.ascontiguousarray(tiles)
    head = f"{identity}|{tiles.dtype.str}|{tiles.shape[1:]}".encode()
    keys = []
    for tile in tiles:
        h = hashlib.blake2b(head, digest_size=KEY_BYTES)
        h.update(memoryview(tile).cast("B"))
        keys.append(h.digest())
    return keys


class TileEmbeddingCache:
    """LRU map tile key -> embeddings [tokens, hidden], at most `capacity_bytes` of embeddings.

    Thread-safe (Triton may run several executes of one instance's threads); an entry larger than the
    whole capacity is not stored.
    """

    def __init__(self, capacity_bytes: int):
        if capacity_bytes < 0:
            raise ValueError(f"cache capacity {capacity_bytes} bytes: must be >= 0 (0 disables the cache)")
        self.capacity_bytes = int(capacity_bytes)
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> np.ndarray | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: bytes, value: np.ndarray) -> None:
        value = np.array(value, copy=True)  # own the memory: a view would pin the whole batch output
        value.setflags(write=False)
        size = value.nbytes
        if size > self.capacity_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._entries[key] = value
            self.bytes += size
            while self.bytes > self.capacity_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.nbytes
                self.evictions += 1

    def count_hits(self, n: int) -> None:
        """Tiles served without the encoder other than through get() (repeats within one call)."""
        with self._lock:
            self.hits += n

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "entries": len(self._entries),
                    "bytes": self.bytes, "capacity_bytes": self.capacity_bytes}


def encode_with_cache(tiles: np.ndarray, encode: Callable[[np.ndarray], np.ndarray], cache: TileEmbeddingCache | None,
                      keys: Iterable[bytes] | None) -> np.ndarray:
    """Embeddings [T, tokens, hidden] of `tiles` [T, 3, S, S]: cached tiles looked up, each distinct uncached
    tile encoded once (all together, in one call, in their order) and stored; a tile repeated within the
    call counts as a hit. Without a cache (or keys) it is `encode(tiles)`."""
    if cache is None or not cache.enabled or keys is None:
        return np.asarray(encode(tiles), dtype=np.float32)
    keys = list(keys)
    first: dict[bytes, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    found = {key: cache.get(key) for key in first}  # one lookup per distinct tile
    todo = [key for key, value in found.items() if value is None]
    if todo:
        picked = [first[key] for key in todo]
        fresh = np.asarray(encode(tiles if len(picked) == len(keys) else tiles[picked]), dtype=np.float32)
        for key, embedding in zip(todo, fresh):
            found[key] = embedding
            cache.put(key, embedding)
    cache.count_hits(len(keys) - len(first))
    return np.stack([found[key] for key in keys])


# ---- prompt_table_extra_ids (GPU, KV-cache reuse): serve/upstream/prompt_table_extra_ids_1.2.json ----

def tile_extra_ids(tiles: np.ndarray) -> np.ndarray:
    """uint64 [T]: one id per tile from its pixels alone, in [1, 2**63) (upstream: uint64, minimum 1).
    The encoder's identity is left out on purpose: the KV cache lives as long as the server, whose
    encoder does not change."""
    keys = tile_keys(tiles, identity="")
    return np.array([int.from_bytes(k[:8], "little") % (2**63 - 1) + 1 for k in keys], dtype=np.uint64)


def token_extra_ids(input_ids: np.ndarray, tiles: np.ndarray, *, vocab_size: int) -> np.ndarray:
    """prompt_table_extra_ids [1, L] uint64 for one request's input_ids [1, L]: 0 for text tokens; for an
    image slot (fake id vocab_size + k, k counting image tokens from 0: DESIGN.md "Image slots") the id
    of the tile its table row came from, so equal ids mean equal embeddings and KV-cache blocks are
    shared exactly when the pixels are. Rows per tile = image tokens / tiles."""
    ids = np.asarray(input_ids).reshape(-1).astype(np.int64)
    tiles = np.asarray(tiles)
    tiles = tiles[0] if tiles.ndim == 5 else tiles
    out = np.zeros(ids.shape, dtype=np.uint64)
    slots = ids >= vocab_size
    if not slots.any():
        return out[None]
    rows = ids[slots] - vocab_size
    count = int(rows.max()) + 1
    if tiles.shape[0] == 0 or count % tiles.shape[0]:
        raise ValueError(f"{count} image slots do not split evenly over {tiles.shape[0]} tiles")
    per_tile = tile_extra_ids(tiles)
    out[slots] = per_tile[rows // (count // tiles.shape[0])]
    return out[None]
