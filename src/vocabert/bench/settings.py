"""The settings of ``vocabert bench`` and ``vocabert evaluate``: the sets measured beyond the bundled ones, and
how long each speed figure is timed. Fields made with :func:`~vocabert.options.option` are command-line
options. Light to import: the command line reads it without loading the bench."""

from __future__ import annotations

from dataclasses import dataclass

from vocabert.options import option


@dataclass
class SpeedPlan:
    """How many texts each speed figure is timed on: fast models get more, the teacher fewer."""

    fast_b64: int = 2048
    fast_b1: int = 512
    teacher_b64: int = 256
    teacher_b1: int = 64
    repeats: int = option(3, "timed runs per speed figure")  # the one a command line sets
    memory_texts: int = 512


@dataclass
class BenchSettings:
    """The extra sets and the sample size of a bench run: :func:`vocabert.bench.benchmark.run_bench`'s keyword
    arguments of the same names."""

    max_fidelity_texts: int | None = option(
        None,
        "fidelity and speed on at most this many held-out passages and as many queries (default: all)",
        flag="--max-eval-texts",
        type=int,
    )
    sts_files: list[str] = option(
        help="extra STS set, layout detected: STS-B (tab-separated, score in field 5, sentences 6-7), SICK, "
        "score<TAB>sentence1<TAB>sentence2, or CSV/TSV with a header naming sentence1, sentence2, score",
        flag="--sts",
        default_factory=list,
        action="append",
        metavar="[NAME=]FILE",
    )
    beir_dirs: list[str] = option(
        help="extra BEIR folder: corpus.jsonl[.gz], queries.jsonl[.gz], qrels/test.tsv (named after the folder)",
        flag="--beir",
        default_factory=list,
        action="append",
        metavar="[NAME=]DIR",
    )
    trec_sets: list[list[str]] = option(
        help="extra retrieval set: queries TSV, qrels (TREC or BEIR form), corpus TSV (gz or plain); named after "
        "the queries file unless NAME= is given, e.g. --trec dl20=queries.dl20.tsv qrels.dl20.txt corpus.tsv",
        flag="--trec",
        default_factory=list,
        action="append",
        nargs=3,
        metavar=("[NAME=]QUERIES", "QRELS", "CORPUS"),
    )
    dl19: bool = option(True, "skip TREC DL 2019 (e.g. to measure only your own sets)", flag="--no-dl19")
