"""StudentModel on a synthetic tokenizer and store: the networks and encode (the folder: test_model_folder.py)."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import DIM, PHRASES, WORDS, tiny_context_model, tiny_model

import vocabert
from vocabert.matching import PAD, WILDCARD, Matches
from vocabert.model import StudentModel
from vocabert.networks import Batch, ContextPool, pool

TEXTS = ["the cat sat on the mat", "New York City is big", "how long do cats live", "a zebra", "the big red car"]


@pytest.fixture
def model() -> StudentModel:
    return tiny_model()


def found_entries(model: StudentModel, text: str) -> tuple[list[int], list[int]]:
    """The text's token ids, and every entry found at every position, by brute force (no vectorization)."""
    ids = model.tokenizer.encode(text).ids
    rows = [[int(x) for x in p if x != PAD] for p in np.asarray(model.store.patterns)]
    found = [
        e
        for start in range(len(ids))
        for e, row in enumerate(rows)
        if start + len(row) <= len(ids) and all(r in (WILDCARD, t) for r, t in zip(row, ids[start:], strict=False))
    ]
    return ids, found


def brute_force(model: StudentModel, text: str) -> np.ndarray:
    """The model's definition, one text: every entry at every position, weighted mean, map."""
    _, found = found_entries(model, text)
    pooled = np.zeros(model.dim)
    if found:
        weights = model.network.t["entry_weight"][found].astype(np.float64)
        pooled = weights @ model.store.vectors(np.array(found)) / weights.sum()
    out = model.network.t["weight"].astype(np.float64) @ pooled + model.network.t["bias"]
    return out / np.linalg.norm(out)


def brute_force_context(model: StudentModel, text: str) -> np.ndarray:
    """``context_pool`` by its docstring, one text, in float64 (GELU in its tanh form, as trained)."""
    ids, found = found_entries(model, text)
    t = {k: v.astype(np.float64) for k, v in model.network.tensors().items()}
    every = np.arange(len(model.store))
    for name in ContextPool.ENTRY_TABLES:  # as the network holds them (int8 keys and queries: times their scales)
        if name in t:
            t[name] = model.network.entry_rows(name, every).astype(np.float64)
    vectors = model.store.vectors(np.array(found)).astype(np.float64)
    m = []
    for h in range(t["entry_key"].shape[1]):
        w = t["entry_weight"][found]
        q = w @ t["entry_query"][found, h] / w.sum()
        w = w * np.exp(t["entry_key"][found, h] @ q)
        m.append(w @ vectors / w.sum())
    m = np.concatenate(m)
    special = t["special_weight"] @ m + t["special_bias"]
    if "special_in" in t:
        h = t["special_in"] @ m + t["special_in_bias"]
        special += t["special_out"] @ (0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3))))
        special += t["special_out_bias"]
    out = t["weight"] @ m + t["bias"] + special / max(len(ids) - 2, 1)
    if "mlp_in" in t:
        h = t["mlp_in"] @ m + t["mlp_in_bias"]
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        out += t["mlp_out"] @ h + t["mlp_out_bias"]
    if "entry_window" in t:  # found is in order of position, then entry: the order the window runs over
        k, window = t["entry_window"].shape[2], len(t["window_offset_bias"]) // 2
        z = np.zeros(k)
        for i, e in enumerate(found):
            a, _, _, g = t["entry_window"][e]
            near = [j for j in range(i - window, i + window + 1) if j != i and 0 <= j < len(found)]
            mixed = np.zeros(k)
            if near:
                score = np.array([a @ t["entry_window"][found[j], 1] / np.sqrt(k) for j in near])
                score += t["window_offset_bias"][[j - i + window - (j > i) for j in near]]
                alpha = np.exp(score - score.max()) / np.exp(score - score.max()).sum()
                mixed = sum(al * t["entry_window"][found[j], 2] for al, j in zip(alpha, near, strict=True))
            h = g + mixed
            z += t["entry_weight"][e] * 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        out += t["window_weight"] @ (z / t["entry_weight"][found].sum()) + t["window_bias"]
    if "entry_context" in t:
        f = np.zeros(t["entry_context"].shape[1])
        for e in found:
            h = t["entry_context"][e] + t["context_in"] @ m + t["context_in_bias"]
            f += t["entry_weight"][e] * 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        out += t["context_out"] @ (f / t["entry_weight"][found].sum()) + t["context_out_bias"]
    return out / np.linalg.norm(out)


