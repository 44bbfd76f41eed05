"""Inspecting a model's vocabulary: what entries it holds, and which entries lie near a word or phrase.

The inference side of ``vocabert vocab`` and ``vocabert neighbors`` (numpy only, as word2vec's and
fastText's inspection tools): :func:`vocabulary_summary` counts the entries by kind (n-grams by length,
skip-grams by gap) from the model's patterns, sizes the entry store, and reads the statistics that chose
the entries from the folder's optional ``vocabulary.tsv``; :func:`neighbors` ranks every entry by cosine
to an entry's stored vector, or to the model's embedding of a text that is no entry, reading the
memory-mapped store a chunk of rows at a time.

Entries are shown as text: tokens joined by spaces, a WordPiece continuation (``##ing``) joined to the
token before it (``play ##ing`` -> ``playing``), a wildcard as ``*`` (``how * you``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vocabert.artifacts import VocabertError
from vocabert.matching import PAD, WILDCARD, pattern_span
from vocabert.tokenizer import WORDPIECE, TokenizerLayout, tokenizer_layout

if TYPE_CHECKING:
    from vocabert.model import StudentModel

# The kinds of vocabulary.tsv, in this order (KIND_NAMES of the mining). From patterns alone a whole word is
# an n-gram (it takes the tokenizer to tell); the listing names it.
KINDS = ("token", "ngram", "skipgram", "word")
KIND_TOKEN, KIND_NGRAM, KIND_SKIPGRAM, KIND_WORD = range(4)
LISTING = "vocabulary.tsv"
CHUNK_ROWS = 8192  # entry vectors converted to float32 at a time: 12 MB at dim 384
_WILDCARD_WORD = re.compile(r"(?:^|\s)\*(?=\s|$)")  # a "*" standing alone in a query text


# ------------------------------------------------------------------------------------ entries as text


def token_strings(model: StudentModel) -> list[str]:
    """The text of every token id of the model's tokenizer (``[id]`` for an id it has no token for)."""
    tokens = [f"[{i}]" for i in range(int(model.config["vocab_size"]))]
    for token, i in model.tokenizer.get_vocab(with_added_tokens=True).items():
        if 0 <= i < len(tokens):
            tokens[i] = token
    return tokens


def readable(tokens: Sequence[str], layout: TokenizerLayout | None = None) -> str:
    """Tokens as text, joined into words by the tokenizer's convention (``layout``; WordPiece's by default):
    ``["play", "##ing"]`` -> ``playing``, ``["how", "*", "you"]`` -> ``how * you``.

    A continuation joins the token before it, unless that is a wildcard or there is none: ``##s`` on its
    own and ``* ##s`` stay as they are.
    """
    return (layout or WORDPIECE).readable(list(tokens))


def entry_kinds(patterns: np.ndarray) -> np.ndarray:
    """Kind of each pattern (int8, an index into :data:`KINDS`): one token, an n-gram, or a skip-gram."""
    patterns = np.asarray(patterns)
    kinds = np.where(pattern_span(patterns) > 1, KIND_NGRAM, KIND_TOKEN).astype(np.int8)
    kinds[(patterns == WILDCARD).any(axis=1)] = KIND_SKIPGRAM
    return kinds


def entry_texts(model: StudentModel, rows: Sequence[int] | np.ndarray | None = None) -> list[str]:
    """Readable text of the entries ``rows`` (default: all), from their patterns and the tokenizer."""
    tokens = token_strings(model)
    patterns = np.asarray(model.store.patterns if rows is None else model.store.patterns[np.asarray(rows)])
    layout = tokenizer_layout(model.tokenizer_text)
    return [
        readable(["*" if t == WILDCARD else tokens[t] for t in row if t != PAD], layout) for row in patterns.tolist()
    ]


def check_kind(kind: str | None) -> int | None:
    """The index of ``kind`` in :data:`KINDS` (None for None); an unknown kind is a :class:`VocabertError`."""
    if kind is None:
        return None
    if kind not in KINDS:
        raise VocabertError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    return KINDS.index(kind)


# ------------------------------------------------------------------------------------ vocabulary.tsv


