"""``vocabert vocab`` and ``vocabert neighbors`` on the tiny synthetic model (no teacher, no data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures import DIM, PHRASES, VOCAB, WORDS, config, ids, tiny_model, tokenizer_text

import vocabert
from vocabert.artifacts import VocabertError
from vocabert.cli import main
from vocabert.distill.vocabulary import KIND_NAMES, Vocabulary, listing
from vocabert.inspect_vocabulary import (
    KINDS,
    entry_kinds,
    entry_texts,
    find_entry,
    nearest_entries,
    neighbors,
    read_listing,
    readable,
    vocabulary_summary,
)
from vocabert.matching import PAD
from vocabert.model import StudentModel
from vocabert.networks import WeightedMean
from vocabert.store import VocabularyStore

PHRASE_TEXTS = ["new york", "new york city", "how long", "the * sat", "big * * car"]


def tokens() -> list[str]:
    out = [""] * len(VOCAB)
    for token, i in VOCAB.items():
        out[i] = token
    return out


def fixture_listing(model: StudentModel) -> str:
    """vocabulary.tsv of the fixture's entries, written by the mining's own ``listing``."""
    patterns = np.asarray(model.store.patterns)
    n = len(patterns)
    kind = entry_kinds(patterns)
    count = np.arange(n, 0, -1, dtype=np.int64) * 10  # the first entry is the most frequent
    npmi = np.where(kind == 0, np.nan, np.linspace(0.2, 0.9, n)).astype(np.float32)
    score = np.where(kind == 0, count, count * npmi).astype(np.float32)
    return listing(Vocabulary(patterns, kind, count, npmi, score), tokens())


@pytest.fixture(scope="module")
def model() -> StudentModel:
    return tiny_model()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """The tiny model saved with its vocabulary.tsv."""
    m = tiny_model()
    return m.save(tmp_path_factory.mktemp("inspect") / "model", vocabulary_listing=fixture_listing(m))


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """The tiny model saved without a vocabulary.tsv (it is optional)."""
    return tiny_model().save(tmp_path_factory.mktemp("inspect") / "bare")


def model_with(phrases: list[tuple[str, ...]], seed: int = 1) -> StudentModel:
    """A tiny model whose phrases are ``phrases`` (every word of the fixture is an entry too)."""
    rows = [ids(w) for w in WORDS] + [ids(*p) for p in phrases]
    patterns = np.full((len(rows), 4), PAD, dtype=np.int32)
    for i, row in enumerate(rows):
        patterns[i, : len(row)] = row
    rng = np.random.default_rng(seed)
    store = VocabularyStore.from_float(patterns, rng.normal(size=(len(rows), DIM)).astype(np.float32))
    network = WeightedMean(np.ones(len(rows)), np.eye(DIM), np.zeros(DIM))
    text = tokenizer_text()
    return StudentModel(config(text), text, store, network)


def brute_force(model: StudentModel, query: np.ndarray, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every entry ranked by cosine to ``query``, all vectors at once."""
    vectors = model.store.vectors(np.arange(len(model.store)))
    cos = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    order = [r for r in np.argsort(-cos, kind="stable") if r != exclude]
    return np.array(order), cos[order]


# ------------------------------------------------------------------------------------ entries as text


def test_kinds_are_the_minings():
    assert KINDS == tuple(KIND_NAMES[k] for k in sorted(KIND_NAMES))


@pytest.mark.parametrize(
    ("pieces", "text"),
    [
        (["new", "york"], "new york"),
        (["play", "##ing"], "playing"),
        (["how", "*", "you"], "how * you"),
        (["un", "##break", "##able", "glass"], "unbreakable glass"),
        (["##s"], "##s"),  # a continuation on its own stays one
        (["the", "*", "##s"], "the * ##s"),  # nor joins a wildcard
        (["##gien", "##ist"], "##gienist"),
        (["##"], "##"),  # the token "##" itself
    ],
)
def test_readable(pieces, text):
    assert readable(pieces) == text


def test_entry_texts_render_wildcards_and_word_pieces(model):
    assert entry_texts(model) == WORDS + PHRASE_TEXTS
    assert entry_texts(model, [len(WORDS) + 3, 0]) == ["the * sat", "the"]
    merged = model_with([("cat", "##s"), ("do", "##ing", "fast"), ("the", "*", "##s")])
    assert entry_texts(merged)[len(WORDS) :] == ["cats", "doing fast", "the * ##s"]


# ------------------------------------------------------------------------------------------ summary


