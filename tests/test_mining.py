"""Mining on a tiny real corpus, checked against brute-force counting of its token ids."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from vocabert.artifacts import VocabertError
from vocabert.distill import teacher
from vocabert.distill.corpus import Corpus, build_corpus
from vocabert.distill.embedding import EmbedSettings
from vocabert.distill.engine import LocalEngine
from vocabert.distill.mining import (
    KeyCounter,
    MineSettings,
    budget_entries,
    entry_bytes,
    log_likelihood_ratio,
    merge_counts,
    mine_vocabulary,
    run_mining,
)
from vocabert.distill.semantics import semantic_gains
from vocabert.distill.teacher_pass import TeacherPass
from vocabert.distill.training import TrainSettings
from vocabert.distill.vocabulary import (
    CHOSEN_NAMES,
    KIND_NGRAM,
    KIND_SKIPGRAM,
    KIND_TOKEN,
    KIND_WORD,
    Vocabulary,
    describe,
    listing,
    open_vocabulary,
)
from vocabert.distill.workspace import Workspace
from vocabert.matching import PAD, WILDCARD
from vocabert.tokenizer import load_tokenizer

SETTINGS = {"max_ngram": 4, "max_gap": 2, "min_count": 3, "min_npmi": 0.1, "min_dispersion": 0.5}

NOUNS = ["house", "car", "phone", "dog", "book", "ticket", "pizza", "coffee", "laptop", "bike", "shirt", "lamp"]
ADJS = ["best", "cheapest", "oldest", "largest", "fastest", "quietest"]
PLACES = ["boston", "chicago", "denver", "dallas", "seattle", "miami", "atlanta", "houston"]


def make_texts(seed: int = 0, n: int = 260) -> list[str]:
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    filler = NOUNS + ADJS + PLACES + ["and", "or", "with", "very", "some"]
    texts = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            texts.append(f"how much does a {pick(NOUNS)} cost in new york city")
        elif kind == 1:
            texts.append(f"what is the {pick(ADJS)} {pick(NOUNS)} in new york city")
        elif kind == 2:
            texts.append(f"from {pick(PLACES)} to {pick(PLACES)} by train")
        elif kind == 3:
            texts.append(f"fill the [MASK] here [SEP] with a {pick(NOUNS)}")
        elif kind == 4:
            texts.append(" ".join(pick(filler) for _ in range(int(rng.integers(0, 9)))))
        else:
            texts.append(f"the {pick(NOUNS)} of the {pick(NOUNS)} is {pick(ADJS)}")
    return texts


@pytest.fixture(scope="module")
def tok():
    path = teacher.resolve_teacher_path(None)
    text = teacher.tokenizer_json(path)
    spec = json.loads(text)
    specials = sorted(t["id"] for t in spec["added_tokens"] if t.get("special"))
    tokenizer = load_tokenizer(text, 256)
    tokens = [tokenizer.id_to_token(i) or f"[{i}]" for i in range(tokenizer.get_vocab_size(with_added_tokens=True))]
    return {"text": text, "prov": teacher.provenance(None), "specials": specials, "tokens": tokens}


def _build(root: Path, tok, texts: list[str], heldout_fraction: float = 0.0, shard_size: int = 20_000) -> Corpus:
    root.mkdir(parents=True, exist_ok=True)
    tsv = root / "passages.tsv"
    tsv.write_text("".join(f"{i}\t{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    return build_corpus(
        {"passages": tsv},
        root / "corpus",
        tok["prov"],
        tok["text"],
        256,
        heldout_fraction=heldout_fraction,
        shard_size=shard_size,
        show_progress_bar=False,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tok) -> Corpus:
    # Several shards, so that counts must be merged across them.
    return _build(tmp_path_factory.mktemp("mining"), tok, make_texts(), shard_size=70)


@pytest.fixture(scope="module")
def texts_ids(corpus) -> list[list[int]]:
    out = []
    for shard in corpus.shards("train"):
        for j in range(len(shard)):
            out.append(shard.ids[shard.offsets[j] : shard.offsets[j + 1]].tolist())
    return out


@pytest.fixture(scope="module")
def full(corpus, tok) -> Vocabulary:
    """A budget large enough that every eligible phrase is chosen."""
    return mine_vocabulary(corpus, budget=100_000, special_ids=tok["specials"], show_progress_bar=False, **SETTINGS)


class Brute:
    """Plain-Python counts of tokens, n-grams and skip-grams of a list of token-id lists."""

    def __init__(self, texts: list[list[int]], max_ngram: int, max_gap: int):
        self.unigram = Counter(t for ids in texts for t in ids)
        self.total = sum(self.unigram.values())
        self.ngram: Counter = Counter()
        self.skip: Counter = Counter()
        for ids in texts:
            for n in range(2, max_ngram + 1):
                for s in range(len(ids) - n + 1):
                    self.ngram[tuple(ids[s : s + n])] += 1
            for gap in range(1, max_gap + 1):
                for s in range(len(ids) - gap - 1):
                    self.skip[(ids[s], ids[s + gap + 1], gap)] += 1

    def count(self, gram: tuple[int, ...]) -> int:
        return self.unigram[gram[0]] if len(gram) == 1 else self.ngram[gram]

    def ngram_npmi(self, gram: tuple[int, ...]) -> float:
        c, log_t = self.ngram[gram], math.log(self.total)
        pmi = min(
            math.log(c) + log_t - math.log(self.count(gram[:k])) - math.log(self.count(gram[k:]))
            for k in range(1, len(gram))
        )
        return pmi / (log_t - math.log(c))

    def skip_npmi(self, a: int, b: int, gap: int) -> float:
        c, log_t = self.skip[(a, b, gap)], math.log(self.total)
        return (math.log(c) + log_t - math.log(self.unigram[a]) - math.log(self.unigram[b])) / (log_t - math.log(c))


def entries(vocab: Vocabulary) -> dict[tuple, int]:
    """Phrase key -> row: n-grams as token tuples, skip-grams as (a, b, gap) with 'skip' appended."""
    out = {}
    for row, (p, k) in enumerate(zip(vocab.patterns, vocab.kind, strict=True)):
        p = [int(x) for x in p if x != PAD]
        if k == KIND_NGRAM:
            out[tuple(p)] = row
        elif k == KIND_SKIPGRAM:
            out[(p[0], p[-1], len(p) - 2, "skip")] = row
    return out


# --------------------------------------------------------------------------------------------- tests


def test_corpus_has_several_shards(corpus):
    assert len(corpus.shard_paths) >= 3


def test_selection_equals_brute_force(full, texts_ids, tok):
    brute = Brute(texts_ids, SETTINGS["max_ngram"], SETTINGS["max_gap"])
    special = set(tok["specials"])
    mc, min_npmi = SETTINGS["min_count"], SETTINGS["min_npmi"]
    ok = {t for t, c in brute.unigram.items() if c >= mc and t not in special}

    expected: dict[tuple, float] = {}
    for gram, c in brute.ngram.items():
        if c >= mc and all(t in ok for t in gram):
            npmi = brute.ngram_npmi(gram)
            if npmi >= min_npmi:
                expected[gram] = npmi
    for (a, b, gap), c in brute.skip.items():
        if c >= mc and a in ok and b in ok:
            npmi = brute.skip_npmi(a, b, gap)
            top = max(
                (
                    n
                    for g, n in brute.ngram.items()
                    if len(g) == gap + 2 and g[0] == a and g[-1] == b and n >= mc and all(t in ok for t in g)
                ),
                default=0,
            )
            if npmi >= min_npmi and 1 - top / c >= SETTINGS["min_dispersion"]:
                expected[(a, b, gap, "skip")] = npmi
    # No candidate sits on a threshold, where float rounding could decide either way.
    assert all(abs(v - min_npmi) > 1e-6 for v in expected.values())

    got = entries(full)
    assert set(got) == set(expected)
    kinds = Counter(len(k) if k[-1] != "skip" else "skip" for k in got)
    assert kinds[2] > 5 and kinds[3] > 3 and kinds[4] > 3 and kinds["skip"] > 0, kinds

    for key, row in got.items():
        count = brute.skip[key[:3]] if key[-1] == "skip" else brute.ngram[key]
        assert full.count[row] == count, (key, full.count[row], count)
        assert full.count[row] >= SETTINGS["min_count"]
        assert full.npmi[row] >= min_npmi
        assert full.npmi[row] == pytest.approx(expected[key], rel=1e-5, abs=1e-6)
        assert full.score[row] == pytest.approx(count * expected[key], rel=1e-5)


def test_known_phrases_are_found(full, tok):
    got = {describe(full.patterns[r], tok["tokens"]) for r in np.flatnonzero(full.kind != KIND_TOKEN)}
    for phrase in ["new york", "new york city", "how much does", "in new york city", "by train", "from * to"]:
        assert phrase in got, phrase
    # Not dispersed: "new * city" is always "new york city".
    assert "new * city" not in got


def test_tokens_first_and_complete(full, texts_ids):
    brute = Brute(texts_ids, 1, 0)
    n_tokens = int((full.kind == KIND_TOKEN).sum())
    assert (full.kind[:n_tokens] == KIND_TOKEN).all() and (full.kind[n_tokens:] != KIND_TOKEN).all()
    rows = full.patterns[:n_tokens]
    assert (rows[:, 1:] == PAD).all()
    assert sorted(rows[:, 0].tolist()) == sorted(brute.unigram)
    assert full.count[:n_tokens].tolist() == [brute.unigram[int(t)] for t in rows[:, 0]]
    assert (np.diff(full.count[:n_tokens]) <= 0).all()  # most frequent first
    assert np.isnan(full.npmi[:n_tokens]).all()
    assert np.array_equal(full.score[:n_tokens], full.count[:n_tokens].astype(np.float32))
    # Phrases follow in decreasing score.
    assert (np.diff(full.score[n_tokens:]) <= 0).all()


def test_vocabulary_dtypes_and_shapes(full):
    assert full.patterns.dtype == np.int32 and full.patterns.shape[1] == 4
    assert full.kind.dtype == np.int8 and full.npmi.dtype == np.float32 and full.score.dtype == np.float32
    assert len(full.count) == len(full.kind) == len(full.npmi) == len(full.score) == len(full)
    assert len({tuple(p) for p in full.patterns.tolist()}) == len(full)  # no duplicates


def test_no_special_token_inside_phrases(full, tok, texts_ids):
    special = set(tok["specials"])
    assert {101, 102, 103}.issubset(special)
    assert any(103 in ids[1:-1] and 102 in ids[1:-1] for ids in texts_ids)  # [MASK] and [SEP] inside texts
    phrases = full.patterns[full.kind != KIND_TOKEN]
    assert not np.isin(phrases, list(special)).any()
    # The specials themselves are tokens that occur.
    token_ids = set(full.patterns[full.kind == KIND_TOKEN, 0].tolist())
    assert {101, 102, 103}.issubset(token_ids)


def test_apriori_subgrams_are_frequent(full, texts_ids):
    brute = Brute(texts_ids, SETTINGS["max_ngram"], 0)
    for p, k in zip(full.patterns, full.kind, strict=True):
        if k != KIND_NGRAM:
            continue
        gram = tuple(int(x) for x in p if x != PAD)
        if len(gram) >= 3:
            assert brute.count(gram[:-1]) >= SETTINGS["min_count"]
            assert brute.count(gram[1:]) >= SETTINGS["min_count"]


def test_skipgrams_have_wildcards_at_the_gap(full):
    skips = full.patterns[full.kind == KIND_SKIPGRAM]
    assert len(skips)
    for p in skips:
        real = p[p != PAD]
        assert len(real) in (3, 4)
        assert real[0] >= 0 and real[-1] >= 0
        assert (real[1:-1] == WILDCARD).all()
        assert (p[len(real) :] == PAD).all()
    assert not (full.patterns[full.kind != KIND_SKIPGRAM] == WILDCARD).any()


@pytest.mark.parametrize("extra", [0, 1, 7, 40])
def test_budget(corpus, full, tok, extra):
    n_tokens = int((full.kind == KIND_TOKEN).sum())
    budget = n_tokens + extra
    vocab = mine_vocabulary(corpus, budget=budget, special_ids=tok["specials"], show_progress_bar=False, **SETTINGS)
    assert len(vocab) == budget
    assert np.array_equal(vocab.patterns[:n_tokens], full.patterns[:n_tokens])
    # The phrases kept are the best-scoring ones.
    chosen = vocab.score[n_tokens:]
    assert np.array_equal(chosen, full.score[n_tokens : n_tokens + extra])
    if extra:
        assert chosen.min() >= full.score[n_tokens + extra :].max()


def test_budget_smaller_than_tokens(corpus, full, tok):
    vocab = mine_vocabulary(corpus, budget=10, special_ids=tok["specials"], show_progress_bar=False, **SETTINGS)
    assert len(vocab) == 10 and (vocab.kind == KIND_TOKEN).all()
    assert np.array_equal(vocab.patterns, full.patterns[:10])
    one = mine_vocabulary(corpus, budget=1, special_ids=tok["specials"], show_progress_bar=False, **SETTINGS)
    assert len(one) == 1
    with pytest.raises(VocabertError, match="budget"):
        mine_vocabulary(corpus, budget=0, show_progress_bar=False)


def test_bad_settings(corpus):
    with pytest.raises(VocabertError, match="max-ngram"):
        mine_vocabulary(corpus, max_ngram=0, show_progress_bar=False)
    with pytest.raises(VocabertError, match="unknown score"):
        mine_vocabulary(corpus, score="tf-idf", show_progress_bar=False)
    with pytest.raises(VocabertError, match="semantic"):
        mine_vocabulary(corpus, select="semantics", show_progress_bar=False)


def test_no_training_tokens(tmp_path, tok):
    corpus = _build(tmp_path, tok, ["some text", "more text"], heldout_fraction=1.0)
    with pytest.raises(VocabertError, match="no training tokens"):
        mine_vocabulary(corpus, show_progress_bar=False)


def test_only_training_split_is_mined(tmp_path, tok):
    texts = make_texts(seed=1, n=120)
    corpus = _build(tmp_path, tok, texts, heldout_fraction=0.3)
    train = []
    for shard in corpus.shards("train"):
        train.extend(shard.ids[shard.offsets[j] : shard.offsets[j + 1]].tolist() for j in range(len(shard)))
    brute = Brute(train, 2, 0)
    vocab = mine_vocabulary(corpus, budget=100_000, special_ids=tok["specials"], show_progress_bar=False, **SETTINGS)
    tokens = vocab.kind == KIND_TOKEN
    assert dict(zip(vocab.patterns[tokens, 0].tolist(), vocab.count[tokens].tolist(), strict=True)) == dict(
        brute.unigram
    )
    for p, c, k in zip(vocab.patterns, vocab.count, vocab.kind, strict=True):
        if k == KIND_NGRAM and (p != PAD).sum() == 2:
            assert c == brute.ngram[(int(p[0]), int(p[1]))]


def test_higher_thresholds_select_a_subset(corpus, full, tok):
    strict = dict(SETTINGS, min_count=6, min_npmi=0.3)
    vocab = mine_vocabulary(corpus, budget=100_000, special_ids=tok["specials"], show_progress_bar=False, **strict)
    # N-grams only: a skip-gram's dispersion depends on which n-grams are frequent, so it is not monotone.
    ngrams = lambda v: {k for k in entries(v) if k[-1] != "skip"}  # noqa: E731
    assert ngrams(vocab) < ngrams(full)
    phrases = vocab.kind != KIND_TOKEN
    assert (vocab.count[phrases] >= 6).all() and (vocab.npmi[phrases] >= 0.3).all()


# ---------------------------------------------------------------------------------------- KeyCounter


def test_key_counter_merges_like_unique():
    rng = np.random.default_rng(0)
    counter = KeyCounter()
    chunks = []
    for size in [0, 1, 50, 1000, 0, 300, 7]:
        # Keys above 2**53 and 2**63 too: no float rounding may merge distinct keys.
        pool = np.array([0, 1, 2**53 + 1, 2**53 + 2, 2**63 + 5, 2**64 - 1] + list(range(100, 140)), dtype=np.uint64)
        chunk = rng.choice(pool, size=size)
        chunks.append(chunk)
        counter.add(chunk)
    keys, counts = np.unique(np.concatenate(chunks), return_counts=True)
    assert counter.keys.dtype == np.uint64 and counter.counts.dtype == np.int64
    assert np.array_equal(counter.keys, keys)
    assert np.array_equal(counter.counts, counts)
    fk, fc = counter.frequent(30)
    assert np.array_equal(fk, keys[counts >= 30]) and np.array_equal(fc, counts[counts >= 30])


def test_key_counter_empty():
    counter = KeyCounter()
    counter.add(np.zeros(0, np.uint64))
    assert len(counter.keys) == 0
    k, c = counter.frequent(1)
    assert len(k) == 0 and len(c) == 0


@pytest.mark.parametrize("max_keys", [8, 60, 400])
def test_bounded_merge_keeps_what_it_promises(max_keys):
    """Zipf-like keys over 12 shards: a pruning counter holds at most max_keys keys, and after the exact
    recount every key above the loss bound is there with its exact count, and nothing infrequent is."""
    rng = np.random.default_rng(max_keys)
    shards = []
    for _ in range(12):
        keys = (rng.zipf(1.3, size=400) % 5000).astype(np.uint64) * np.uint64(2**50 + 3)
        k, c = np.unique(keys, return_counts=True)
        shards.append({"ngram.keys": k, "ngram.counts": c})
    truth_keys, truth_counts = np.unique(
        np.concatenate([np.repeat(s["ngram.keys"], s["ngram.counts"]) for s in shards]), return_counts=True
    )
    counter = KeyCounter(max_keys)
    sizes = []
    for shard in shards:
        counter.add(shard["ngram.keys"], shard["ngram.counts"])
        sizes.append(len(counter.keys))
    assert max(sizes) <= max_keys and counter.lost > 0
    keys, counts = merge_counts(lambda: iter(shards), 5, max_keys)["ngram"]
    truth = dict(zip(truth_keys.tolist(), truth_counts.tolist(), strict=True))
    assert all(truth[k] == c and c >= 5 for k, c in zip(keys.tolist(), counts.tolist(), strict=True))
    must = {k for k, c in truth.items() if c >= 5 and c > counter.lost}
    assert must <= set(keys.tolist())
    unbounded = merge_counts(lambda: iter(shards), 5)["ngram"]
    if counter.lost < 5:
        assert np.array_equal(keys, unbounded[0]) and np.array_equal(counts, unbounded[1])


def test_bounded_mining_equals_unbounded(corpus, tok, full):
    bounded = mine_vocabulary(
        corpus, budget=100_000, special_ids=tok["specials"], show_progress_bar=False, max_keys=300, **SETTINGS
    )
    for name in ("patterns", "kind", "count", "score"):
        np.testing.assert_array_equal(getattr(bounded, name), getattr(full, name))


# ------------------------------------------------------------------------------------ listing & files


def test_describe(tok):
    tokens = tok["tokens"]
    new, york, city = tokens.index("new"), tokens.index("york"), tokens.index("city")
    assert describe(np.array([new, york, PAD, PAD]), tokens) == "new york"
    assert describe(np.array([new, WILDCARD, city, PAD]), tokens) == "new * city"
    assert describe(np.array([new, WILDCARD, WILDCARD, city]), tokens) == "new * * city"
    assert describe(np.array([city, PAD, PAD, PAD]), tokens) == "city"


def test_listing(full, tok):
    text = listing(full, tok["tokens"])
    lines = text.splitlines()
    assert lines[0].split("\t") == ["entry", "kind", "count", "npmi", "llr", "score", "chosen_by"]
    assert len(lines) == len(full) + 1
    for line, k, c in zip(lines[1:], full.kind, full.count, strict=True):
        fields = line.split("\t")
        assert len(fields) == 7
        assert fields[1] == {KIND_TOKEN: "token", KIND_NGRAM: "ngram", KIND_SKIPGRAM: "skipgram"}[int(k)]
        assert int(fields[2]) == c
        assert fields[6] == ("token that occurs" if k == KIND_TOKEN else "statistics: count*npmi")


def _workspace(tmp_path, corpus) -> Workspace:
    ws = Workspace(tmp_path / "work", None, cache_dir=tmp_path / "cache", show_progress_bar=False)
    shutil.copytree(corpus.dir, ws.corpus_dir)
    return ws


def test_run_mining_and_load(tmp_path, corpus, full, tok):
    ws = _workspace(tmp_path, corpus)
    settings = MineSettings(budget=100_000, **SETTINGS)
    vocab = run_mining(ws, settings, LocalEngine())
    out = ws.vocab_dir
    assert {p.name for p in out.iterdir()} == {"vocabulary.safetensors", "vocabulary.tsv", "manifest.json"}
    loaded, manifest = open_vocabulary(ws)
    for name in ("patterns", "kind", "count", "npmi", "llr", "score", "chosen"):
        a, b = getattr(loaded, name), getattr(vocab, name)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=name in ("npmi", "llr")), name
        if name != "kind":  # run_mining knows the tokenizer's word continuations: some n-grams are words
            assert np.array_equal(a, getattr(full, name), equal_nan=name in ("npmi", "llr")), name
    assert np.array_equal(np.where(vocab.kind == KIND_WORD, KIND_NGRAM, vocab.kind), full.kind)
    assert manifest["artifact"] == "vocabulary"
    assert manifest["key"]["settings"] == asdict(settings)
    assert manifest["key"]["provenance"] == corpus.provenance
    assert manifest["entries"] == len(vocab)
    summary = manifest["summary"]
    assert summary["token"] + summary["ngram"] + summary["word"] + summary["skipgram"] == len(vocab)
    assert summary["skipgram"] == int((vocab.kind == KIND_SKIPGRAM).sum())
    assert sum(summary["by_span"].values()) == len(vocab)
    assert (out / "vocabulary.tsv").read_text(encoding="utf-8") == listing(vocab, tok["tokens"])
    # Same settings: skipped (the files stay as they are); other settings: mined again in place.
    stamp = (out / "vocabulary.safetensors").stat().st_mtime_ns
    run_mining(ws, settings, LocalEngine())
    assert (out / "vocabulary.safetensors").stat().st_mtime_ns == stamp
    run_mining(ws, MineSettings(budget=50, **SETTINGS), LocalEngine())
    assert len(open_vocabulary(ws)[0]) == 50


def test_open_vocabulary_errors(tmp_path, corpus, tok):
    ws = _workspace(tmp_path, corpus)
    with pytest.raises(VocabertError, match="does not exist"):
        open_vocabulary(ws)
    run_mining(ws, MineSettings(budget=30, **SETTINGS), LocalEngine())
    (ws.vocab_dir / "vocabulary.safetensors").unlink()
    with pytest.raises(VocabertError, match="missing"):
        open_vocabulary(ws)


def test_preset_fast_sets_the_budget_and_flags_win():
    from vocabert import cli

    assert cli.parse_args(["mine"]).budget == MineSettings.budget
    assert cli.parse_args(["mine", "--preset", "fast"]).budget == cli.PRESETS["fast"]["budget"]
    assert cli.parse_args(["run", "--preset", "fast"]).budget == cli.PRESETS["fast"]["budget"]
    assert cli.parse_args(["mine", "--preset", "fast", "--budget", "5000"]).budget == 5000
    assert cli.parse_args(["mine", "--budget", "5000", "--preset", "fast"]).budget == 5000
    # fast also trains the one-head student; the default run trains the default one.
    fast, default = cli.parse_args(["run", "--preset", "fast"]), cli.parse_args(["run"])
    assert (fast.attention_heads, fast.attention_rank) == (1, 32)
    assert default.attention_heads == TrainSettings.attention_heads > 1
    assert default.attention_rank == TrainSettings.attention_rank
    assert cli.parse_args(["run", "--preset", "fast", "--attention-heads", "2"]).attention_heads == 2


# ------------------------------------------------------------------------ longer entries, LLR, words


LONG = {**SETTINGS, "max_ngram": 6, "max_gap": 3}


@pytest.fixture(scope="module")
def long_vocab(corpus, tok) -> Vocabulary:
    return mine_vocabulary(corpus, budget=100_000, special_ids=tok["specials"], show_progress_bar=False, **LONG)


def test_six_grams_and_gap_three_equal_brute_force(long_vocab, texts_ids, tok):
    brute = Brute(texts_ids, LONG["max_ngram"], LONG["max_gap"])
    mc = LONG["min_count"]
    ok = {t for t, c in brute.unigram.items() if c >= mc and t not in set(tok["specials"])}
    expected = {}
    for gram, c in brute.ngram.items():
        if c >= mc and all(t in ok for t in gram) and brute.ngram_npmi(gram) >= LONG["min_npmi"]:
            expected[gram] = c
    got = {key: int(long_vocab.count[row]) for key, row in entries(long_vocab).items() if key[-1] != "skip"}
    assert got == expected
    assert Counter(len(k) for k in got)[5] > 3  # beyond 4 tokens: keys by the prefix's rank
    gap3 = [row for key, row in entries(long_vocab).items() if key[-1] == "skip" and key[2] == 3]
    for row in gap3:
        p = long_vocab.patterns[row]
        assert long_vocab.count[row] == brute.skip[(int(p[0]), int(p[4]), 3)]
    assert gap3


def test_mining_is_deterministic(corpus, tok, long_vocab):
    again = mine_vocabulary(corpus, budget=100_000, special_ids=tok["specials"], show_progress_bar=False, **LONG)
    for name in ("patterns", "kind", "count", "npmi", "llr", "score", "chosen"):
        np.testing.assert_array_equal(getattr(again, name), getattr(long_vocab, name))


def test_llr_is_dunnings_g2(long_vocab, texts_ids):
    brute = Brute(texts_ids, 2, 0)
    rows = [r for r, p in enumerate(long_vocab.patterns) if long_vocab.kind[r] == KIND_NGRAM and p[2] == PAD]
    for r in rows[:20]:
        a, b = int(long_vocab.patterns[r, 0]), int(long_vocab.patterns[r, 1])
        k11 = brute.ngram[(a, b)]
        n, left, right = brute.total, brute.unigram[a], brute.unigram[b]
        table = [[k11, left - k11], [right - k11, n - left - right + k11]]
        rows_sum, cols_sum = [left, n - left], [right, n - right]
        g2 = 2 * sum(
            table[i][j] * math.log(table[i][j] * n / (rows_sum[i] * cols_sum[j]))
            for i in range(2)
            for j in range(2)
            if table[i][j] > 0
        )
        assert long_vocab.llr[r] == pytest.approx(g2, rel=1e-6)
    assert log_likelihood_ratio(np.array([0]), np.array([0]), np.array([0]), 10)[0] == 0


def test_score_count_is_blind_frequency(corpus, tok):
    vocab = mine_vocabulary(
        corpus,
        budget=200,
        special_ids=tok["specials"],
        show_progress_bar=False,
        **{**SETTINGS, "min_npmi": -1},
        score="count",
    )
    phrases = vocab.kind != KIND_TOKEN
    assert phrases.sum() > 0 and (vocab.chosen[phrases] == 3).all()
    assert (np.diff(vocab.count[phrases]) <= 0).all()
    assert CHOSEN_NAMES[3] in listing(vocab, tok["tokens"])


def test_whole_words_are_their_own_kind(tmp_path, tok):
    texts = [f"the cholesterol level of {p} the hygienist" for p in PLACES] + [
        f"cholesterol tests in {p} for a dental hygienist" for p in PLACES[:4]
    ]
    corpus = _build(tmp_path, tok, texts)
    tokens = tok["tokens"]
    continuation = np.array([t.startswith("##") and len(t) > 2 for t in tokens])
    vocab = mine_vocabulary(
        corpus, special_ids=tok["specials"], continuation=continuation, show_progress_bar=False, **SETTINGS
    )
    words = {describe(p, tokens) for p, k in zip(vocab.patterns, vocab.kind, strict=True) if k == KIND_WORD}
    pieces = {
        w: " ".join(tokens[i] for i in load_tokenizer(tok["text"], 64).encode(w).ids[1:-1])
        for w in ("cholesterol", "hygienist")
    }
    assert all(len(p.split()) > 1 for p in pieces.values())  # several WordPieces each
    assert set(pieces.values()) <= words
    for word in words:  # a whole word: starts a word, continuations after
        parts = word.split()
        assert not parts[0].startswith("##") and all(p.startswith("##") for p in parts[1:])
    # A word's first pieces alone are no whole word (never followed by anything but its continuation).
    first_two = " ".join(pieces["hygienist"].split()[:2])
    assert first_two not in words


def test_budget_in_megabytes():
    heads, rank = TrainSettings.attention_heads, TrainSettings.attention_rank
    # the default store's int8 vector and the default student's int8 keys and queries, a float32 scale each,
    # and the pattern
    assert EmbedSettings.dtype == "int8"
    assert entry_bytes(384, 4) == 384 + 4 + 2 * (heads * rank + 4) + 16
    assert budget_entries(100_000, None, 384, 4) == 100_000
    assert budget_entries(0, 104.0, 384, 4) == int(104e6 // entry_bytes(384, 4))
    with pytest.raises(VocabertError, match="budget-mb"):
        budget_entries(1, 0.0, 384, 4)


def _teacher_pass(ids: list[list[int]], vectors: list[np.ndarray]) -> TeacherPass:
    offsets = np.cumsum([0] + [len(t) for t in ids])
    return TeacherPass(
        targets=np.zeros((len(ids), 4), np.float32),
        text_index=np.arange(len(ids)),
        validation=np.zeros(len(ids), bool),
        token_offsets=offsets,
        token_ids=np.concatenate([np.array(t, np.int32) for t in ids]),
        token_vectors=np.concatenate(vectors).astype(np.float16),
    )


def test_semantic_gain_is_the_error_removed():
    """Bigram (1, 2) means something its tokens do not (its vectors move away from theirs); (3, 4) is just
    its tokens: only the first removes error, and the gain is count * ||m - estimate||^2 less the noise."""
    rng = np.random.default_rng(0)
    base = np.eye(4, dtype=np.float32)
    ids, vectors = [], []
    for _ in range(40):
        ids.append([1, 5, 2, 6])  # tokens 1 and 2 apart: their usual vectors
        vectors.append(np.stack([base[0], base[3], base[1], base[3]]) + rng.normal(0, 0.01, (4, 4)))
        ids.append([1, 2, 3, 4])
        shift = np.array([0, 0, 1.0, 0], np.float32)  # inside "1 2" both tokens lean toward axis 2
        vectors.append(np.stack([base[0] + shift, base[1] + shift, base[2], base[3]]) + rng.normal(0, 0.01, (4, 4)))
        ids.append([3, 4])
        vectors.append(np.stack([base[2], base[3]]) + rng.normal(0, 0.01, (2, 4)))
    phrases = np.array([[1, 2], [3, 4]])
    gains = semantic_gains(_teacher_pass(ids, vectors), phrases, np.array([10, 10]), 8, show_progress_bar=False)
    # Tokens 1 and 2 average half their occurrences inside the bigram: the estimate is off by 0.5 on axis 2.
    assert gains[0] == pytest.approx(10 * 0.5**2, rel=0.05)
    assert gains[1] == pytest.approx(0, abs=0.01)


def test_semantic_selection_needs_the_teacher_pass(tmp_path, corpus, tok):
    ws = _workspace(tmp_path, corpus)
    with pytest.raises(VocabertError, match="embed --pass-only"):
        run_mining(ws, MineSettings(select="semantics"), LocalEngine())


@pytest.mark.parametrize("score", ["npmi", "llr", "count"])
def test_scoring_in_small_chunks_chooses_the_same_vocabulary(corpus, full, tok, monkeypatch, score):
    """Candidates are scored a chunk at a time and only the best that still fit the budget are kept: with
    chunks of 3 candidates (so that the kept pool is cut down many times over), every budget gives the
    same vocabulary, in the same order, as scoring them all at once."""
    import vocabert.distill.mining as mining

    n_tokens = int((full.kind == KIND_TOKEN).sum())
    settings = {**SETTINGS, "score": score}
    for budget in (n_tokens + 1, n_tokens + 9, n_tokens + 60, 100_000):
        whole = mine_vocabulary(corpus, budget=budget, special_ids=tok["specials"], show_progress_bar=False, **settings)
        with monkeypatch.context() as m:
            m.setattr(mining, "SCORING_CHUNK", 3)
            small = mine_vocabulary(
                corpus, budget=budget, special_ids=tok["specials"], show_progress_bar=False, **settings
            )
        for name in ("patterns", "kind", "count", "npmi", "score", "llr", "chosen"):
            assert np.array_equal(getattr(small, name), getattr(whole, name), equal_nan=True), (budget, name)