@dataclass
class Listing:
    """The rows of a model folder's ``vocabulary.tsv``: readable entries, kinds, and the statistics columns."""

    path: Path
    entries: list[str]  # readable (see readable())
    kinds: np.ndarray  # (rows,) int8, an index into KINDS
    numbers: dict[str, np.ndarray]  # numeric columns (count, npmi, score, ...), float64, nan where undefined
    labels: dict[str, list[str]]  # the other columns (chosen_by, ...)

    def __len__(self) -> int:
        return len(self.entries)

    def top(self, by: str, n: int, kind: str | None = None) -> np.ndarray:
        """Rows of the ``n`` highest values of column ``by`` (nan left out), of ``kind`` only if given."""
        if by not in self.numbers:
            raise VocabertError(f"{self.path} has no numeric column {by!r}: use one of {', '.join(self.numbers)}")
        values = self.numbers[by]
        keep = ~np.isnan(values)
        k = check_kind(kind)
        if k is not None:
            keep &= self.kinds == k
        rows = np.flatnonzero(keep)
        order = np.argsort(-values[rows], kind="stable")  # ties in file order
        return rows[order[:n]]


def read_listing(path: str | Path) -> Listing:
    """Parse a ``vocabulary.tsv`` (header ``entry kind count npmi score chosen_by``; entries as the mining
    describes them, tokens separated by spaces, ``*`` for a wildcard)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VocabertError(f"cannot read {path}: {e}") from None
    if not lines:
        raise VocabertError(f"{path} is empty")
    header = lines[0].split("\t")
    if header[:2] != ["entry", "kind"]:
        raise VocabertError(f"{path}: the header does not start with entry<TAB>kind")
    fields = [line.split("\t") for line in lines[1:]]
    for number, row in enumerate(fields, start=2):
        if len(row) != len(header):
            raise VocabertError(f"{path}, line {number}: {len(row)} fields, the header has {len(header)}")
    columns = list(zip(*fields, strict=True)) if fields else [() for _ in header]
    kind_code = {name: i for i, name in enumerate(KINDS)}
    unknown = sorted(set(columns[1]) - set(kind_code))
    if unknown:
        raise VocabertError(f"{path}: unknown kind {unknown[0]!r} (expected {', '.join(KINDS)})")
    numbers, labels = {}, {}
    for name, values in zip(header[2:], columns[2:], strict=True):
        try:
            numbers[name] = np.array(values, dtype=np.float64)
        except ValueError:
            labels[name] = list(values)
    return Listing(
        path=path,
        entries=[readable(entry.split(" ")) for entry in columns[0]],
        kinds=np.array([kind_code[k] for k in columns[1]], dtype=np.int8),
        numbers=numbers,
        labels=labels,
    )


# ------------------------------------------------------------------------------------------ summary


@dataclass
class VocabularySummary:
    """What :func:`vocabulary_summary` finds; :meth:`format` prints it."""

    model_path: Path | None
    entries: int
    dim: int
    dtype: str  # of the stored vectors: float16, int8 (with per-row scales), ...
    kinds: dict[str, int]  # entries per kind, every kind of KINDS
    ngram_lengths: dict[int, int]  # n-grams per length in tokens
    skipgram_gaps: dict[int, int]  # skip-grams per gap (wildcards)
    vector_bytes: int  # the entry vectors (and their scales)
    pattern_bytes: int
    listing: Listing | None  # vocabulary.tsv, None where the folder has none

    @property
    def store_bytes(self) -> int:
        return self.vector_bytes + self.pattern_bytes

    def format(self, top: int = 10, by: Sequence[str] | None = None, kind: str | None = None) -> str:
        """The summary as text, with the ``top`` entries by each column ``by`` of vocabulary.tsv (default: every
        numeric one), of ``kind`` only if given."""
        check_kind(kind)
        n = max(self.entries, 1)
        where = f"{self.model_path}: " if self.model_path else ""
        lines = [f"{where}{self.entries:,} entries of dimension {self.dim}, vectors in {self.dtype}"]
        by_length = ", ".join(f"{length} tokens {c:,}" for length, c in self.ngram_lengths.items())
        by_gap = ", ".join(f"gap {gap} {c:,}" for gap, c in self.skipgram_gaps.items())
        kinds = [("token", "tokens", ""), ("ngram", "n-grams", by_length), ("skipgram", "skip-grams", by_gap)]
        if "word" in self.kinds:  # named by the listing; the n-gram lengths above count them too
            kinds.insert(2, ("word", "words", "whole words of several pieces, in the lengths above"))
        for name, label, detail in kinds:
            count = self.kinds[name]
            lines.append(f"  {label:<11}{count:>10,}  {100 * count / n:5.1f}%" + (f"  ({detail})" if detail else ""))
        lines.append(
            f"entry store: {self.store_bytes / 1e6:.1f} MB, {self.store_bytes / n:.0f} bytes per entry "
            f"(vectors {self.vector_bytes / 1e6:.1f} MB, patterns {self.pattern_bytes / 1e6:.1f} MB)"
        )
        listing = self.listing
        if listing is None:
            lines.append(f"statistics: not available (the model folder has no {LISTING})")
            return "\n".join(lines) + "\n"
        if len(listing) != self.entries:
            lines.append(f"note: {listing.path.name} lists {len(listing):,} entries, the model holds {self.entries:,}")
        for name, values in listing.labels.items():
            counted = ", ".join(f"{v} {c:,}" for v, c in _counts(values).items())
            lines.append(f"{name}: {counted}")
        for column in by if by else list(listing.numbers):
            rows = listing.top(column, top, kind)
            what = f"{KINDS[check_kind(kind)]} entries" if kind else "entries"
            lines += ["", f"top {len(rows)} {what} by {column}:", *_table(listing, rows)]
        return "\n".join(lines) + "\n"


def _counts(values: Sequence[str]) -> dict[str, int]:
    names, counts = np.unique(np.asarray(values, dtype=object), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {str(names[i]): int(counts[i]) for i in order}


def _column_format(values: np.ndarray) -> str:
    """One format for a whole column: whole numbers with thousands separators, small fractions (NPMI) with 3
    decimals, other fractions with 1."""
    finite = values[np.isfinite(values)]
    if np.all(finite == np.round(finite)):
        return ",.0f"
    return ".3f" if np.all(np.abs(finite) < 10) else ",.1f"


def _table(listing: Listing, rows: np.ndarray) -> list[str]:
    columns = list(listing.numbers)
    formats = {c: _column_format(listing.numbers[c][rows]) for c in columns}

    def number(c: str, r: int) -> str:
        x = listing.numbers[c][r]
        return "-" if np.isnan(x) else format(x, formats[c])

    cells = [
        [str(rank), listing.entries[r], KINDS[listing.kinds[r]], *(number(c, r) for c in columns)]
        for rank, r in enumerate(rows, start=1)
    ]
    header = ["rank", "entry", "kind", *columns]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    left = {1, 2}  # entry and kind left-aligned, numbers right-aligned

    def line(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(row) for row in cells)]


def _kind_counts(kinds: np.ndarray, listing: Listing | None, entries: int) -> dict[str, int]:
    """Entries per kind from the patterns; whole words (n-grams to the patterns) as the listing names them."""
    counts = {name: int((kinds == i).sum()) for i, name in enumerate(KINDS) if i != KIND_WORD}
    if listing is not None and len(listing) == entries and (words := int((listing.kinds == KIND_WORD).sum())):
        counts["ngram"] -= words
        counts["word"] = words
    return counts


def vocabulary_summary(model: StudentModel) -> VocabularySummary:
    """Counts of the model's entries by kind, the entry store's size, and its vocabulary.tsv if it has one."""
    store = model.store
    patterns = np.asarray(store.patterns)
    kinds = entry_kinds(patterns)
    span = pattern_span(patterns)
    gaps = (patterns == WILDCARD).sum(axis=1)
    lengths, length_counts = np.unique(span[kinds == KIND_NGRAM], return_counts=True)
    gap_values, gap_counts = np.unique(gaps[kinds == KIND_SKIPGRAM], return_counts=True)
    vector_bytes = int(store.embeddings.nbytes) + (0 if store.scales is None else int(store.scales.nbytes))
    dtype = str(np.dtype(store.embeddings.dtype)) + ("" if store.scales is None else " with per-row scales")
    path = model.path
    listing = read_listing(path / LISTING) if path is not None and (path / LISTING).is_file() else None
    return VocabularySummary(
        model_path=path,
        entries=len(store),
        dim=store.dim,
        dtype=dtype,
        kinds=_kind_counts(kinds, listing, len(store)),
        ngram_lengths={int(k): int(c) for k, c in zip(lengths, length_counts, strict=True)},
        skipgram_gaps={int(k): int(c) for k, c in zip(gap_values, gap_counts, strict=True)},
        vector_bytes=vector_bytes,
        pattern_bytes=int(patterns.nbytes),
        listing=listing,
    )


# ---------------------------------------------------------------------------------------- neighbours


def text_pattern(model: StudentModel, text: str) -> list[int]:
    """Token ids of ``text`` as an entry's pattern: the model's tokenizer without [CLS] and [SEP]; a ``*``
    standing alone is a wildcard (``how * you``)."""
    pieces = _WILDCARD_WORD.split(text)
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            ids.append(WILDCARD)
        if piece.strip():
            ids += model.tokenizer.encode(piece, add_special_tokens=False).ids
    return ids


def find_entry(model: StudentModel, text: str) -> int | None:
    """The row of the entry whose pattern is exactly ``text``'s tokens (see :func:`text_pattern`), else None."""
    ids = text_pattern(model, text)
    patterns = np.asarray(model.store.patterns)
    if not ids or len(ids) > patterns.shape[1]:
        return None
    row = np.full(patterns.shape[1], PAD, dtype=patterns.dtype)
    row[: len(ids)] = ids
    found = np.flatnonzero((patterns == row).all(axis=1))
    return int(found[0]) if len(found) else None


