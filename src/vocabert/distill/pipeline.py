"""The order of the stages over one work directory: what ``vocabert run`` does.

Each stage lives in its own module and decides there whether it is up to date, how it resumes and
what it writes (the protocol is in :mod:`vocabert.distill.workspace`)::

    corpus     vocabert.distill.corpus.run_corpus        -> <workdir>/corpus
    (teacher pass first when mining selects by semantics: it reads the pass, which needs no vocabulary)
    mine       vocabert.distill.mining.run_mining        -> <workdir>/vocab     (counting: local or Ray)
    embed      vocabert.distill.embedding.run_embedding  -> <workdir>/teacher, <workdir>/store  (teacher: local or Ray)
    train      vocabert.distill.training.run_training    -> <workdir>/model
    evaluate   vocabert.bench (the bench without peers)  -> <workdir>/eval

``mine`` and ``embed`` run their heavy loops on the engine that :func:`open_engine` opens.
"""

from __future__ import annotations

import time
from pathlib import Path

from vocabert.artifacts import VocabertError
from vocabert.distill.corpus import CorpusSettings, run_corpus
from vocabert.distill.embedding import EmbedSettings, run_embedding
from vocabert.distill.engine import ENGINES, EngineSettings, LocalEngine
from vocabert.distill.engine_protocol import Engine
from vocabert.distill.mining import MineSettings, run_mining
from vocabert.distill.training import TrainSettings, run_training
from vocabert.distill.workspace import Workspace


def open_engine(settings: EngineSettings | None = None) -> Engine:
    """The engine that ``settings`` ask for: the local one, or Ray's (a context manager: leaving it stops
    a Ray that it started)."""
    settings = settings or EngineSettings()
    if settings.engine not in ENGINES:
        raise VocabertError(f"unknown engine {settings.engine!r}: use {' or '.join(ENGINES)}")
    if settings.engine == "ray":
        from vocabert.distill.ray_jobs import RayEngine  # Ray is an optional extra: imported only when asked for

        return RayEngine(settings)
    return LocalEngine()


def build_model(
    ws: Workspace,
    sources: dict[str, Path],
    corpus: CorpusSettings | None = None,
    mine: MineSettings | None = None,
    embed: EmbedSettings | None = None,
    train: TrainSettings | None = None,
    force: bool = False,
    data_dir: str | Path | None = None,
    engine: EngineSettings | None = None,
) -> dict[str, float]:
    """Every building stage in order (finished ones are skipped); returns the wall seconds of each.
    ``engine`` says where mining's counting and the teacher pass run (one Ray session serves both)."""
    corpus, mine = corpus or CorpusSettings(), mine or MineSettings()
    embed, train = embed or EmbedSettings(), train or TrainSettings()
    times: dict[str, float] = {}
    with open_engine(engine) as runner:
        stages = [("corpus", lambda: run_corpus(ws, sources, corpus, force=force, data_dir=data_dir))]
        if mine.select == "semantics":  # semantic mining reads the teacher pass, which needs no vocabulary
            stages.append(("teacher pass", lambda: run_embedding(ws, embed, runner, force, pass_only=True)))
        rerun_pass = force and mine.select != "semantics"  # with semantics it was just rebuilt
        stages += [
            ("mine", lambda: run_mining(ws, mine, runner, force=force)),
            ("embed", lambda: run_embedding(ws, embed, runner, force=rerun_pass)),
        ]
        for name, stage in stages:
            started = time.perf_counter()
            stage()
            times[name] = time.perf_counter() - started
    started = time.perf_counter()
    run_training(ws, train, force=force)
    times["train"] = time.perf_counter() - started
    return times
