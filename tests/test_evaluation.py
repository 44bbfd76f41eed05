import gzip
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from vocabert.artifacts import VocabertError
from vocabert.bench.metrics import (
    RetrievalTask,
    average_ranks,
    dl19_task,
    evaluate_ranking,
    evaluate_retrieval,
    evaluate_sts,
    fidelity,
    make_task,
    mrr_at_k,
    ndcg_at_k,
    read_beir,
    read_corpus,
    read_qrels,
    read_queries,
    read_sts,
    recall_at_k,
    search,
    spearman,
)

DATA = Path(os.environ.get("VOCABERT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
needs_data = pytest.mark.skipif(
    not (DATA / "msmarco_passage").is_dir(), reason=f"staged data not found at {DATA} (set VOCABERT_DATA)"
)


# ---------------------------------------------------------------------------------------------- metrics


def test_ndcg_graded_hand_computed():
    qrels = {"a": 3, "b": 2, "c": 0, "d": 1}
    ranked = ["c", "b", "x", "a"]
    # k=3: top 3 grades are 0, 2, 0 -> DCG = 2/log2(3) = 1.26186
    # IDCG uses all judged grades 3, 2, 1 (a and d are not in the top 3 but still count):
    #   3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.26186 + 0.5 = 4.76186
    assert ndcg_at_k(ranked, qrels, k=3) == pytest.approx((2 / math.log2(3)) / (3 + 2 / math.log2(3) + 0.5))
    assert ndcg_at_k(ranked, qrels, k=3) == pytest.approx(0.264993, abs=1e-6)
    # k=10: a (grade 3) at rank 4 adds 3/log2(5) = 1.29203 -> 2.55389 / 4.76186 = 0.536322
    assert ndcg_at_k(ranked, qrels, k=10) == pytest.approx(0.536322, abs=1e-6)
    # The ideal ranking scores 1; no positive grade (IDCG = 0) scores 0.
    assert ndcg_at_k(["a", "b", "d"], qrels) == pytest.approx(1.0)
    assert ndcg_at_k(["c", "x"], {"c": 0}) == 0.0
    assert ndcg_at_k([], {}) == 0.0


def test_mrr_cutoff_and_min_grade():
    ranked = [f"p{i}" for i in range(1, 12)]  # p11 is at rank 11
    assert mrr_at_k(ranked, {"p11": 3}, k=10) == 0.0
    assert mrr_at_k(ranked, {"p11": 3}, k=11) == pytest.approx(1 / 11)
    # p1 has grade 1, below min_grade=2: the first relevant one is p3.
    assert mrr_at_k(ranked, {"p1": 1, "p3": 2}, k=10) == pytest.approx(1 / 3)
    assert mrr_at_k(ranked, {"p1": 1, "p3": 2}, k=10, min_grade=1) == 1.0


def test_recall_small_case():
    qrels = {"a": 2, "b": 3, "c": 1, "d": 2}  # relevant at min_grade=2: a, b, d
    assert recall_at_k(["a", "x", "c", "b", "d"], qrels, k=4) == pytest.approx(2 / 3)
    assert recall_at_k(["a", "x", "c", "b", "d"], qrels, k=5) == 1.0
    assert recall_at_k(["c"], qrels, k=5, min_grade=1) == pytest.approx(1 / 4)
    assert math.isnan(recall_at_k(["a"], {"a": 1}, k=5))  # nothing relevant: undefined


def test_spearman_ties_hand_computed():
    assert average_ranks(np.array([10, 20, 20, 30])).tolist() == [1.0, 2.5, 2.5, 4.0]
    # x ranks 1, 2.5, 2.5, 4; y ranks 1, 3, 2, 4; centred: (-1.5, 0, 0, 1.5) and (-1.5, .5, -.5, 1.5)
    # sum of products 4.5, sums of squares 4.5 and 5 -> 4.5 / sqrt(22.5) = 3 / sqrt(10)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.integers(0, 6, 200).astype(float)  # many ties, like STS gold scores
        y = x + rng.normal(0, 2, 200).round(1)
        assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


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


# ---------------------------------------------------------------------------------------------- readers


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_qrels_trec_and_beir_forms(tmp_path):
    trec = _write(tmp_path / "qrels.trec.gz", "1 Q0 10 3\n1 Q0 11 0\n2 0 10 1\n\n")
    assert read_qrels(trec) == {"1": {"10": 3, "11": 0}, "2": {"10": 1}}
    beir = _write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\tdoc1\t1\nq1\tdoc2\t2\n")
    assert read_qrels(beir) == {"q1": {"doc1": 1, "doc2": 2}}


def test_tsv_and_jsonl_queries_and_corpus(tmp_path):
    assert read_queries(_write(tmp_path / "q.tsv", "1\thello world\textra\n2\t bye\n")) == {
        "1": "hello world",
        "2": "bye",
    }
    assert read_corpus(_write(tmp_path / "c.tsv.gz", "7\tsome passage\n")) == {"7": "some passage"}
    jsonl = '{"id": 3, "text": "three"}\n{"_id": "q4", "text": "four"}\n'
    assert read_queries(_write(tmp_path / "q.jsonl", jsonl)) == {"3": "three", "q4": "four"}


def test_read_beir_folder(tmp_path):
    docs = [
        {"_id": "d1", "title": "Paris", "text": "Capital of France."},
        {"_id": "d2", "title": "", "text": "No title here."},
    ]
    _write(tmp_path / "corpus.jsonl.gz", "".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": "q1", "text": "capital?"}, {"_id": "q2", "text": "unjudged"}]
    _write(tmp_path / "queries.jsonl", "".join(json.dumps(q) + "\n" for q in queries))
    _write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    corpus, queries, qrels = read_beir(tmp_path)
    assert corpus == {"d1": "Paris Capital of France.", "d2": "No title here."}
    assert queries == {"q1": "capital?"}  # q2 has no qrels
    assert qrels == {"q1": {"d1": 1}}
    (tmp_path / "qrels" / "test.tsv").unlink()
    with pytest.raises(VocabertError, match="test qrels"):
        read_beir(tmp_path)


def test_reader_errors(tmp_path):
    with pytest.raises(VocabertError, match="missing"):
        read_sts(tmp_path / "nope.csv")
    with pytest.raises(VocabertError, match="empty"):
        read_sts(_write(tmp_path / "empty.csv.gz", "\n"))
    good = "g\tf\t2012\t0001\t4.0\tA man.\tA guy.\n"
    with pytest.raises(VocabertError, match=r"short\.csv:2: expected at least 7"):
        read_sts(_write(tmp_path / "short.csv", good + "g\tf\t2012\t0002\t4.0\tonly one\n"))
    with pytest.raises(VocabertError, match=r"score\.csv:3: score 'high'"):
        read_sts(_write(tmp_path / "score.csv", good + good + "g\tf\t2012\t3\thigh\ta\tb\n"))
    with pytest.raises(VocabertError, match=r"q\.tsv:1:"):
        read_queries(_write(tmp_path / "q.tsv", "no tab here\n"))
    with pytest.raises(VocabertError, match=r"bad\.jsonl:2: not valid JSON"):
        read_corpus(_write(tmp_path / "bad.jsonl", '{"_id": "1", "text": "x"}\n{oops\n'))
    with pytest.raises(VocabertError, match=r"qrels\.txt:1: grade"):
        read_qrels(_write(tmp_path / "qrels.txt", "1 Q0 10 high\n"))
    with pytest.raises(VocabertError, match=r"qrels5\.txt:1: expected"):
        read_qrels(_write(tmp_path / "qrels5.txt", "1 Q0 10 1 extra\n"))


@needs_data
def test_real_sts_dev():
    s1, s2, gold = read_sts(DATA / "sts" / "stsbenchmark" / "sts-dev.csv.gz")
    assert len(s1) == len(s2) == len(gold) == 1500
    assert gold.min() >= 0 and gold.max() <= 5
    assert s1[0] == "A man with a hard hat is dancing."


@needs_data
def test_real_dl19_task():
    task = dl19_task(DATA)
    assert len(task.queries) == 43 and len(task.corpus) == 31_362
    assert task.n_dropped_queries == 0 and set(task.qrels) == set(task.queries)
    assert {g for q in task.qrels.values() for g in q.values()} == {0, 1, 2, 3}


@needs_data
def test_dl19_bm25_run_matches_published_ndcg():
    # The staged BM25 top-100 run must reproduce Anserini's published DL19 nDCG@10 (0.5058), which
    # checks the graded nDCG against trec_eval on real data.
    run: dict[str, list[tuple[int, str]]] = {}
    with gzip.open(DATA / "msmarco_passage" / "runs.dl19.top100.tsv.gz", "rt", encoding="utf-8") as f:
        next(f)
        for line in f:
            system, _, qid, pid, rank, _ = line.split("\t")
            if system == "BM25":
                run.setdefault(qid, []).append((int(rank), pid))
    ranked = {qid: [pid for _, pid in sorted(hits)] for qid, hits in run.items()}
    assert evaluate_ranking(dl19_task(DATA), ranked)["ndcg@10"] == pytest.approx(0.5058, abs=5e-5)
