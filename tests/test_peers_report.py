"""Peers (teacher, Model2Vec, BM25), speed measurement and the bench report."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from vocabert.artifacts import VocabertError
from vocabert.bench import peers, report, speed
from vocabert.model import normalize


def _speed(rate: float) -> dict:
    return {
        "texts_per_s": rate,
        "runs_texts_per_s": [rate * 0.9, rate, rate * 1.1],
        "n_texts": 500,
        "batch_size": 64,
    }


def fake_results(seed: int = 0) -> dict:
    """Plausible bench results: a teacher, a student, two Model2Vec peers, BM25 and one unavailable peer."""
    rng = np.random.default_rng(seed)
    cos = lambda mean, n: np.clip(rng.normal(mean, 0.05, n), -1, 1)  # noqa: E731

    def model(kind, rate, ndcg, sts, fid=None, size=90_000_000, rss=600.0, load=1.5):
        m = {
            "kind": kind,
            "description": f"a {kind}",
            "error": None,
            "sts": {"spearman": sts, "n": 1379},
            "retrieval": {"dl19": {"ndcg@10": ndcg, "mrr@10": ndcg + 0.2, "recall@100": ndcg - 0.1, "n_queries": 43}},
            "speed": {
                "passages_b64": _speed(rate),
                "passages_b1": _speed(rate / 4),
                "queries_b64": _speed(rate * 3),
                "queries_b1": _speed(rate),
            },
            "memory": {"peak_rss_mib": rss, "import_seconds": 4.0, "load_seconds": load},
            "size_bytes": size,
            "load_seconds": load,
            "breakdown": None,
        }
        if fid:
            m["fidelity"] = {
                "passages": {"cosines": cos(fid, 2000)},
                "queries": {"cosines": cos(fid - 0.05, 1000)},
            }
        return m

    models = {
        "teacher": model("teacher", 60.0, 0.65, 0.82, size=90_900_000, rss=820.0, load=0.9),
        "vocabert": model("student", 21_000.0, 0.55, 0.77, fid=0.9, size=40_000_000, rss=180.0, load=0.2),
        "model2vec-pca256": model("model2vec", 38_000.0, 0.46, 0.72, fid=0.72, size=15_000_000, rss=160.0),
        "model2vec-nopca": model("model2vec", 30_000.0, 0.47, 0.73, fid=0.74, size=22_700_000, rss=170.0),
        "bm25": {"kind": "bm25", "error": None, "retrieval": {"dl19": {"ndcg@10": 0.48, "mrr@10": 0.68}}},
        "broken": {"kind": "model2vec", "error": "ImportError: No module named 'skeletoken'"},
    }
    # As vocabert.bench.metrics.fidelity returns it (no raw cosines): read through its own key names.
    models["teacher"]["fidelity"] = {"passages": {"cosine_mean": 1.0, "cosine_p5": 1.0, "n": 2000}}
    models["vocabert"]["latency"] = {"queries": {"p50_ms": 0.3, "p99_ms": 0.9}, "passages": {"p50_ms": 0.5}}
    models["vocabert"]["breakdown"] = {
        "lookup only": {"passages cos mean": 0.84, "texts/s": 60_000.0},
        "+ network": {"passages cos mean": 0.90, "texts/s": 21_000.0},
    }
    models["vocabert"]["fidelity"]["passages"]["cosines"][0] = np.nan  # NaN must not break JSON
    meta = {
        "seed": seed,
        "samples": {"passages": 2000, "queries": 1000, "sts_pairs": 1379, "dl19_queries": 43},
    }
    return {"meta": meta, "models": models}


# --- report ------------------------------------------------------------------------------------------


def test_markdown_rows_columns_and_dashes():
    md = report.markdown_table(fake_results())
    for header in ("passages cos mean", "queries cos p5", "STS Spearman", "DL19 nDCG@10", "DL19 R@100"):
        assert header in md
    for header in ("passages/s b1", "queries/s b64", "peak RSS MiB", "load s", "size MB"):
        assert header in md
    quality_md, cost_md = md.split("### Speed and cost")
    quality_md, fidelity_md = quality_md.split("### Fidelity to the teacher")
    assert "| vocabert | passages |" in fidelity_md

    def rows(table: str) -> dict[str, list[str]]:
        lines = [line for line in table.splitlines() if line.startswith("| ")]
        return {cells[0]: cells for cells in ([c.strip() for c in line.split("|")[1:-1]] for line in lines)}

    quality, cost = rows(quality_md), rows(cost_md)
    assert {"teacher", "vocabert", "model2vec-pca256", "model2vec-nopca", "bm25"} <= set(quality) & set(cost)
    assert quality["bm25"][2] == "—" and quality["bm25"][8] == "—"  # no fidelity, no STS
    assert quality["bm25"][9] == "0.480" and quality["vocabert"][8] == "0.770"
    assert quality["teacher"][2:8] == ["1.000", "1.000", "—", "—", "—", "—"]  # no unseen-topic set here
    assert cost["vocabert"][2] == "21,000 (×350)"  # passages/s at batch 64 over the teacher's 60
    assert cost["teacher"][2] == "60.0 (×1.0)" and cost["bm25"][1:] == ["—"] * 12
    assert cost["vocabert"][5:7] == ["0.30", "0.90"]  # query latency p50, p99 (ms)
    assert cost["teacher"][5:7] == ["—", "—"]
    assert cost["vocabert"][7:11] == ["180", "4.00", "0.20", "40.0"]
    assert "Breakdown: vocabert" in md and "lookup only" in md
    assert "cosines" not in md


def test_student_names_tell_model_folders_apart(tmp_path):
    assert peers.student_names([tmp_path / "a" / "model"]) == ["vocabert"]
    names = peers.student_names([tmp_path / "b25000" / "model", tmp_path / "b50000" / "model"])
    assert names == ["vocabert-b25000", "vocabert-b50000"]
    assert peers.student_names([tmp_path / "x" / "fast", tmp_path / "y" / "fast", tmp_path / "y" / "good"]) == [
        "vocabert-x-fast",
        "vocabert-y-fast",
        "vocabert-y-good",
    ]
    with pytest.raises(VocabertError, match="twice"):
        peers.student_names([tmp_path / "m", tmp_path / "m"])


def test_latency_percentiles_call_by_call():
    calls = []
    result = speed.measure_latency(lambda texts, batch: calls.append((list(texts), batch)), ["a", "b", "c"])
    assert calls == [(["a"], 1), (["a"], 1), (["b"], 1), (["c"], 1)]  # one warm-up call, then one per text
    assert result["n_texts"] == 3 and 0 <= result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    with pytest.raises(VocabertError):
        speed.measure_latency(lambda texts, batch: None, [])


def test_unavailable_peer_listed_with_reason():
    md = report.markdown_table(fake_results())
    assert "broken" in md and "No module named 'skeletoken'" in md
    assert not any(line.startswith("| broken") for line in md.splitlines())


def test_write_report_files_and_json_roundtrip(tmp_path):
    results = fake_results()
    paths = report.write_report(results, tmp_path)
    assert set(paths) == {"json", "markdown", "pareto", "fidelity_hist"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    for name in ("pareto", "fidelity_hist"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(paths["json"].read_text())
    assert loaded["meta"]["machine"]["cpu_count"] >= 1 and "numpy" in loaded["meta"]["machine"]["libraries"]
    student = loaded["models"]["vocabert"]
    assert "cosines" not in student["fidelity"]["passages"]
    passages = student["fidelity"]["passages"]
    assert passages["cosines_summary"]["n"] == passages["n"] == 1999 and passages["n_invalid"] == 1
    assert sum(passages["cosines_summary"]["histogram"]["counts"]) == 1999
    assert student["speed"]["passages_b64"]["x_teacher"] == pytest.approx(350)
    assert loaded == report.bench_json(loaded)  # a fixed point: nothing lost or changed on reload
    assert report.markdown_table(loaded) == report.markdown_table(results)
    assert "![pareto](pareto.png)" in paths["markdown"].read_text()
    assert list(tmp_path.glob(".*tmp")) == []


def test_report_without_cosines_or_teacher(tmp_path):
    results = {"models": {"m": {"kind": "model2vec", "speed": {"passages_b64": _speed(100.0)}}}}
    paths = report.write_report(results, tmp_path)
    assert "fidelity_hist" not in paths and paths["pareto"].stat().st_size > 0
    assert "100 (×" not in report.markdown_table(results)  # no teacher, no ratio


def test_update_model_card(tmp_path):
    card = tmp_path / "README.md"
    card.write_text(f"# my model\n\nIntro.\n\n{report.EVAL_START}\nold table\n{report.EVAL_END}\n\nFooter.\n")
    report.update_model_card(tmp_path, "| new | table |")
    first = card.read_text()
    assert "old table" not in first and "| new | table |" in first
    assert first.startswith("# my model\n\nIntro.\n\n") and first.endswith("\n\nFooter.\n")
    report.update_model_card(tmp_path, "| new | table |")
    assert card.read_text() == first


def test_update_model_card_appends_and_creates(tmp_path):
    report.update_model_card(tmp_path, "T1")
    text = (tmp_path / "README.md").read_text()
    assert text.count(report.EVAL_START) == 1 and "T1" in text
    (tmp_path / "README.md").write_text("# card\n\nBody.\n")
    report.update_model_card(tmp_path, "T2")
    report.update_model_card(tmp_path, "T3")
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# card\n\nBody.\n") and "T3" in text and "T2" not in text
    assert text.count(report.EVAL_START) == 1
    (tmp_path / "README.md").write_text(f"{report.EVAL_START}\nno end\n")
    with pytest.raises(VocabertError):
        report.update_model_card(tmp_path, "T4")


# --- speed -------------------------------------------------------------------------------------------


class Fake(peers.Encoder):
    def __init__(self, dim: int = 8):
        self.name, self.kind, self.path, self.dim = "fake", "student", "/nonexistent", dim
        self.load_seconds, self.size_bytes, self.model_key, self.description = 0.0, 0, "fake-v1", "fake"
        self.calls = 0

    def encode(self, texts, batch_size=64):
        self.calls += len(texts)
        rng = [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim) for t in texts]
        return normalize(np.array(rng).reshape(len(texts), self.dim))


def test_measure_throughput_counts():
    texts = [f"text {i}" for i in range(50)]
    enc = Fake()
    out = speed.measure_throughput(enc.encode, texts, batch_size=16, repeats=3, min_seconds=0)
    assert out["texts_per_s"] > 0 and out["n_texts"] == 50 and out["batch_size"] == 16
    assert len(out["runs_texts_per_s"]) == 3 and out["runs_passes"] == [1, 1, 1]
    assert enc.calls == 16 + 3 * 50  # warm-up slice plus three full runs


def test_measure_throughput_runs_last_min_seconds():
    calls = []

    def encode(texts, batch_size):
        calls.append(len(texts))
        time.sleep(0.01)
        return np.zeros((len(texts), 4))

    out = speed.measure_throughput(encode, ["a", "b"], batch_size=2, repeats=2, warmup=False, min_seconds=0.05)
    assert all(s >= 0.05 for s in out["runs_seconds"]) and all(n >= 3 for n in out["runs_passes"])
    assert sum(out["runs_passes"]) == len(calls)
    for rate, n, s in zip(out["runs_texts_per_s"], out["runs_passes"], out["runs_seconds"], strict=True):
        assert rate == pytest.approx(2 * n / s)


def test_cached_encoder_is_not_timed_and_hits(tmp_path):
    enc = Fake()
    wrapped = peers.cached(enc, tmp_path)
    texts = ["a", "b", "c", "a"]
    first = wrapped.encode(texts)
    assert enc.calls == 3  # the duplicate is encoded once
    again = peers.cached(Fake(), tmp_path)
    np.testing.assert_allclose(again.encode(texts), first)
    assert again.uncached.calls == 0
    with pytest.raises(VocabertError, match="raw encoder"):
        speed.measure_throughput(wrapped.encode, texts, batch_size=2)


def test_measure_memory_bad_spec_reports_error(tmp_path):
    out = speed.measure_memory({"kind": "model2vec", "path": str(tmp_path / "missing")}, ["x"])
    assert out["error"] and "exit code" in out["error"]
    assert speed.measure_memory({"kind": "nope", "path": "x"}, ["x"])["error"]


# --- BM25 and peers ------------------------------------------------------------------------------------


def test_bm25_ranks_matching_doc_first():
    corpus = [
        "The cat sat on the mat in the kitchen.",
        "Python is a popular programming language for data science.",
        "The stock market fell sharply on Monday.",
        "Dogs are loyal animals and good companions.",
    ]
    bm25 = peers.BM25Retriever()
    assert bm25.index(corpus) >= 0 and bm25.index_seconds is not None
    idx, scores = bm25.search(["programming language python", "stock market", "loyal dogs"], k=3)
    assert idx.shape == scores.shape == (3, 3)
    assert idx[:, 0].tolist() == [1, 2, 3]
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert bm25.search(["anything"], k=10)[0].shape == (1, 4)  # k clipped to the corpus
    assert "stopwords" in bm25.description and "stemmer" in bm25.description


def test_unbuildable_peer_comes_back_unavailable(tmp_path):
    built = peers.build_peers(
        teacher_path=tmp_path / "no-such-teacher",
        cache_root=tmp_path,
        pca_dims=(256,),
        students=[tmp_path / "s1"],
    )
    assert [p.name for p in built] == ["teacher", "model2vec-pca256", "vocabert"]
    for p in built:
        assert isinstance(p, peers.PeerUnavailable) and not p.available
        assert "does not exist" in p.reason


@pytest.mark.slow
def test_model2vec_distill_encode_and_reuse(tmp_path, monkeypatch):
    import model2vec.distill

    teacher = peers.resolve_teacher_path(None)
    out = peers.model2vec_dir(tmp_path, teacher, 256)
    assert peers.distill_model2vec(teacher, out, 256) == out
    assert peers.distill_seconds(out) > 0
    enc = peers.Model2VecEncoder(out, name="m2v")
    vectors = enc.encode(["a short query", "A longer passage about the history of Rome.", ""])
    assert vectors.shape == (3, 256) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors[:2], axis=1), 1.0, rtol=1e-5)
    assert enc.size_bytes > 1_000_000 and enc.load_seconds > 0

    def boom(*args, **kwargs):
        raise AssertionError("distilled again instead of reusing the saved model")

    monkeypatch.setattr(model2vec.distill, "distill", boom)
    peer = peers.model2vec_peer(teacher, tmp_path, 256)  # reuses the folder distilled above
    assert peer.name == "model2vec-pca256" and peer.dim == 256
    mem = speed.measure_memory(peer.spec(), ["hello world"] * 50)
    assert mem["error"] is None
    assert mem["peak_rss_mib"] >= mem["rss_after_load_mib"] >= mem["rss_after_imports_mib"] > 0


@pytest.mark.slow
def test_teacher_encoder_and_cache(tmp_path):
    teacher = peers.TeacherEncoder()
    assert teacher.kind == "teacher" and teacher.dim == 384 and teacher.model_key.startswith("teacher-")
    assert 80e6 < teacher.size_bytes < 100e6 and teacher.load_seconds > 0
    texts = ["how do vaccines work", "The mitochondria is the powerhouse of the cell."]
    vectors = teacher.encode(texts)
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(peers.cached(teacher, tmp_path).encode(texts), vectors, atol=1e-6)
    assert (tmp_path / "embeddings" / teacher.model_key).is_dir()
    out = speed.measure_throughput(teacher.encode, texts * 4, batch_size=4, repeats=2)
    assert out["texts_per_s"] > 0 and out["n_texts"] == 8


def _tiny_student(path):
    """An untrained student over the teacher's wordpieces (random vectors), saved like a real one."""
    from vocabert.distill.teacher import tokenizer_json
    from vocabert.model import StudentModel
    from vocabert.networks import WeightedMean
    from vocabert.store import VocabularyStore
    from vocabert.tokenizer import tokenizer_fingerprint

    tok = tokenizer_json(peers.resolve_teacher_path(None))
    vocab, dim = 30522, 384
    patterns = np.full((vocab, 2), -1, np.int64)
    patterns[:, 0] = np.arange(vocab)
    vectors = np.random.default_rng(0).normal(size=(vocab, dim)).astype(np.float32)
    store = VocabularyStore.from_float(patterns, vectors)
    network = WeightedMean(np.ones(vocab), np.eye(dim), np.zeros(dim))
    config = {
        "architecture": WeightedMean.name,
        "max_length": 256,
        "vocab_size": vocab,
        "provenance": {"tokenizer": tokenizer_fingerprint(tok)},
    }
    return StudentModel(config, tok, store, network).save(path)


