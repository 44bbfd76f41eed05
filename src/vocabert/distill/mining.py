"""Stage 2: mine a vocabulary of tokens, n-grams, whole words and skip-grams from the tokenized corpus.

Candidates are counted level by level, Apriori-style: an n-gram is only counted where both of its
(n-1)-grams were frequent, and a skip-gram only where both of its tokens were, so nothing is ever
enumerated blindly. Keys are exact 64-bit integers at every length: up to 4 tokens the tokens
themselves (base-vocabulary digits); beyond, the rank of the n-gram's (n-1)-token prefix among the
frequent (n-1)-grams, times the vocabulary size, plus its last token (Apriori guarantees that the
prefix is frequent). Each candidate is scored against its weakest split by normalized PMI and by
the log-likelihood ratio; a skip-gram must also be *dispersed* (no single filler accounts for most
of its count, otherwise the n-gram already covers it). A whole word of several WordPieces is its
own kind, exempt from the association threshold. Under a size budget, every token that occurs is
kept and the phrases fill the rest, ranked by a statistic (``score``) or by the approximation error
of the teacher's vectors they remove (``select="semantics"``, :mod:`vocabert.distill.semantics`).
The listing records which criterion chose each entry.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from vocabert.artifacts import VocabertError
from vocabert.distill.corpus import Corpus, Shard, open_corpus
from vocabert.distill.engine_protocol import Counting, Engine
from vocabert.distill.semantics import semantic_gains
from vocabert.distill.teacher import embedding_dim
from vocabert.distill.teacher_pass import open_teacher_pass
from vocabert.distill.vocabulary import (
    CHOSEN_BY_SCORE,
    CHOSEN_NAMES,
    CHOSEN_SEMANTICS,
    CHOSEN_TOKEN,
    KIND_NAMES,
    KIND_NGRAM,
    KIND_SKIPGRAM,
    KIND_TOKEN,
    KIND_WORD,
    Vocabulary,
)
from vocabert.distill.workspace import Workspace, begin, digest, finish, is_current, log
from vocabert.matching import PAD, WILDCARD, pattern_keys, pattern_span, window_keys
from vocabert.options import option
from vocabert.tokenizer import load_tokenizer, tokenizer_layout

PARTIAL = "partial"  # per-shard counts of an unfinished Ray mining job (vocab/partial/<level>/...)
SCORES = ("npmi", "llr", "count")  # statistics a phrase can be ranked by: count*npmi, log-likelihood ratio, count
SELECTIONS = ("statistics", "semantics")


# ------------------------------------------------------------------------------------------ counting


class KeyCounter:
    """Counts of uint64 keys, merged shard by shard so memory follows distinct keys, not corpus size.

    With ``max_keys``, memory is bounded too: when more distinct keys than that are held, the rarest are
    dropped until at most half remain, and ``lost`` grows by the highest count dropped. A key's count is
    then short by at most ``lost``, and every key that occurs more than ``lost`` times is still held
    (see :func:`merge_counts`, which recounts the survivors exactly)."""

    def __init__(self, max_keys: int | None = None) -> None:
        self.keys = np.zeros(0, dtype=np.uint64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.max_keys = max_keys
        self.lost = 0

    def add(self, keys: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Count ``keys`` (each once), or add ``counts`` of distinct ``keys`` (a shard's counts)."""
        if len(keys) == 0:
            return
        k, c = np.unique(keys, return_counts=True) if counts is None else (keys, counts)
        merged = np.concatenate([self.keys, k])
        merged_counts = np.concatenate([self.counts, c])
        self.keys, inverse = np.unique(merged, return_inverse=True)
        self.counts = np.bincount(inverse.reshape(-1), weights=merged_counts).astype(np.int64)
        if self.max_keys is not None and len(self.keys) > self.max_keys:
            self._prune()

    def _prune(self) -> None:
        keep = max(self.max_keys // 2, 1)
        threshold = int(np.partition(self.counts, len(self.counts) - keep)[len(self.counts) - keep])
        survive = self.counts > threshold  # ties at the threshold go too: at most `keep` remain
        self.lost += threshold
        self.keys, self.counts = self.keys[survive], self.counts[survive]

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


def direct_length(base: int) -> int:
    """Longest n-gram whose key is its tokens as base-``base`` digits in 64 bits (4 for BERT's 30,522)."""
    n = 1
    while float(base) ** (n + 1) < 2.0**64:
        n += 1
    return n


def _decode(keys: np.ndarray, n: int, base: int) -> np.ndarray:
    """Token ids of n-gram keys (inverse of :func:`window_keys` with positions 0..n-1)."""
    out = np.zeros((len(keys), n), dtype=np.int64)
    rest = keys.copy()
    for j in range(n):
        out[:, j] = (rest % np.uint64(base)).astype(np.int64)
        rest //= np.uint64(base)
    return out


def decode_grams(keys: np.ndarray, n: int, base: int, levels: dict[int, np.ndarray]) -> np.ndarray:
    """Token ids of the n-gram keys of any length (see :func:`gram_keys`); ``levels[m]`` are the sorted
    keys of the frequent m-grams."""
    if n <= direct_length(base):
        return _decode(keys, n, base)
    prefix = levels[n - 1][(keys // np.uint64(base)).astype(np.int64)]
    last = (keys % np.uint64(base)).astype(np.int64)
    return np.column_stack([decode_grams(prefix, n - 1, base, levels), last])


def gram_keys(toks: np.ndarray, base: int, levels: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Keys of n-grams given as rows of token ids, and whether each has one: beyond the direct length,
    a key needs the (n-1)-token prefix to be a frequent (n-1)-gram (``levels[n-1]``, sorted keys)."""
    n = toks.shape[1]
    if n <= direct_length(base):
        return pattern_keys(toks, np.arange(n), base), np.ones(len(toks), dtype=bool)
    prefix, valid = gram_keys(toks[:, :-1], base, levels)
    valid &= _contains(levels[n - 1], prefix)
    rank = np.searchsorted(levels[n - 1], prefix).astype(np.uint64)
    return rank * np.uint64(base) + toks[:, -1].astype(np.uint64), valid


def frequent_windows(
    ids: np.ndarray, n: int, base: int, levels: dict[int, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Key of the n-token window at every start of ``ids`` (``len(ids) - n + 1`` of them) and whether it is a
    frequent n-gram (``levels[n]``; the keys of windows that are not may be meaningless)."""
    if n <= direct_length(base):
        keys = window_keys(ids, np.arange(n), n, base)
    else:
        prefix, frequent = frequent_windows(ids, n - 1, base, levels)
        rank = np.searchsorted(levels[n - 1], prefix[:-1]).astype(np.uint64)
        keys = np.where(frequent[:-1], rank * np.uint64(base) + ids[n - 1 :].astype(np.uint64), np.uint64(0))
        if n in levels:
            return keys, frequent[:-1] & _contains(levels[n], keys)
    return keys, _contains(levels[n], keys) if n in levels else np.zeros(len(keys), dtype=bool)


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
    shard: Shard,
    n: int,
    base: int,
    phrase_ok: np.ndarray,
    levels: dict[int, np.ndarray],
    max_gap: int,
    continuation: np.ndarray | None = None,
    special: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Counts of a shard's n-grams whose tokens may start phrases and whose two (n-1)-grams are frequent
    (``levels[m]``: sorted keys of the frequent m-grams, m < n); with ``n == 2``, of its skip-grams too;
    with ``continuation`` (token ids that continue a word), of the n-grams that are one whole word (a
    token right after a special one, or first in its text, starts a word whatever it looks like: the
    first word of a text carries no ``Ġ`` in byte-level BPE). Counters come as ``<name>.keys`` (distinct,
    sorted) and ``<name>.counts``."""
    starts = _windows(shard.ids, shard.offsets, n, phrase_ok)
    if n == 2:
        keys = window_keys(shard.ids, np.arange(2), 2, base)[starts]
    else:
        prefix, frequent = frequent_windows(shard.ids, n - 1, base, levels)
        starts = starts[frequent[starts] & frequent[starts + 1]]
        if n <= direct_length(base):
            keys = window_keys(shard.ids, np.arange(n), n, base)[starts]
        else:  # the prefix's rank among the frequent (n-1)-grams, then the last token
            rank = np.searchsorted(levels[n - 1], prefix[starts]).astype(np.uint64)
            keys = rank * np.uint64(base) + shard.ids[starts + n - 1].astype(np.uint64)
    out = dict(zip(("ngram.keys", "ngram.counts"), np.unique(keys, return_counts=True), strict=True))
    if continuation is not None:  # a word start, continuations only, and no continuation after it
        cont = np.append(continuation[shard.ids], False)
        whole = ~cont[starts] | np.isin(starts, shard.offsets)
        if special is not None:
            whole |= special[shard.ids[np.maximum(starts - 1, 0)]]
        for j in range(1, n):
            whole &= cont[starts + j]
        after = starts + n
        whole &= ~cont[after] | np.isin(after, shard.offsets)
        out["word.keys"], out["word.counts"] = np.unique(keys[whole], return_counts=True)
    if n == 2:
        for gap in range(1, max_gap + 1):
            s = _windows(shard.ids, shard.offsets, gap + 2, np.ones(base, bool))
            pair_ok = phrase_ok[shard.ids[s]] & phrase_ok[shard.ids[s + gap + 1]]
            skip = window_keys(shard.ids, np.array([0, gap + 1]), gap + 2, base)[s[pair_ok]]
            out[f"skip{gap}.keys"], out[f"skip{gap}.counts"] = np.unique(skip, return_counts=True)
    return out


def counter_names(counts: dict[str, np.ndarray]) -> list[str]:
    return sorted(k.removesuffix(".keys") for k in counts if k.endswith(".keys"))


def merge_counts(
    counted: Callable[[], Iterable[dict[str, np.ndarray]]], min_count: int, max_keys: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-shard counts (``count_phrases``'s, from ``counted()``) merged into each counter's keys that
    reach ``min_count``. With ``max_keys`` the counters prune as they go (:class:`KeyCounter`); a counter
    that pruned is recounted exactly over a second ``counted()``, for the keys that may be frequent only,
    so the result is the unbounded one whenever no key lost ``min_count`` or more."""
    counters: dict[str, KeyCounter] = {}
    for counts in counted():
        for name in counter_names(counts):
            counters.setdefault(name, KeyCounter(max_keys)).add(counts[f"{name}.keys"], counts[f"{name}.counts"])
    out = {name: counter.frequent(min_count) for name, counter in counters.items() if not counter.lost}
    pruned = {name: c for name, c in counters.items() if c.lost}
    if not pruned:
        return out
    for name, c in pruned.items():
        # The recount is exact, but keys seen fewer than `lost` times may be gone.
        exact_result = "exact" if c.lost < min_count else f"{name}s seen at most {c.lost} times may be missing"
        log(f"mine: the {name} counter reached {max_keys} keys, pruned counts up to {c.lost}; recount: {exact_result}")
    candidates = {name: c.keys[c.counts + c.lost >= min_count] for name, c in pruned.items()}
    exact = {name: np.zeros(len(keys), dtype=np.int64) for name, keys in candidates.items()}
    del counters, pruned
    for counts in counted():
        for name, keys in candidates.items():
            k, c = counts.get(f"{name}.keys"), counts.get(f"{name}.counts")
            if k is None or len(keys) == 0:
                continue
            hit = _contains(keys, k)
            exact[name] += np.bincount(np.searchsorted(keys, k[hit]), weights=c[hit], minlength=len(keys)).astype(
                np.int64
            )
    for name, keys in candidates.items():
        keep = exact[name] >= min_count
        out[name] = keys[keep], exact[name][keep]
    return out


class LocalCounts:
    """:class:`~vocabert.distill.engine_protocol.Counting` in this process, shard after shard; counters hold at
    most ``max_keys`` keys."""

    def __init__(self, corpus: Corpus, show_progress_bar: bool = True, max_keys: int | None = None):
        self.corpus, self.show_progress_bar, self.max_keys = corpus, show_progress_bar, max_keys

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
        return merge_counts(lambda: self._each(name, fn, kwargs), min_count, self.max_keys)

    def summary(self) -> None:
        return None


# -------------------------------------------------------------------------------------------- mining


@dataclass(frozen=True)
class MineSettings:
    """Settings of the ``mine`` stage, each a command-line option (every default lives here):
    :func:`mine_vocabulary`'s arguments."""

    budget: int = option(100_000, "maximum vocabulary entries")  # tokens included
    budget_mb: float | None = option(
        None,
        "the budget in megabytes of model instead of entries (the default int8 vector, the default student's "
        "attention key and query, and the pattern of each entry)",  # see entry_bytes
        type=float,
        metavar="MB",
    )
    max_ngram: int = option(4, "longest n-gram in tokens")
    max_gap: int = option(2, "largest skip-gram gap in tokens")
    min_count: int = option(5, "minimum occurrences of a phrase")
    min_npmi: float = option(0.1, "minimum normalized PMI of a phrase")  # whole words are exempt
    min_dispersion: float = option(0.5, "share of a skip-gram's count its most frequent filler may not explain")
    max_keys: int = option(
        8_000_000,
        "distinct keys a counter holds (16 bytes each) before it drops the rarest; the survivors are then "
        "recounted exactly, and the result is exact unless the counts dropped reach --min-count, which the "
        "command reports",
        metavar="N",
    )
    score: str = option(
        "npmi",
        "statistic that ranks phrases: npmi (count x NPMI), llr (log-likelihood ratio), count (frequency alone; "
        "combine with --min-npmi -1 for no association at all)",
        choices=SCORES,
    )
    select: str = option(
        "statistics",
        "statistics: phrases ranked by --score; semantics: by the teacher's approximation error they remove "
        "(needs the teacher pass: `vocabert embed --pass-only` first)",
        choices=SELECTIONS,
    )


# A model stores per entry its vector (the default store's int8 with a float32 scale), the default student's
# keys and queries (int8, one of rank r per head, and a float32 scale each) and its pattern (int32): what
# --budget-mb divides by. 8 heads of rank 8 (EmbedSettings and TrainSettings; a test keeps them in step:
# mining imports no later stage).
VECTOR_EXTRA_BYTES = 4
ATTENTION_BYTES = 2 * (8 * 8 + 4)


def entry_bytes(dim: int, width: int) -> int:
    """Bytes one vocabulary entry adds to a model folder (int8 vector, attention key and query, pattern)."""
    return dim + VECTOR_EXTRA_BYTES + ATTENTION_BYTES + 4 * width


def budget_entries(budget: int, budget_mb: float | None, dim: int, width: int) -> int:
    """The budget in entries: ``budget``, or as many entries as ``budget_mb`` megabytes hold."""
    if budget_mb is None:
        return budget
    if budget_mb <= 0:
        raise VocabertError("--budget-mb must be above 0")
    return int(budget_mb * 1e6 // entry_bytes(dim, width))


def _xlogx_ratio(k: np.ndarray, expected: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(k > 0, k * np.log(k / expected), 0.0)


def log_likelihood_ratio(count: np.ndarray, left: np.ndarray, right: np.ndarray, total: int) -> np.ndarray:
    """Dunning's G^2 of the 2x2 table (left part present or not, right part present or not)."""
    count, left, right = (np.asarray(x, dtype=np.float64) for x in (count, left, right))
    # k11 = count, k12 = left without right, k21 = right without left, k22 = neither (clipped: n-gram counts
    # of the parts come from other window positions, so left - count can dip below 0 by a few).
    k = [count, np.maximum(left - count, 0), np.maximum(right - count, 0), np.maximum(total - left - right + count, 0)]
    rows = [left, left, total - left, total - left]
    cols = [right, total - right, right, total - right]
    return 2 * sum(_xlogx_ratio(k[i], rows[i] * cols[i] / total) for i in range(4))


SCORING_CHUNK = 1 << 17  # candidates scored at once (a few hundred bytes each while scored)


def _chunks(n: int) -> Iterator[slice]:
    return (slice(i, min(i + SCORING_CHUNK, n)) for i in range(0, n, SCORING_CHUNK))


class _PhrasePool:
    """Candidate phrases, added a chunk at a time in their ranking order (kind, length, key), with whether
    each passes the thresholds. With ``keep`` (the room left in the budget), only the ``keep`` passing ones
    of highest statistic so far stay, ties to the earlier: the best ``keep`` of all are among them, in the
    same order as if all had been kept. Without (semantic selection, which reads every candidate's vector
    as a possible part of a longer one), all stay."""

    def __init__(self, keep: int | None, score: str):
        self.keep, self.score, self.eligible = keep, score, 0
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, row, kind, count, npmi, llr, min_npmi: float) -> None:
        ok = (npmi >= min_npmi) | (kind == KIND_WORD)
        self.eligible += int(ok.sum())
        statistic = {"npmi": count * npmi, "llr": llr, "count": count.astype(float)}[self.score]
        part = (row, kind, count, npmi, llr, statistic, ok)
        self.parts.append(part if self.keep is None else tuple(a[ok] for a in part))
        if self.keep is not None and sum(len(p[1]) for p in self.parts) > 2 * max(self.keep, SCORING_CHUNK):
            self.parts = [self._best()]

    def _joined(self) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate([p[i] for p in self.parts]) for i in range(7))

    def _best(self) -> tuple[np.ndarray, ...]:
        joined = self._joined()
        best = np.sort(np.argsort(-joined[5], kind="stable")[: self.keep])  # in their ranking order again
        return tuple(a[best] for a in joined)

    def arrays(self, width: int) -> tuple[np.ndarray, ...]:
        """Patterns, kinds, counts, npmi, llr, the statistic, and whether each passes the thresholds."""
        if not self.parts:
            empty = (np.zeros(0, t) for t in (np.int64, np.int64, float, float, float, bool))
            return np.zeros((0, width), np.int64), *empty
        return self._best() if self.keep is not None else self._joined()


# Ranks phrases by meaning (vocabert.distill.semantics): (patterns, counts) -> the gain of each
SemanticGains = Callable[[np.ndarray, np.ndarray], np.ndarray]


def mine_vocabulary(
    corpus: Corpus,
    budget: int = MineSettings.budget,
    max_ngram: int = MineSettings.max_ngram,
    max_gap: int = MineSettings.max_gap,
    min_count: int = MineSettings.min_count,
    min_npmi: float = MineSettings.min_npmi,
    min_dispersion: float = MineSettings.min_dispersion,
    max_keys: int = MineSettings.max_keys,
    score: str = MineSettings.score,
    select: str = MineSettings.select,
    special_ids: list[int] | None = None,
    continuation: np.ndarray | None = None,
    semantic_gains: SemanticGains | None = None,
    show_progress_bar: bool = True,
    counting: Counting | None = None,
) -> Vocabulary:
    """Select tokens, n-grams (2..max_ngram) and skip-grams (gaps 1..max_gap) from the training split.

    ``continuation`` marks the token ids that continue a word (``##...``): an n-gram that is a whole word
    (not only the start of a longer one) at least ``min_count`` times is of kind ``word``.
    ``select="semantics"`` ranks phrases by ``semantic_gains``. ``counting`` runs the per-shard counting
    and merges it (default: :class:`LocalCounts`, here, with counters of at most ``max_keys`` keys)."""
    base = int(corpus.manifest["vocab_size"])
    if budget < 1:
        raise VocabertError("the vocabulary budget must be at least 1")
    if max_ngram < 1 or max_gap < 0:
        raise VocabertError("--max-ngram must be at least 1 and --max-gap at least 0")
    if score not in SCORES:
        raise VocabertError(f"unknown score {score!r}: use {', '.join(SCORES)}")
    if select not in SELECTIONS:
        raise VocabertError(f"unknown selection {select!r}: use {' or '.join(SELECTIONS)}")
    if select == "semantics" and semantic_gains is None:
        raise VocabertError("semantic selection needs the teacher pass (semantic_gains)")
    special = np.zeros(base, dtype=bool)
    special[list(special_ids or [])] = True

    if max_keys < 2:
        raise VocabertError("--max-keys must be at least 2")
    counting = counting or LocalCounts(corpus, show_progress_bar, max_keys)
    unigram = counting.total("tokens", count_tokens, {"base": base}).get("unigram", np.zeros(base, np.int64))
    total = int(unigram.sum())
    if total == 0:
        raise VocabertError("the corpus has no training tokens to mine")
    phrase_ok = (unigram >= min_count) & ~special

    # Level 2 counts bigrams and skip-grams; level n counts n-grams whose two (n-1)-grams are frequent.
    ngram_keys: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    word_keys: dict[int, np.ndarray] = {}  # n-grams that are one whole word at least min_count times
    none = (np.zeros(0, np.uint64), np.zeros(0, np.int64))
    skip_frequent = {gap: none for gap in range(1, max_gap + 1)}
    for n in range(2, max_ngram + 1):
        levels = {m: keys for m, (keys, _) in ngram_keys.items()}
        kwargs = {"n": n, "base": base, "phrase_ok": phrase_ok, "levels": levels, "max_gap": max_gap}
        if continuation is not None:
            kwargs |= {"continuation": continuation, "special": special}
        found = counting.frequent(f"{n}-grams", count_phrases, kwargs, min_count)
        ngram_keys[n] = found.get("ngram", none)
        word_keys[n] = found.get("word", none)[0]
        if n == 2:
            skip_frequent = {gap: found.get(f"skip{gap}", none) for gap in skip_frequent}
        kinds = ", ".join(f"{len(found[k][0])} {k}s" for k in sorted(found))
        log(f"mine: {kinds} of {n} tokens occur {min_count}+ times")
        if len(ngram_keys[n][0]) == 0:
            break
    levels = {m: keys for m, (keys, _) in ngram_keys.items()}

    def count_of(parts: np.ndarray) -> np.ndarray:
        """Counts of the sub-grams in ``parts`` (rows of token ids, all frequent by construction)."""
        if parts.shape[1] == 1:
            return unigram[parts[:, 0]]
        keys, counts = ngram_keys[parts.shape[1]]
        return _lookup(keys, counts, gram_keys(parts, base, levels)[0])

    log_total = np.log(total)
    width = max(max_ngram, max_gap + 2 if max_gap else 1)
    token_ids = np.flatnonzero(unigram > 0)
    token_ids = token_ids[np.argsort(-unigram[token_ids], kind="stable")][:budget]
    room = max(budget - len(token_ids), 0)
    # Candidates are scored a chunk at a time and only those that can still be chosen are kept: the eligible
    # ones, and, when a statistic chooses, only the best `room` of them so far. Memory then follows the budget,
    # not the candidates (millions on a large corpus, ~170 bytes each while scored).
    pool = _PhrasePool(room if select != "semantics" else None, score)
    for n, (keys, cnt) in ngram_keys.items():
        for part in _chunks(len(keys)):
            k, c = keys[part], cnt[part]
            toks = decode_grams(k, n, base, levels)
            pmi, llr = np.full(len(k), np.inf), np.full(len(k), np.inf)
            for split in range(1, n):
                left, right = count_of(toks[:, :split]), count_of(toks[:, split:])
                pmi = np.minimum(pmi, np.log(c) + log_total - np.log(left) - np.log(right))
                llr = np.minimum(llr, log_likelihood_ratio(c, left, right, total))
            row = np.full((len(k), width), PAD, dtype=np.int64)
            row[:, :n] = toks
            kind = np.full(len(k), KIND_NGRAM)
            kind[_contains(word_keys.get(n, none[0]), k)] = KIND_WORD
            pool.add(row, kind, c, pmi / (log_total - np.log(c)), llr, min_npmi)

    for gap, (keys, cnt) in skip_frequent.items():
        if len(keys) == 0:
            continue
        # The most frequent filler's n-gram: if it explains most of the count, the n-gram suffices.
        fillers = None
        if gap + 2 in ngram_keys and len(ngram_keys[gap + 2][0]):
            nk, nc = ngram_keys[gap + 2]
            ends = decode_grams(nk, gap + 2, base, levels)[:, [0, gap + 1]]
            end_keys = pattern_keys(ends, np.arange(2), base)
            order = np.argsort(end_keys, kind="stable")
            uniq, first = np.unique(end_keys[order], return_index=True)
            fillers = uniq, np.maximum.reduceat(nc[order], first)
            del nk, nc, ends, end_keys, order
        for part in _chunks(len(keys)):
            k, c = keys[part], cnt[part]
            pair = _decode(k, 2, base)
            left, right = unigram[pair[:, 0]], unigram[pair[:, 1]]
            pmi = np.log(c) + log_total - np.log(left) - np.log(right)
            dispersion = np.ones(len(k))
            if fillers is not None:
                has = _contains(fillers[0], k)
                dispersion[has] = 1.0 - _lookup(*fillers, k[has]) / c[has]
            keep = dispersion >= min_dispersion
            row = np.full((int(keep.sum()), width), PAD, dtype=np.int64)
            row[:, 0], row[:, 1 : gap + 1], row[:, gap + 1] = pair[keep, 0], WILDCARD, pair[keep, 1]
            npmi = pmi / (log_total - np.log(c))
            llr = log_likelihood_ratio(c, left, right, total)
            pool.add(row, np.full(len(row), KIND_SKIPGRAM), c[keep], npmi[keep], llr[keep], min_npmi)

    phrase_patterns, phrase_kind, phrase_count, phrase_npmi, phrase_llr, statistic, ok = pool.arrays(width)
    eligible = np.flatnonzero(ok)
    if select == "semantics" and room and len(eligible):
        phrase_score = np.asarray(semantic_gains(phrase_patterns, phrase_count), dtype=np.float64)
        why = CHOSEN_SEMANTICS
    else:
        phrase_score, why = statistic, CHOSEN_BY_SCORE[score]
    # Ties (equal scores) keep the order above: by kind and length, then by key, so the result is deterministic.
    chosen = eligible[np.argsort(-phrase_score[eligible], kind="stable")][:room]
    log(
        f"mine: {pool.eligible} phrases pass the thresholds; {len(token_ids)} tokens and the {len(chosen)} phrases "
        f"of highest {CHOSEN_NAMES[why]} fill the budget of {budget}"
    )

    token_rows = np.full((len(token_ids), width), PAD, dtype=np.int64)
    token_rows[:, 0] = token_ids
    nan_tokens = np.full(len(token_ids), np.nan)
    return Vocabulary(
        patterns=np.concatenate([token_rows, phrase_patterns[chosen]]).astype(np.int32),
        kind=np.concatenate([np.full(len(token_ids), KIND_TOKEN), phrase_kind[chosen]]).astype(np.int8),
        count=np.concatenate([unigram[token_ids], phrase_count[chosen]]),
        npmi=np.concatenate([nan_tokens, phrase_npmi[chosen]]).astype(np.float32),
        score=np.concatenate([unigram[token_ids].astype(float), phrase_score[chosen]]).astype(np.float32),
        llr=np.concatenate([nan_tokens, phrase_llr[chosen]]).astype(np.float32),
        chosen=np.concatenate([np.full(len(token_ids), CHOSEN_TOKEN), np.full(len(chosen), why)]).astype(np.int8),
    )


def run_mining(ws: Workspace, settings: MineSettings, engine: Engine, force: bool = False) -> Vocabulary:
    """The ``mine`` stage: skipped when current; else mine, save the vocabulary and its listing, then the
    manifest. The counting runs where ``engine`` runs it (this process, or Ray tasks)."""
    corpus = open_corpus(ws)
    out_dir = ws.vocab_dir
    inputs = {"corpus": digest(ws.corpus_dir)}
    if settings.select == "semantics":
        inputs["teacher pass"] = _finished_teacher_pass(ws)
    key = {"provenance": corpus.provenance, "settings": asdict(settings), "inputs": inputs}
    if not force and is_current(out_dir, "vocabulary", key):
        log(f"mine: {out_dir} is up to date")
        return Vocabulary.load(out_dir)
    tokenizer = load_tokenizer(ws.tokenizer_text, ws.max_length)
    layout = tokenizer_layout(ws.tokenizer_text)
    vocab_size = int(corpus.manifest["vocab_size"])
    tokens = [tokenizer.id_to_token(i) or f"[{i}]" for i in range(vocab_size)]
    counting = engine.counting(ws, corpus, key, settings.max_keys, force)
    gains = None
    if settings.select == "semantics":
        passed = open_teacher_pass(ws)

        def gains(phrases: np.ndarray, counts: np.ndarray) -> np.ndarray:
            return semantic_gains(passed, phrases, counts, vocab_size, ws.show_progress_bar)

    options = asdict(settings)
    width = max(settings.max_ngram, settings.max_gap + 2 if settings.max_gap else 1)
    options["budget"] = budget_entries(settings.budget, options.pop("budget_mb"), embedding_dim(ws.teacher_path), width)
    vocab = mine_vocabulary(
        corpus,
        special_ids=list(layout.special),
        continuation=layout.continuation(tokens),
        semantic_gains=gains,
        show_progress_bar=ws.show_progress_bar,
        counting=counting,
        **options,
    )
    begin(out_dir)
    vocab.save(out_dir, tokens)
    spans = pattern_span(vocab.patterns)
    summary = {KIND_NAMES[k]: int((vocab.kind == k).sum()) for k in KIND_NAMES}
    summary["by_span"] = {str(s): int((spans == s).sum()) for s in np.unique(spans)}
    finish(out_dir, "vocabulary", key, entries=len(vocab), summary=summary)
    shutil.rmtree(out_dir / PARTIAL, ignore_errors=True)
    if (done := counting.summary()) is not None:
        log(f"mine: {done}")
    log(
        f"mine: {len(vocab)} entries ({summary['token']} tokens, {summary['ngram']} n-grams, {summary['word']} "
        f"whole words, {summary['skipgram']} skip-grams) -> {out_dir / 'vocabulary.tsv'}"
    )
    return vocab


def _finished_teacher_pass(ws: Workspace) -> str:
    """The digest of the work directory's finished teacher pass, which semantic selection reads."""
    if not (ws.teacher_dir / "manifest.json").is_file():
        raise VocabertError(
            f"--select semantics scores phrases with the teacher pass, and {ws.teacher_dir} holds no finished one: "
            "run `vocabert embed --pass-only` first (the pass does not depend on the vocabulary)"
        )
    return digest(ws.teacher_dir)
