"""How much fidelity does retrieval need? DL19 nDCG@10 of a student whose errors shrink toward the teacher.

    python scripts/fidelity_to_retrieval.py [--workdir runs/minilm-msmarco] [--model DIR] [--cache-dir DIR]

A student's vector of a text is the teacher's plus an error, ``s = t + e``. This encodes the DL19 queries and
the bundled passages with both, and for each fraction ``a`` of the error removed ranks with
``normalize(t + (1 - a) e)``: the same errors, in the same directions, smaller. At each step it prints the
mean cosine to the teacher (the DL19-pool passages, which the student never saw, and the queries) and
nDCG@10 with both sides shrunk, with only the passages shrunk (teacher queries), and with only the queries
shrunk (the teacher's index). ``a = 0`` is the student as it is, ``a = 1`` the teacher. It answers "what
passage fidelity would reach a given nDCG" under the assumption that a better student errs like this one,
only less, and which side of the search the ranking loses on. Writes ``WORKDIR/fidelity_to_retrieval.json``
and a plot beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vocabert.bench.datasets import dl19_task
from vocabert.bench.metrics import evaluate_retrieval, fidelity
from vocabert.bench.peers import StudentEncoder, TeacherEncoder, cached
from vocabert.distill.corpus import default_data_dir, default_unseen_topics, read_id_list
from vocabert.distill.workspace import Workspace, check_same_teacher
from vocabert.model import normalize


def shrink(student: np.ndarray, teacher: np.ndarray, removed: float) -> np.ndarray:
    return normalize(teacher + (1 - removed) * (student - teacher))


def ndcg(task, query_vecs: np.ndarray, corpus_vecs: np.ndarray) -> float:
    """nDCG@10 of ``task`` ranked with vectors already computed (in the task's order of queries and passages)."""
    return evaluate_retrieval(task, lambda _: corpus_vecs, lambda _: query_vecs)["ndcg@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/minilm-msmarco"))
    parser.add_argument("--model", type=Path, help="student folder (default: WORKDIR/model)")
    parser.add_argument("--cache-dir", type=Path, help="teacher embedding cache (default: $VOCABERT_CACHE)")
    parser.add_argument("--data-dir", type=Path, help="bundled data (default: ../shared/data or $VOCABERT_DATA)")
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    task = dl19_task(data_dir)
    pids, qids = list(task.corpus), list(task.queries)
    unseen_ids = read_id_list(default_unseen_topics(data_dir))  # the passages held out with their topics
    unseen = np.array([p in unseen_ids for p in pids])

    ws = Workspace(args.workdir, **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    student = StudentEncoder(args.model or ws.model_dir)
    # As the bench does: a student of another teacher would be compared against the wrong vectors.
    check_same_teacher(ws.provenance, student.model.config.get("provenance", {}), f"model {student.path}")
    teacher = cached(TeacherEncoder(ws.teacher_path), ws.cache_dir)
    t_corpus = teacher.encode([task.corpus[p] for p in pids])
    t_queries = teacher.encode([task.queries[q] for q in qids])
    s_corpus = student.encode([task.corpus[p] for p in pids])
    s_queries = student.encode([task.queries[q] for q in qids])

    rows = []
    print("| error removed | DL19-pool passages cos | queries cos | nDCG@10 both | passages only | queries only |")
    print("|---:|---:|---:|---:|---:|---:|")
    for removed in np.linspace(0, 1, 11):
        corpus, queries = shrink(s_corpus, t_corpus, removed), shrink(s_queries, t_queries, removed)
        row = {
            "removed": round(float(removed), 2),
            "passages_unseen_cos": fidelity(corpus[unseen], t_corpus[unseen])["cosine_mean"],
            "queries_cos": fidelity(queries, t_queries)["cosine_mean"],
            "ndcg_both": ndcg(task, queries, corpus),
            "ndcg_passages_only": ndcg(task, t_queries, corpus),
            "ndcg_queries_only": ndcg(task, queries, t_corpus),
        }
        rows.append(row)
        print("| " + " | ".join(f"{v:.2f}" if k == "removed" else f"{v:.3f}" for k, v in row.items()) + " |")
    out = ws.root / "fidelity_to_retrieval.json"
    out.write_text(json.dumps({"model": str(student.path), "unseen_passages": int(unseen.sum()), "rows": rows}))
    plot(rows, out.with_suffix(".png"))
    print(out, out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    x = [r["removed"] for r in rows]
    for key, label in (
        ("ndcg_both", "both sides shrunk"),
        ("ndcg_passages_only", "passages shrunk, teacher's queries"),
        ("ndcg_queries_only", "queries shrunk, teacher's index"),
    ):
        ax.plot(x, [r[key] for r in rows], marker="o", label=label)
    ax.axhline(rows[-1]["ndcg_both"], color="grey", linestyle=":", label="teacher")
    ax.set_xlabel("fraction of the student's error removed (0: the student)")
    ax.set_ylabel("DL19 nDCG@10")
    top = ax.secondary_xaxis("top")  # what that fraction means as fidelity on the unseen-topic passages
    top.set_xticks(x[::2], [f"{r['passages_unseen_cos']:.3f}" for r in rows[::2]])
    top.set_xlabel("mean cosine to the teacher, DL19-pool passages (unseen topics)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
