"""EntryIndex.match against a brute-force matcher on random vocabularies and batches."""

from __future__ import annotations

import numpy as np
import pytest

from vocabert.matching import PAD, WILDCARD, EntryIndex, Matches, pattern_keys, window_keys

# ------------------------------------------------------------------------------------------- helpers


def random_patterns(rng: np.random.Generator, vocab_size: int, n_tokens: int, n_phrases: int, width: int = 4):
    """Unique patterns: some single tokens, n-grams of 2-4 and skip-grams with gaps of 1 and 2, padded."""
    seen: set[tuple[int, ...]] = set()
    rows: list[list[int]] = []
    for t in rng.choice(vocab_size, size=n_tokens, replace=False):
        seen.add((int(t),))
        rows.append([int(t)])
    while len(rows) < n_tokens + n_phrases:
        shape = rng.integers(5)
        if shape < 3:  # n-gram of 2..4
            row = [int(x) for x in rng.integers(vocab_size, size=shape + 2)]
        elif shape == 3:
            a, b = rng.integers(vocab_size, size=2)
            row = [int(a), WILDCARD, int(b)]
        else:
            a, b = rng.integers(vocab_size, size=2)
            row = [int(a), WILDCARD, WILDCARD, int(b)]
        if tuple(row) in seen:
            continue
        seen.add(tuple(row))
        rows.append(row)
    order = rng.permutation(len(rows))
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for i, j in enumerate(order):
        out[i, : len(rows[j])] = rows[j]
    return out


def brute_force(patterns: np.ndarray, texts: list[np.ndarray], vocab_size: int) -> list[tuple[int, int, int]]:
    """Every (text, start, entry): the pattern fits inside the text and its fixed positions agree."""
    found = []
    rows = [[int(x) for x in p if x != PAD] for p in patterns]
    for t, ids in enumerate(texts):
        ids = [int(x) for x in ids]
        for start in range(len(ids)):
            for e, row in enumerate(rows):
                if start + len(row) > len(ids):
                    continue
                window = ids[start : start + len(row)]
                if any(not 0 <= w < vocab_size for w, r in zip(window, row, strict=True) if r != WILDCARD):
                    continue
                if all(r == WILDCARD or r == w for w, r in zip(window, row, strict=True)):
                    found.append((t, start, e))
    return sorted(found)


def flatten(texts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=offsets[1:])
    ids = np.concatenate(texts).astype(np.int64) if texts else np.zeros(0, np.int64)
    return ids, offsets


def as_triples(m: Matches) -> list[tuple[int, int, int]]:
    return sorted(zip(m.text.tolist(), m.start.tolist(), m.entry.tolist(), strict=True))


def check_matches(m: Matches, expected: list[tuple[int, int, int]], texts: list[np.ndarray]) -> None:
    assert isinstance(m, Matches)
    assert m.n_texts == len(texts)
    for arr in (m.text, m.entry, m.start):
        assert arr.dtype == np.int64
    assert len(m) == len(m.text) == len(m.start) == len(m.entry)
    # Sorted by (text, start).
    pairs = list(zip(m.text.tolist(), m.start.tolist(), strict=True))
    assert pairs == sorted(pairs)
    # `start` is a position within its text.
    lengths = np.array([len(t) for t in texts])
    if len(m):
        assert (m.start >= 0).all()
        assert (m.start < lengths[m.text]).all()
    assert as_triples(m) == expected


def random_texts(rng: np.random.Generator, vocab_size: int, n_texts: int, max_len: int, common: np.ndarray):
    """Texts of varied lengths (0 and 1 included) drawing mostly from a few common ids, so phrases recur."""
    texts = []
    for i in range(n_texts):
        length = [0, 1][i] if i < 2 else int(rng.integers(0, max_len + 1))
        pool = common if rng.random() < 0.8 else np.arange(vocab_size)
        texts.append(rng.choice(pool, size=length).astype(np.int64))
    return [texts[i] for i in rng.permutation(n_texts)]


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", range(12))
def test_match_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    vocab_size = 50
    common = rng.choice(vocab_size, size=6, replace=False)
    patterns = random_patterns(rng, vocab_size, n_tokens=20, n_phrases=60)
    # Phrases built from the common ids so that they do occur in the texts.
    for i in range(len(patterns)):
        fixed = patterns[i] >= 0
        if fixed.sum() > 1 and rng.random() < 0.7:
            patterns[i, fixed] = rng.choice(common, size=int(fixed.sum()))
    patterns = np.unique(patterns, axis=0)
    patterns = patterns[rng.permutation(len(patterns))]
    index = EntryIndex(patterns, vocab_size)
    texts = random_texts(rng, vocab_size, n_texts=int(rng.integers(2, 15)), max_len=12, common=common)
    ids, offsets = flatten(texts)
    m = index.match(ids, offsets)
    expected = brute_force(patterns, texts, vocab_size)
    check_matches(m, expected, texts)
    assert len(m) > 0


