"""`vocabert bench` end to end on the small workspace, with user-supplied TREC and BEIR sets."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from vocabert.bench.benchmark import SpeedPlan, run_bench

TINY_SPEED = SpeedPlan(fast_b64=128, fast_b1=16, teacher_b64=16, teacher_b1=4, repeats=1, memory_texts=16)


@pytest.fixture(scope="module")
def trec_set(data_dir: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    """Three DL19 queries, their judged passages and 100 other passages, as TREC-style files."""
    root = tmp_path_factory.mktemp("trec")
    passage_dir = data_dir / "msmarco_passage"
    qrels = [line.split() for line in gzip.open(passage_dir / "qrels.dl19.tsv.gz", "rt")]
    qids = sorted({q for q, *_ in qrels})[:3]
    judged = {p for q, _, p, _ in qrels if q in qids}
    corpus, others = {}, 0
    for line in gzip.open(passage_dir / "collection_subset.tsv.gz", "rt", encoding="utf-8"):
        pid, text = line.rstrip("\n").split("\t", 1)
        if pid in judged or others < 100:
            others += pid not in judged
            corpus[pid] = text
    (root / "corpus.tsv").write_text("".join(f"{p}\t{t}\n" for p, t in corpus.items()), encoding="utf-8")
    (root / "qrels.txt").write_text("".join(" ".join(r) + "\n" for r in qrels if r[0] in qids))
    queries = [line for line in gzip.open(passage_dir / "queries.dl19.tsv.gz", "rt") if line.split("\t")[0] in qids]
    (root / "queries.tsv").write_text("".join(queries))
    return root / "queries.tsv", root / "qrels.txt", root / "corpus.tsv"


@pytest.fixture(scope="module")
def beir_dir(trec_set, tmp_path_factory) -> Path:
    queries, qrels, corpus = trec_set
    root = tmp_path_factory.mktemp("beir")
    (root / "qrels").mkdir()
    with gzip.open(root / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        for line in corpus.read_text(encoding="utf-8").splitlines():
            pid, text = line.split("\t", 1)
            f.write(json.dumps({"_id": pid, "title": "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for line in queries.read_text().splitlines():
            qid, text = line.split("\t", 1)
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{p}\t{g}" for q, _, p, g in map(str.split, qrels.open())]
    (root / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_bench_writes_report_and_model_card(workspace, model, trec_set, beir_dir, tmp_path):
    out = tmp_path / "bench"
    model_dir = tmp_path / "model"
    model.save(model_dir)
    results = run_bench(
        workspace,
        model_dir,
        out,
        trec_sets=[trec_set],
        beir_dirs=[beir_dir],
        peers=False,
        dl19=False,
        speed=TINY_SPEED,
        max_fidelity_texts=32,
    )
    for name in ("bench.json", "bench.md", "pareto.png", "fidelity_hist.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    student = results["models"]["vocabert"]
    teacher = results["models"]["teacher"]
    assert student["fidelity"]["passages"]["n"] == 32
    # The same qrels read from TREC and from BEIR form give the same figures.
    trec, beir = student["retrieval"]["corpus"], student["retrieval"][beir_dir.name]
    assert trec["ndcg@10"] == pytest.approx(beir["ndcg@10"]) and trec["n_queries"] == 3
    # The teacher is a strong retriever on its own judged pool: the harness must show it.
    assert teacher["retrieval"]["corpus"]["ndcg@10"] > 0.4
    assert 0.75 < teacher["sts"]["spearman"] < 0.95  # all-MiniLM-L6-v2 on STS-B dev (0.82 on test)
    for key in ("passages_b64", "passages_b1", "queries_b64", "queries_b1"):
        assert student["speed"][key]["texts_per_s"] > 0
    assert set(student["breakdown"]) >= {"tokenize", "match", "lookup", "network"}
    assert student["memory"].get("error") is None and student["memory"]["peak_rss_mib"] > 0
    card = (model_dir / "README.md").read_text()
    assert "<!-- vocabert-eval-start -->" in card and "STS" in card
    saved = json.loads((out / "bench.json").read_text())
    assert saved["meta"]["samples"]["fidelity_passages"] == 32


@pytest.mark.slow
def test_bench_with_peers(workspace, model, trec_set, tmp_path):
    """BM25 and both Model2Vec peers (distilled from the local teacher) on a small TREC set."""
    model_dir = tmp_path / "model"
    model.save(model_dir)
    results = run_bench(
        workspace,
        model_dir,
        tmp_path / "bench",
        trec_sets=[trec_set],
        dl19=False,
        speed=TINY_SPEED,
        max_fidelity_texts=32,
    )
    names = set(results["models"])
    assert {"teacher", "vocabert", "bm25", "model2vec-pca256", "model2vec-nopca"} <= names
    for name in names:
        assert results["models"][name].get("error") is None, (name, results["models"][name].get("error"))
    assert results["models"]["bm25"]["retrieval"]["corpus"]["ndcg@10"] > 0.2
    assert (
        "fidelity" in results["models"]["model2vec-nopca"] and "fidelity" not in results["models"]["model2vec-pca256"]
    )
