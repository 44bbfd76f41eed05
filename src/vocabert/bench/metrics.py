"""Quality metrics: fidelity to the teacher, STS Spearman and retrieval, for any encoder.

An *encoder* is any callable ``encode(texts: list[str]) -> np.ndarray`` of shape ``(n, dim)``.
Rows need not be normalized: every cosine here normalizes first, so the student, the teacher and the
peers are scored by exactly the same code. Spearman is scipy's; the ranking metrics are computed by
ir-measures with the reference implementations behind it (trec_eval via pytrec_eval for nDCG@10 and
recall, the MS MARCO evaluation script for MRR@10):

- nDCG@10: linear gains (the grade), divided by the ideal DCG of all the query's judged grades, so
  judged passages that were not retrieved (or are missing from the corpus) still count; negative
  grades count as 0 (trec_eval's ``ndcg_cut``);
- MRR@10 and Recall@k: a passage is relevant at grade >= the task's ``min_grade``
  (:func:`vocabert.bench.datasets.relevance_threshold`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.stats import spearmanr

from vocabert.artifacts import VocabertError
from vocabert.bench.datasets import RetrievalTask
from vocabert.model import normalize

Encoder = Callable[[list[str]], np.ndarray]


def _encode(encode: Encoder, texts: list[str], what: str) -> np.ndarray:
    vecs = np.asarray(encode(texts), dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != len(texts):
        raise VocabertError(f"{what}: encoder returned shape {vecs.shape} for {len(texts)} texts")
    return normalize(vecs)


def fidelity(student: np.ndarray, teacher: np.ndarray, per_text: bool = False) -> dict:
    """How close student rows are to teacher rows: cosine stats and mean distance of unit vectors
    (with ``per_text``, also every text's cosine under ``cosines``)."""
    student, teacher = normalize(student), normalize(teacher)
    if student.shape != teacher.shape:
        raise VocabertError(f"fidelity: shapes differ ({student.shape} and {teacher.shape})")
    cos = np.einsum("ij,ij->i", student, teacher, dtype=np.float64)
    dist = np.linalg.norm(student.astype(np.float64) - teacher, axis=1)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_median": float(np.median(cos)),
        "cosine_p5": float(np.percentile(cos, 5)),
        "cosine_min": float(cos.min()),
        "euclidean_mean": float(dist.mean()),
        "n": len(cos),
    } | ({"cosines": cos.tolist()} if per_text else {})


def evaluate_sts(encode: Encoder, sent1: list[str], sent2: list[str], gold: np.ndarray) -> dict:
    """Spearman (0..1 scale) between the cosine of each pair and the gold score."""
    if not (len(sent1) == len(sent2) == len(gold)):
        raise VocabertError(f"STS: {len(sent1)}, {len(sent2)} and {len(gold)} items do not line up")
    texts = list(dict.fromkeys([*sent1, *sent2]))  # each unique sentence encoded once
    index = {t: i for i, t in enumerate(texts)}
    vecs = _encode(encode, texts, "STS")
    a = vecs[[index[t] for t in sent1]]
    b = vecs[[index[t] for t in sent2]]
    cos = np.einsum("ij,ij->i", a, b)
    # Ties (STS gold scores have many) share their average rank; NaN when either side is constant.
    return {"spearman": float(spearmanr(cos, gold).statistic), "n": len(gold)}


def search(
    query_vecs: np.ndarray, corpus_vecs: np.ndarray, k: int, max_scores: int = 1 << 24
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k: ``(indices, scores)`` of shape ``(n_queries, min(k, n_docs))``, best first.

    Queries go in chunks so the score matrix stays under ``max_scores`` floats (64 MB).
    """
    q, c = normalize(query_vecs), normalize(corpus_vecs)
    k = max(0, min(k, len(c)))
    indices = np.empty((len(q), k), dtype=np.int64)
    scores = np.empty((len(q), k), dtype=np.float32)
    step = max(1, max_scores // max(len(c), 1))
    for start in range(0, len(q) if k else 0, step):
        sims = q[start : start + step] @ c.T
        if k < len(c):  # argpartition finds the top k in O(n); only those k are sorted
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(len(c)), sims.shape)
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        indices[start : start + step] = np.take_along_axis(top, order, axis=1)
        scores[start : start + step] = np.take_along_axis(top_scores, order, axis=1)
    return indices, scores


def evaluate_ranking(task: RetrievalTask, run: dict[str, list[str]], k: int = 100) -> dict:
    """nDCG@10, MRR@10 and Recall@k (means over the task's queries) from rankings, best first.

    A query missing from ``run`` scores 0. Queries with no passage of grade >= ``task.min_grade``
    are left out of the recall mean (recall is undefined there; trec_eval would count them as 0).
    """
    try:
        import ir_measures
        from ir_measures import RR, R, nDCG
    except ImportError:
        raise VocabertError("ir-measures is not installed: pip install 'vocabert[bench]'") from None
    qids = list(task.queries)
    qrels = {qid: task.qrels.get(qid, {}) for qid in qids}
    # The libraries rank by score: descending scores keep the given order (a repeated id counts once).
    scored = {
        qid: {pid: -float(rank) for rank, pid in enumerate(dict.fromkeys(run[qid]))} for qid in qids if run.get(qid)
    }
    ndcg, mrr, recall = nDCG @ 10, RR(rel=task.min_grade) @ 10, R(rel=task.min_grade) @ k
    per_query: dict = {ndcg: {}, mrr: {}, recall: {}}
    # Each metric from its reference implementation, never a fallback chosen by what happens to be installed.
    for provider, measures in ((ir_measures.pytrec_eval, [ndcg, recall]), (ir_measures.msmarco, [mrr])):
        for metric in provider.iter_calc(measures, qrels, scored):
            per_query[metric.measure][metric.query_id] = float(metric.value)
    judged = [qid for qid in qids if any(g >= task.min_grade for g in qrels[qid].values())]
    per_query_ndcg = {qid: per_query[ndcg].get(qid, 0.0) for qid in qids}
    return {
        "ndcg@10": float(np.mean(list(per_query_ndcg.values()))) if qids else math.nan,
        "mrr@10": float(np.mean([per_query[mrr].get(qid, 0.0) for qid in qids])) if qids else math.nan,
        f"recall@{k}": float(np.mean([per_query[recall].get(qid, 0.0) for qid in judged])) if judged else math.nan,
        "n_queries": len(qids),
        "n_docs": len(task.corpus),
        "relevance_threshold": task.min_grade,
        "per_query_ndcg@10": per_query_ndcg,
    }


def evaluate_retrieval(task: RetrievalTask, encode_corpus: Encoder, encode_queries: Encoder, k: int = 100) -> dict:
    """Encode corpus and queries, rank by exact cosine, and score with :func:`evaluate_ranking`."""
    pids, qids = list(task.corpus), list(task.queries)
    corpus_vecs = _encode(encode_corpus, [task.corpus[p] for p in pids], "corpus")
    query_vecs = _encode(encode_queries, [task.queries[q] for q in qids], "queries")
    indices, _ = search(query_vecs, corpus_vecs, max(k, 10))
    run = {qid: [pids[i] for i in row] for qid, row in zip(qids, indices, strict=True)}
    return evaluate_ranking(task, run, k)
