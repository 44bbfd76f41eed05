"""The embedding cache: memory-mapped chunks and index, merging, old layouts, two writers."""

from __future__ import annotations

import numpy as np

from vocabert.artifacts import write_npy
from vocabert.distill.cache import EmbeddingCache, text_keys


def _vectors(texts: list[str], dim: int = 4) -> np.ndarray:
    """A vector per text that depends on the text only."""
    seeds = text_keys(texts) % np.uint64(2**32)
    return np.stack([np.random.default_rng(int(s)).normal(size=dim) for s in seeds]).astype(np.float32)


def test_index_merges_stream_and_every_vector_stays_findable(tmp_path):
    texts = [f"text {i}" for i in range(1000)]
    cache = EmbeddingCache(tmp_path, "m", 4, chunk_size=64, max_unindexed=150)
    for start in range(0, len(texts), 50):
        cache.put(texts[start : start + 50], _vectors(texts[start : start + 50]))
    cache.flush()
    assert len(cache) == 1000
    assert len(cache._new_keys) <= 150  # the rest went into the index, not memory
    assert isinstance(cache._index_keys, np.memmap)
    indexes = sorted(p.name for p in (tmp_path / "m").glob("index-*.json"))
    assert len(indexes) == 1  # older generations are removed

    again = EmbeddingCache(tmp_path, "m", 4)
    probe = texts[::7] + ["never seen"]
    out, found = again.lookup(probe)
    assert found[:-1].all() and not found[-1]
    np.testing.assert_array_equal(out[:-1], _vectors(probe[:-1]))
    np.testing.assert_array_equal(out[-1], 0)


def test_duplicates_are_kept_once_and_the_first_wins(tmp_path):
    cache = EmbeddingCache(tmp_path, "m", 4, chunk_size=2, max_unindexed=3)
    cache.put(["a", "b"], np.ones((2, 4)))
    cache.put(["c", "d"], np.ones((2, 4)) * 2)
    cache.put(["a", "e"], np.ones((2, 4)) * 3)  # "a" again
    cache.flush()
    assert len(cache) == 5
    out, found = EmbeddingCache(tmp_path, "m", 4).lookup(["a", "e"])
    assert found.all() and out[0, 0] == 1 and out[1, 0] == 3


def test_chunks_of_the_old_layout_and_of_another_writer_are_read(tmp_path):
    folder = tmp_path / "m"
    old = ["old one", "old two"]
    write_npy(folder / "chunk-000000-1-0.vectors.npy", _vectors(old))
    write_npy(folder / "chunk-000000-1-0.keys.npy", text_keys(old))
    first = EmbeddingCache(tmp_path, "m", 4, chunk_size=2, max_unindexed=1)
    second = EmbeddingCache(tmp_path, "m", 4, chunk_size=2, max_unindexed=1)
    first.put(["from first", "also first"], _vectors(["from first", "also first"]))
    second.put(["from second", "also second"], _vectors(["from second", "also second"]))  # same generation
    texts = old + ["from first", "also first", "from second", "also second"]
    out, found = EmbeddingCache(tmp_path, "m", 4).lookup(texts)
    assert found.all()
    np.testing.assert_array_equal(out, _vectors(texts))


def test_damaged_chunk_is_a_miss(tmp_path):
    cache = EmbeddingCache(tmp_path, "m", 4, chunk_size=2, max_unindexed=0)
    cache.put(["a", "b"], _vectors(["a", "b"]))
    cache.put(["c", "d"], _vectors(["c", "d"]))
    damaged = sorted((tmp_path / "m").glob("chunk-*.vectors.npy"))[0]
    damaged.write_bytes(b"not an array")
    out, found = EmbeddingCache(tmp_path, "m", 4).lookup(["a", "b", "c", "d"])
    assert found.tolist() == [False, False, True, True]
    np.testing.assert_array_equal(out[2:], _vectors(["c", "d"]))