def test_all_empty_and_single_token_texts():
    rng = np.random.default_rng(1)
    patterns = random_patterns(rng, 50, n_tokens=50, n_phrases=30)
    index = EntryIndex(patterns, 50)
    texts = [np.zeros(0, np.int64), np.array([3]), np.zeros(0, np.int64), np.array([7])]
    ids, offsets = flatten(texts)
    m = index.match(ids, offsets)
    check_matches(m, brute_force(patterns, texts, 50), texts)
    assert m.text.tolist() == [1, 3] and m.start.tolist() == [0, 0]
    # No texts at all.
    m = index.match(np.zeros(0, np.int64), np.zeros(1, np.int64))
    assert len(m) == 0 and m.n_texts == 0
    # Only empty texts.
    m = index.match(np.zeros(0, np.int64), np.zeros(4, np.int64))
    assert len(m) == 0 and m.n_texts == 3


def test_windows_never_cross_text_boundaries():
    # [1 2] would match across the boundary between text 0 = [.. 1] and text 1 = [2 ..].
    patterns = np.array([[1, 2, PAD, PAD], [1, WILDCARD, 3, PAD], [1, WILDCARD, WILDCARD, 4], [5, 1, 2, 3]])
    index = EntryIndex(patterns, 10)
    texts = [np.array([5, 1]), np.array([2, 3, 4]), np.array([1]), np.array([9, 4])]
    ids, offsets = flatten(texts)
    assert len(index.match(ids, offsets)) == 0
    # The same tokens in one text match everything.
    texts = [np.array([5, 1, 2, 3, 4])]
    ids, offsets = flatten(texts)
    m = index.match(ids, offsets)
    check_matches(m, brute_force(patterns, texts, 10), texts)
    assert sorted(m.entry.tolist()) == [0, 1, 2, 3]


def test_repeated_entry_gives_one_match_per_occurrence():
    patterns = np.array([[4, PAD, PAD], [4, 4, PAD], [4, WILDCARD, 4]])
    index = EntryIndex(patterns, 10)
    texts = [np.array([4, 4, 4, 4]), np.array([0, 4, 1, 4])]
    ids, offsets = flatten(texts)
    m = index.match(ids, offsets)
    check_matches(m, brute_force(patterns, texts, 10), texts)
    first = m.subset(m.text == 0)
    assert (first.entry == 0).sum() == 4
    assert first.start[first.entry == 1].tolist() == [0, 1, 2]
    assert first.start[first.entry == 2].tolist() == [0, 1]
    second = m.subset(m.text == 1)
    assert second.start[second.entry == 2].tolist() == [1]
    assert second.start[second.entry == 0].tolist() == [1, 3]


def test_start_is_position_within_text():
    patterns = np.array([[7, 8]])
    index = EntryIndex(patterns, 10)
    texts = [np.array([1, 2, 3]), np.array([0, 7, 8]), np.zeros(0, np.int64), np.array([7, 8, 7, 8])]
    ids, offsets = flatten(texts)
    m = index.match(ids, offsets)
    assert list(zip(m.text.tolist(), m.start.tolist(), strict=True)) == [(1, 1), (3, 0), (3, 2)]


def test_out_of_vocabulary_single_ids_are_ignored():
    patterns = np.array([[0, PAD], [9, PAD], [3, 4]])
    index = EntryIndex(patterns, 10)
    texts = [np.array([10, 11, 1000, 9]), np.array([0, 12])]
    ids, offsets = flatten(texts)
    m = index.match(ids, offsets)
    assert as_triples(m) == [(0, 3, 1), (1, 0, 0)]


def test_out_of_vocabulary_ids_never_complete_a_phrase():
    index = EntryIndex(np.array([[1, 6]]), 50)
    m = index.match(np.array([51, 5]), np.array([0, 2]))
    assert len(m) == 0


def test_span_five_pattern_on_a_short_batch():
    index = EntryIndex(np.array([[1, WILDCARD, WILDCARD, WILDCARD, 2]]), 50)
    for length in range(8):
        ids = np.arange(length) % 50
        assert len(index.match(ids, np.array([0, length]))) == 0


