"""Evaluation data: STS pairs, retrieval sets (TREC and BEIR files) and the bundled TREC DL 2019 task.

Every file goes through :mod:`vocabert.readers` (gz or plain, invalid UTF-8 replaced and counted), and
anything a reader cannot use is a :class:`VocabertError` that names the file (and line).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from vocabert.artifacts import VocabertError
from vocabert.readers import read_json_lines, read_lines, read_texts, require_file, text_format

Qrels = dict[str, dict[str, int]]

# ----------------------------------------------------------------------------------------------- STS

STS_LAYOUTS = (
    "STS-B (7+ tab-separated fields, score in field 5, sentences in 6 and 7), "
    "SICK (header with sentence_A, sentence_B, relatedness_score), "
    "'score<TAB>sentence1<TAB>sentence2', or CSV/TSV with a header naming sentence1, sentence2 and score"
)
# Header names (lower case) accepted for each column of a CSV/TSV with a header.
_COLUMNS = {
    "sentence1": ("sentence1", "sentence_1", "sentence_a", "sent1", "text1", "text_a"),
    "sentence2": ("sentence2", "sentence_2", "sentence_b", "sent2", "text2", "text_b"),
    "score": ("score", "similarity_score", "relatedness_score", "similarity", "relatedness", "label", "gold_score"),
}


@dataclass
class StsData:
    """Sentence pairs with gold similarity scores, and how the file was read (``layout``, for the log)."""

    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray
    layout: str


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _header_columns(header: list[str], path: Path) -> tuple[int, int, int] | None:
    """Indices of (sentence1, sentence2, score) named by a header line; None if it names none of them."""
    names = [h.strip().lower() for h in header]
    found = {key: next((i for i, n in enumerate(names) if n in aliases), None) for key, aliases in _COLUMNS.items()}
    if all(i is None for i in found.values()):
        return None
    missing = [key for key, i in found.items() if i is None]
    if missing:
        raise VocabertError(
            f"STS file {path}: its header names no {' or '.join(missing)} column "
            f"(accepted: {'; '.join(', '.join(_COLUMNS[k]) for k in missing)})"
        )
    return found["sentence1"], found["sentence2"], found["score"]


def read_sts(path: str | Path) -> StsData:
    """An STS file in any of :data:`STS_LAYOUTS`, detected from its first line.

    Tab-separated lines are split on tabs with no quote handling (STS-B sentences contain ``"``); a
    first line without a tab is CSV, read with the csv module. Columns beyond the ones used are ignored.
    """
    path = require_file(path, "STS file")
    lines = read_lines(path, "STS file")
    first_number, first = next(lines)  # read_lines raises for a file with no lines
    delimiter = "\t" if "\t" in first else ","

    def split(line: str) -> list[str]:
        return line.split("\t") if delimiter == "\t" else next(csv.reader([line]))

    header = split(first)
    columns = _header_columns(header, path)
    rows = lines
    if columns:
        picked = ", ".join(header[i].strip() for i in columns)
        if {header[i].strip() for i in columns} == {"sentence_A", "sentence_B", "relatedness_score"}:
            layout = f"SICK (header {picked})"
        else:
            layout = f"{'CSV' if delimiter == ',' else 'TSV'} with header ({picked})"
    elif delimiter == "\t" and len(header) >= 7 and _number(header[4]) is not None:
        columns, layout = (5, 6, 4), "STS-B (tab-separated, score in field 5, sentences in fields 6 and 7)"
        rows = chain([(first_number, first)], lines)
    elif delimiter == "\t" and len(header) == 3 and _number(header[0]) is not None:
        columns, layout = (1, 2, 0), "score<TAB>sentence1<TAB>sentence2"
        rows = chain([(first_number, first)], lines)
    else:
        raise VocabertError(f"STS file {path}: layout not recognised from its first line; expected {STS_LAYOUTS}")

    sent1: list[str] = []
    sent2: list[str] = []
    scores: list[float] = []
    need = max(columns) + 1
    for number, line in rows:
        fields = split(line)
        if len(fields) < need:
            raise VocabertError(
                f"STS file {path}:{number}: expected at least {need} fields ({layout}), got {len(fields)}"
            )
        score = _number(fields[columns[2]])
        if score is None:
            raise VocabertError(f"STS file {path}:{number}: score {fields[columns[2]]!r} is not a finite number")
        sent1.append(fields[columns[0]])
        sent2.append(fields[columns[1]])
        scores.append(score)
    if not scores:
        raise VocabertError(f"STS file {path} has a header but no pairs")
    return StsData(sent1, sent2, np.asarray(scores, dtype=np.float64), layout)


# ----------------------------------------------------------------------------------------- retrieval


def _id_texts(path: str | Path, what: str, titles: bool = False) -> dict[str, str]:
    """``{id: text}`` from ``id<TAB>text`` (any name but JSONL) or JSONL with ``_id``/``id`` and ``text``."""
    path = require_file(path, what)
    if text_format(path) != "jsonl":
        # Extra columns are ignored: only id and text are needed.
        return {key.strip(): text.strip() for key, text in read_texts(path, what, fmt="tsv")}
    out: dict[str, str] = {}
    for number, record in read_json_lines(path, what):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise VocabertError(f"{what}: {path}:{number}: expected a JSON object with a 'text' string")
        key = record.get("_id", record.get("id"))
        if key is None:
            raise VocabertError(f"{what}: {path}:{number}: no '_id' or 'id' field")
        title = str(record.get("title") or "").strip() if titles else ""
        text = record["text"].strip()
        out[str(key)] = f"{title} {text}" if title else text
    return out


def read_queries(path: str | Path) -> dict[str, str]:
    """Queries: ``qid<TAB>text`` TSV, or BEIR ``queries.jsonl[.gz]`` (``_id``/``id`` and ``text``)."""
    return _id_texts(path, "queries")


def read_corpus(path: str | Path) -> dict[str, str]:
    """Passages: ``pid<TAB>text`` TSV, or BEIR ``corpus.jsonl[.gz]`` (text is ``title + " " + text``)."""
    return _id_texts(path, "corpus", titles=True)


def read_qrels(path: str | Path) -> Qrels:
    """Relevance judgments -> ``{qid: {pid: grade}}``.

    Accepts TREC ``qid Q0 pid grade`` (4 columns, any whitespace) and BEIR
    ``query-id<TAB>corpus-id<TAB>score`` (3 columns; a header line is skipped).
    """
    qrels: Qrels = {}
    for number, line in read_lines(path, "qrels"):
        fields = line.split()
        if not qrels and fields[:2] == ["query-id", "corpus-id"]:
            continue
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
    if directory.is_file():
        raise VocabertError(f"BEIR folder {directory} is a file, not a folder")
    if not directory.is_dir():
        raise VocabertError(f"BEIR folder {directory} does not exist")
    corpus = read_corpus(_find(directory, ("corpus.jsonl", "corpus.jsonl.gz"), "corpus"))
    queries = read_queries(_find(directory, ("queries.jsonl", "queries.jsonl.gz"), "queries"))
    qrels = read_qrels(_find(directory, ("qrels/test.tsv", "qrels/test.tsv.gz"), "test qrels"))
    queries = {qid: text for qid, text in queries.items() if qid in qrels}
    return corpus, queries, qrels


def relevance_threshold(qrels: Qrels) -> int:
    """The grade from which a judged document counts as relevant for MRR and recall.

    1 for binary qrels (no grade above 1, as in BEIR); 2 for graded ones, the TREC DL convention
    (1 is "related", 2 "highly relevant", 3 "perfectly relevant").
    """
    top = max((grade for judged in qrels.values() for grade in judged.values()), default=1)
    return 1 if top <= 1 else 2


@dataclass
class RetrievalTask:
    """A corpus, queries and graded qrels. ``min_grade`` is the grade that counts as relevant for
    MRR and recall (see :func:`relevance_threshold`); nDCG uses the grades themselves."""

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: Qrels
    min_grade: int = 2
    n_dropped_queries: int = 0  # queries with no relevant (grade > 0) passage in the corpus


def make_task(
    name: str, corpus: dict[str, str], queries: dict[str, str], qrels: Qrels, min_grade: int | None = None
) -> RetrievalTask:
    """Build a task, dropping queries that have no relevant (grade > 0) passage in the corpus.

    Such queries would score 0 whatever the encoder does (a partial corpus can lack their
    passages), which only adds noise. The qrels themselves are kept whole, so IDCG still counts
    judged passages missing from the corpus. ``min_grade`` defaults to :func:`relevance_threshold`.
    """
    kept = {
        qid: text
        for qid, text in queries.items()
        if any(grade > 0 and pid in corpus for pid, grade in qrels.get(qid, {}).items())
    }
    if not kept:
        raise VocabertError(
            f"retrieval set {name}: none of its {len(queries)} queries has a relevant document in its corpus "
            f"of {len(corpus)}; do the ids of queries, qrels and corpus match?"
        )
    min_grade = relevance_threshold(qrels) if min_grade is None else min_grade
    return RetrievalTask(name, corpus, kept, {qid: qrels[qid] for qid in kept}, min_grade, len(queries) - len(kept))


def dl19_task(data_dir: str | Path) -> RetrievalTask:
    """TREC DL 2019 passage queries over ``data_dir/msmarco_passage/collection_subset.tsv.gz``."""
    root = Path(data_dir) / "msmarco_passage"
    return make_task(
        "dl19",
        read_corpus(root / "collection_subset.tsv.gz"),
        read_queries(root / "queries.dl19.tsv.gz"),
        read_qrels(root / "qrels.dl19.tsv.gz"),
    )


def trec_task(name: str, queries: str | Path, qrels: str | Path, corpus: str | Path) -> RetrievalTask:
    """A retrieval set from a queries file, a qrels file and a corpus file (TREC or BEIR forms)."""
    return make_task(name, read_corpus(corpus), read_queries(queries), read_qrels(qrels))
