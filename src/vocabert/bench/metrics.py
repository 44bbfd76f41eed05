"""Quality evaluation: dataset readers, ranking metrics, and routines that score any encoder.

An *encoder* is any callable ``encode(texts: list[str]) -> np.ndarray`` of shape ``(n, dim)``.
Rows need not be normalized: every cosine here normalizes first. Everything is plain numpy, so the
student, the teacher and the peers are scored by exactly the same code.

Readers stream their files line by line (``.gz`` is decided by the suffix) and raise
:class:`VocabertError` with ``file:line`` for anything they cannot parse.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from vocabert.artifacts import VocabertError
from vocabert.model import normalize

Encoder = Callable[[list[str]], np.ndarray]
Qrels = dict[str, dict[str, int]]

# ----------------------------------------------------------------------------------------------
# Readers


def _open(path: Path) -> IO[str]:
    # errors="replace": MS MARCO has mojibake and a stray bad byte must not stop an evaluation.
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for the non-blank lines; error if the file is missing or has none."""
    path = Path(path)
    if not path.is_file():
        raise VocabertError(f"{what}: {path} is missing")
    empty = True
    try:
        with _open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    empty = False
                    yield number, line
    except (OSError, EOFError) as e:  # a truncated or non-gzip .gz file
        raise VocabertError(f"{what}: cannot read {path} ({e})") from None
    if empty:
        raise VocabertError(f"{what}: {path} is empty")


def _is_jsonl(path: str | Path) -> bool:
    name = Path(path).name
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz")