def test_real_vocab_size_four_grams_exact_keys():
    vocab_size = 30522
    rng = np.random.default_rng(7)
    high = np.arange(vocab_size - 6, vocab_size)  # large ids stress the key arithmetic
    rows = []
    for _ in range(300):
        n = int(rng.integers(2, 5))
        pool = high if rng.random() < 0.5 else np.arange(vocab_size)
        row = list(rng.choice(pool, size=n))
        rows.append(row + [PAD] * (4 - n))
    rows += [[vocab_size - 1] * 4, [0, 0, 0, vocab_size - 1], [vocab_size - 1, 0, 0, 0]]
    rows += [[int(t), PAD, PAD, PAD] for t in rng.choice(vocab_size, 200, replace=False)]
    patterns = np.unique(np.array(rows, dtype=np.int64), axis=0)
    index = EntryIndex(patterns, vocab_size)
    four = patterns[(patterns != PAD).sum(axis=1) == 4]
    texts = []
    for _ in range(30):
        # Plant some 4-gram patterns, and near misses that differ in one position.
        pieces = []
        for _ in range(int(rng.integers(0, 5))):
            p = four[rng.integers(len(four))] if rng.random() < 0.7 else patterns[rng.integers(len(patterns))]
            p = p[p != PAD].copy()
            if rng.random() < 0.3:
                p[rng.integers(len(p))] = rng.choice(high)
            pieces.append(p)
            pieces.append(rng.choice(high, size=int(rng.integers(0, 3))))
        texts.append(np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, np.int64))
    ids, offsets = flatten(texts)
    m = index.match(ids, offsets)
    check_matches(m, brute_force(patterns, texts, vocab_size), texts)
    spans = (patterns[m.entry] != PAD).sum(axis=1)
    assert (spans == 4).sum() > 10


def test_window_keys_agree_with_pattern_keys():
    rng = np.random.default_rng(3)
    base = 30522
    ids = rng.integers(base, size=40)
    for positions, span in [([0, 1], 2), ([0, 1, 2, 3], 4), ([0, 2], 3), ([0, 3], 4)]:
        positions = np.array(positions)
        keys = window_keys(ids, positions, span, base)
        assert keys.dtype == np.uint64 and len(keys) == len(ids) - span + 1
        windows = np.stack([ids[i : i + span] for i in range(len(keys))])
        assert np.array_equal(keys, pattern_keys(windows, positions, base))
        # Exact: distinct windows (on the fixed positions) give distinct keys.
        fixed = {tuple(w[positions]) for w in windows}
        assert len(set(keys.tolist())) == len(fixed)
    assert len(window_keys(ids[:2], np.arange(4), 4, base)) == 0


def test_only_token_patterns_and_empty_vocabulary():
    index = EntryIndex(np.array([[1], [2]]), 5)
    m = index.match(np.array([1, 2, 3, 1]), np.array([0, 2, 4]))
    assert as_triples(m) == [(0, 0, 0), (0, 1, 1), (1, 1, 0)]
    empty = EntryIndex(np.zeros((0, 4), dtype=np.int64), 5)
    assert len(empty.match(np.array([1, 2, 3]), np.array([0, 3]))) == 0


def test_real_vocab_size_six_grams_and_gap_three_match_exactly():
    """5- and 6-token entries have hashed keys (verified on hit); exact shapes beside them stay exact."""
    vocab_size = 30522
    rng = np.random.default_rng(11)
    high = np.arange(vocab_size - 8, vocab_size)
    rows = []
    for _ in range(400):
        n = int(rng.integers(2, 7))
        pool = high if rng.random() < 0.5 else np.arange(vocab_size)
        rows.append(list(rng.choice(pool, size=n)) + [PAD] * (6 - n))
    for _ in range(50):
        a, b = rng.choice(high, size=2)
        rows.append([int(a), WILDCARD, WILDCARD, WILDCARD, int(b), PAD])
    rows += [[int(t)] + [PAD] * 5 for t in rng.choice(vocab_size, 200, replace=False)]
    patterns = np.unique(np.array(rows, dtype=np.int64), axis=0)
    index = EntryIndex(patterns, vocab_size)
    assert not index._all_exact and index._exact.any()
    long = patterns[(patterns != PAD).sum(axis=1) >= 5]
    texts = []
    for _ in range(40):
        pieces = []
        for _ in range(int(rng.integers(0, 5))):
            p = long[rng.integers(len(long))] if rng.random() < 0.7 else patterns[rng.integers(len(patterns))]
            p = np.where(p == WILDCARD, rng.choice(high), p)[p != PAD].copy()
            if rng.random() < 0.3:  # near misses: one position differs
                p[rng.integers(len(p))] = rng.choice(high)
            pieces += [p, rng.choice(high, size=int(rng.integers(0, 3)))]
        texts.append(np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, np.int64))
    ids, offsets = flatten(texts)
    m = index.match(ids, offsets)
    check_matches(m, brute_force(patterns, texts, vocab_size), texts)
    spans = (patterns[m.entry] != PAD).sum(axis=1)
    assert (spans == 6).sum() > 5 and (spans == 5).sum() > 5