@pytest.mark.parametrize(
    "rank, hidden, heads, window, context, special",
    [(3, 5, 1, 0, 0, 0), (0, 0, 1, 0, 0, 0), (2, 0, 1, 0, 0, 0), (2, 4, 3, 0, 0, 0), (2, 0, 2, 2, 0, 0)]
    + [(0, 0, 1, 1, 0, 0), (2, 0, 2, 0, 3, 0), (0, 0, 1, 0, 2, 0), (2, 3, 2, 1, 4, 0), (2, 0, 2, 0, 0, 3)]
    + [(2, 0, 2, 0, 3, 2)],
)
def test_context_pool_matches_its_definition(rank, hidden, heads, window, context, special, tmp_path):
    model = tiny_context_model(rank, hidden, heads=heads, window=window, context=context, special_hidden=special)
    out = model.encode(TEXTS)
    for text, row in zip(TEXTS, out, strict=True):
        np.testing.assert_allclose(row, brute_force_context(model, text), atol=1e-5)
    again = vocabert.load(model.save(tmp_path / "m"))
    np.testing.assert_allclose(again.encode(TEXTS), out, atol=1e-6)
    assert again.config["architecture"] == "context_pool" and again.network.heads == heads
    assert again.network.window == window and again.network.context == context
    assert again.network.special_hidden == special


def test_pool_is_each_texts_weighted_mean_and_zero_without_matches():
    """Per text and head: sum of weight x vector over the text's matches / sum of weights; texts without
    matches (here the first, the third and the last) pool to zero rows, never NaN."""
    rng = np.random.default_rng(0)
    text = np.array([1, 1, 1, 3, 3, 4])
    column = np.array([0, 2, 2, 1, 3, 0])
    vectors = rng.normal(size=(4, 5)).astype(np.float32)
    weight = rng.uniform(0.1, 2, size=(2, len(text)))
    matches = Matches(text, column, np.zeros_like(text), n_texts=6)
    batch = Batch(matches, np.arange(4), column, vectors, np.full(6, 5))
    out = pool(batch, weight).reshape(6, 2, 5)
    for t in range(6):
        rows = text == t
        for h in range(2):
            expected = weight[h, rows] @ vectors[column[rows]] / weight[h, rows].sum() if rows.any() else 0
            np.testing.assert_allclose(out[t, h], expected, atol=1e-6)
    np.testing.assert_allclose(pool(batch, weight[0]), out[:, 0], atol=1e-7)  # one row of weights: (texts, dim)


def test_context_pool_of_one_head_reads_the_older_layout():
    """Models written before heads existed store keys and queries as (entries, rank): one head."""
    model = tiny_context_model(3, 0)
    t = model.network.tensors()
    older = ContextPool({**t, "entry_key": t["entry_key"][:, 0], "entry_query": t["entry_query"][:, 0]})
    assert older.heads == 1 and older.rank == 3
    model_older = StudentModel(model.config, model.tokenizer_text, model.store, older)
    np.testing.assert_allclose(model_older.encode(TEXTS), model.encode(TEXTS), atol=1e-6)


# ------------------------------------------------------------------------------------------- encode