def test_summary_counts_what_the_fixture_defines(model):
    s = vocabulary_summary(model)
    assert s.entries == len(WORDS) + len(PHRASES)
    assert s.kinds == {"token": len(WORDS), "ngram": 3, "skipgram": 2}
    assert s.ngram_lengths == {2: 2, 3: 1}  # new york, how long; new york city
    assert s.skipgram_gaps == {1: 1, 2: 1}  # the * sat; big * * car
    assert s.dim == DIM and s.dtype == "float16"
    assert s.vector_bytes == s.entries * DIM * 2
    assert s.pattern_bytes == s.entries * 4 * 4
    assert s.listing is None  # never saved: no folder, no vocabulary.tsv


def test_summary_of_an_int8_store_counts_its_scales():
    s = vocabulary_summary(tiny_model("int8"))
    assert s.dtype == "int8 with per-row scales"
    assert s.vector_bytes == s.entries * DIM + s.entries * 4


def test_summary_without_vocabulary_tsv_says_so(bare):
    s = vocabulary_summary(vocabert.load(bare))
    assert s.listing is None and s.kinds == {"token": len(WORDS), "ngram": 3, "skipgram": 2}
    text = s.format(top=3)
    assert "statistics: not available" in text and "vocabulary.tsv" in text


def test_listing_is_read_and_ranked(saved):
    m = vocabert.load(saved)
    s = vocabulary_summary(m)
    lst = s.listing
    assert lst is not None and len(lst) == s.entries
    assert lst.entries == entry_texts(m)
    assert list(lst.numbers) == ["count", "npmi", "llr", "score"] and list(lst.labels) == ["chosen_by"]
    np.testing.assert_array_equal(lst.kinds, entry_kinds(m.store.patterns))
    np.testing.assert_array_equal(lst.top("count", 3), [0, 1, 2])
    # NPMI is undefined (nan) for tokens: ranking by it lists phrases only, the highest last in the file.
    n = s.entries
    np.testing.assert_array_equal(lst.top("npmi", 10), np.arange(n - 1, len(WORDS) - 1, -1))
    np.testing.assert_array_equal(lst.top("count", 10, kind="skipgram"), [n - 2, n - 1])
    with pytest.raises(VocabertError, match="no numeric column 'chosen_by'"):
        lst.top("chosen_by", 3)


def test_summary_text_lists_the_top_entries(saved):
    text = vocabulary_summary(vocabert.load(saved)).format(top=2, by=["npmi"], kind="skipgram")
    assert "skip-grams" in text and "gap 1 1, gap 2 1" in text and "2 tokens 2, 3 tokens 1" in text
    assert "top 2 skipgram entries by npmi" in text
    lines = text.splitlines()
    first = lines.index("top 2 skipgram entries by npmi:")
    assert lines[first + 2].split()[:6] == ["1", "big", "*", "*", "car", "skipgram"]
    assert lines[first + 3].split()[:5] == ["2", "the", "*", "sat", "skipgram"]
    assert "by count" not in text


def test_malformed_listing_is_one_error(tmp_path):
    path = tmp_path / "vocabulary.tsv"
    path.write_text("entry\tkind\tcount\nthe\ttoken\t3\nnew york\tngram\n", encoding="utf-8")
    with pytest.raises(VocabertError, match="line 3: 2 fields"):
        read_listing(path)
    path.write_text("entry\tkind\tcount\nthe\tphrase\t3\n", encoding="utf-8")
    with pytest.raises(VocabertError, match="unknown kind 'phrase'"):
        read_listing(path)


# ---------------------------------------------------------------------------------------- neighbours


def test_find_entry_is_exact(model):
    assert find_entry(model, "New York") == len(WORDS)  # the tokenizer lower-cases
    assert find_entry(model, "new york city") == len(WORDS) + 1
    assert find_entry(model, "the * sat") == len(WORDS) + 3  # a lone "*" is a wildcard
    assert find_entry(model, "cat") == WORDS.index("cat")
    assert find_entry(model, "york new") is None
    assert find_entry(model, "the cat sat") is None  # matched by the skip-gram, but not the skip-gram itself
    assert find_entry(model, "new york city in the park") is None  # longer than any pattern