def _json_records(path: str | Path, what: str) -> Iterator[tuple[int, dict]]:
    for number, line in _lines(path, what):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise VocabertError(f"{what}: {path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise VocabertError(f"{what}: {path}:{number}: expected a JSON object")
        yield number, record


def _json_id(record: dict, path: str | Path, number: int, what: str) -> str:
    key = record.get("_id", record.get("id"))
    if key is None:
        raise VocabertError(f"{what}: {path}:{number}: no '_id' or 'id' field")
    return str(key)


def _tsv_pairs(path: str | Path, what: str) -> dict[str, str]:
    # Extra columns are ignored: only id and text are needed.
    out: dict[str, str] = {}
    for number, line in _lines(path, what):
        fields = line.split("\t")
        if len(fields) < 2:
            raise VocabertError(f"{what}: {path}:{number}: expected 'id<TAB>text', got {len(fields)} field(s)")
        out[fields[0].strip()] = fields[1].strip()
    return out


def read_sts(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """STS Benchmark file -> (sentences1, sentences2, gold scores 0..5).

    Fields are split on tab with no quote handling (sentences contain ``"``); columns after the
    7th are ignored.
    """
    sent1: list[str] = []
    sent2: list[str] = []
    scores: list[float] = []
    for number, line in _lines(path, "STS data"):
        fields = line.split("\t")
        if len(fields) < 7:
            raise VocabertError(
                f"STS data: {path}:{number}: expected at least 7 tab-separated fields, got {len(fields)}"
            )
        try:
            score = float(fields[4])
        except ValueError:
            raise VocabertError(f"STS data: {path}:{number}: score {fields[4]!r} is not a number") from None
        if not math.isfinite(score):
            raise VocabertError(f"STS data: {path}:{number}: score {fields[4]!r} is not finite")
        sent1.append(fields[5])
        sent2.append(fields[6])
        scores.append(score)
    return sent1, sent2, np.asarray(scores, dtype=np.float64)


def read_queries(path: str | Path) -> dict[str, str]:
    """Queries: ``qid<TAB>text`` TSV, or BEIR ``queries.jsonl[.gz]`` (``_id``/``id`` and ``text``)."""
    if not _is_jsonl(path):
        return _tsv_pairs(path, "queries")
    out: dict[str, str] = {}
    for number, record in _json_records(path, "queries"):
        if "text" not in record:
            raise VocabertError(f"queries: {path}:{number}: no 'text' field")
        out[_json_id(record, path, number, "queries")] = str(record["text"]).strip()
    return out


def read_corpus(path: str | Path) -> dict[str, str]:
    """Passages: ``pid<TAB>text`` TSV, or BEIR ``corpus.jsonl[.gz]`` (text is ``title + " " + text``)."""
    if not _is_jsonl(path):
        return _tsv_pairs(path, "corpus")
    out: dict[str, str] = {}
    for number, record in _json_records(path, "corpus"):
        if "text" not in record:
            raise VocabertError(f"corpus: {path}:{number}: no 'text' field")
        title = str(record.get("title") or "").strip()
        text = str(record["text"]).strip()
        out[_json_id(record, path, number, "corpus")] = f"{title} {text}" if title else text
    return out


def read_qrels(path: str | Path) -> Qrels:
    """Relevance judgments -> ``{qid: {pid: grade}}``.

    Accepts TREC ``qid Q0 pid grade`` (4 columns, any whitespace) and BEIR
    ``query-id<TAB>corpus-id<TAB>score`` (3 columns; a header line is skipped).
    """
    qrels: Qrels = {}
    first = True
    for number, line in _lines(path, "qrels"):
        fields = line.split()
        if first and fields[:2] == ["query-id", "corpus-id"]:
            first = False
            continue
        first = False
        if len(fields) == 4:
            qid, _, pid, grade = fields
        elif len(fields) == 3:
            qid, pid, grade = fields
        else:
            raise VocabertError(
                f"qrels: {path}:{number}: expected 'qid Q0 pid grade' or "
                f"'query-id corpus-id score', got {len(fields)} field(s)"
            )
        try:
            qrels.setdefault(qid, {})[pid] = int(grade)
        except ValueError:
            raise VocabertError(f"qrels: {path}:{number}: grade {grade!r} is not an integer") from None
    if not qrels:
        raise VocabertError(f"qrels: {path} has no judgments")
    return qrels


def _find(directory: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise VocabertError(f"BEIR folder {directory}: no {what} (looked for {', '.join(names)})")


def read_beir(directory: str | Path) -> tuple[dict[str, str], dict[str, str], Qrels]:
    """A BEIR folder -> (corpus, queries, test qrels); only queries that have qrels are kept."""
    directory = Path(directory)
    if not directory.is_dir():
        raise VocabertError(f"BEIR folder {directory} is missing")
    corpus = read_corpus(_find(directory, ("corpus.jsonl", "corpus.jsonl.gz"), "corpus"))
    queries = read_queries(_find(directory, ("queries.jsonl", "queries.jsonl.gz"), "queries"))
    qrels = read_qrels(_find(directory, ("qrels/test.tsv", "qrels/test.tsv.gz"), "test qrels"))
    queries = {qid: text for qid, text in queries.items() if qid in qrels}
    return corpus, queries, qrels


@dataclass
class RetrievalTask:
    """A corpus, queries and graded qrels. ``min_grade`` is the grade that counts as relevant for
    MRR and recall (2 for TREC DL; 1 for binary qrels)."""

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: Qrels
    min_grade: int = 2
    n_dropped_queries: int = 0  # queries with no relevant (grade > 0) passage in the corpus


def make_task(
    name: str, corpus: dict[str, str], queries: dict[str, str], qrels: Qrels, min_grade: int = 2
) -> RetrievalTask:
    """Build a task, dropping queries that have no relevant (grade > 0) passage in the corpus.

    Such queries would score 0 whatever the encoder does (a partial corpus can lack their
    passages), which only adds noise. The qrels themselves are kept whole, so IDCG still counts
    judged passages missing from the corpus.
    """
    kept = {
        qid: text
        for qid, text in queries.items()
        if any(grade > 0 and pid in corpus for pid, grade in qrels.get(qid, {}).items())
    }
    return RetrievalTask(name, corpus, kept, {qid: qrels[qid] for qid in kept}, min_grade, len(queries) - len(kept))


def dl19_task(data_dir: str | Path) -> RetrievalTask:
    """TREC DL 2019 passage queries over ``data_dir/msmarco_passage/collection_subset.tsv.gz``."""
    root = Path(data_dir) / "msmarco_passage"
    return make_task(
        "dl19",
        read_corpus(root / "collection_subset.tsv.gz"),
        read_queries(root / "queries.dl19.tsv.gz"),
        read_qrels(root / "qrels.dl19.tsv.gz"),
        min_grade=2,
    )


# ----------------------------------------------------------------------------------------------
# Metrics


def ndcg_at_k(ranked_ids: list[str], qrels: dict[str, int], k: int = 10) -> float:
    """nDCG@k with linear gains: sum(grade / log2(rank + 1)) over the top k, divided by the same
    sum for the ideal ordering of all judged grades of the query (judged-but-not-retrieved
    passages count). Same as trec_eval's ``ndcg_cut``. Negative grades count as 0; 0 if IDCG is 0.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    gains = np.array([max(qrels.get(pid, 0), 0) for pid in ranked_ids[:k]], dtype=np.float64)
    ideal = np.sort(np.array([g for g in qrels.values() if g > 0], dtype=np.float64))[::-1][:k]
    idcg = float(ideal @ discounts[: len(ideal)])
    if idcg == 0.0:
        return 0.0
    return float(gains @ discounts[: len(gains)]) / idcg


def mrr_at_k(ranked_ids: list[str], qrels: dict[str, int], k: int = 10, min_grade: int = 2) -> float:
    """1 / rank of the first passage with grade >= min_grade within the top k, else 0."""
    for rank, pid in enumerate(ranked_ids[:k], 1):
        if qrels.get(pid, 0) >= min_grade:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranked_ids: list[str], qrels: dict[str, int], k: int = 100, min_grade: int = 2) -> float:
    """Share of the passages with grade >= min_grade found in the top k.

    NaN when the query has no such passage: recall is undefined there, and the aggregates
    (:func:`evaluate_ranking`) leave NaN queries out rather than count them as 0 or 1.
    """
    relevant = {pid for pid, grade in qrels.items() if grade >= min_grade}
    if not relevant:
        return math.nan
    return len(relevant.intersection(ranked_ids[:k])) / len(relevant)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values sharing the mean of the ranks they span."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts_run = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(starts_run)
    ends = np.r_[starts[1:], len(x)]  # exclusive
    run_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = run_rank[np.cumsum(starts_run) - 1]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN if either is constant."""
    x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
    if len(x) != len(y):
        raise VocabertError(f"spearman: inputs have different lengths ({len(x)} and {len(y)})")
    rx, ry = average_ranks(x), average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom > 0 else math.nan


# ----------------------------------------------------------------------------------------------
# Evaluation routines


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
    return {"spearman": spearman(cos, gold), "n": len(gold)}


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
    """nDCG@10, MRR@10 and Recall@k (means over the task's queries) from precomputed rankings.

    A query missing from ``run`` scores 0. Queries with no passage of grade >= ``task.min_grade``
    are left out of the recall mean (recall is undefined there).
    """
    qids = list(task.queries)
    ndcg = {qid: ndcg_at_k(run.get(qid, []), task.qrels.get(qid, {}), 10) for qid in qids}
    mrr = [mrr_at_k(run.get(qid, []), task.qrels.get(qid, {}), 10, task.min_grade) for qid in qids]
    recall = np.array([recall_at_k(run.get(qid, []), task.qrels.get(qid, {}), k, task.min_grade) for qid in qids])
    recall = recall[~np.isnan(recall)]
    return {
        "ndcg@10": float(np.mean(list(ndcg.values()))) if qids else math.nan,
        "mrr@10": float(np.mean(mrr)) if qids else math.nan,
        f"recall@{k}": float(recall.mean()) if len(recall) else math.nan,
        "n_queries": len(qids),
        "n_docs": len(task.corpus),
        "per_query_ndcg@10": ndcg,
    }


def evaluate_retrieval(task: RetrievalTask, encode_corpus: Encoder, encode_queries: Encoder, k: int = 100) -> dict:
    """Encode corpus and queries, rank by exact cosine, and score with :func:`evaluate_ranking`."""
    pids, qids = list(task.corpus), list(task.queries)
    corpus_vecs = _encode(encode_corpus, [task.corpus[p] for p in pids], "corpus")
    query_vecs = _encode(encode_queries, [task.queries[q] for q in qids], "queries")
    indices, _ = search(query_vecs, corpus_vecs, max(k, 10))
    run = {qid: [pids[i] for i in row] for qid, row in zip(qids, indices, strict=True)}
    return evaluate_ranking(task, run, k)