def test_student_encoder_cache_key_and_memory(tmp_path):
    path = _tiny_student(tmp_path / "tiny")
    student = peers.StudentEncoder(path, name="tiny")
    vectors = student.encode(["hello world", "a test of the student", ""])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    key = student.model_key
    report.update_model_card(path, "| table |")  # a new model card is not a new model
    assert peers.StudentEncoder(path).model_key == key and key.startswith("student-")
    mem = speed.measure_memory(student.spec(), ["a passage about things"] * 100)
    assert mem["error"] is None and mem["peak_rss_mib"] >= mem["rss_after_load_mib"] > 0


def test_pareto_numbers_many_models_and_shows_fidelity(tmp_path):
    from vocabert.bench import plots

    results = fake_results()
    for i in range(6):  # more students than fit by name: numbered points, the legend as the key
        student = dict(results["models"]["vocabert"], fidelity={"passages-unseen": {"cosine_mean": 0.8 + i / 100}})
        results["models"][f"vocabert-arch{i}"] = student
    assert plots._fidelity_set(report.prepare(results)) == ("passages-unseen", "unseen-topic passages")
    plots.plot_pareto(results, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots._fidelity_set(report.prepare(fake_results()))[0] == "passages"  # no unseen topics measured
    assert plots._fidelity_set({"models": {"teacher": {"kind": "teacher"}}}) is None
