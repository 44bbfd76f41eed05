"""Every stage with teachers of other families: the student's fidelity to each, on texts it never saw.

No second real teacher can be downloaded here, so this builds the five small teachers of
``tests/synthetic_teachers.py`` (BERT WordPiece with CLS pooling, RoBERTa byte-level BPE with a Dense
layer, XLM-R Unigram with >65,535 tokens, a decoder with last-token pooling, BERT with e5-style prompts),
runs ``vocabert``'s stages with each on the same real slice (MS MARCO passages and queries), and measures
the student against its own teacher on the corpus's held-out split. The default teacher runs on the same
slice as the reference row. Writes ``docs/results/any_teacher.json``::

    python scripts/any_teacher.py [--passages 2000] [--queries 2000] [--train-steps 1000] [--budget 20000] [--kinds all]

With ``--train-steps N`` each synthetic transformer is first trained N steps with a contrastive objective
(tests/synthetic_teachers.py), so that its outputs vary from text to text as a real encoder's do; 0 keeps
random weights. ``--kinds a,b`` measures those rows only and keeps the file's other rows (each row records
its own training steps and date). Each row also has what describes the teacher alone: its STS-B dev
Spearman and what a constant vector scores against it (``--teacher-only`` recomputes just those).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEACHER_TEXTS = 2000  # passages the synthetic tokenizers and transformers are trained on (not the corpus's)
sys.path.insert(0, str(REPO / "tests"))

from conftest import data_slice  # noqa: E402
from synthetic_teachers import KINDS, build_teacher, bundled_texts  # noqa: E402

import vocabert  # noqa: E402
from vocabert.bench.datasets import read_sts  # noqa: E402
from vocabert.bench.metrics import evaluate_sts  # noqa: E402
from vocabert.distill.corpus import HELDOUT, default_data_dir, open_corpus  # noqa: E402
from vocabert.distill.mining import MineSettings  # noqa: E402
from vocabert.distill.pipeline import build_model  # noqa: E402
from vocabert.distill.teacher import Teacher, teacher_name  # noqa: E402
from vocabert.distill.training import TrainSettings  # noqa: E402
from vocabert.distill.workspace import Workspace  # noqa: E402
from vocabert.tokenizer import tokenizer_layout  # noqa: E402


def measure(kind: str, teacher: Path | None, sources: dict[str, Path], root: Path, mine: MineSettings,
            train: TrainSettings, data_dir: Path) -> dict:  # fmt: skip
    ws = Workspace(root / "work", teacher, cache_dir=root / "cache", show_progress_bar=False)
    started = time.perf_counter()
    build_model(ws, sources, mine=mine, train=train)
    seconds = time.perf_counter() - started
    student = vocabert.load(ws.model_dir)
    heldout = heldout_texts(ws)
    reference = Teacher(ws.teacher_path)
    layout = tokenizer_layout(ws.tokenizer_text)
    history = student.config["training"]["history"]
    row = {
        "teacher": kind,
        "tokenizer": _family(ws.tokenizer_text),
        "vocab_size": int(student.config["vocab_size"]),
        "added": f"{len(layout.prefix)}+{len(layout.suffix)}",
        "dim": student.dim,
        "entries": len(student.store),
        "val_before": history["val_cosine_before"],
        "val_after": history["best_val_cosine"],
        "seconds": round(seconds, 1),
        **teacher_figures(reference, heldout, data_dir),
    }
    for name, texts in heldout.items():
        cos = np.einsum("ij,ij->i", student.encode(texts), _unit(reference.encode(texts)))
        row[f"{name}_cos"], row[f"{name}_texts"] = float(cos.mean()), len(texts)
    print(json.dumps(row), flush=True)
    return row


def heldout_texts(ws: Workspace) -> dict[str, list[str]]:
    """The corpus's held-out queries and passages, as the corpus holds them (with the teacher's prompt, if any)."""
    heldout = {"queries": [], "passages": []}
    corpus = open_corpus(ws)
    for shard in corpus.shards():
        for text, source, split in zip(shard.texts, shard.source, shard.split, strict=True):
            name = corpus.manifest["sources"][source]
            if split == HELDOUT and name in heldout:
                heldout[name].append(text)
    return heldout


def teacher_figures(reference: Teacher, heldout: dict[str, list[str]], data_dir: Path) -> dict:
    """What describes the teacher alone: ``constant_cos``, what a student that ignores the text would score
    (the mean cosine of the teacher's vectors of the held-out texts to their own mean direction, near 1 for
    a teacher whose outputs barely vary), and ``teacher_sts``, its STS-B dev Spearman (no prompt)."""
    vectors = _unit(reference.encode([t for texts in heldout.values() for t in texts]))
    sts = read_sts(data_dir / "sts" / "stsbenchmark" / "sts-dev.csv.gz")
    return {
        "constant_cos": float((vectors @ _unit(vectors.mean(axis=0, keepdims=True))[0]).mean()),
        "teacher_sts": evaluate_sts(reference.encode, sts.sentences1, sts.sentences2, sts.scores)["spearman"],
    }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _family(tokenizer_text: str) -> str:
    spec = json.loads(tokenizer_text)
    layout = tokenizer_layout(tokenizer_text)
    marker = {"Ġ": " (byte-level)", "▁": " (SentencePiece)"}.get(layout.word_start or "", "")
    return spec["model"]["type"] + marker


def add_teacher_figures(args, kinds: list[str]) -> None:
    """:func:`teacher_figures` for the rows of ``kinds`` in ``args.out`` (the corpus stage alone gives the same
    held-out texts; each synthetic teacher is rebuilt with its row's training steps)."""
    from vocabert.distill.corpus import CorpusSettings, run_corpus

    table = json.loads(args.out.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = _sources(args.data_dir, root, args.passages, args.queries)
        texts = teacher_texts(args.data_dir, args.passages)
        for row in table["rows"]:
            kind = row["kind"]
            if kind not in kinds:
                continue
            teacher = None
            if kind != "default":
                teacher = build_teacher(kind, root / f"teacher-{kind}", texts, train_steps=row["train_steps"])
            ws = Workspace(root / kind, teacher, cache_dir=root / "cache", show_progress_bar=False)
            run_corpus(ws, sources, CorpusSettings())
            row.update(teacher_figures(Teacher(ws.teacher_path), heldout_texts(ws), args.data_dir))
            print(kind, row, flush=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


def teacher_texts(data_dir: Path, passages: int) -> list[str]:
    """The passages the synthetic teachers are built from: the ``TEACHER_TEXTS`` after the corpus's own."""
    return bundled_texts(data_dir, passages + TEACHER_TEXTS)[passages:]


def _sources(data_dir: Path, root: Path, passages: int, queries: int) -> dict[str, Path]:
    return {
        "passages": data_slice(
            data_dir / "msmarco_passage" / "collection_subset.tsv.gz", root / "passages.tsv", passages
        ),
        "queries": data_slice(
            data_dir / "msmarco_queries_extra" / "queries.extra.tsv.gz", root / "queries.tsv", queries
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--train-steps", type=int, default=1000, help="contrastive steps per synthetic teacher")
    parser.add_argument("--budget", type=int, default=20_000, help="vocabulary entries")
    parser.add_argument("--kinds", default="all", help=f"comma-separated, of {', '.join(KINDS)}, or default")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "any_teacher.json")
    parser.add_argument("--teacher-only", action="store_true", help="only recompute the teacher columns in --out")
    args = parser.parse_args()
    kinds = ["default", *KINDS] if args.kinds == "all" else args.kinds.split(",")
    if args.teacher_only:
        add_teacher_figures(args, kinds)
        return
    mine = MineSettings(budget=args.budget, min_count=3)
    train = TrainSettings(epochs=3, batch_size=128)
    kept = {}
    if args.kinds != "all" and args.out.exists():
        kept = {row["kind"]: row for row in json.loads(args.out.read_text(encoding="utf-8"))["rows"]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = _sources(args.data_dir, root, args.passages, args.queries)
        texts = teacher_texts(args.data_dir, args.passages)
        for kind in kinds:
            teacher, steps = None, None  # the default teacher is not trained here
            if kind != "default":
                steps = args.train_steps
                started = time.perf_counter()
                teacher = build_teacher(kind, root / f"teacher-{kind}", texts, train_steps=steps)
                print(f"{kind}: teacher built in {time.perf_counter() - started:.0f} s", flush=True)
            row = measure(kind, teacher, sources, root / kind, mine, train, args.data_dir)
            row.update(kind=kind, train_steps=steps, measured=time.strftime("%Y-%m-%d"))
            if kind == "default":
                row["teacher"] = teacher_name(Workspace(root / "x", None).teacher_path)
            kept[kind] = row
    rows = [kept[kind] for kind in ["default", *KINDS] if kind in kept]
    table = {
        "title": "Students of teachers of other families, on the same slice",
        "command": f"python scripts/any_teacher.py --passages {args.passages} --queries {args.queries} "
        f"--train-steps {args.train_steps} --budget {args.budget}",
        "provenance": f"measured on this machine's CPU (each row's date in the JSON): {args.passages} MS MARCO "
        f"passages and {args.queries} queries, vocabulary budget {args.budget:,}, 3 epochs; the synthetic "
        f"teachers built from the {TEACHER_TEXTS:,} bundled passages after those and trained contrastively for the "
        "row's steps; fidelity on the corpus's held-out split (never mined or trained on)",
        "labels": {
            "teacher": "teacher",
            "tokenizer": "tokenizer",
            "vocab_size": "tokens",
            "added": "added around a text",
            "dim": "dim",
            "train_steps": "teacher's contrastive steps",
            "teacher_sts": "teacher's STS-B dev Spearman",
            "constant_cos": "cos of a constant vector",
            "val_before": "val cos, plain mean",
            "val_after": "val cos, trained",
            "queries_cos": "held-out queries cos",
            "passages_cos": "held-out passages cos",
            "seconds": "all stages s",
        },
        "formats": {
            "teacher_sts": ".3f",
            "constant_cos": ".3f",
            "val_before": ".3f",
            "val_after": ".3f",
            "queries_cos": ".3f",
            "passages_cos": ".3f",
            "vocab_size": ",d",
            "train_steps": ",d",
            "seconds": ".0f",
        },  # fmt: skip
        "rows": rows,
    }
    args.out.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
