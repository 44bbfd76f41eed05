"""Find every vocabulary entry in a batch of token ids, vectorized (no Python loop per token).

An entry is a *pattern*: a row of token ids where ``WILDCARD`` stands for any token and ``PAD``
fills the row. ``[t]`` is a token, ``[a, b, c]`` an n-gram, ``[a, WILDCARD, b]`` a skip-gram with a
gap of one. Entries of the same shape (span and wildcard positions) share one sorted array of
integer keys; a batch is matched by computing the key of every window of each shape and looking
them up with ``np.searchsorted``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD = -1
WILDCARD = -2


@dataclass
class Matches:
    """Entries found in a batch, sorted by (text, start). ``start`` is the position within the text."""

    text: np.ndarray  # int64
    entry: np.ndarray  # int64
    start: np.ndarray  # int64
    n_texts: int

    def __len__(self) -> int:
        return len(self.entry)

    def subset(self, keep: np.ndarray) -> Matches:
        return Matches(self.text[keep], self.entry[keep], self.start[keep], self.n_texts)


def pattern_span(patterns: np.ndarray) -> np.ndarray:
    """Number of token positions each pattern covers (wildcards included, padding not)."""
    return (patterns != PAD).sum(axis=1)


def window_keys(ids: np.ndarray, positions: np.ndarray, span: int, base: int) -> np.ndarray:
    """Key of the window starting at every position of ``ids`` (for the shape given by ``positions``).

    Exact while ``base ** len(positions)`` fits in 64 bits (4 tokens of a 30k vocabulary); longer
    shapes wrap around, which turns the key into a hash with negligible collisions.
    """
    n = len(ids) - span + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    key = np.zeros(n, dtype=np.uint64)
    factor = np.uint64(1)
    for p in positions:
        key += ids[p : p + n].astype(np.uint64) * factor
        factor = factor * np.uint64(base)
    return key


def pattern_keys(patterns: np.ndarray, positions: np.ndarray, base: int) -> np.ndarray:
    """Keys of patterns that share one shape, computed as :func:`window_keys` computes windows."""
    key = np.zeros(len(patterns), dtype=np.uint64)
    factor = np.uint64(1)
    for p in positions:
        key += patterns[:, p].astype(np.uint64) * factor
        factor = factor * np.uint64(base)
    return key


@dataclass
class _Shape:
    positions: np.ndarray  # token positions that must match (the others are wildcards)
    span: int
    keys: np.ndarray  # sorted uint64
    entries: np.ndarray  # entry index of each key


class EntryIndex:
    """Lookup structure over a vocabulary's patterns."""

    def __init__(self, patterns: np.ndarray, vocab_size: int):
        patterns = np.asarray(patterns, dtype=np.int64)
        self.vocab_size = vocab_size
        # Single tokens are the most common match: a direct table beats a search.
        self.token_entry = np.full(vocab_size, -1, dtype=np.int64)
        span = pattern_span(patterns)
        single = np.flatnonzero(span == 1)
        self.token_entry[patterns[single, 0]] = single
        self.shapes: list[_Shape] = []
        multi = np.flatnonzero(span > 1)
        # A shape as one integer: a bit per fixed position, and the span above them.
        fixed = patterns[multi] >= 0
        width = patterns.shape[1]
        codes = (fixed << np.arange(width)).sum(axis=1) + (span[multi] << width)
        shape_codes, inverse = np.unique(codes, return_inverse=True)
        for code_index, code in enumerate(shape_codes):
            rows = multi[inverse == code_index]
            positions = np.flatnonzero((int(code) >> np.arange(width)) & 1)
            shape_span = int(code) >> width
            keys = pattern_keys(patterns[rows], positions, vocab_size)
            order = np.argsort(keys, kind="stable")
            self.shapes.append(_Shape(positions, shape_span, keys[order], rows[order]))

    def match(self, ids: np.ndarray, offsets: np.ndarray) -> Matches:
        """All entries in the texts ``ids[offsets[i]:offsets[i+1]]``."""
        ids = np.asarray(ids, dtype=np.int64)
        n_texts = len(offsets) - 1
        lengths = np.diff(offsets)
        text_of = np.repeat(np.arange(n_texts), lengths)
        end_of = np.repeat(offsets[1:], lengths)
        texts, entries, starts = [], [], []

        outside = (ids < 0) | (ids >= self.vocab_size)
        has_outside = bool(outside.any())  # never with the model's own tokenizer: keep the fast path fast
        hit_entry = self.token_entry[np.clip(ids, 0, self.vocab_size - 1)]
        hit_entry[outside] = -1
        hit = np.flatnonzero(hit_entry >= 0)
        texts.append(text_of[hit])
        entries.append(hit_entry[hit])
        starts.append(hit)

        for shape in self.shapes:
            key = window_keys(ids, shape.positions, shape.span, self.vocab_size)
            if len(key) == 0:
                continue
            pos = np.searchsorted(shape.keys, key)
            pos[pos == len(shape.keys)] = 0
            ok = (shape.keys[pos] == key) & (np.arange(len(key)) + shape.span <= end_of[: len(key)])
            if has_outside:  # an id outside the vocabulary could alias a real key: such windows never match
                for p in shape.positions:
                    ok &= ~outside[p : p + len(key)]
            hit = np.flatnonzero(ok)
            texts.append(text_of[hit])
            entries.append(shape.entries[pos[hit]])
            starts.append(hit)

        text = np.concatenate(texts)
        start = np.concatenate(starts)  # position in the batch, so sorting by it sorts by (text, start)
        order = np.argsort(start, kind="stable")
        text, start = text[order], start[order]
        return Matches(text, np.concatenate(entries)[order], start - offsets[text], n_texts)