def nearest_entries(
    model: StudentModel,
    query: np.ndarray,
    top: int = 10,
    kind: str | None = None,
    exclude: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` entries nearest to the vector ``query`` by cosine, of ``kind`` only if given, entry
    ``exclude`` left out: ``(rows, cosines)``, nearest first (ties by row).

    Reads the store ``chunk_rows`` rows at a time and keeps the best ``top`` of each chunk
    (``argpartition``), so memory stays at one chunk whatever the vocabulary's size.
    """
    if top < 1:
        raise VocabertError(f"top must be at least 1, got {top}")
    if chunk_rows < 1:
        raise VocabertError(f"chunk_rows must be at least 1, got {chunk_rows}")
    k = check_kind(kind)
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if query.shape != (model.dim,):
        raise VocabertError(f"query has {query.size} dimensions, the entries {model.dim}")
    query = query / max(float(np.linalg.norm(query)), 1e-12)
    kinds = entry_kinds(model.store.patterns) if k is not None else None
    best_rows, best_scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    for lo in range(0, len(model.store), chunk_rows):
        rows = np.arange(lo, min(lo + chunk_rows, len(model.store)), dtype=np.int64)
        vectors = model.store.vectors(rows)
        scores = (vectors @ query) / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
        keep = np.ones(len(rows), dtype=bool)
        if kinds is not None:
            keep &= kinds[rows] == k
        if exclude is not None and lo <= exclude < lo + len(rows):
            keep[exclude - lo] = False
        rows, scores = rows[keep], scores[keep]
        if len(rows) > top:
            part = np.argpartition(-scores, top - 1)[:top]
            rows, scores = rows[part], scores[part]
        best_rows, best_scores = np.concatenate([best_rows, rows]), np.concatenate([best_scores, scores])
    order = np.lexsort((best_rows, -best_scores))[:top]
    return best_rows[order], best_scores[order]


@dataclass
class Neighbors:
    """What :func:`neighbors` finds; :meth:`format` prints it."""

    text: str
    entry: int | None  # the query's row when the text is an entry (its stored vector is the query), else None
    rows: np.ndarray
    cosines: np.ndarray
    texts: list[str]
    kinds: list[str]
    query_kind: str | None  # the kind of the query entry

    def format(self) -> str:
        if self.entry is not None:
            lines = [f"query: the stored vector of entry {self.text!r} ({self.query_kind}, row {self.entry})"]
        else:
            lines = [f"{self.text!r} is not a vocabulary entry: query is the model's embedding of it (model.encode)"]
        width = max([len(t) for t in self.texts] + [5])
        lines.append(f"{'rank':>4}  {'cosine':>6}  {'entry':<{width}}  kind")
        for rank, (cosine, text, kind) in enumerate(zip(self.cosines, self.texts, self.kinds, strict=True), 1):
            lines.append(f"{rank:>4}  {cosine:6.3f}  {text:<{width}}  {kind}")
        return "\n".join(lines) + "\n"


def neighbors(
    model: StudentModel, text: str, top: int = 10, kind: str | None = None, chunk_rows: int = CHUNK_ROWS
) -> Neighbors:
    """The entries nearest to ``text``: to its stored vector if ``text`` is an entry (which is left out),
    else to the model's embedding of ``text``."""
    if not text.strip():
        raise VocabertError("the text to find neighbours of is empty")
    check_kind(kind)
    entry = find_entry(model, text)
    if entry is not None:
        query = model.store.vectors(np.array([entry]))[0]
    else:
        query = model.encode([text])[0]
    rows, cosines = nearest_entries(model, query, top, kind, exclude=entry, chunk_rows=chunk_rows)
    patterns = np.asarray(model.store.patterns)
    kinds = [KINDS[k] for k in entry_kinds(patterns[rows])]
    query_kind = KINDS[entry_kinds(patterns[[entry]])[0]] if entry is not None else None
    return Neighbors(text, entry, rows, cosines, entry_texts(model, rows), kinds, query_kind)
