"""Semantic selection: rank candidate phrases by the approximation error of the teacher they remove.

For a phrase ``c`` and each of its occurrences in the teacher pass, let ``y`` be the mean of the
teacher's contextual vectors of the tokens it covers. Without the entry, the student can only
estimate ``y`` from the phrase's parts: for an n-gram the best of its two-part splits, each part's
stored vector (its mean contextual vector) weighted by its length; for a skip-gram its two tokens.
With the entry, the estimate is the entry's own vector ``m``, the mean of ``y`` over the occurrences.
Since ``m`` is that mean, the squared error removed over ``k`` occurrences is exactly
``k * ||m - estimate||^2``. Per occurrence that is ``||m - estimate||^2``, whose sampling bias (the
variance of ``y`` over ``k``) is subtracted; it is weighted by the phrase's count in the mining corpus.
Phrases seen fewer than twice in the teacher pass gain nothing (their error cannot be estimated).
Only the texts whose token vectors the pass kept (its token sample, ``--token-sample``) are read.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from vocabert.distill.teacher_pass import TeacherPass, occurrence_means
from vocabert.distill.workspace import log, peak_rss_mib
from vocabert.matching import PAD, WILDCARD, EntryIndex

# Texts matched at a time: a chunk's matches hold a 384-d float32 vector each (several per token), so
# smaller chunks than the store's keep the peak memory to the sums.
TEXTS_PER_CHUNK = 256


def _moments(
    passed: TeacherPass, patterns: np.ndarray, vocab_size: int, show_progress_bar: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pattern over the teacher pass (validation texts left out): occurrences, mean of ``y``, and
    the sum of ``||y||^2``."""
    index = EntryIndex(patterns, vocab_size)
    sums = np.zeros((len(patterns), passed.dim), dtype=np.float32)  # float32: 1.5 KB per candidate
    squares = np.zeros(len(patterns), dtype=np.float64)
    counts = np.zeros(len(patterns), dtype=np.int64)
    chunks = passed.sampled_chunks(TEXTS_PER_CHUNK)  # the texts whose token vectors the pass kept
    total = -(-len(passed.sampled) // TEXTS_PER_CHUNK)
    for texts, ids, offsets, vectors in tqdm(
        chunks, total=total, desc="mine: semantic gains", unit="chunk", disable=not show_progress_bar
    ):
        matches = index.match(ids, offsets)
        matches = matches.subset(~passed.validation[texts][matches.text])
        y = occurrence_means(matches, patterns, vectors, offsets)
        np.add.at(counts, matches.entry, 1)
        np.add.at(squares, matches.entry, np.einsum("ij,ij->i", y, y, dtype=np.float64))
        order = np.argsort(matches.entry, kind="stable")
        entries, first = np.unique(matches.entry[order], return_index=True)
        if len(order):
            sums[entries] += np.add.reduceat(y[order], first, axis=0)
    seen = counts > 0
    sums[seen] /= counts[seen, None]
    return counts, sums, squares


def semantic_gains(
    passed: TeacherPass,
    phrases: np.ndarray,
    phrase_counts: np.ndarray,
    vocab_size: int,
    show_progress_bar: bool = True,
) -> np.ndarray:
    """The frequency-weighted error each phrase removes (see the module's docstring); 0 where unknown."""
    started = time.perf_counter()
    phrases = np.asarray(phrases, dtype=np.int64)
    width = phrases.shape[1]
    tokens = np.full((vocab_size, width), PAD, dtype=np.int64)
    tokens[:, 0] = np.arange(vocab_size)
    patterns = np.concatenate([tokens, phrases])
    k, mean, squares = _moments(passed, patterns, vocab_size, show_progress_bar)

    # Entry of every n-gram row (tokens included), to find the parts of each split.
    row_of = {row.tobytes(): i for i, row in enumerate(patterns) if (row != WILDCARD).all()}
    span = (phrases != PAD).sum(axis=1)
    skip = (phrases == WILDCARD).any(axis=1)
    best = np.full(len(phrases), np.inf)
    known = k[vocab_size:] >= 2
    for n in np.unique(span[~skip]):
        rows = np.flatnonzero(~skip & known & (span == n))
        m = mean[vocab_size + rows]
        for split in range(1, int(n)):
            left = np.full((len(rows), width), PAD, dtype=np.int64)
            right = left.copy()
            left[:, :split], right[:, : n - split] = phrases[rows, :split], phrases[rows, split:n]
            lp = np.array([row_of.get(r.tobytes(), -1) for r in left], dtype=np.int64)
            rp = np.array([row_of.get(r.tobytes(), -1) for r in right], dtype=np.int64)
            ok = (lp >= 0) & (rp >= 0) & (k[np.maximum(lp, 0)] > 0) & (k[np.maximum(rp, 0)] > 0)
            estimate = (split * mean[lp[ok]] + (n - split) * mean[rp[ok]]) / n
            best[rows[ok]] = np.minimum(best[rows[ok]], ((m[ok] - estimate) ** 2).sum(axis=1))
        alone = rows[~np.isfinite(best[rows])]  # no split with both parts seen: the tokens' vectors
        if len(alone):
            estimate = mean[phrases[alone, :n]].mean(axis=1)
            best[alone] = ((mean[vocab_size + alone] - estimate) ** 2).sum(axis=1)
    ends = np.flatnonzero(skip & known)
    if len(ends):
        first, last = phrases[ends, 0], phrases[ends, span[ends] - 1]
        estimate = (mean[first] + mean[last]) / 2
        best[ends] = ((mean[vocab_size + ends] - estimate) ** 2).sum(axis=1)

    kp = k[vocab_size:].astype(np.float64)
    mp = mean[vocab_size:]
    norms = np.einsum("ij,ij->i", mp, mp, dtype=np.float64)  # no float64 copy of the means: that doubled the peak
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = (squares[vocab_size:] - kp * norms) / (kp - 1)  # total variance of y
        per_occurrence = np.where(known, np.maximum(best - variance / kp, 0.0), 0.0)
    gains = per_occurrence * phrase_counts
    log(
        f"mine: semantic gains of {len(phrases)} phrases from {len(passed)} teacher-pass texts in "
        f"{time.perf_counter() - started:.0f} s ({int(known.sum())} seen twice or more; "
        f"{sums_mib(len(patterns), mean.shape[1]):.0f} MiB of sums; peak RSS {peak_rss_mib():.0f} MiB)"
    )
    return gains


def sums_mib(entries: int, dim: int) -> float:
    return entries * dim * 4 / 2**20
