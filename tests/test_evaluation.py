"""Quality metrics: fidelity, STS Spearman (scipy) and ranking metrics (ir-measures), on hand-computed cases
and on the published TREC DL 2019 figures of the bundled runs."""

import gzip
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from vocabert.artifacts import VocabertError
from vocabert.bench.datasets import RetrievalTask, dl19_task, make_task, read_beir, relevance_threshold
from vocabert.bench.metrics import evaluate_ranking, evaluate_retrieval, evaluate_sts, fidelity, search

DATA = Path(os.environ.get("VOCABERT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
needs_data = pytest.mark.skipif(
    not (DATA / "msmarco_passage").is_dir(), reason=f"staged data not found at {DATA} (set VOCABERT_DATA)"
)


# ---------------------------------------------------------------------------------------------- metrics


def _one(qrels: dict[str, int], ranked: list[str], min_grade: int = 2, k: int = 100) -> dict:
    """The metrics of one query ``q`` ranked as given."""
    corpus = {pid: pid for pid in [*qrels, *ranked]}
    return evaluate_ranking(RetrievalTask("t", corpus, {"q": "q"}, {"q": qrels}, min_grade), {"q": ranked}, k)


def test_ndcg_graded_hand_computed():
    qrels = {"a": 3, "b": 2, "c": 0, "d": 1}
    # Top 10 grades 0, 2, 0, 3 -> DCG = 2/log2(3) + 3/log2(5) = 1.26186 + 1.29203 = 2.55389.
    # IDCG uses all judged grades 3, 2, 1 (d is never retrieved but still counts):
    #   3/log2(2) + 2/log2(3) + 1/log2(4) = 4.76186 -> 0.536322
    expected = (2 / math.log2(3) + 3 / math.log2(5)) / (3 + 2 / math.log2(3) + 0.5)
    assert _one(qrels, ["c", "b", "x", "a"])["ndcg@10"] == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(0.536322, abs=1e-6)
    # The ideal ranking scores 1; a negative grade counts as 0; a repeated id counts once.
    assert _one(qrels, ["a", "b", "d"])["ndcg@10"] == pytest.approx(1.0)
    assert _one(qrels | {"c": -1}, ["c", "b", "x", "a"])["ndcg@10"] == pytest.approx(expected, abs=1e-9)
    assert _one(qrels, ["b", "b", "a"])["ndcg@10"] == _one(qrels, ["b", "a"])["ndcg@10"]
    # Only passages past rank 10 or none at all: 0.
    assert _one({"p11": 3}, [f"p{i}" for i in range(1, 12)])["ndcg@10"] == 0.0


def test_mrr_cutoff_and_min_grade():
    ranked = [f"p{i}" for i in range(1, 12)]  # p11 is at rank 11
    assert _one({"p11": 3}, ranked)["mrr@10"] == 0.0
    assert _one({"p10": 3}, ranked)["mrr@10"] == pytest.approx(1 / 10)
    # p1 has grade 1, below min_grade=2: the first relevant one is p3.
    assert _one({"p1": 1, "p3": 2}, ranked)["mrr@10"] == pytest.approx(1 / 3)
    assert _one({"p1": 1, "p3": 2}, ranked, min_grade=1)["mrr@10"] == 1.0


def test_recall_small_case():
    qrels = {"a": 2, "b": 3, "c": 1, "d": 2}  # relevant at min_grade=2: a, b, d
    assert _one(qrels, ["a", "x", "c", "b", "d"], k=4)["recall@4"] == pytest.approx(2 / 3)
    assert _one(qrels, ["a", "x", "c", "b", "d"], k=5)["recall@5"] == 1.0
    assert _one(qrels, ["c"], min_grade=1, k=5)["recall@5"] == pytest.approx(1 / 4)
    assert math.isnan(_one({"a": 1}, ["a"])["recall@100"])  # nothing relevant at grade 2: undefined


def test_query_missing_from_run_scores_zero():
    task = RetrievalTask("t", {"a": "", "b": ""}, {"q1": "", "q2": ""}, {"q1": {"a": 2}, "q2": {"b": 2}})
    r = evaluate_ranking(task, {"q1": ["a"]})
    assert (r["ndcg@10"], r["mrr@10"], r["recall@100"]) == (0.5, 0.5, 0.5)
    assert r["per_query_ndcg@10"] == {"q1": 1.0, "q2": 0.0} and r["relevance_threshold"] == 2


def _pairs_encoder(cosines: dict[str, float]):
    """Sentence "a" is the unit x vector; every other sentence is at the given cosine to it."""

    def encode(texts):
        angles = [math.acos(1.0 if t == "a" else cosines[t]) for t in texts]
        return np.array([[math.cos(x), math.sin(x)] for x in angles], dtype=np.float32)

    return encode


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_sts_spearman_ties_hand_computed():
    # cosines rank 1, 2.5, 2.5, 4 (a tie); gold ranks 1, 3, 2, 4; centred: (-1.5, 0, 0, 1.5) and
    # (-1.5, .5, -.5, 1.5): sum of products 4.5, sums of squares 4.5 and 5 -> 4.5 / sqrt(22.5) = 3 / sqrt(10)
    encode = _pairs_encoder({"w": 0.1, "x": 0.5, "y": 0.5, "z": 0.9})
    r = evaluate_sts(encode, ["a"] * 4, ["w", "x", "y", "z"], np.array([1.0, 3.0, 2.0, 4.0]))
    assert r["spearman"] == pytest.approx(3 / math.sqrt(10), abs=1e-6) and r["n"] == 4
    constant = evaluate_sts(encode, ["a"] * 3, ["x", "y", "x"], np.array([1.0, 2.0, 3.0]))
    assert math.isnan(constant["spearman"])  # constant cosines: no rank correlation


def test_search_is_exact_top_k():
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    corpus = rng.normal(size=(500, 16)).astype(np.float32) * rng.uniform(0.5, 3, (500, 1)).astype(np.float32)
    cos = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    ).T
    expected = np.argsort(-cos, axis=1)[:, :10]
    for max_scores in (1 << 24, 1000):  # one chunk, then 2 queries per chunk
        idx, scores = search(queries, corpus, 10, max_scores=max_scores)
        assert idx.shape == scores.shape == (37, 10)
        np.testing.assert_array_equal(idx, expected)
        np.testing.assert_allclose(scores, np.take_along_axis(cos, expected, axis=1), rtol=1e-5)
    idx, _ = search(queries, corpus[:5], 10)  # k above the corpus size: everything, sorted
    np.testing.assert_array_equal(idx, np.argsort(-cos[:, :5], axis=1))


# ---------------------------------------------------------------------------------------------- routines


def test_fidelity():
    teacher = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    student = np.array([[2, 0], [1, 0], [-3, -3]], dtype=np.float32)  # cosines 1, 0, -1
    f = fidelity(student, teacher)
    assert f["n"] == 3
    assert f["cosine_mean"] == pytest.approx(0.0, abs=1e-7)
    assert f["cosine_median"] == pytest.approx(0.0, abs=1e-7)
    assert f["cosine_min"] == pytest.approx(-1.0)
    assert f["cosine_p5"] == pytest.approx(-0.9)  # linear interpolation between -1 and 0
    assert f["euclidean_mean"] == pytest.approx((0 + math.sqrt(2) + 2) / 3, rel=1e-6)


def _bag_of_letters(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), 26), dtype=np.float32)
    for i, t in enumerate(texts):
        for ch in t.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out


