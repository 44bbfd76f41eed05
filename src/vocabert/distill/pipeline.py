"""The order of the stages over one work directory: what ``vocabert run`` does.

Each stage lives in its own module and decides there whether it is up to date, how it resumes and
what it writes (the protocol is in :mod:`vocabert.distill.workspace`)::

    corpus     vocabert.distill.corpus.run_corpus        -> <workdir>/corpus
    mine       vocabert.distill.mining.run_mining        -> <workdir>/vocab
    embed      vocabert.distill.embedding.run_embedding  -> <workdir>/teacher, <workdir>/store
    train      vocabert.distill.training.run_training    -> <workdir>/model
    evaluate   vocabert.bench (the bench without peers)  -> <workdir>/eval
"""

from __future__ import annotations

import time
from pathlib import Path

from vocabert.artifacts import write_json, write_text
from vocabert.distill.corpus import CorpusSettings, open_corpus, run_corpus
from vocabert.distill.embedding import EmbedSettings, run_embedding
from vocabert.distill.mining import MineSettings, run_mining
from vocabert.distill.training import TrainSettings, run_training
from vocabert.distill.workspace import Workspace, check_same_teacher, log
from vocabert.model import StudentModel

__all__ = ["Workspace", "build_model", "log", "open_corpus"]


def build_model(
    ws: Workspace,
    sources: dict[str, Path],
    corpus: CorpusSettings | None = None,
    mine: MineSettings | None = None,
    embed: EmbedSettings | None = None,
    train: TrainSettings | None = None,
    force: bool = False,
) -> dict[str, float]:
    """Every building stage in order (finished ones are skipped); returns the wall seconds of each."""
    corpus, mine = corpus or CorpusSettings(), mine or MineSettings()
    embed, train = embed or EmbedSettings(), train or TrainSettings()
    times: dict[str, float] = {}
    for name, stage in (
        ("corpus", lambda: run_corpus(ws, sources, corpus, force=force)),
        ("mine", lambda: run_mining(ws, mine, force=force)),
        ("embed", lambda: run_embedding(ws, embed, force=force)),
        ("train", lambda: run_training(ws, train, force=force)),
    ):
        started = time.perf_counter()
        stage()
        times[name] = time.perf_counter() - started
    return times


def stage_evaluate(
    ws: Workspace,
    model_dir: Path | None = None,
    max_texts: int | None = None,
    speed_texts: int = 2048,
    teacher_speed_texts: int = 256,
) -> dict:
    """Fidelity on held-out passages and queries, and speed of student and teacher in the same run."""
    from vocabert.bench.metrics import fidelity
    from vocabert.bench.report import update_model_card
    from vocabert.bench.speed import measure_throughput

    model_dir = Path(model_dir) if model_dir else ws.model_dir
    model = StudentModel.load(model_dir)
    check_same_teacher(ws.provenance, model.config["provenance"], f"model {model_dir}")
    corpus = open_corpus(ws)
    teacher = ws.teacher()
    cache = ws.teacher_cache()
    results: dict = {"model": str(model_dir.resolve()), "teacher": str(ws.teacher_path), "fidelity": {}, "speed": {}}
    for source in corpus.sources:
        texts = corpus.texts("heldout", source)[:max_texts]
        if not texts:
            continue
        target = cache.encode(
            texts,
            teacher.encode,
            batch_size=64,
            show_progress_bar=ws.show_progress_bar,
            desc=f"evaluate: teacher on held-out {source}",
        )
        results["fidelity"][source] = fidelity(model.encode(texts), target)
        # Speed on the same held-out texts, student and teacher in this process, one after the other.
        student = measure_throughput(lambda t, b: model.encode(t, batch_size=b), texts[:speed_texts], 64)
        reference = measure_throughput(lambda t, b: teacher.encode(t, batch_size=b), texts[:teacher_speed_texts], 64)
        results["speed"][source] = {
            "student_texts_per_s": student["texts_per_s"],
            "teacher_texts_per_s": reference["texts_per_s"],
            "ratio": student["texts_per_s"] / reference["texts_per_s"],
            "student_runs": student["runs_texts_per_s"],
            "teacher_runs": reference["runs_texts_per_s"],
            "n_student": student["n_texts"],
            "n_teacher": reference["n_texts"],
            "batch_size": 64,
        }
    size = sum(f.stat().st_size for f in model_dir.iterdir() if f.is_file())
    results["model_size_mb"] = round(size / 2**20, 1)
    table = evaluation_table(results)
    write_json(ws.eval_dir / "report.json", results)
    write_text(ws.eval_dir / "report.md", table)
    update_model_card(model_dir, table)
    print(table, flush=True)
    log(f"evaluate: report in {ws.eval_dir / 'report.md'}; model card {model_dir / 'README.md'}")
    return results


def evaluation_table(results: dict) -> str:
    lines = [
        "| held-out set | texts | cosine mean | cosine median | cosine p5 | Euclidean mean "
        "| student texts/s | teacher texts/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for source, f in results["fidelity"].items():
        s = results["speed"][source]
        lines.append(
            f"| {source} | {f['n']} | {f['cosine_mean']:.4f} | {f['cosine_median']:.4f} | {f['cosine_p5']:.4f} "
            f"| {f['euclidean_mean']:.4f} | {s['student_texts_per_s']:.0f} | {s['teacher_texts_per_s']:.1f} "
            f"| {s['ratio']:.0f}x |"
        )
    lines.append("")
    lines.append(
        f"Speeds: median of 3 runs at batch 64 on this machine, student and teacher in the same run "
        f"(student on up to {max(s['n_student'] for s in results['speed'].values())} texts, teacher on "
        f"up to {max(s['n_teacher'] for s in results['speed'].values())}). "
        f"Model size on disk: {results['model_size_mb']} MB."
    )
    return "\n".join(lines) + "\n"
