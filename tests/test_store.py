"""The entry store: safetensors round trips, memory maps, and damaged files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from vocabert.artifacts import VocabertError
from vocabert.matching import PAD, WILDCARD
from vocabert.store import VocabularyStore, all_finite, load_safetensors, save_safetensors


def make_patterns(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    patterns = np.full((n, 4), PAD, dtype=np.int32)
    patterns[:, 0] = rng.integers(30522, size=n)
    patterns[1::3, 1] = rng.integers(30522, size=len(patterns[1::3]))
    patterns[2::3, 1] = WILDCARD
    patterns[2::3, 2] = rng.integers(30522, size=len(patterns[2::3]))
    return patterns


@pytest.fixture
def vectors() -> np.ndarray:
    rng = np.random.default_rng(1)
    v = rng.normal(size=(200, 48)).astype(np.float32)
    v[5] *= 1e-3  # small and large rows: per-row int8 scales must handle both
    v[6] *= 50.0
    return v


@pytest.fixture
def store_file(tmp_path, vectors):
    path = tmp_path / "embeddings.safetensors"
    VocabularyStore.from_float(make_patterns(len(vectors)), vectors, "float16", {"teacher": "abc"}).save(path)
    return path


def test_fp16_round_trip(tmp_path, vectors):
    patterns = make_patterns(len(vectors))
    store = VocabularyStore.from_float(patterns, vectors, "float16", {"teacher": "abc", "dim": 48})
    assert store.embeddings.dtype == np.float16 and store.scales is None
    path = tmp_path / "s.safetensors"
    store.save(path)
    loaded = VocabularyStore.load(path)
    assert len(loaded) == len(vectors) and loaded.dim == 48
    assert np.array_equal(loaded.patterns, patterns)
    assert loaded.embeddings.dtype == np.float16
    assert np.array_equal(np.asarray(loaded.embeddings), vectors.astype(np.float16))
    assert loaded.scales is None
    assert loaded.metadata == {"teacher": "abc", "dim": "48"}
    rows = np.array([0, 5, 6, 199, 5])
    out = loaded.vectors(rows)
    assert out.dtype == np.float32
    assert np.array_equal(out, np.asarray(loaded.embeddings)[rows].astype(np.float32))
    np.testing.assert_allclose(out, vectors[rows], rtol=1e-3, atol=1e-6)


def test_fp16_vectors_exact_on_every_half_value():
    # Every finite float16 bit pattern (subnormals, zeros of both signs, the largest values).
    bits = np.arange(1 << 16, dtype=np.uint16)
    halves = bits.view(np.float16)
    halves = halves[np.isfinite(halves)]
    emb = halves[: len(halves) // 8 * 8].reshape(-1, 8)
    store = VocabularyStore(np.zeros((len(emb), 1), np.int32), emb)
    rows = np.arange(len(emb))
    out = store.vectors(rows)
    assert out.dtype == np.float32
    expected = emb.astype(np.float32)
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))  # bitwise, so -0.0 counts


@pytest.mark.parametrize("dtype, bits", [(np.float16, np.uint16), (np.float32, np.uint32), (np.float64, np.uint64)])
def test_all_finite_tells_every_bit_pattern(dtype, bits):
    """float16: all 65536 patterns; wider floats: the edges (largest finite, infinity, NaN payloads, -0.0,
    subnormals) of both signs. Each non-finite value alone among finite ones, in a chunk other than the first."""
    if dtype == np.float16:
        values = np.arange(1 << 16, dtype=bits).view(dtype)
    else:
        info = np.finfo(dtype)
        edges = [0.0, info.max, info.tiny, info.smallest_subnormal, 1.0, np.inf, np.nan]
        values = np.array(edges + [-x for x in edges], dtype=dtype)
        values = np.concatenate([values, (values.view(bits) | 1).view(dtype)])  # a NaN payload, the next floats
    finite = values[np.isfinite(values)]
    assert all_finite(finite) and all_finite(finite.reshape(-1, 1), chunk=1000)
    for value in values[~np.isfinite(values)]:
        spoiled = np.resize(finite, 30)
        spoiled[20] = value
        assert not all_finite(spoiled.reshape(3, 10), chunk=8), value
    assert all_finite(np.array([-(2**31), 2**31 - 1], np.int32))  # no NaN among integers


def _rss_file_kib() -> int | None:
    """This process's file-backed resident memory (Linux), in KiB."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("RssFile:")), None)
    except OSError:
        return None


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_all_finite_reads_a_memory_mapped_tensor_from_its_file(tmp_path, dtype):
    """A memory-mapped tensor is checked from its file, chunk by chunk (never through the mapping, which
    would make the whole file resident): every value is seen, up to the last, and a view of the map is read
    as it is."""
    values = (np.arange(100_003) % 1000 / 7).astype(dtype)
    path = tmp_path / "t.safetensors"
    save_safetensors(path, {"before": np.ones(3, np.float32), "values": values})
    mapped = load_safetensors(path)[0]["values"]
    assert isinstance(mapped, np.memmap) and all_finite(mapped, chunk=4096)
    for where in (0, 4095, 4096, len(values) - 1):
        spoiled = values.copy()
        spoiled[where] = np.nan
        save_safetensors(path, {"before": np.ones(3, np.float32), "values": spoiled})
        mapped = load_safetensors(path)[0]["values"]
        assert not all_finite(mapped, chunk=4096), where
        assert all_finite(mapped[where + 1 :], chunk=4096) and not all_finite(mapped[: where + 1], chunk=4096)