def test_evaluate_sts_encodes_unique_sentences_once():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return _bag_of_letters(texts)

    s1 = ["abc", "abc", "xyz", "aab"]
    s2 = ["abc", "abd", "abc", "abc"]
    r = evaluate_sts(encode, s1, s2, np.array([5.0, 3.0, 0.0, 4.0]))
    assert len(calls) == 1 and sorted(calls[0]) == ["aab", "abc", "abd", "xyz"]
    assert r["n"] == 4
    assert r["spearman"] == pytest.approx(1.0)  # cosines 1 > 2/3 > ... follow the gold order
    with pytest.raises(VocabertError):
        evaluate_sts(encode, s1, s2[:3], np.zeros(4))


def _toy_task() -> RetrievalTask:
    corpus = {"d1": "aaaa", "d2": "bbbb", "d3": "cccc", "d4": "aabb"}
    queries = {"q1": "aaa", "q2": "bbb", "q3": "zzz"}
    qrels = {"q1": {"d1": 3, "d4": 1}, "q2": {"d2": 2, "d4": 2}, "q3": {"d9": 3, "d3": 0}}
    return make_task("toy", corpus, queries, qrels)


def test_make_task_drops_queries_without_relevant_passages():
    task = _toy_task()
    assert list(task.queries) == ["q1", "q2"]  # q3's only relevant passage d9 is not in the corpus
    assert task.n_dropped_queries == 1 and set(task.qrels) == {"q1", "q2"}


