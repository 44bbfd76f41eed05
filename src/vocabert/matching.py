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
    """Entries found in a batch, sorted by (text, start, entry). ``start`` is the position within the text."""

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
    with np.errstate(over="ignore"):  # long shapes wrap around on purpose
        for p in positions:
            key += ids[p : p + n].astype(np.uint64) * factor
            factor = factor * np.uint64(base)
    return key


def pattern_keys(patterns: np.ndarray, positions: np.ndarray, base: int) -> np.ndarray:
    """Keys of patterns that share one shape, computed as :func:`window_keys` computes windows."""
    key = np.zeros(len(patterns), dtype=np.uint64)
    factor = np.uint64(1)
    with np.errstate(over="ignore"):
        for p in positions:
            key += patterns[:, p].astype(np.uint64) * factor
            factor = factor * np.uint64(base)
    return key


@dataclass
class _Shape:
    positions: np.ndarray  # token positions that must match (the others are wildcards)
    span: int
    exact: bool  # the window key is the window's tokens (else a hash: hits are checked against the pattern)


_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: 2**64 / golden ratio, odd


class EntryIndex:
    """Lookup structure over a vocabulary's patterns.

    Single tokens are looked up in a direct table (the most common match). Every longer pattern has a
    key that holds its shape and its tokens, ``(tokens as base-vocab digits) * shapes + shape``, in one
    open-addressing hash table with linear probing, at most half full: a batch's windows of every shape
    are hashed and probed together, a few vectorized passes in all. Keys too long for 64 bits wrap around
    (a hash), so a hit of such a shape (5 or more fixed tokens of a 30k vocabulary) is checked against its
    pattern; hits of exact shapes are not checked.
    """

    def __init__(self, patterns: np.ndarray, vocab_size: int):
        patterns = np.asarray(patterns)  # as given (a model's int32, memory-mapped): no copy
        if not np.issubdtype(patterns.dtype, np.integer):
            patterns = patterns.astype(np.int64)
        self.patterns = patterns
        self.vocab_size = vocab_size
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
        self._n_shapes = np.uint64(max(len(shape_codes), 1))
        keys, entries = [], []
        self._entry_shape = np.full(len(patterns), -1, dtype=np.int32)  # the shape index of each longer entry
        self._entry_shape[multi] = inverse.reshape(-1)
        for code_index, code in enumerate(shape_codes):
            rows = multi[inverse == code_index]
            positions = np.flatnonzero((int(code) >> np.arange(width)) & 1)
            exact = len(positions) * np.log2(max(vocab_size, 2)) + np.log2(len(shape_codes)) < 64
            self.shapes.append(_Shape(positions, int(code) >> width, bool(exact)))
            keys.append(pattern_keys(patterns[rows], positions, vocab_size) * self._n_shapes + np.uint64(code_index))
            entries.append(rows)
        self._exact = np.array([shape.exact for shape in self.shapes], dtype=bool)
        self._all_exact = bool(self._exact.all())
        self._spans = np.array([shape.span for shape in self.shapes], dtype=np.int64)
        # Each shape's key as a sum over its fixed positions p of tokens[i + p] * factor (uint64 arithmetic
        # wraps around exactly as pattern_keys does); the shape's index is added last.
        self._width = width
        self._factors = []
        for shape in self.shapes:
            with np.errstate(over="ignore"):
                factors = self._n_shapes * np.uint64(vocab_size) ** np.arange(len(shape.positions), dtype=np.uint64)
            self._factors.append(list(zip(shape.positions.tolist(), factors, strict=True)))
        self._shape_index = np.arange(len(self.shapes), dtype=np.uint64)
        self._build_table(
            np.concatenate(keys) if keys else np.zeros(0, np.uint64),
            np.concatenate(entries) if keys else np.zeros(0, np.int64),
        )

    def _slot(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * _HASH_MULTIPLIER) >> np.uint64(64 - self._bits)).astype(np.intp)

    def _build_table(self, keys: np.ndarray, entries: np.ndarray) -> None:
        """Insert every key in rounds: round ``d`` places, at distance ``d`` from its home slot, each key
        still unplaced whose slot is free (the first of several wanting the same slot wins). Slots never
        empty again, so the slots from a key's home to its own are occupied: what a lookup relies on."""
        self._bits = max(4, int(np.ceil(np.log2(max(2 * len(keys), 1)))))
        size = 1 << self._bits
        self._mask = size - 1
        self.table_key = np.zeros(size, dtype=np.uint64)
        self.table_entry = np.full(size, -1, dtype=np.int32)
        home = self._slot(keys)
        pending = np.arange(len(keys))
        self.max_probe = 0
        while len(pending):
            slot = (home[pending] + self.max_probe) & self._mask
            free = self.table_entry[slot] < 0
            candidates, slot = pending[free], slot[free]
            slot, first = np.unique(slot, return_index=True)
            placed = candidates[first]
            self.table_key[slot], self.table_entry[slot] = keys[placed], entries[placed]
            pending = np.setdiff1d(pending, placed, assume_unique=True)
            self.max_probe += 1

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """The entry of each key, -1 where there is none."""
        found = np.full(len(keys), -1, dtype=np.int64)
        todo = np.arange(len(keys))
        slot = self._slot(keys)
        for _ in range(self.max_probe):
            entry = self.table_entry[slot]
            occupied = entry >= 0
            same = occupied & (self.table_key[slot] == keys)
            found[todo[same]] = entry[same]
            go = occupied & ~same
            if not go.any():
                break
            todo, slot, keys = todo[go], (slot[go] + 1) & self._mask, keys[go]
        return found

    def match(self, ids: np.ndarray, offsets: np.ndarray) -> Matches:
        """All entries in the texts ``ids[offsets[i]:offsets[i+1]]``."""
        ids = np.asarray(ids, dtype=np.int64)
        n_texts = len(offsets) - 1
        lengths = np.diff(offsets)
        text_of = np.repeat(np.arange(n_texts), lengths)

        outside = (ids < 0) | (ids >= self.vocab_size)
        has_outside = bool(outside.any())  # never with the model's own tokenizer: keep the fast path fast
        hit_entry = self.token_entry[np.clip(ids, 0, self.vocab_size - 1)]
        hit_entry[outside] = -1
        token_hits = np.flatnonzero(hit_entry >= 0)

        # key[i, s]: the key of shape s over the window at i (zeros past the end: those fail the end check).
        n = len(ids)
        padded = np.zeros(n + self._width, dtype=np.uint64)
        padded[:n] = ids
        key = np.empty((n, len(self.shapes)), dtype=np.uint64)
        for s, factors in enumerate(self._factors):
            column = key[:, s]
            np.add(padded[factors[0][0] : factors[0][0] + n] * factors[0][1], self._shape_index[s], out=column)
            for p, factor in factors[1:]:
                column += padded[p : p + n] * factor
        key = key.reshape(-1)  # window i, shape s at i * shapes + s
        entry = self._lookup(key)
        hit = np.flatnonzero(entry >= 0)
        start, shape_of = np.divmod(hit, len(self.shapes)) if self.shapes else (hit, hit)
        entry = entry[hit]
        ok = start + self._spans[shape_of] <= np.repeat(offsets[1:], lengths)[start]  # the window ends in its text
        if has_outside:
            ok &= self._windows_equal_patterns(ids, outside, start, entry)
        elif not self._all_exact:
            # Hashed keys (5+ fixed tokens) can collide, with each other or with an exact key of another shape:
            # check the shape, and the tokens of hashed shapes only, so the common shapes pay nothing.
            ok &= self._entry_shape[entry] == shape_of
            hashed = np.flatnonzero(ok & ~self._exact[shape_of])
            ok[hashed] = self._windows_equal_patterns(ids, outside, start[hashed], entry[hashed])
        entry, start = entry[ok], start[ok]

        start = np.concatenate([token_hits, start])  # position in the batch: sorting by it sorts by (text, start)
        entry = np.concatenate([hit_entry[token_hits], entry])
        # Ties broken by entry, so the order is a function of the text alone (a window over matches relies on it).
        order = np.argsort(start * np.int64(len(self.patterns)) + entry)
        start, entry = start[order], entry[order]
        text = text_of[start]
        return Matches(text, entry, start - offsets[text], n_texts)

    def _windows_equal_patterns(
        self, ids: np.ndarray, outside: np.ndarray, start: np.ndarray, entry: np.ndarray
    ) -> np.ndarray:
        """Whether each hit's window has its pattern's tokens: hashed keys can collide, and an id outside
        the vocabulary can alias a real key."""
        pattern = self.patterns[entry]
        where = start[:, None] + np.arange(pattern.shape[1])
        fixed = pattern >= 0
        window = ids[np.minimum(where, len(ids) - 1)]
        bad = outside[np.minimum(where, len(ids) - 1)]
        return ((window == pattern) & ~bad | ~fixed).all(axis=1)