@pytest.mark.skipif(_rss_file_kib() is None, reason="needs /proc/self/status (Linux)")
def test_all_finite_leaves_a_memory_mapped_file_out_of_resident_memory(tmp_path):
    path = tmp_path / "big.safetensors"
    save_safetensors(path, {"values": np.ones((8192, 1024), np.float32)})  # 32 MiB
    path.read_bytes()  # in the page cache: a read through the mapping would map every page at once
    mapped = load_safetensors(path)[0]["values"]
    before = _rss_file_kib()
    assert all_finite(mapped)
    assert _rss_file_kib() - before < 4096  # KiB; the whole file would be 32768


def test_int8_round_trip(tmp_path, vectors):
    patterns = make_patterns(len(vectors))
    store = VocabularyStore.from_float(patterns, vectors, "int8")
    assert store.embeddings.dtype == np.int8 and store.scales.dtype == np.float32
    path = tmp_path / "s8.safetensors"
    store.save(path)
    loaded = VocabularyStore.load(path)
    assert np.array_equal(np.asarray(loaded.embeddings), store.embeddings)
    assert np.array_equal(np.asarray(loaded.scales), store.scales)
    out = loaded.vectors(np.arange(len(vectors)))
    assert out.dtype == np.float32
    cos = (out * vectors).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(vectors, axis=1)
    assert cos.min() > 0.999
    # Each row uses its full int8 range.
    assert (np.abs(np.asarray(loaded.embeddings)).max(axis=1) == 127).all()


def test_int8_zero_row_and_unknown_dtype():
    v = np.zeros((2, 4), np.float32)
    v[1] = [1, -2, 3, 0.5]
    store = VocabularyStore.from_float(np.zeros((2, 1), np.int32), v, "int8")
    assert np.isfinite(store.scales).all()
    assert np.array_equal(store.vectors(np.array([0])), np.zeros((1, 4), np.float32))
    with pytest.raises(VocabertError, match="unknown store dtype"):
        VocabularyStore.from_float(np.zeros((2, 1), np.int32), v, "bfloat16")


def test_mismatched_lengths_raise():
    with pytest.raises(VocabertError, match="patterns"):
        VocabularyStore(np.zeros((3, 1), np.int32), np.zeros((2, 4), np.float16))


def test_load_returns_memory_maps(store_file):
    tensors, metadata = load_safetensors(store_file)
    assert set(tensors) == {"patterns", "embeddings"}
    assert all(isinstance(t, np.memmap) for t in tensors.values())
    assert metadata == {"teacher": "abc"}
    store = VocabularyStore.load(store_file)
    assert isinstance(store.embeddings, np.memmap)


