"""Evaluation data readers: STS layouts, queries/corpus/qrels, BEIR folders, and how sets are named."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from vocabert.artifacts import VocabertError
from vocabert.bench.benchmark import load_sets, split_name
from vocabert.bench.datasets import read_beir, read_corpus, read_qrels, read_queries, read_sts

DATA = Path(os.environ.get("VOCABERT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
STS_B_LINE = "main-captions\tMSRvid\t2012test\t0001\t{score}\t{s1}\t{s2}"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- STS


def test_sts_b_layout_keeps_quotes_and_ignores_extra_fields(tmp_path):
    lines = [
        STS_B_LINE.format(score="5.000", s1='A "quoted" man.', s2="A man."),
        STS_B_LINE.format(score="0.5", s1="Two.", s2="Dogs.") + "\tsource\tlicense",  # 9 fields, as in STS-B
    ]
    data = read_sts(_write(tmp_path / "sts-dev.csv.gz", "\n".join(lines) + "\n"))
    assert data.sentences1 == ['A "quoted" man.', "Two."] and data.sentences2 == ["A man.", "Dogs."]
    np.testing.assert_array_equal(data.scores, [5.0, 0.5])
    assert data.layout.startswith("STS-B")


def test_sick_layout(tmp_path):
    text = (
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
        "1\tA group of kids is playing.\tA group of boys is playing.\t4.5\tNEUTRAL\n"
        "2\tA man is cooking.\tNobody is cooking.\t3.1\tCONTRADICTION\n"
    )
    data = read_sts(_write(tmp_path / "SICK_trial.txt", text))
    assert data.sentences1 == ["A group of kids is playing.", "A man is cooking."]
    assert data.sentences2[1] == "Nobody is cooking." and data.scores.tolist() == [4.5, 3.1]
    assert data.layout == "SICK (header sentence_A, sentence_B, relatedness_score)"


def test_plain_score_sentence_sentence(tmp_path):
    data = read_sts(_write(tmp_path / "pairs.tsv", "4.5\tA man.\tA guy.\n0\tCats.\tStocks fell.\n"))
    assert (data.sentences1, data.sentences2, data.scores.tolist()) == (
        ["A man.", "Cats."],
        ["A guy.", "Stocks fell."],
        [4.5, 0.0],
    )
    assert data.layout == "score<TAB>sentence1<TAB>sentence2"


def test_csv_with_header_uses_the_csv_module(tmp_path):
    text = 'sentence1,sentence2,score\n"A man, tall, walks.",A man walks.,4.2\n"She said ""hi"".",Hello.,1\n'
    data = read_sts(_write(tmp_path / "my.csv", text))
    assert data.sentences1 == ["A man, tall, walks.", 'She said "hi".'] and data.scores.tolist() == [4.2, 1.0]
    assert data.layout == "CSV with header (sentence1, sentence2, score)"


def test_tsv_with_header_any_column_order(tmp_path):
    data = read_sts(_write(tmp_path / "s.tsv", "id\tScore\tSentence2\tSentence1\n7\t2.5\tB.\tA.\n"))
    assert (data.sentences1, data.sentences2, data.scores.tolist()) == (["A."], ["B."], [2.5])
    assert data.layout == "TSV with header (Sentence1, Sentence2, Score)"


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("unknown.csv", "a,b\n1,2\n", r"unknown\.csv: layout not recognised .* expected STS-B .* SICK"),
        ("four.tsv", "4.0\ta\tb\tc\n", r"four\.tsv: layout not recognised"),
        ("noscore.csv", "sentence1,sentence2\nA.,B.\n", r"noscore\.csv: its header names no score column"),
        (
            "short.tsv",
            STS_B_LINE.format(score=4, s1="A.", s2="B.") + "\ng\tf\t2012\t2\t4.0\tonly one\n",
            r"short\.tsv:2: expected at least 7 fields",
        ),
        ("score.tsv", "1\ta\tb\n2\tc\td\nhigh\te\tf\n", r"score\.tsv:3: score 'high' is not a finite number"),
        ("nan.csv", "sentence1,sentence2,score\nA.,B.,nan\n", r"nan\.csv:2: score 'nan'"),
        ("header.csv", "sentence1,sentence2,score\n", r"header\.csv has a header but no pairs"),
        ("empty.tsv.gz", "\n", r"empty\.tsv\.gz is empty"),
    ],
)
def test_sts_errors_name_the_file(tmp_path, name, text, match):
    with pytest.raises(VocabertError, match=match):
        read_sts(_write(tmp_path / name, text))


def test_sts_missing_file_or_directory(tmp_path):
    with pytest.raises(VocabertError, match=r"STS file .*nope\.tsv does not exist"):
        read_sts(tmp_path / "nope.tsv")
    with pytest.raises(VocabertError, match="is a directory, not a file"):
        read_sts(tmp_path)


@pytest.mark.skipif(not (DATA / "sts").is_dir(), reason=f"staged data not found at {DATA}")
def test_real_sts_dev():
    data = read_sts(DATA / "sts" / "stsbenchmark" / "sts-dev.csv.gz")
    assert len(data.sentences1) == len(data.sentences2) == len(data.scores) == 1500
    assert data.scores.min() >= 0 and data.scores.max() <= 5
    assert data.sentences1[0] == "A man with a hard hat is dancing." and data.layout.startswith("STS-B")


# ---------------------------------------------------------------------------------------- retrieval


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
    # MS MARCO's queries.dev.txt is id<TAB>text whatever its suffix: not one text per line.
    assert read_queries(_write(tmp_path / "queries.dev.txt", "5\twhat is x\n")) == {"5": "what is x"}
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
    with pytest.raises(VocabertError, match="is a file, not a folder"):
        read_beir(tmp_path / "queries.jsonl")
    with pytest.raises(VocabertError, match="does not exist"):
        read_beir(tmp_path / "nope")


def test_retrieval_reader_errors(tmp_path):
    with pytest.raises(VocabertError, match=r"q\.tsv:1: expected 'id<TAB>text'"):
        read_queries(_write(tmp_path / "q.tsv", "no tab here\n"))
    with pytest.raises(VocabertError, match=r"bad\.jsonl:2: not valid JSON"):
        read_corpus(_write(tmp_path / "bad.jsonl", '{"_id": "1", "text": "x"}\n{oops\n'))
    with pytest.raises(VocabertError, match=r"noid\.jsonl:1: no '_id' or 'id' field"):
        read_corpus(_write(tmp_path / "noid.jsonl", '{"text": "x"}\n'))
    with pytest.raises(VocabertError, match=r"qrels\.txt:1: grade"):
        read_qrels(_write(tmp_path / "qrels.txt", "1 Q0 10 high\n"))
    with pytest.raises(VocabertError, match=r"qrels5\.txt:1: expected"):
        read_qrels(_write(tmp_path / "qrels5.txt", "1 Q0 10 1 extra\n"))
    with pytest.raises(VocabertError, match=r"qrels .*missing\.txt does not exist"):
        read_qrels(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------- naming sets


def test_split_name(tmp_path):
    assert split_name("dl20=queries.dl20.tsv") == ("dl20", Path("queries.dl20.tsv"))
    assert split_name("queries.tsv") == (None, Path("queries.tsv"))
    assert split_name("runs/a=b/queries.tsv") == (None, Path("runs/a=b/queries.tsv"))  # '=' inside a folder name
    odd = _write(tmp_path / "x=y.tsv", "1\tq\n")
    assert split_name(odd) == (None, odd)  # an existing file whose name holds '='
    assert split_name("=q.tsv") == (None, Path("=q.tsv"))


@pytest.fixture
def fake_data(tmp_path) -> Path:
    """A data folder with only a tiny STS-B dev file, and two query sets over one corpus."""
    root = tmp_path / "data"
    _write(root / "sts" / "stsbenchmark" / "sts-dev.csv.gz", STS_B_LINE.format(score=4, s1="A.", s2="B.") + "\n")
    _write(root / "corpus.tsv", "p1\tcats purr\np2\tdogs bark\np3\tbirds sing\n")
    _write(root / "dl19" / "queries.tsv", "1\tcats\n")
    _write(root / "dl20" / "queries.tsv", "2\tdogs\n")
    _write(root / "queries.dl20.tsv.gz", "2\tdogs\n")
    _write(root / "qrels.txt", "1 Q0 p1 2\n2 Q0 p2 3\n")
    return root


def test_two_query_sets_over_one_corpus_keep_their_own_names(fake_data, capsys):
    corpus, qrels = fake_data / "corpus.tsv", fake_data / "qrels.txt"
    trec = [(fake_data / "dl19" / "queries.tsv", qrels, corpus), (fake_data / "queries.dl20.tsv.gz", qrels, corpus)]
    tasks, _ = load_sets(fake_data, dl19=False, trec_sets=trec)
    assert [t.name for t in tasks] == ["queries", "queries.dl20"]  # named after the queries file
    assert [list(t.queries) for t in tasks] == [["1"], ["2"]]
    trec = [
        (f"dl19={fake_data / 'dl19' / 'queries.tsv'}", qrels, corpus),
        (f"dl20={fake_data / 'dl20' / 'queries.tsv'}", qrels, corpus),
    ]
    tasks, _ = load_sets(fake_data, dl19=False, trec_sets=trec)
    assert [t.name for t in tasks] == ["dl19", "dl20"]
    assert "retrieval: dl20: 1 queries (0 without a relevant document dropped), 3 documents" in capsys.readouterr().out


def test_two_sets_with_one_name_are_an_error(fake_data):
    corpus, qrels = fake_data / "corpus.tsv", fake_data / "qrels.txt"
    same = [(fake_data / d / "queries.tsv", qrels, corpus) for d in ("dl19", "dl20")]
    with pytest.raises(
        VocabertError, match=r"two sets are named 'queries' .*dl19/queries\.tsv and .*dl20/queries\.tsv"
    ):
        load_sets(fake_data, dl19=False, trec_sets=same)
    sts = _write(fake_data / "mine.tsv", "1\ta\tb\n")
    with pytest.raises(VocabertError, match=r"two sets are named 'sts-b dev'.*--sts NAME="):
        load_sets(fake_data, dl19=False, sts_files=[f"sts-b dev={sts}"])


def test_sts_layout_is_logged(fake_data, capsys):
    csv_file = _write(fake_data / "my.csv", "sentence1,sentence2,score\nA.,B.,1\nC.,D.,2\nE.,F.,3\n")
    _, sts = load_sets(fake_data, dl19=False, sts_files=[csv_file, f"again={csv_file}"])
    assert list(sts) == ["sts-b dev", "my.csv", "again"]
    assert "[vocabert] sts: my.csv: CSV with header (sentence1, sentence2, score), 3 pairs" in capsys.readouterr().out