def test_encode_shape_dtype_and_unit_rows(model):
    out = model.encode(TEXTS)
    assert out.shape == (len(TEXTS), DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert model.get_sentence_embedding_dimension() == DIM


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_encode_matches_the_definition(dtype):
    model = tiny_model(dtype)
    out = model.encode(TEXTS)
    for text, row in zip(TEXTS, out, strict=True):
        np.testing.assert_allclose(row, brute_force(model, text), atol=1e-5)


def test_phrases_and_skip_grams_count():
    # "the cat sat" holds the skip-gram "the * sat"; with that entry's weight raised, the vector moves.
    model = tiny_model()
    skip = len(WORDS) + PHRASES.index(("the", "*", "sat"))
    before = model.encode("the cat sat")
    model.network.t["entry_weight"][skip] *= 50
    after = model.encode("the cat sat")
    assert float(before @ after) < 0.999
    np.testing.assert_allclose(model.encode("the cat"), tiny_model().encode("the cat"), atol=1e-6)


def test_batch_size_and_single_string(model):
    out = model.encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS, batch_size=1), out, atol=1e-6)
    np.testing.assert_allclose(model.encode(TEXTS, batch_size=2, show_progress_bar=True), out, atol=1e-6)
    single = model.encode(TEXTS[0])
    assert single.shape == (DIM,)
    np.testing.assert_allclose(single, out[0], atol=1e-6)


@pytest.mark.parametrize("make", [tiny_model, lambda: tiny_context_model(3, 5, heads=2, window=2)])
def test_empty_input_and_empty_texts(make):
    model = make()
    assert model.encode([]).shape == (0, DIM)
    out = model.encode(["", "   ", "\n\t", "zebra"])  # no text of this batch matches an entry
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model.encode(["", "the cat"])[0], out[0])  # as in a batch with matches


def test_long_text_is_truncated(model):
    long = " ".join(["the cat sat on the mat"] * 20)
    cut = model.tokenizer.decode(model.tokenizer.encode(long).ids[1:-1])
    assert len(model.tokenizer.encode(long).ids) == model.config["max_length"]
    np.testing.assert_allclose(model.encode(long), model.encode(cut), atol=1e-6)


def test_odd_unicode_and_bad_arguments(model):
    assert np.isfinite(model.encode(["caf\udce9 cat", "\x00 dog", "🙂 park"])).all()
    with pytest.raises(TypeError, match="got NoneType"):
        model.encode(["ok", None])
    with pytest.raises(TypeError, match="a string or a sequence of strings, got int"):
        model.encode(5)


@pytest.mark.parametrize("texts", [b"the cat", bytearray(b"the cat"), [b"the cat"]])
def test_bytes_are_not_text(model, texts):
    with pytest.raises(TypeError, match="got bytes.*decode"):
        model.encode(texts)


@pytest.mark.parametrize(
    "batch_size, error",
    [(1.5, TypeError), ("8", TypeError), (None, TypeError), (True, TypeError), (0, ValueError), (-1, ValueError)],
)
def test_batch_size_must_be_a_positive_integer(model, batch_size, error):
    with pytest.raises(error, match="batch_size must be a positive integer"):
        model.encode(TEXTS, batch_size=batch_size)
    with pytest.raises(error, match="batch_size"):
        model.encode(TEXTS, batch_size=batch_size, long_texts="chunk")


def test_numpy_integers_are_integers(model):
    out = model.encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS, batch_size=np.int64(2)), out, atol=1e-6)
    np.testing.assert_allclose(model.encode(TEXTS, truncate_dim=np.int32(DIM)), out, atol=1e-6)
    with pytest.raises(ValueError, match="truncate_dim"):
        model.encode(TEXTS, truncate_dim=True)


def test_encode_batch_reports_each_step(model):
    timings: dict[str, float] = {}
    out = model.encode_batch(TEXTS, timings)
    np.testing.assert_allclose(out, model.encode(TEXTS), atol=1e-6)
    assert set(timings) == {"tokenize", "match", "lookup", "network"} and all(v >= 0 for v in timings.values())