@pytest.mark.parametrize("text", ["new york", "the * sat", "cat"])
def test_neighbors_of_an_entry_are_the_brute_force_ranking(model, text):
    entry = find_entry(model, text)
    found = neighbors(model, text, top=6)
    assert found.entry == entry
    rows, cos = brute_force(model, model.store.vectors(np.array([entry]))[0], exclude=entry)
    np.testing.assert_array_equal(found.rows, rows[:6])
    np.testing.assert_allclose(found.cosines, cos[:6], rtol=1e-5, atol=1e-6)
    assert entry not in found.rows
    assert found.texts == entry_texts(model, rows[:6])
    assert found.kinds == [KINDS[k] for k in entry_kinds(model.store.patterns[rows[:6]])]


def test_neighbors_of_a_kind(model):
    found = neighbors(model, "new york", top=10, kind="ngram")
    assert found.kinds == ["ngram", "ngram"]  # the other two n-grams; the query itself is left out
    assert sorted(found.rows) == [len(WORDS) + 1, len(WORDS) + 2]


def test_a_text_that_is_no_entry_falls_back_to_encode(model):
    text = "the big cat sat on the mat"
    found = neighbors(model, text, top=5)
    assert found.entry is None
    rows, cos = brute_force(model, model.encode([text])[0])
    np.testing.assert_array_equal(found.rows, rows[:5])
    np.testing.assert_allclose(found.cosines, cos[:5], rtol=1e-5, atol=1e-6)
    assert "is not a vocabulary entry" in found.format()
    assert "stored vector of entry 'new york'" in neighbors(model, "new york").format()


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 16])
def test_chunks_give_the_one_chunk_result(model, chunk_rows):
    query = np.random.default_rng(3).normal(size=DIM)
    whole = nearest_entries(model, query, top=8, exclude=5, chunk_rows=10_000)
    chunked = nearest_entries(model, query, top=8, exclude=5, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-6)
    rows, _ = brute_force(model, query, exclude=5)
    np.testing.assert_array_equal(whole[0], rows[:8])


def test_more_neighbors_asked_than_entries(model):
    rows, cos = nearest_entries(model, np.ones(DIM), top=1000, chunk_rows=4)
    assert sorted(rows) == list(range(len(model.store)))
    assert np.all(np.diff(cos) <= 0)


def test_bad_neighbor_arguments(model):
    with pytest.raises(VocabertError, match="empty"):
        neighbors(model, "  ")
    with pytest.raises(VocabertError, match="unknown kind 'phrase'"):
        neighbors(model, "cat", kind="phrase")
    with pytest.raises(VocabertError, match="top must be at least 1"):
        nearest_entries(model, np.ones(DIM), top=0)
    with pytest.raises(VocabertError, match="dimensions"):
        nearest_entries(model, np.ones(DIM + 1))


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_vocab(saved, capsys):
    assert main(["vocab", str(saved), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{len(WORDS) + len(PHRASES)} entries of dimension {DIM}" in out
    assert "top 3 entries by count:" in out and "top 3 entries by npmi:" in out and "top 3 entries by score:" in out
    assert "big * * car" in out  # the highest NPMI


def test_cli_vocab_without_listing(bare, capsys):
    assert main(["vocab", str(bare)]) == 0
    out = capsys.readouterr().out
    assert "statistics: not available" in out and f"{len(WORDS):>10,}" in out


def test_cli_neighbors(saved, capsys):
    assert main(["neighbors", str(saved), "new york", "--top", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("query: the stored vector of entry 'new york' (ngram")
    assert out[1].split() == ["rank", "cosine", "entry", "kind"]
    assert len(out) == 2 + 4 and [line.split()[0] for line in out[2:]] == ["1", "2", "3", "4"]
    assert main(["neighbors", str(saved), "a small red house", "--kind", "token"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "is not a vocabulary entry" in out[0]
    assert all(line.split()[-1] == "token" for line in out[2:]) and len(out) == 12


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["vocab", "{missing}"], "does not exist"),
        (["vocab", "{model}", "--kind", "phrase"], "unknown kind 'phrase'"),
        (["vocab", "{model}", "--by", "nope"], "no numeric column 'nope'"),
        (["vocab", "{model}", "--top", "0"], "--top must be at least 1"),
        (["neighbors", "{missing}", "cat"], "does not exist"),
        (["neighbors", "{model}", " "], "TEXT is empty"),
        (["neighbors", "{model}", "cat", "--kind", "words"], "unknown kind 'words'"),
    ],
)
def test_cli_errors_are_one_line(saved, tmp_path, capsys, argv, message):
    argv = [a.format(model=saved, missing=tmp_path / "missing") for a in argv]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("vocabert: error: ") and message in captured.err