def test_empty_tensors_load(tmp_path):
    path = tmp_path / "empty.safetensors"
    save_safetensors(path, {"a": np.zeros((0, 4), np.float16), "b": np.arange(3, dtype=np.int64)})
    tensors, _ = load_safetensors(path)
    assert tensors["a"].shape == (0, 4) and tensors["a"].dtype == np.float16
    assert isinstance(tensors["b"], np.memmap) and tensors["b"].tolist() == [0, 1, 2]


def test_files_written_by_safetensors_read_back_identically(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {
        "f16": rng.normal(size=(7, 3)).astype(np.float16),
        "f32": rng.normal(size=(5,)).astype(np.float32),
        "i8": rng.integers(-128, 128, size=(4, 4)).astype(np.int8),
        "i32": rng.integers(-(2**31), 2**31, size=(6,)).astype(np.int32),
        "i64": rng.integers(-(2**62), 2**62, size=(2, 3)).astype(np.int64),
        "u8": rng.integers(0, 256, size=(9,)).astype(np.uint8),
        "scalar": np.array(3.5, dtype=np.float32),
    }
    path = tmp_path / "ref.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    ours, metadata = load_safetensors(path)
    assert metadata == {"k": "v"}
    assert set(ours) == set(tensors)
    for name, t in tensors.items():
        assert ours[name].dtype == t.dtype and ours[name].shape == t.shape
        assert np.array_equal(np.asarray(ours[name]), t)
    # And the other way: what we write, safetensors reads. (0-d tensors are left out: save_safetensors
    # passes them through np.ascontiguousarray, which makes them shape (1,).)
    del tensors["scalar"]
    ours_path = tmp_path / "ours.safetensors"
    save_safetensors(ours_path, tensors, {"k": "v"})
    back = load_file(str(ours_path))
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and np.array_equal(back[name], t)


def test_save_is_atomic_and_overwrites(tmp_path, vectors):
    path = tmp_path / "s.safetensors"
    save_safetensors(path, {"a": np.ones(3, np.float32)})
    save_safetensors(path, {"a": np.zeros(5, np.float32)})
    tensors, _ = load_safetensors(path)
    assert tensors["a"].tolist() == [0.0] * 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_missing_file(tmp_path):
    with pytest.raises(VocabertError, match="missing"):
        load_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(VocabertError, match="missing"):
        VocabularyStore.load(tmp_path / "nope.safetensors")


def _header_len(path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize(
    "where", ["empty", "4 bytes", "8 bytes", "inside header", "end of header", "inside data", "last byte"]
)
def test_truncated_file_raises_vocabert_error(store_file, tmp_path, where):
    data = store_file.read_bytes()
    header = 8 + _header_len(store_file)
    cut = {
        "empty": 0,
        "4 bytes": 4,
        "8 bytes": 8,
        "inside header": 8 + (header - 8) // 2,
        "end of header": header,
        "inside data": header + (len(data) - header) // 2,
        "last byte": len(data) - 1,
    }[where]
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:cut])
    with pytest.raises(VocabertError, match="truncated") as info:
        load_safetensors(bad, "entry store")
    assert str(bad) in str(info.value) and "entry store" in str(info.value)
    with pytest.raises(VocabertError):
        VocabularyStore.load(bad)


@pytest.mark.parametrize(
    "header",
    [
        b"\xff\xfe\x00garbage\x80\x81",  # not UTF-8
        b"{not json at all",
        b'{"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 2]}}',  # size != shape
        b'{"a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}',  # 64 bytes of data for 2
    ],
)
def test_garbage_header_raises_vocabert_error(tmp_path, header):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    with pytest.raises(VocabertError, match="bad.safetensors"):
        load_safetensors(path)


