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
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from vocabert.distill.corpus import Corpus
from vocabert.distill.embedding import PassJob, batch_sums, isolated_vectors, run_teacher_batch
from vocabert.distill.mining import LocalCounts
from vocabert.distill.teacher_pass import TeacherPass
from vocabert.distill.workspace import Workspace, log, peak_rss_mib
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

    def teacher_pass(self, ws: Workspace, job: PassJob) -> TeacherPass:
        """Send the teacher-pass texts through the teacher batch by batch, writing their rows in place and
        adding up the entry sums, with a checkpoint every ``CHECKPOINT_SECONDS``; resumes from the last one.
        The targets also go into the user's embedding cache, so that evaluating on those texts later (e.g.
        the retrieval corpus) costs no second teacher call."""
        teacher = ws.teacher(job.settings.device, job.settings.precision)
        started = time.perf_counter()
        progress, files, index = job.progress(), job.files(), job.index()
        cache = ws.teacher_cache() if job.write_rows else None
        resumed = job.plan.batch_texts(np.flatnonzero(progress.done))
        if resumed:
            log(f"embed: resuming the teacher pass after {resumed} texts")
        what = "teacher pass" if job.write_rows else "teacher pass for the entry sums"
        bar = tqdm(
            total=job.plan.texts, initial=resumed, desc=f"embed: {what}", unit="text", disable=not ws.show_progress_bar
        )

        def checkpoint() -> None:
            if files is not None:
                files.sync()  # the rows first: the progress says they are there
            progress.save()

        computed = 0  # tokens through the teacher in this run
        try:
            for batch in job.batches(progress.done):
                rows = run_teacher_batch(teacher, batch)
                if files is not None:
                    files.write(rows)
                partial = batch_sums(index, job.patterns, rows) if index is not None else None
                progress.record(job.plan.batch_id(batch.shard, batch.number), partial)
                if cache is not None:
                    cache.put(batch.texts, rows.targets)
                if progress.due():
                    checkpoint()
                bar.update(len(batch))
                computed += int(batch.lengths.sum())
        finally:
            checkpoint()  # also when stopped: every batch marked done is written
            if files is not None:
                files.close()
            if cache is not None:
                cache.flush()
            bar.close()
        passed = job.finish(progress)
        seconds = time.perf_counter() - started
        log(
            f"embed: {len(passed)} texts, {len(passed.token_ids)} tokens through the teacher -> {ws.teacher_dir} "
            f"({seconds:.0f} s, {computed / max(seconds, 1e-9):.0f} tokens/s on {teacher.device} "
            f"({teacher.precision}); {len(passed.token_vectors)} token vectors kept; peak RSS {peak_rss_mib():.0f} MiB)"
        )
        return passed

    def isolated_vectors(
        self, ws: Workspace, patterns: np.ndarray, prefix: list[int], suffix: list[int], filler: int
    ) -> np.ndarray:
        """Each pattern alone through the work directory's teacher, loaded here."""
        return isolated_vectors(ws.teacher(), patterns, prefix, suffix, filler)

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
