"""Every stage with teachers of other families: the student's fidelity to each, on texts it never saw.

No second real teacher can be downloaded here, so this builds the five small teachers of
``tests/synthetic_teachers.py`` (BERT WordPiece with CLS pooling, RoBERTa byte-level BPE with a Dense
layer, XLM-R Unigram with >65,535 tokens, a decoder with last-token pooling, BERT with e5-style prompts),
runs ``vocabert``'s stages with each on the same real slice (MS MARCO passages and queries), and measures
the student against its own teacher on the corpus's held-out split. The default teacher runs on the same
slice as the reference row. Writes ``docs/results/any_teacher.json``::

    python scripts/any_teacher.py [--passages 2000] [--queries 2000] [--train-steps 0] [--budget 20000] [--kinds all]

With ``--train-steps N`` each synthetic transformer is first trained N steps (masked or causal language
modelling, see tests/synthetic_teachers.py), so that its vectors are not those of random weights.
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
sys.path.insert(0, str(REPO / "tests"))

from conftest import data_slice  # noqa: E402
from synthetic_teachers import KINDS, build_teacher, bundled_texts  # noqa: E402

import vocabert  # noqa: E402
from vocabert.distill.corpus import HELDOUT, default_data_dir, open_corpus  # noqa: E402
from vocabert.distill.mining import MineSettings  # noqa: E402
from vocabert.distill.pipeline import build_model  # noqa: E402
from vocabert.distill.teacher import Teacher, teacher_name  # noqa: E402
from vocabert.distill.training import TrainSettings  # noqa: E402
from vocabert.distill.workspace import Workspace  # noqa: E402
from vocabert.tokenizer import tokenizer_layout  # noqa: E402


def measure(kind: str, teacher: Path | None, sources: dict[str, Path], root: Path, mine: MineSettings,
            train: TrainSettings) -> dict:  # fmt: skip
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
        "constant_cos": constant_cos(reference, heldout),
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


def constant_cos(reference: Teacher, heldout: dict[str, list[str]]) -> float:
    """What a student that ignores the text would score: the mean cosine of the teacher's vectors of the
    held-out texts to their own mean direction (near 1 for a teacher whose outputs barely vary)."""
    vectors = _unit(reference.encode([t for texts in heldout.values() for t in texts]))
    return float((vectors @ _unit(vectors.mean(axis=0, keepdims=True))[0]).mean())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _family(tokenizer_text: str) -> str:
    spec = json.loads(tokenizer_text)
    layout = tokenizer_layout(tokenizer_text)
    marker = {"Ġ": " (byte-level)", "▁": " (SentencePiece)"}.get(layout.word_start or "", "")
    return spec["model"]["type"] + marker


def add_constant_cos(args, kinds: list[str]) -> None:
    """``constant_cos`` for the rows of ``args.out`` (the corpus stage alone gives the same held-out texts)."""
    from vocabert.distill.corpus import CorpusSettings, run_corpus

    table = json.loads(args.out.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = _sources(args.data_dir, root, args.passages, args.queries)
        texts = bundled_texts(args.data_dir, 500)
        for row, kind in zip(table["rows"], kinds, strict=True):
            teacher = None if kind == "default" else build_teacher(kind, root / f"teacher-{kind}", texts)
            ws = Workspace(root / kind, teacher, cache_dir=root / "cache", show_progress_bar=False)
            run_corpus(ws, sources, CorpusSettings())
            row["constant_cos"] = constant_cos(Teacher(ws.teacher_path), heldout_texts(ws))
            print(kind, row["constant_cos"], flush=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


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
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--budget", type=int, default=20_000, help="vocabulary entries")
    parser.add_argument("--kinds", default="all", help=f"comma-separated, of {', '.join(KINDS)}, or default")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "any_teacher.json")
    parser.add_argument("--constant-only", action="store_true", help="only add constant_cos to the rows in --out")
    args = parser.parse_args()
    kinds = ["default", *KINDS] if args.kinds == "all" else args.kinds.split(",")
    if args.constant_only:
        add_constant_cos(args, kinds)
        return
    mine = MineSettings(budget=args.budget, min_count=3)
    train = TrainSettings(epochs=3, batch_size=128)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = _sources(args.data_dir, root, args.passages, args.queries)
        texts = bundled_texts(args.data_dir, 500)
        for kind in kinds:
            teacher = None
            if kind != "default":
                teacher = build_teacher(kind, root / f"teacher-{kind}", texts, train_steps=args.train_steps)
            row = measure(kind, teacher, sources, root / kind, mine, train)
            if kind == "default":
                row["teacher"] = teacher_name(Workspace(root / "x", None).teacher_path)
            rows.append(row)
    trained = (
        f", each synthetic transformer trained {args.train_steps} steps" if args.train_steps else ", random weights"
    )
    table = {
        "title": "Students of teachers of other families, on the same slice",
        "command": f"python scripts/any_teacher.py --passages {args.passages} --queries {args.queries} "
        f"--train-steps {args.train_steps} --budget {args.budget}",
        "provenance": f"measured {time.strftime('%Y-%m-%d')} on this machine's CPU: {args.passages} MS MARCO "
        f"passages and {args.queries} queries, vocabulary budget {args.budget:,}, 3 epochs{trained}; fidelity on the "
        "corpus's held-out split (never mined or trained on)",
        "labels": {
            "teacher": "teacher",
            "tokenizer": "tokenizer",
            "vocab_size": "tokens",
            "added": "added around a text",
            "dim": "dim",
            "val_before": "val cos, plain mean",
            "val_after": "val cos, trained",
            "constant_cos": "cos of a constant vector",
            "queries_cos": "held-out queries cos",
            "passages_cos": "held-out passages cos",
            "seconds": "all stages s",
        },
        "formats": {
            "constant_cos": ".3f",
            "val_before": ".3f",
            "val_after": ".3f",
            "queries_cos": ".3f",
            "passages_cos": ".3f",
            "vocab_size": ",d",
            "seconds": ".0f",
        },  # fmt: skip
        "rows": rows,
    }
    args.out.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