def test_random_bytes_raise_vocabert_error(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "noise.safetensors"
    for _ in range(20):
        path.write_bytes(rng.integers(0, 256, size=int(rng.integers(0, 300))).astype(np.uint8).tobytes())
        with pytest.raises(VocabertError):
            load_safetensors(path)


@pytest.mark.parametrize(
    "header",
    [
        b"12345678",
        b"[]",
        b"null",
        b'{"a": 1}',
        b'{"a": {"dtype": "F16"}}',
        b'{"a": {"dtype": "F16", "shape": [1], "data_offsets": [0]}}',
    ],
)
def test_wrongly_shaped_json_header_raises_vocabert_error(tmp_path, header):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    with pytest.raises(VocabertError):
        load_safetensors(path)


def test_store_without_embeddings_tensor(tmp_path):
    path = tmp_path / "s.safetensors"
    save_safetensors(path, {"patterns": np.zeros((2, 4), np.int32)})
    with pytest.raises(VocabertError, match="embeddings"):
        VocabularyStore.load(path)


def test_header_is_what_safetensors_writes(store_file):
    # Guard the offsets logic: the header names every tensor with its dtype, shape and data offsets.
    n = _header_len(store_file)
    header = json.loads(store_file.read_bytes()[8 : 8 + n])
    assert header["embeddings"]["dtype"] == "F16" and header["patterns"]["dtype"] == "I32"


def test_memory_maps_start_at_the_offsets_of_the_header(tmp_path):
    # Tensors written in an order other than their names', of sizes that are not multiples of 8.
    tensors = {"z": np.arange(3, dtype=np.int8), "a": np.arange(5, dtype=np.float16), "m": np.arange(7, dtype=np.int64)}
    path = tmp_path / "order.safetensors"
    save_safetensors(path, tensors)
    n = _header_len(path)
    header = json.loads(path.read_bytes()[8 : 8 + n])
    ours, _ = load_safetensors(path)
    for name, t in tensors.items():
        assert ours[name].offset == 8 + n + header[name]["data_offsets"][0]
        assert np.array_equal(np.asarray(ours[name]), t)


def test_padded_file_raises_vocabert_error(store_file):
    store_file.write_bytes(store_file.read_bytes() + b"\0" * 16)
    with pytest.raises(VocabertError, match="embeddings.safetensors"):
        VocabularyStore.load(store_file)


def test_dtype_numpy_cannot_map_raises_vocabert_error(tmp_path):
    header = b'{"a": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}'
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
    with pytest.raises(VocabertError, match="unsupported dtype BF16"):
        load_safetensors(path)


def test_tensors_round_trip_and_shape_checks(vectors):
    store = VocabularyStore.from_float(make_patterns(len(vectors)), vectors, "int8", {"k": "v"})
    tensors = store.tensors()
    assert set(tensors) == {"patterns", "embeddings", "scales"} and tensors["patterns"].dtype == np.int32
    again = VocabularyStore.from_tensors(tensors, {"k": "v"}, "here")
    assert np.array_equal(again.vectors(np.arange(len(vectors))), store.vectors(np.arange(len(vectors))))
    with pytest.raises(VocabertError, match="here: tensor shapes"):
        VocabularyStore.from_tensors({**tensors, "scales": tensors["scales"][:-1]}, {}, "here")
    with pytest.raises(VocabertError, match="here: tensor shapes"):
        VocabularyStore.from_tensors({**tensors, "embeddings": tensors["embeddings"].reshape(-1)}, {}, "here")
    with pytest.raises(VocabertError, match="here has no 'patterns'"):
        VocabularyStore.from_tensors({"embeddings": tensors["embeddings"]}, {}, "here")
    for changed, match in [
        ({"patterns": tensors["patterns"].astype(np.float32)}, "patterns must be token ids"),
        ({"embeddings": tensors["embeddings"].astype(np.int16)}, "embeddings must be float16, float32 or int8"),
        ({"embeddings": tensors["embeddings"].astype(np.float16)}, "int8 embeddings need a float32 scales"),
        ({"scales": tensors["scales"].astype(np.float64)}, "scales must be float32"),
    ]:
        with pytest.raises(VocabertError, match=f"here: {match}"):
            VocabularyStore.from_tensors({**tensors, **changed}, {}, "here")
