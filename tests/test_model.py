"""StudentModel on a synthetic tokenizer and store: encode, the model folder, damaged folders, sentence-transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures import DIM, PHRASES, VOCAB, WORDS, tiny_context_model, tiny_model, tokenizer_text

import vocabert
from vocabert.artifacts import VocabertError, write_text
from vocabert.card import EVAL_END, EVAL_START, NOT_EVALUATED
from vocabert.matching import PAD, WILDCARD, Matches
from vocabert.model import MODEL_FILES, Batch, ContextPool, StudentModel, pool
from vocabert.store import load_safetensors, save_safetensors

TEXTS = ["the cat sat on the mat", "New York City is big", "how long do cats live", "a zebra", "the big red car"]


@pytest.fixture
def model() -> StudentModel:
    return tiny_model()


@pytest.fixture
def saved(model, tmp_path) -> Path:
    return model.save(tmp_path / "model", vocabulary_listing="entry\tcount\ncat\t3\n")


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
        weights = model.network.entry_weight[found].astype(np.float64)
        pooled = weights @ model.store.vectors(np.array(found)) / weights.sum()
    out = model.network.weight.astype(np.float64) @ pooled + model.network.bias
    return out / np.linalg.norm(out)


def brute_force_context(model: StudentModel, text: str) -> np.ndarray:
    """``context_pool`` by its docstring, one text, in float64 (GELU in its tanh form, as trained)."""
    ids, found = found_entries(model, text)
    t = {k: v.astype(np.float64) for k, v in model.network.tensors().items()}
    vectors = model.store.vectors(np.array(found)).astype(np.float64)
    m = []
    for h in range(t["entry_key"].shape[1]):
        w = t["entry_weight"][found]
        q = w @ t["entry_query"][found, h] / w.sum()
        w = w * np.exp(t["entry_key"][found, h] @ q)
        m.append(w @ vectors / w.sum())
    m = np.concatenate(m)
    out = t["weight"] @ m + t["bias"] + (t["special_weight"] @ m + t["special_bias"]) / max(len(ids) - 2, 1)
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
    return out / np.linalg.norm(out)


@pytest.mark.parametrize(
    "rank, hidden, heads, window", [(3, 5, 1, 0), (0, 0, 1, 0), (2, 0, 1, 0), (2, 4, 3, 0), (2, 0, 2, 2), (0, 0, 1, 1)]
)
def test_context_pool_matches_its_definition(rank, hidden, heads, window, tmp_path):
    model = tiny_context_model(rank, hidden, heads=heads, window=window)
    out = model.encode(TEXTS)
    for text, row in zip(TEXTS, out, strict=True):
        np.testing.assert_allclose(row, brute_force_context(model, text), atol=1e-5)
    again = vocabert.load(model.save(tmp_path / "m"))
    np.testing.assert_allclose(again.encode(TEXTS), out, atol=1e-6)
    assert again.config["architecture"] == "context_pool" and again.network.heads == heads
    assert again.network.window == window


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
    model.network.entry_weight[skip] *= 50
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


def test_empty_input_and_empty_texts(model):
    assert model.encode([]).shape == (0, DIM)
    out = model.encode(["", "   ", "\n\t", "zebra"])
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_long_text_is_truncated(model):
    long = " ".join(["the cat sat on the mat"] * 20)
    cut = model.tokenizer.decode(model.tokenizer.encode(long).ids[1:-1])
    assert len(model.tokenizer.encode(long).ids) == model.config["max_length"]
    np.testing.assert_allclose(model.encode(long), model.encode(cut), atol=1e-6)


def test_odd_unicode_and_bad_arguments(model):
    assert np.isfinite(model.encode(["caf\udce9 cat", "\x00 dog", "🙂 park"])).all()
    with pytest.raises(TypeError):
        model.encode(["ok", None])
    with pytest.raises(ValueError):
        model.encode(TEXTS, batch_size=0)


def test_encode_batch_reports_each_step(model):
    timings: dict[str, float] = {}
    out = model.encode_batch(TEXTS, timings)
    np.testing.assert_allclose(out, model.encode(TEXTS), atol=1e-6)
    assert set(timings) == {"tokenize", "match", "lookup", "network"} and all(v >= 0 for v in timings.values())


# ------------------------------------------------------------------------------------- model folder


def test_save_load_round_trip(model, saved):
    names = {p.name for p in saved.iterdir()}
    assert names == {*MODEL_FILES, "vocabulary.tsv", "README.md", "modules.json", "config_sentence_transformers.json"}
    again = vocabert.load(saved)
    np.testing.assert_array_equal(again.encode(TEXTS), model.encode(TEXTS))
    assert isinstance(again.store.embeddings, np.memmap)  # rows are read lazily
    config = json.loads((saved / "config.json").read_text())
    assert config["format_version"] == 2 and config["dim"] == DIM and config["entries"] == len(model.store)
    assert config["dtype"] == "float16" and config["provenance"] == model.config["provenance"]


def test_model_safetensors_holds_entries_and_network(saved):
    tensors, metadata = load_safetensors(saved / "model.safetensors")
    assert set(tensors) == {"patterns", "embeddings", "student.entry_weight", "student.weight", "student.bias"}
    assert tensors["embeddings"].dtype == np.float16 and tensors["patterns"].dtype == np.int32
    assert metadata["architecture"] == "weighted_mean" and metadata["format_version"] == "2"


def test_int8_round_trip(tmp_path):
    model = tiny_model("int8")
    path = model.save(tmp_path / "m8")
    tensors, _ = load_safetensors(path / "model.safetensors")
    assert tensors["embeddings"].dtype == np.int8 and tensors["scales"].shape == (len(model.store),)
    assert json.loads((path / "config.json").read_text())["dtype"] == "int8"
    np.testing.assert_array_equal(vocabert.load(path).encode(TEXTS), model.encode(TEXTS))


def test_a_loaded_model_saved_elsewhere_keeps_listing_and_evaluation(saved, tmp_path):
    card = saved / "README.md"
    card.write_text(card.read_text().replace(NOT_EVALUATED, "| fidelity | 0.9 |"))
    copy = vocabert.load(saved).save(tmp_path / "copy")
    assert (copy / "vocabulary.tsv").read_text() == "entry\tcount\ncat\t3\n"
    assert "| fidelity | 0.9 |" in (copy / "README.md").read_text()


def test_overwriting_a_folder_keeps_its_evaluation_and_nothing_else(model, saved):
    from vocabert.bench.report import EVAL_END as BENCH_END
    from vocabert.bench.report import EVAL_START as BENCH_START
    from vocabert.bench.report import update_model_card

    assert (BENCH_START, BENCH_END) == (EVAL_START, EVAL_END)  # the bench fills the section the card keeps
    update_model_card(saved, "| model | cos |\n|---|---:|\n| tiny | 0.5 |")
    (saved / "stray.txt").write_text("left by someone")
    tiny_model(seed=1).save(saved)
    text = (saved / "README.md").read_text()
    assert text.count(EVAL_START) == 1 and "| tiny | 0.5 |" in text and NOT_EVALUATED not in text
    assert not (saved / "stray.txt").exists()
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]  # no temporary or old folder left
    np.testing.assert_allclose(vocabert.load(saved).encode(TEXTS), tiny_model(seed=1).encode(TEXTS), atol=1e-6)


def test_model_card(saved):
    card = (saved / "README.md").read_text()
    assert "example-org/tiny-teacher" in card and "base_model: example-org/tiny-teacher" in card
    assert "/home/builder" not in card  # the teacher by name, never a path of the machine that built it
    assert 'vocabert.load("path/to/this/folder")' in card
    assert 'SentenceTransformer("path/to/this/folder", trust_remote_code=True)' in card
    assert f"{len(WORDS) + len(PHRASES)} entries" in card and f"dimension {DIM}" in card and "16 tokens" in card
    assert "0.5000 (plain mean of the entry vectors) -> 0.7500" in card and "90 texts" in card
    assert card.count(EVAL_START) == 1 and card.index(EVAL_START) < card.index(NOT_EVALUATED) < card.index(EVAL_END)


def test_model_card_without_training_or_teacher_name(tmp_path):
    model = tiny_model()
    del model.config["training"], model.config["provenance"]["teacher_name"]
    card = (model.save(tmp_path / "m") / "README.md").read_text()
    assert "## Training" not in card and "base_model" not in card
    assert "`tiny-teacher`" in card and "/home/builder" not in card


def test_files_and_folder_get_the_modes_of_the_umask(model, tmp_path):
    old = os.umask(0o022)
    try:
        path = model.save(tmp_path / "shared")
        write_text(tmp_path / "note.txt", "x")
        save_safetensors(tmp_path / "t.safetensors", {"a": np.zeros(2, np.float32)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o755
    for f in [*path.iterdir(), tmp_path / "note.txt", tmp_path / "t.safetensors"]:
        assert f.stat().st_mode & 0o777 == 0o644, f
    os.umask(0o077)
    try:
        private = model.save(tmp_path / "private")
    finally:
        os.umask(old)
    assert private.stat().st_mode & 0o777 == 0o700 and (private / "model.safetensors").stat().st_mode & 0o777 == 0o600


def test_load_needs_no_torch(saved):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['sentence_transformers'] = None\n"
        "import vocabert\n"
        f"m = vocabert.load({str(saved)!r})\n"
        "print(m.encode(['the cat']).shape)\n"
        "assert 'transformers' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"(1, {DIM})" in out.stdout


# ------------------------------------------------------------------------------------ damaged folders


def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(VocabertError, match=match) as info:
        vocabert.load(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_folder(tmp_path):
    _one_line_error(tmp_path / "nope", "does not exist")


def test_old_format_folder(saved):
    (saved / "model.safetensors").rename(saved / "embeddings.safetensors")
    save_safetensors(saved / "student.safetensors", {"entry_weight": np.ones(3, np.float32)})
    message = _one_line_error(saved, "older vocabert format")
    assert "vocabert train --force" in message and str(saved) in message


@pytest.mark.parametrize("missing", MODEL_FILES)
def test_missing_file(saved, missing):
    (saved / missing).unlink()
    _one_line_error(saved, missing)


@pytest.mark.parametrize("where", ["header", "data", "last byte"])
def test_truncated_model_safetensors(saved, where):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    cut = {"header": 20, "data": len(data) // 2, "last byte": len(data) - 1}[where]
    path.write_bytes(data[:cut])
    assert str(path) in _one_line_error(saved, "truncated")


def test_corrupt_model_safetensors(saved):
    path = saved / "model.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size=500).astype(np.uint8).tobytes())
    assert str(path) in _one_line_error(saved, "model weights")


def test_model_safetensors_without_a_network_tensor(model, saved):
    tensors = {k: np.asarray(v) for k, v in load_safetensors(saved / "model.safetensors")[0].items()}
    del tensors["student.bias"]
    save_safetensors(saved / "model.safetensors", tensors)
    _one_line_error(saved, "student.bias")


def test_network_that_does_not_fit_the_store(saved):
    tensors = {k: np.asarray(v) for k, v in load_safetensors(saved / "model.safetensors")[0].items()}
    tensors["student.entry_weight"] = tensors["student.entry_weight"][:-1]
    save_safetensors(saved / "model.safetensors", tensors)
    _one_line_error(saved, "do not fit")


def test_tokenizer_of_another_vocabulary(model, saved):
    spec = json.loads(tokenizer_text())
    spec["model"]["vocab"]["cat"], spec["model"]["vocab"]["dog"] = VOCAB["dog"], VOCAB["cat"]
    (saved / "tokenizer.json").write_text(json.dumps(spec))
    message = _one_line_error(saved, "tokenizer")
    assert model.config["provenance"]["tokenizer"] in message
    (saved / "tokenizer.json").write_text("{broken")
    _one_line_error(saved, "not valid JSON")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: c.pop("vocab_size"), "vocab_size"),
        (lambda c: c.update(max_length="long"), "max_length"),
        (lambda c: c.update(architecture="transformer"), "unknown architecture"),
        (lambda c: c.update(format_version=99), "newer vocabert"),
    ],
)
def test_bad_config(saved, change, match):
    config = json.loads((saved / "config.json").read_text())
    change(config)
    (saved / "config.json").write_text(json.dumps(config))
    _one_line_error(saved, match)


def test_config_that_is_not_json(saved):
    (saved / "config.json").write_text("[1, 2")
    _one_line_error(saved, "not valid JSON")
    (saved / "config.json").write_text("[1, 2]")
    _one_line_error(saved, "not a JSON object")


# ---------------------------------------------------------------------------------- sentence-transformers


@pytest.fixture(scope="module")
def sentence_transformer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return pytest.importorskip("sentence_transformers").SentenceTransformer


def test_sentence_transformers_gives_the_same_vectors(sentence_transformer, model, saved):
    st = sentence_transformer(str(saved), trust_remote_code=True, device="cpu")
    expected = model.encode(TEXTS)
    np.testing.assert_allclose(st.encode(TEXTS), expected, atol=1e-6)
    np.testing.assert_allclose(st.encode(TEXTS, batch_size=2), expected, atol=1e-6)
    np.testing.assert_allclose(st.encode(TEXTS[1]), expected[1], atol=1e-6)
    assert st.get_embedding_dimension() == DIM and st.max_seq_length == 16
    assert float(st.similarity(st.encode(TEXTS[:1]), st.encode(TEXTS[:1]))) == pytest.approx(1.0, abs=1e-5)
    assert "entries=" in repr(st[0])


def test_sentence_transformers_save_reloads_in_both(sentence_transformer, model, saved, tmp_path):
    st = sentence_transformer(str(saved), trust_remote_code=True, device="cpu")
    st.save(str(tmp_path / "resaved"))
    np.testing.assert_array_equal(vocabert.load(tmp_path / "resaved").encode(TEXTS), model.encode(TEXTS))
    again = sentence_transformer(str(tmp_path / "resaved"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(again.encode(TEXTS), model.encode(TEXTS), atol=1e-6)


def test_sentence_transformers_asks_to_trust_vocabert(sentence_transformer, saved):
    # sentence-transformers >= 6 imports no module class outside its own package without the flag.
    with pytest.raises(ValueError, match="trust_remote_code"):
        sentence_transformer(str(saved), device="cpu")