def test_evaluate_ranking_and_retrieval():
    task = _toy_task()
    run = {"q1": ["d1", "d4", "d2"], "q2": ["d1", "d3", "d2"]}
    r = evaluate_ranking(task, run, k=2)
    # q2: d2 (grade 2) at rank 3 -> DCG = 2/log2(4) = 1; IDCG = 2 + 2/log2(3)
    q2 = 1 / (2 + 2 / math.log2(3))
    assert r["per_query_ndcg@10"] == pytest.approx({"q1": 1.0, "q2": q2})
    assert r["ndcg@10"] == pytest.approx((1 + q2) / 2)
    assert r["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    assert r["recall@2"] == pytest.approx((1 + 0) / 2)
    assert (r["n_queries"], r["n_docs"]) == (2, 4)
    # q1's only grade-2+ passage is missing from a restricted task: its recall is NaN and is skipped.
    binary = RetrievalTask("t", task.corpus, {"q1": "aaa"}, {"q1": {"d4": 1}})
    assert math.isnan(evaluate_ranking(binary, {"q1": ["d4"]})["recall@100"])

    r = evaluate_retrieval(task, _bag_of_letters, _bag_of_letters)
    # q1 ("aaa") ranks d1 first, then d4; q2 ("bbb") ranks d2 first, then d4: both ideal.
    assert r["ndcg@10"] == pytest.approx(1.0)
    assert r["mrr@10"] == 1.0 and r["recall@100"] == 1.0


def test_beir_binary_qrels_count_grade_one_as_relevant(tmp_path):
    """A SciFact-style BEIR folder (binary qrels): MRR and recall must see the grade-1 documents."""
    docs = [("d1", "Cats", "aaaa"), ("d2", "", "bbbb"), ("d3", "", "cccc"), ("d4", "", "dddd")]
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs)
    )
    queries = [("q1", "aaa"), ("q2", "bbb"), ("q3", "ccc"), ("q9", "unjudged")]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries))
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n")
    task = make_task(tmp_path.name, *read_beir(tmp_path))
    assert task.min_grade == 1 and list(task.queries) == ["q1", "q2", "q3"]
    r = evaluate_retrieval(task, _bag_of_letters, _bag_of_letters)  # ranks each query's document first
    assert r["mrr@10"] == 1.0 and r["recall@100"] == 1.0 and r["ndcg@10"] == pytest.approx(1.0)
    assert r["relevance_threshold"] == 1


def test_relevance_threshold_follows_the_qrels():
    assert relevance_threshold({"q": {"a": 1, "b": 0}}) == 1  # binary (BEIR)
    assert relevance_threshold({"q": {"a": 3, "b": 1}, "r": {"c": 2}}) == 2  # graded (TREC DL)
    assert make_task("t", {"a": "x"}, {"q": "x"}, {"q": {"a": 1}}, min_grade=2).min_grade == 2  # explicit wins
    with pytest.raises(VocabertError, match="none of its 1 queries has a relevant document"):
        make_task("t", {"a": "x"}, {"q": "x"}, {"q": {"zz": 1}})


@needs_data
def test_real_dl19_task():
    task = dl19_task(DATA)
    assert len(task.queries) == 43 and len(task.corpus) == 31_362
    assert task.n_dropped_queries == 0 and set(task.qrels) == set(task.queries)
    assert {g for q in task.qrels.values() for g in q.values()} == {0, 1, 2, 3}
    assert task.min_grade == 2


@needs_data
@pytest.mark.parametrize("system, published", [("BM25", 0.5058), ("D_BERT_KD_TASB", 0.7210)])
def test_dl19_runs_match_published_ndcg(system, published):
    # The bundled top-100 runs must reproduce the published DL19 nDCG@10 of Anserini's BM25 (0.5058)
    # and of TAS-B (0.7210): graded nDCG on real data, against trec_eval's published figures.
    run: dict[str, list[tuple[int, str]]] = {}
    with gzip.open(DATA / "msmarco_passage" / "runs.dl19.top100.tsv.gz", "rt", encoding="utf-8") as f:
        next(f)
        for line in f:
            name, _, qid, pid, rank, _ = line.split("\t")
            if name == system:
                run.setdefault(qid, []).append((int(rank), pid))
    ranked = {qid: [pid for _, pid in sorted(hits)] for qid, hits in run.items()}
    r = evaluate_ranking(dl19_task(DATA), ranked)
    assert r["ndcg@10"] == pytest.approx(published, abs=5e-5)
    assert 0 < r["mrr@10"] <= 1 and 0 < r["recall@100"] <= 1 and r["n_queries"] == 43
