"""Stage 2: mine a vocabulary of tokens, n-grams and skip-grams from the tokenized corpus.

Candidates are counted level by level, Apriori-style: an n-gram is only counted where both of its
(n-1)-grams were frequent, and a skip-gram only where both of its tokens were, so nothing is ever
enumerated blindly. Each candidate is scored by normalized PMI against its weakest split; a
skip-gram must also be *dispersed* (no single filler accounts for most of its count, otherwise
the n-gram already covers it). Under a size budget, every token that occurs is kept and the
phrases with the highest ``count * npmi`` fill the rest. The listing records why each entry is in.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vocabert.artifacts import VocabertError, write_text
from vocabert.distill.corpus import Corpus, Shard, open_corpus
from vocabert.distill.engine import Engine, peak_rss_mib
from vocabert.distill.workspace import (
    Workspace,
    begin,
    check_same_tokenizer,
    digest,
    finish,
    is_current,
    log,
    read_manifest,
    special_tokens,
)
from vocabert.matching import PAD, WILDCARD, pattern_keys, pattern_span, window_keys
from vocabert.store import load_safetensors, save_safetensors
from vocabert.tokenizer import load_tokenizer

KIND_TOKEN, KIND_NGRAM, KIND_SKIPGRAM = 0, 1, 2
PARTIAL = "partial"  # per-shard counts of an unfinished Ray mining job (vocab/partial/<level>/...)
KIND_NAMES = {KIND_TOKEN: "token", KIND_NGRAM: "ngram", KIND_SKIPGRAM: "skipgram"}


@dataclass
class Vocabulary:
    """Mined entries: patterns (see :mod:`vocabert.matching`) with the statistics that chose them."""

    patterns: np.ndarray  # int32 (entries, width)
    kind: np.ndarray  # int8
    count: np.ndarray  # int64, occurrences in the mining corpus
    npmi: np.ndarray  # float32, nan for tokens
    score: np.ndarray  # float32, the selection score (count for tokens, count * npmi for phrases)

    def __len__(self) -> int:
        return len(self.patterns)

    def save(self, directory: Path, tokens: list[str]) -> None:
        save_safetensors(
            directory / "vocabulary.safetensors",
            {
                "patterns": self.patterns.astype(np.int32),
                "kind": self.kind.astype(np.int8),
                "count": self.count.astype(np.int64),
                "npmi": self.npmi.astype(np.float32),
                "score": self.score.astype(np.float32),
            },
        )
        write_text(directory / "vocabulary.tsv", listing(self, tokens))

    @classmethod
    def load(cls, directory: Path) -> Vocabulary:
        t, _ = load_safetensors(Path(directory) / "vocabulary.safetensors", "vocabulary")
        try:
            return cls(*(np.asarray(t[k]) for k in ("patterns", "kind", "count", "npmi", "score")))
        except KeyError as e:
            raise VocabertError(f"vocabulary in {directory} lacks tensor {e}") from None


def describe(pattern: np.ndarray, tokens: list[str]) -> str:
    """Readable form of a pattern: ``how * much``, ``new york``."""
    return " ".join("*" if t == WILDCARD else tokens[t] for t in pattern if t != PAD)


def listing(vocab: Vocabulary, tokens: list[str]) -> str:
    lines = ["entry\tkind\tcount\tnpmi\tscore\tchosen_by"]
    for p, k, c, n, s in zip(vocab.patterns, vocab.kind, vocab.count, vocab.npmi, vocab.score, strict=True):
        why = "token that occurs" if k == KIND_TOKEN else "statistics: count*npmi"
        lines.append(f"{describe(p, tokens)}\t{KIND_NAMES[int(k)]}\t{c}\t{n:.3f}\t{s:.1f}\t{why}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ counting


class KeyCounter:
    """Counts of uint64 keys, merged shard by shard so memory follows distinct keys, not corpus size."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.uint64)
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, keys: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Count ``keys`` (each once), or add ``counts`` of distinct ``keys`` (a shard's counts)."""
        if len(keys) == 0:
            return
        k, c = np.unique(keys, return_counts=True) if counts is None else (keys, counts)
        merged = np.concatenate([self.keys, k])
        merged_counts = np.concatenate([self.counts, c])
        self.keys, inverse = np.unique(merged, return_inverse=True)
        self.counts = np.bincount(inverse.reshape(-1), weights=merged_counts).astype(np.int64)

    def frequent(self, min_count: int) -> tuple[np.ndarray, np.ndarray]:
        keep = self.counts >= min_count
        return self.keys[keep], self.counts[keep]


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return values[pos]


def _decode(keys: np.ndarray, n: int, base: int) -> np.ndarray:
    """Token ids of n-gram keys (inverse of :func:`window_keys` with positions 0..n-1)."""
    out = np.zeros((len(keys), n), dtype=np.int64)
    rest = keys.copy()
    for j in range(n):
        out[:, j] = (rest % np.uint64(base)).astype(np.int64)
        rest //= np.uint64(base)
    return out


def _windows(ids: np.ndarray, offsets: np.ndarray, span: int, allowed: np.ndarray) -> np.ndarray:
    """Start positions of windows of ``span`` tokens that stay inside one text and hold only allowed tokens."""
    lengths = np.diff(offsets)
    end_of = np.repeat(offsets[1:], lengths)
    n = len(ids) - span + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    ok = np.arange(n) + span <= end_of[:n]
    bad = ~allowed[ids]
    for j in range(span):
        ok &= ~bad[j : j + n]
    return np.flatnonzero(ok)


# The counting, one shard at a time. These functions are the whole of the per-shard work of mining,
# whichever engine runs them; their results, counts of distinct keys, are merged with KeyCounter (in
# any order, to the same totals): here by LocalCounts, on Ray by vocabert.distill.ray_jobs.RayCounts.


def count_tokens(shard: Shard, base: int) -> dict[str, np.ndarray]:
    """Occurrences of every token id in a shard."""
    return {"unigram": np.bincount(shard.ids, minlength=base)}


def count_phrases(
    shard: Shard, n: int, base: int, phrase_ok: np.ndarray, prev: np.ndarray, max_gap: int
) -> dict[str, np.ndarray]:
    """Counts of a shard's n-grams whose tokens may start phrases and whose two (n-1)-grams are in
    ``prev`` (sorted keys of the frequent ones); with ``n == 2``, of its skip-grams too. Counters
    come as ``<name>.keys`` (distinct, sorted) and ``<name>.counts``."""
    starts = _windows(shard.ids, shard.offsets, n, phrase_ok)
    keys = window_keys(shard.ids, np.arange(n), n, base)[starts]
    if n > 2:
        prefix = window_keys(shard.ids, np.arange(n - 1), n - 1, base)
        keys = keys[_contains(prev, prefix[starts]) & _contains(prev, prefix[starts + 1])]
    out = dict(zip(("ngram.keys", "ngram.counts"), np.unique(keys, return_counts=True), strict=True))
    if n == 2:
        for gap in range(1, max_gap + 1):
            s = _windows(shard.ids, shard.offsets, gap + 2, np.ones(base, bool))
            pair_ok = phrase_ok[shard.ids[s]] & phrase_ok[shard.ids[s + gap + 1]]
            skip = window_keys(shard.ids, np.array([0, gap + 1]), gap + 2, base)[s[pair_ok]]
            out[f"skip{gap}.keys"], out[f"skip{gap}.counts"] = np.unique(skip, return_counts=True)
    return out


def counter_names(counts: dict[str, np.ndarray]) -> list[str]:
    return sorted(k.removesuffix(".keys") for k in counts if k.endswith(".keys"))


def merge_counts(counted: Iterable[dict[str, np.ndarray]], min_count: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-shard counts (``count_phrases``'s) merged into each counter's keys that reach ``min_count``."""
    counters: dict[str, KeyCounter] = {}
    for counts in counted:
        for name in counter_names(counts):
            counters.setdefault(name, KeyCounter()).add(counts[f"{name}.keys"], counts[f"{name}.counts"])
    return {name: counter.frequent(min_count) for name, counter in counters.items()}


class Counting(Protocol):
    """Runs a per-shard counting function over the training split of every shard, and merges."""

    def total(self, name: str, fn: Callable[..., dict], kwargs: dict) -> dict[str, np.ndarray]:
        """The per-shard arrays, summed."""

    def frequent(
        self, name: str, fn: Callable[..., dict], kwargs: dict, min_count: int
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The per-shard counts merged (:func:`merge_counts`): keys (sorted) and counts of each counter."""


class LocalCounts:
    """:class:`Counting` in this process, shard after shard."""

    def __init__(self, corpus: Corpus, show_progress_bar: bool = True):
        self.corpus, self.show_progress_bar = corpus, show_progress_bar

    def _each(self, name: str, fn: Callable[..., dict], kwargs: dict) -> Iterator[dict[str, np.ndarray]]:
        for shard in self.corpus.shards("train", progress=f"mine: {name}" if self.show_progress_bar else None):
            yield fn(shard, **kwargs)

    def total(self, name: str, fn: Callable[..., dict], kwargs: dict) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for counts in self._each(name, fn, kwargs):
            out = {k: out[k] + v for k, v in counts.items()} if out else counts
        return out

    def frequent(
        self, name: str, fn: Callable[..., dict], kwargs: dict, min_count: int
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return merge_counts(self._each(name, fn, kwargs), min_count)


# -------------------------------------------------------------------------------------------- mining


@dataclass(frozen=True)
class MineSettings:
    """Settings of the ``mine`` stage (every default lives here): :func:`mine_vocabulary`'s arguments."""

    budget: int = 100_000  # entries in the vocabulary, tokens included
    max_ngram: int = 4  # longest n-gram in tokens
    max_gap: int = 2  # largest skip-gram gap in tokens
    min_count: int = 5  # occurrences a phrase needs
    min_npmi: float = 0.1  # association a phrase needs
    min_dispersion: float = 0.5  # share of a skip-gram's count not explained by its most frequent filler


def mine_vocabulary(
    corpus: Corpus,
    budget: int = MineSettings.budget,
    max_ngram: int = MineSettings.max_ngram,
    max_gap: int = MineSettings.max_gap,
    min_count: int = MineSettings.min_count,
    min_npmi: float = MineSettings.min_npmi,
    min_dispersion: float = MineSettings.min_dispersion,
    special_ids: list[int] | None = None,
    show_progress_bar: bool = True,
    counting: Counting | None = None,
) -> Vocabulary:
    """Select tokens, n-grams (2..max_ngram) and skip-grams (gaps 1..max_gap) from the training split.

    ``counting`` runs the per-shard counting and merges it (default: :class:`LocalCounts`, here)."""
    base = int(corpus.manifest["vocab_size"])
    if float(base) ** max_ngram >= 2.0**64:
        raise VocabertError(f"max_ngram={max_ngram} is too long for exact keys with a {base}-token vocabulary")
    if budget < 1:
        raise VocabertError("the vocabulary budget must be at least 1")
    special = np.zeros(base, dtype=bool)
    special[list(special_ids or [])] = True

    counting = counting or LocalCounts(corpus, show_progress_bar)
    unigram = counting.total("tokens", count_tokens, {"base": base}).get("unigram", np.zeros(base, np.int64))
    total = int(unigram.sum())
    if total == 0:
        raise VocabertError("the corpus has no training tokens to mine")
    phrase_ok = (unigram >= min_count) & ~special

    # Level 2 counts bigrams and skip-grams; level n counts n-grams whose two (n-1)-grams are frequent.
    ngram_keys: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    none = (np.zeros(0, np.uint64), np.zeros(0, np.int64))
    skip_frequent = {gap: none for gap in range(1, max_gap + 1)}
    for n in range(2, max_ngram + 1):
        prev = ngram_keys.get(n - 1, none)[0]
        kwargs = {"n": n, "base": base, "phrase_ok": phrase_ok, "prev": prev, "max_gap": max_gap}
        found = counting.frequent(f"{n}-grams", count_phrases, kwargs, min_count)
        ngram_keys[n] = found.get("ngram", none)
        if n == 2:
            skip_frequent = {gap: found.get(f"skip{gap}", none) for gap in skip_frequent}
        kinds = ", ".join(f"{len(found[k][0])} {k}s" for k in sorted(found))
        log(f"mine: {kinds} of {n} tokens occur {min_count}+ times")
        if len(ngram_keys[n][0]) == 0:
            break

    def count_of(parts: np.ndarray) -> np.ndarray:
        """Counts of the sub-grams in ``parts`` (rows of token ids, all frequent by construction)."""
        width = parts.shape[1]
        if width == 1:
            return unigram[parts[:, 0]]
        keys, counts = ngram_keys[width]
        return _lookup(keys, counts, pattern_keys(parts, np.arange(width), base))

    log_total = np.log(total)
    patterns, kinds, counts, npmis = [], [], [], []
    for n, (keys, cnt) in ngram_keys.items():
        if len(keys) == 0:
            continue
        toks = _decode(keys, n, base)
        pmi = np.full(len(keys), np.inf)
        for split in range(1, n):
            left, right = count_of(toks[:, :split]), count_of(toks[:, split:])
            pmi = np.minimum(pmi, np.log(cnt) + log_total - np.log(left) - np.log(right))
        npmi = pmi / (log_total - np.log(cnt))
        row = np.full((len(keys), max_ngram), PAD, dtype=np.int64)
        row[:, :n] = toks
        patterns.append(row)
        kinds.append(np.full(len(keys), KIND_NGRAM))
        counts.append(cnt)
        npmis.append(npmi)

    for gap, (keys, cnt) in skip_frequent.items():
        if len(keys) == 0:
            continue
        pair = _decode(keys, 2, base)
        pmi = np.log(cnt) + log_total - np.log(unigram[pair[:, 0]]) - np.log(unigram[pair[:, 1]])
        npmi = pmi / (log_total - np.log(cnt))
        # The most frequent filler's n-gram: if it explains most of the count, the n-gram suffices.
        dispersion = np.ones(len(keys))
        if gap + 2 in ngram_keys and len(ngram_keys[gap + 2][0]):
            nk, nc = ngram_keys[gap + 2]
            ends = _decode(nk, gap + 2, base)[:, [0, gap + 1]]
            end_keys = pattern_keys(ends, np.arange(2), base)
            order = np.argsort(end_keys)
            uniq, first = np.unique(end_keys[order], return_index=True)
            top = np.maximum.reduceat(nc[order], first)
            has = _contains(uniq, keys)
            dispersion[has] = 1.0 - _lookup(uniq, top, keys[has]) / cnt[has]
        keep = dispersion >= min_dispersion
        width = max(max_ngram, gap + 2)
        row = np.full((int(keep.sum()), width), PAD, dtype=np.int64)
        row[:, 0], row[:, 1 : gap + 1], row[:, gap + 1] = pair[keep, 0], WILDCARD, pair[keep, 1]
        patterns.append(row)
        kinds.append(np.full(len(row), KIND_SKIPGRAM))
        counts.append(cnt[keep])
        npmis.append(npmi[keep])

    token_ids = np.flatnonzero(unigram > 0)
    token_ids = token_ids[np.argsort(-unigram[token_ids], kind="stable")][:budget]
    width = max([max_ngram] + [p.shape[1] for p in patterns])
    vocab_patterns = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=PAD) for p in patterns]
    phrase_patterns = np.concatenate(vocab_patterns) if vocab_patterns else np.zeros((0, width), np.int64)
    phrase_kind = np.concatenate(kinds) if kinds else np.zeros(0, np.int64)
    phrase_count = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    phrase_npmi = np.concatenate(npmis) if npmis else np.zeros(0)
    phrase_score = phrase_count * phrase_npmi
    eligible = np.flatnonzero(phrase_npmi >= min_npmi)
    room = budget - len(token_ids)
    chosen = eligible[np.argsort(-phrase_score[eligible], kind="stable")][: max(room, 0)]

    token_rows = np.full((len(token_ids), width), PAD, dtype=np.int64)
    token_rows[:, 0] = token_ids
    return Vocabulary(
        patterns=np.concatenate([token_rows, phrase_patterns[chosen]]).astype(np.int32),
        kind=np.concatenate([np.full(len(token_ids), KIND_TOKEN), phrase_kind[chosen]]).astype(np.int8),
        count=np.concatenate([unigram[token_ids], phrase_count[chosen]]),
        npmi=np.concatenate([np.full(len(token_ids), np.nan), phrase_npmi[chosen]]).astype(np.float32),
        score=np.concatenate([unigram[token_ids].astype(float), phrase_score[chosen]]).astype(np.float32),
    )


def run_mining(ws: Workspace, settings: MineSettings, force: bool = False, engine: Engine | None = None) -> Vocabulary:
    """The ``mine`` stage: skipped when current; else mine, save the vocabulary and its listing, then the
    manifest. With a Ray ``engine`` the counting runs as Ray tasks (:mod:`vocabert.distill.ray_jobs`)."""
    corpus = open_corpus(ws)
    out_dir = ws.vocab_dir
    key = {"provenance": corpus.provenance, "settings": asdict(settings), "inputs": {"corpus": digest(ws.corpus_dir)}}
    if not force and is_current(out_dir, "vocabulary", key):
        log(f"mine: {out_dir} is up to date")
        return Vocabulary.load(out_dir)
    tokenizer = load_tokenizer(ws.tokenizer_text, ws.max_length)
    tokens = [tokenizer.id_to_token(i) or f"[{i}]" for i in range(int(corpus.manifest["vocab_size"]))]
    counting = None
    if engine is not None and engine.is_ray:
        from vocabert.distill.ray_jobs import RayCounts

        scratch = out_dir / PARTIAL
        if force:
            shutil.rmtree(scratch, ignore_errors=True)
        counting = RayCounts(engine, corpus, scratch, key, ws.show_progress_bar)
    vocab = mine_vocabulary(
        corpus,
        special_ids=special_tokens(ws.tokenizer_text)["all"],
        show_progress_bar=ws.show_progress_bar,
        counting=counting,
        **asdict(settings),
    )
    begin(out_dir)
    vocab.save(out_dir, tokens)
    spans = pattern_span(vocab.patterns)
    summary = {KIND_NAMES[k]: int((vocab.kind == k).sum()) for k in KIND_NAMES}
    summary["by_span"] = {str(s): int((spans == s).sum()) for s in np.unique(spans)}
    finish(out_dir, "vocabulary", key, entries=len(vocab), summary=summary)
    shutil.rmtree(out_dir / PARTIAL, ignore_errors=True)
    if counting is not None:
        log(
            f"mine: counted on Ray: {counting.computed} shard tasks ({counting.reused} shards' counts reused), "
            f"merged by {counting.partitions} partition tasks per level; peak RSS {peak_rss_mib():.0f} MiB"
        )
    log(
        f"mine: {len(vocab)} entries ({summary['token']} tokens, {summary['ngram']} n-grams, "
        f"{summary['skipgram']} skip-grams) -> {out_dir / 'vocabulary.tsv'}"
    )
    return vocab


def open_vocabulary(ws: Workspace) -> tuple[Vocabulary, dict]:
    """The finished vocabulary of a work directory and its manifest, checked against the tokenizer."""
    manifest = read_manifest(ws.vocab_dir, "vocabulary")
    check_same_tokenizer(ws.provenance, manifest["key"]["provenance"], f"vocabulary {ws.vocab_dir}")
    return Vocabulary.load(ws.vocab_dir), manifest
