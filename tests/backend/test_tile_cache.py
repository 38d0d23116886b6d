"""The per-tile embedding cache: keys, LRU order, the byte bound, identity of the encoder."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from nvlm_deploy.backend.tile_cache import TileEmbeddingCache, encode_with_cache, encoder_identity, tile_keys


def emb(value, tokens=4, hidden=8):
    return np.full((tokens, hidden), value, np.float32)  # 128 bytes


def test_keys_depend_on_exact_pixels_and_the_encoder():
    tiles = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    a = tile_keys(tiles, "enc1")
    assert len(set(a)) == 2 and a == tile_keys(tiles.copy(), "enc1")
    nudged = tiles.copy()
    nudged[1, 0, 0, 0] = np.nextafter(nudged[1, 0, 0, 0], np.float32(2))  # one ulp in one pixel
    b = tile_keys(nudged, "enc1")
    assert b[0] == a[0] and b[1] != a[1]
    assert set(tile_keys(tiles, "enc2")).isdisjoint(a)


def test_lru_eviction_keeps_bytes_within_the_bound():
    cache = TileEmbeddingCache(capacity_bytes=3 * 128)
    for k in range(3):
        cache.put(bytes([k]), emb(k))
    assert cache.get(bytes([0])) is not None  # 0 becomes most recent: 1 is the oldest now
    cache.put(bytes([3]), emb(3))
    assert cache.get(bytes([1])) is None and cache.get(bytes([0])) is not None
    stats = cache.stats()
    assert stats["bytes"] == 3 * 128 and stats["entries"] == 3 and stats["evictions"] == 1


def test_a_stream_of_distinct_tiles_never_exceeds_the_bound():
    cache = TileEmbeddingCache(capacity_bytes=10_000)
    encode = lambda t: np.repeat(t.reshape(t.shape[0], 1, -1)[:, :, :8], 5, axis=1)  # [T, 5, 8] = 160 B each
    rng = np.random.default_rng(1)
    peak = 0
    for _ in range(200):
        tiles = rng.random((3, 3, 4, 4), dtype=np.float32)
        encode_with_cache(tiles, encode, cache, tile_keys(tiles, "e"))
        peak = max(peak, cache.bytes)
    assert peak <= 10_000 and cache.stats()["evictions"] > 0
    assert cache.bytes == sum(v.nbytes for v in cache._entries.values())


def test_entries_are_copies_and_read_only():
    cache = TileEmbeddingCache(1024)
    value = emb(1.0)
    cache.put(b"k", value)
    value[:] = 5
    got = cache.get(b"k")
    assert got[0, 0] == 1.0
    with pytest.raises(ValueError):
        got[0, 0] = 2


def test_oversized_entries_and_zero_capacity_store_nothing():
    cache = TileEmbeddingCache(64)
    cache.put(b"big", emb(1))
    assert len(cache) == 0 and not TileEmbeddingCache(0).enabled
    with pytest.raises(ValueError, match=">= 0"):
        TileEmbeddingCache(-1)


def test_encoder_identity_changes_when_the_model_file_does(tmp_path):
    model = tmp_path / "onnx"
    model.mkdir()
    (model / "vision_encoder.onnx").write_bytes(b"v1")
    first = encoder_identity(model)
    assert encoder_identity(model) == first
    time.sleep(0.01)
    (model / "vision_encoder.onnx").write_bytes(b"v2!")
    os.utime(model / "vision_encoder.onnx")
    assert encoder_identity(model) != first


def test_token_extra_ids_name_each_image_slot_by_its_tiles_pixels():
    from nvlm_deploy.backend.tile_cache import tile_extra_ids, token_extra_ids

    rng = np.random.default_rng(3)
    tiles = rng.random((2, 3, 4, 4), dtype=np.float32)
    vocab = 100
    ids = np.array([[1, 2, 100, 101, 102, 103, 7, 8]], np.int32)  # 2 tiles x 2 tokens, between text
    got = token_extra_ids(ids, tiles[None], vocab_size=vocab)
    per_tile = tile_extra_ids(tiles)
    assert got.dtype == np.uint64 and got.shape == (1, 8)
    assert got[0].tolist() == [0, 0, per_tile[0], per_tile[0], per_tile[1], per_tile[1], 0, 0]
    assert (per_tile >= 1).all() and per_tile[0] != per_tile[1]
    # the same pixels in another request give the same ids; other pixels other ids
    assert token_extra_ids(ids, tiles.copy(), vocab_size=vocab).tolist() == got.tolist()
    assert token_extra_ids(ids, tiles[::-1], vocab_size=vocab)[0, 2] == per_tile[1]
    assert not token_extra_ids(np.array([[1, 2]]), tiles[:0], vocab_size=vocab).any()  # text only
    with pytest.raises(ValueError, match="do not split evenly"):
        token_extra_ids(np.array([[100, 101, 102]]), tiles, vocab_size=vocab)


def test_a_tile_repeated_within_one_call_is_encoded_once():
    calls = []

    def encode(t):
        calls.append(t.shape[0])
        return np.repeat(t.reshape(t.shape[0], 1, -1)[:, :, :8], 2, axis=1)

    cache = TileEmbeddingCache(1 << 20)
    tiles = np.random.default_rng(2).random((2, 3, 4, 4), dtype=np.float32)
    batch = tiles[[0, 1, 0, 0]]
    out = encode_with_cache(batch, encode, cache, tile_keys(batch, "e"))
    assert calls == [2] and cache.stats()["hits"] == 2 and cache.stats()["misses"] == 2
    np.testing.assert_array_equal(out, encode(batch))
