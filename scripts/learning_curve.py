"""What teacher data buys: the learning curve over the teacher share, or (--leave-out) each source's part.

    python scripts/learning_curve.py [--workdir runs/minilm-msmarco] [--shares 0.1 0.25 0.5 1.0]
    python scripts/learning_curve.py --leave-out [--workdir runs/minilm-msmarco]

For each share, a work directory ``WORKDIR/shares/s<share>`` with copies of the corpus and the vocabulary of
WORKDIR (the same entries everywhere), its own teacher pass over that share of the training texts, the entry
store and the student trained with the default settings; WORKDIR's own share is WORKDIR itself (its teacher
pass and model). Then one bench of all of them next to the teacher (fidelity, STS-B, DL19), and
``WORKDIR/shares/learning_curve.png``: each figure against the number of texts the teacher encoded.
Every stage skips itself when current, so an interrupted run resumes where it stopped.

``--leave-out``: at WORKDIR's own share, one work directory ``WORKDIR/sources/no-<group>`` per group of
sources left out of the teacher pass (passages, with their sentences; queries, i.e. the train and dev query
files; glosses), each with its own teacher pass over the other sources, store and student, benched beside
WORKDIR's own model (every source): the unseen-topic passages column says what each source brings to topics
no text reached.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def vocabert(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vocabert.cli", *args, "--no-progress"], check=True)


# Groups of the bundled corpus's sources that --leave-out leaves out of the teacher pass, one at a time.
SOURCE_GROUPS = {
    "passages": ["passages", "passage_sentences"],
    "queries": ["queries", "dev_queries"],
    "glosses": ["glosses"],
}


def point(workdir: Path, directory: Path, share: float, own_share: float, sources: list[str] | None = None) -> Path:
    """A work directory with the corpus and vocabulary of ``workdir``, its own teacher pass over ``share``
    of the training texts (of ``sources`` only, if given) and its model trained."""
    directory.mkdir(parents=True, exist_ok=True)
    stages = ["corpus", "vocab"] + (["teacher"] if share == own_share and not sources else [])
    for stage in stages:  # copies, not links: a stage may rewrite its files in place
        if not (directory / stage).exists():
            shutil.copytree(workdir / stage, directory / stage)
    selection = ["--teacher-sources", ",".join(sources)] if sources else []
    vocabert("embed", "--workdir", str(directory), "--teacher-share", str(share), *selection)
    vocabert("train", "--workdir", str(directory))
    return directory


def leave_out(workdir: Path, own_share: float) -> None:
    """One student per source group left out of the teacher pass, benched beside WORKDIR's own model."""
    out = workdir / "sources"
    corpus_sources = json.loads((workdir / "corpus" / "manifest.json").read_text())["sources"]
    models = ["--model", str(workdir / "model")]
    for group, left_out in SOURCE_GROUPS.items():
        kept = [s for s in corpus_sources if s not in left_out]
        directory = point(workdir, out / f"no-{group}", own_share, own_share, kept)
        models += ["--model", str(directory / "model")]
    vocabert("bench", "--workdir", str(workdir), "--no-peers", *models, "--out", str(out))
    print(out / "bench.md")


def teacher_texts(directory: Path) -> int:
    return int(json.loads((directory / "teacher" / "manifest.json").read_text())["texts"])


def plot(points: list[tuple[float, int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [texts for _, texts, _ in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, label in (("passages", "passages"), ("passages-unseen", "unseen-topic passages"), ("queries", "queries")):
        left.plot(x, [m["fidelity"][name]["cosine_mean"] for _, _, m in points], "o-", label=label)
    left.set(xscale="log", xlabel="texts through the teacher", ylabel="mean cosine to the teacher", title="Fidelity")
    right.plot(x, [m["retrieval"]["dl19"]["ndcg@10"] for _, _, m in points], "o-", label="DL19 nDCG@10")
    right.plot(x, [m["sts"]["spearman"] for _, _, m in points], "s-", label="STS-B dev Spearman")
    right.set(xscale="log", xlabel="texts through the teacher", title="Downstream")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        for (share, texts, _), y in zip(points, ax.lines[0].get_ydata(), strict=True):
            ax.annotate(f"{share:g}", (texts, y), textcoords="offset points", xytext=(4, -12), fontsize=8)
    fig.suptitle("Learning curve over the teacher share (labels: share of the training texts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/minilm-msmarco"))
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--leave-out", action="store_true", help="leave each group of sources out instead")
    args = parser.parse_args()
    workdir, out = args.workdir, args.workdir / "shares"
    own = json.loads((workdir / "teacher" / "manifest.json").read_text())["key"]["settings"]["teacher_share"]
    if args.leave_out:
        return leave_out(workdir, own)
    vocabert("train", "--workdir", str(workdir))  # skipped when current
    # WORKDIR's own share is WORKDIR itself: its teacher pass and model, neither copied nor retrained.
    directories = [
        workdir if share == own else point(workdir, out / f"s{round(share * 100):03d}", share, own)
        for share in args.shares
    ]
    models = [a for d in directories for a in ("--model", str(d / "model"))]
    vocabert("bench", "--workdir", str(workdir), "--no-peers", *models, "--out", str(out))
    bench = json.loads((out / "bench.json").read_text())["models"]
    points = []
    for share, directory in zip(args.shares, directories, strict=True):
        name = next(n for n, m in bench.items() if m.get("description", "").endswith(str(directory / "model")))
        points.append((share, teacher_texts(directory), bench[name]))
    plot(points, out / "learning_curve.png")
    print(f"{out / 'learning_curve.png'}, {out / 'bench.md'}")


if __name__ == "__main__":
    main()
