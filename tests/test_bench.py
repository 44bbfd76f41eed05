"""`vocabert bench` and `vocabert evaluate` end to end on the small workspace, with user-supplied sets;
the CLI's one-line errors for bad user files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from vocabert import cli
from vocabert.bench import benchmark
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
        max_fidelity_texts=20,
    )
    for name in ("bench.json", "bench.md", "pareto.png", "fidelity_hist.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    student = results["models"]["vocabert"]
    teacher = results["models"]["teacher"]
    assert student["fidelity"]["passages"]["n"] == 20
    assert student["fidelity"]["passages-unseen"]["n"] == 20  # the DL19-pool passages of the slice
    assert student["network"]["parameters"] > 0 and student["network"]["flops_per_text"] > 0
    # Queries by the student against the corpus the teacher encoded: the teacher's index, a cheap query encoder.
    asym = student["retrieval"]["queries"]["asymmetric"]
    assert asym["n_queries"] == 3
    assert 0.0 <= asym["ndcg@10"] <= 1.0 and "asymmetric" not in teacher["retrieval"]["queries"]
    # The same qrels read from TREC and from BEIR form give the same figures; the TREC set is named
    # after its queries file, and its graded qrels count grade >= 2 as relevant.
    trec, beir = student["retrieval"]["queries"], student["retrieval"][beir_dir.name]
    assert trec["ndcg@10"] == pytest.approx(beir["ndcg@10"]) and trec["n_queries"] == 3
    assert trec["relevance_threshold"] == beir["relevance_threshold"] == 2
    # The teacher is a strong retriever on its own judged pool: the harness must show it.
    assert teacher["retrieval"]["queries"]["ndcg@10"] > 0.4
    assert 0.75 < teacher["sts"]["spearman"] < 0.95  # all-MiniLM-L6-v2 on STS-B dev (0.82 on test)
    for key in ("passages_b64", "passages_b1", "queries_b64", "queries_b1"):
        assert student["speed"][key]["texts_per_s"] > 0
    assert set(student["breakdown"]) >= {"tokenize", "match", "lookup", "network"}
    assert student["memory"].get("error") is None and student["memory"]["peak_rss_mib"] > 0
    card = (model_dir / "README.md").read_text()
    assert "<!-- vocabert-eval-start -->" in card and "STS" in card
    saved = json.loads((out / "bench.json").read_text())
    assert saved["meta"]["samples"]["fidelity_passages"] == 20


def test_evaluate_is_the_bench_without_peers(workspace, model, trec_set, tmp_path, capsys):
    """`vocabert evaluate`: the same report files, into <workdir>/eval, and the model card section."""
    model_dir = tmp_path / "model"
    model.save(model_dir)
    queries, qrels, corpus = trec_set
    argv = ["evaluate", "--workdir", str(workspace.root), "--cache-dir", str(workspace.cache_dir), "--no-progress"]
    argv += ["--model", str(model_dir), "--no-dl19", "--max-eval-texts", "16", "--repeats", "1"]
    assert cli.main([*argv, "--trec", f"dl19-3={queries}", str(qrels), str(corpus)]) == 0
    out = workspace.root / "eval"
    for name in ("bench.json", "bench.md", "pareto.png", "fidelity_hist.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "bench.json").read_text())
    assert list(saved["models"]) == ["teacher", "vocabert"]  # no BM25, no Model2Vec
    assert saved["models"]["vocabert"]["retrieval"]["dl19-3"]["n_queries"] == 3
    assert saved["models"]["vocabert"]["fidelity"]["passages"]["n"] == 16
    assert "sts-b dev" in saved["models"]["teacher"]["sts"]["sets"]
    card = (model_dir / "README.md").read_text()
    assert "<!-- vocabert-eval-start -->" in card and "dl19-3 (retrieval, relevant at grade ≥ 2)" in card
    assert "sts: sts-b dev: STS-B" in capsys.readouterr().out


def _parse_and_capture(monkeypatch, argv: list[str]) -> dict:
    """What `run_bench` is called with for a command line (the bench itself is not run)."""
    calls = {}
    monkeypatch.setattr(
        benchmark,
        "run_bench",
        lambda ws, model_dir, out_dir, **kw: calls.update(kw, ws=ws, model_dir=model_dir, out_dir=out_dir),
    )
    args = cli.build_parser().parse_args(argv)
    args.func(args) if args.command != "run" else cli.cmd_evaluate(args)  # run: only its last step
    return calls


def test_evaluate_bench_and_run_call_the_same_bench(monkeypatch, tmp_path):
    work = tmp_path / "w"
    trec = ["--trec", "dl20=q.tsv", "qrels.txt", "c.tsv"]
    evaluate = _parse_and_capture(monkeypatch, ["evaluate", "--workdir", str(work), *trec])
    assert (evaluate["model_dir"], evaluate["out_dir"], evaluate["peers"]) == ([work / "model"], work / "eval", False)
    assert evaluate["trec_sets"] == [["dl20=q.tsv", "qrels.txt", "c.tsv"]] and evaluate["dl19"]
    bench = _parse_and_capture(
        monkeypatch, ["bench", "--workdir", str(work), "--model", "m", "--model", "n", "--no-dl19"]
    )
    assert (bench["model_dir"], bench["out_dir"], bench["peers"], bench["dl19"]) == (
        [Path("m"), Path("n")],
        work / "bench",
        True,
        False,
    )
    run = _parse_and_capture(monkeypatch, ["run", "--workdir", str(work), "--max-eval-texts", "5", *trec])
    assert (run["model_dir"], run["out_dir"], run["peers"], run["max_fidelity_texts"]) == (
        [work / "model"],
        work / "eval",
        False,
        5,
    )
    assert run["trec_sets"] == evaluate["trec_sets"]


# ------------------------------------------------------------------------------------ one-line errors


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    """A data folder with a tiny STS-B dev, an (empty) model folder, and good and bad user files."""
    data = tmp_path / "data"
    (data / "sts" / "stsbenchmark").mkdir(parents=True)
    with gzip.open(data / "sts" / "stsbenchmark" / "sts-dev.csv.gz", "wt") as f:
        f.write("g\tf\t2012\t1\t4.0\tA man.\tA guy.\n")
    (tmp_path / "model").mkdir()
    files = {"data": data, "model": tmp_path / "model", "dir": tmp_path, "missing": tmp_path / "missing"}
    for name, text in {
        "empty": "",
        "sts_bad": "a\tb\n",
        "sts_short": "1\ta\tb\n2\tc\n",
        "queries": "1\tcats\n",
        "queries_bad": "1 cats\n",
        "qrels": "1 Q0 p1 1\n",
        "qrels_bad": "1 Q0 p1 one\n",
        "corpus": "p1\tcats purr\n",
        "binary": "\x00\x01\x02",
    }.items():
        files[name] = tmp_path / f"{name}.tsv"
        files[name].write_text(text)
    return files


@pytest.mark.parametrize(
    "args, path_key, message",
    [
        (["--sts", "{missing}"], "missing", "does not exist"),
        (["--sts", "{dir}"], "dir", "is a directory"),
        (["--sts", "{empty}"], "empty", "is empty"),
        (["--sts", "{binary}"], "binary", "looks binary"),
        (["--sts", "{sts_bad}"], "sts_bad", "layout not recognised"),
        (["--sts", "{sts_short}"], "sts_short", ":2: expected at least 3 fields"),
        (["--beir", "{missing}"], "missing", "does not exist"),
        (["--beir", "{queries}"], "queries", "is a file, not a folder"),
        (["--beir", "{dir}"], "dir", "no corpus"),
        (["--trec", "{queries}", "{missing}", "{corpus}"], "missing", "does not exist"),
        (["--trec", "{queries}", "{qrels}", "{empty}"], "empty", "is empty"),
        (
            ["--trec", "{queries_bad}", "{qrels}", "{corpus}"],
            "queries_bad",
            ":1: expected 'id<TAB>text'",
        ),
        (["--trec", "{queries}", "{qrels_bad}", "{corpus}"], "qrels_bad", ":1: grade 'one'"),
        (["--trec", "{queries}", "{qrels}", "{dir}"], "dir", "is a directory"),
        (["--trec", "x={queries}", "{qrels}", "{corpus}"] * 2, "queries", "two sets are named 'x'"),
        (["--model", "{missing}"], "missing", "model folder"),
    ],
)
@pytest.mark.parametrize("command", ["bench", "evaluate"])
def test_bad_user_file_is_one_line_error(bad_files, capsys, command, args, path_key, message):
    args = [a.format(**{k: str(v) for k, v in bad_files.items()}) for a in args]
    argv = [command, "--workdir", str(bad_files["dir"] / "w"), "--data-dir", str(bad_files["data"]), "--no-dl19"]
    if "--model" not in args:
        argv += ["--model", str(bad_files["model"])]
    assert cli.main([*argv, *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vocabert: error: "), err
    assert str(bad_files[path_key]) in err and message in err, err


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
    assert results["models"]["bm25"]["retrieval"]["queries"]["ndcg@10"] > 0.2
    assert (
        "fidelity" in results["models"]["model2vec-nopca"] and "fidelity" not in results["models"]["model2vec-pca256"]
    )
