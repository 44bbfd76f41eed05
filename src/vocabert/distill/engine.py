"""The local engine (``--engine local``, the default): the heavy loops of ``mine`` and ``embed`` in this
process; and the settings that choose the engine.

A stage decides what is computed and asks its engine for the loops
(:class:`~vocabert.distill.engine_protocol.Engine`). This one runs the stages' own per-batch and
per-shard functions one after another; the Ray engine (:mod:`vocabert.distill.ray_jobs`) runs the same
functions on Ray and writes the same files. :func:`vocabert.distill.pipeline.open_engine` opens the
one that :class:`EngineSettings` asks for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from vocabert.distill.corpus import Corpus
from vocabert.distill.embedding import (
    EmbedSettings,
    PassWriter,
    chunk_occurrence_sums,
    isolated_vectors,
    run_teacher_batch,
    teacher_batches,
)
from vocabert.distill.engine_protocol import PartialSums
from vocabert.distill.mining import LocalCounts
from vocabert.distill.teacher_pass import TeacherPass
from vocabert.distill.workspace import Workspace, log, peak_rss_mib
from vocabert.matching import EntryIndex
from vocabert.options import option

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineSettings:
    """Where ``mine`` and ``embed`` run, each a command-line option (every default lives here); not part of
    any artifact's key: every engine writes the same artifacts."""

    engine: str = option(  # ray: Ray tasks and actors
        "local",
        "local: this process; ray: Ray tasks and a pool of teacher workers, same results (needs the ray extra: "
        "pip install 'vocabert[ray]')",
        choices=ENGINES,
    )
    ray_address: str | None = option(
        None,
        "Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started with this machine's cores); the work "
        "directory must be at the same path on every node",
        metavar="ADDR",
    )
    ray_workers: int | None = option(  # actors
        None,
        "teacher workers, each loading the teacher once (default: as many as the cluster's CPUs, or GPUs, hold)",
        type=int,
        metavar="N",
    )
    ray_worker_cpus: float = option(1.0, "CPUs of one teacher worker", metavar="C")  # its torch threads
    ray_worker_gpus: float = option(0.0, "GPUs of one teacher worker; above 0 the teacher runs on CUDA", metavar="G")


class LocalEngine:
    """The stages' per-batch and per-shard functions, one after another in this process."""

    def teacher_pass(self, ws: Workspace, corpus: Corpus, key: dict, settings: EmbedSettings) -> TeacherPass:
        """Send the teacher-pass texts through the teacher, appending each batch durably; resumes. The
        targets also go into the user's embedding cache, so that evaluating on those texts later (e.g. the
        retrieval corpus) costs no second teacher call."""
        teacher = ws.teacher()
        started = time.perf_counter()
        writer = PassWriter(ws.teacher_dir, key, teacher.dim, ws.teacher_cache())
        if writer.texts:
            log(f"embed: resuming the teacher pass after {writer.texts} texts")
        # The bar's total is an estimate: counting would read every shard.
        sources = settings.teacher_sources
        counts = [c for s, c in corpus.manifest["counts"].items() if not sources or s in sources]
        total = round(settings.teacher_share * sum(c["texts"] - c["heldout"] - c.get("unseen", 0) for c in counts))
        quiet = not ws.show_progress_bar
        bar = tqdm(total=total, initial=writer.texts, desc="embed: teacher pass", unit="text", disable=quiet)
        try:
            for batch in teacher_batches(corpus, settings.teacher_share, settings.batch_size, sources):
                if batch.start + len(batch) <= writer.texts:
                    continue
                writer.append(run_teacher_batch(teacher, batch))
                bar.update(len(batch))
        finally:
            writer.close()
            bar.close()
        passed = writer.finish()
        seconds = time.perf_counter() - started
        log(
            f"embed: {len(passed)} texts, {len(passed.token_ids)} tokens through the teacher -> {ws.teacher_dir} "
            f"({seconds:.0f} s, {len(passed) / seconds:.1f} texts/s if none was resumed; "
            f"peak RSS {peak_rss_mib():.0f} MiB)"
        )
        return passed

    def entry_sums(
        self, ws: Workspace, passed: TeacherPass, patterns: np.ndarray, vocab_size: int
    ) -> Iterator[PartialSums]:
        """:func:`~vocabert.distill.embedding.chunk_occurrence_sums` over the teacher pass, chunk by chunk."""
        index = EntryIndex(patterns, vocab_size)
        chunks = tqdm(passed.chunk_rows(), desc="embed: entry vectors", unit="chunk", disable=not ws.show_progress_bar)
        for rows in chunks:
            yield chunk_occurrence_sums(passed, index, patterns, rows)

    def isolated_vectors(
        self, ws: Workspace, patterns: np.ndarray, cls_id: int, sep_id: int, mask_id: int
    ) -> np.ndarray:
        """Each pattern alone through the work directory's teacher, loaded here."""
        return isolated_vectors(ws.teacher(), patterns, cls_id, sep_id, mask_id)

    def counting(self, ws: Workspace, corpus: Corpus, key: dict, max_keys: int, force: bool) -> LocalCounts:
        """Shard after shard in this process (nothing is kept between runs, so ``key`` and ``force`` change
        nothing)."""
        return LocalCounts(corpus, ws.show_progress_bar, max_keys)

    def close(self) -> None:
        """Nothing to stop."""

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
