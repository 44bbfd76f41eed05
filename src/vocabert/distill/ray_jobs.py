"""The Ray engine (``--engine ray``): :class:`RayEngine` starts or joins Ray, and its jobs run the teacher
pass on Ray Data, and the entry vectors' sums and the counting of mining as Ray tasks.

Ray is an optional extra (``pip install 'vocabert[ray]'``): nothing imports it, or this module, unless
``--engine ray`` is asked for. With ``--ray-address ADDR`` (or ``RAY_ADDRESS``, Ray's own convention)
the command joins that cluster; otherwise it starts a local Ray on this machine's cores and stops it
when it is done.

The jobs run the local engine's per-batch and per-shard functions (the stages'); what this module adds
is only where they run, and how their results come back exactly once.

**Teacher pass.** The pass is planned on the driver (:func:`~vocabert.distill.embedding.plan_pass`: every
batch's place in the files is known before any is computed) and cut into tasks of about ``SEGMENT_TOKENS``
tokens of one shard. A pool of actors, each loading the teacher once (CPU, or GPU with ``num_gpus``), runs
each task's batches through :func:`~vocabert.distill.embedding.run_teacher_batch`, writes their rows in place
into the pass's files itself (:class:`~vocabert.distill.embedding.PassFiles`), syncs them, and hands back
only which batches it did and the entry sums of their texts (sparse: the entries they hold). The driver
records those batches as done and adds the sums, once per batch (a task that Ray ran twice wrote the same
rows twice; its second result is dropped), with a checkpoint every ``CHECKPOINT_SECONDS``; what it receives
is the entry sums, bounded by the vocabulary's size per task, never the tokens' vectors. A dead worker is
restarted and its task retried ``MAX_RETRIES`` times, then the pass stops with one line. The work directory
ends with the same files as the local pass, and an interrupted job resumes from its last checkpoint,
whichever engine resumes it. The entries that never occur are run through the teacher in a Ray task too,
so the driver never loads the teacher.

**Mining.** Each counting level is one Ray task per shard running the local path's function
(:func:`~vocabert.distill.mining.count_tokens`, :func:`~vocabert.distill.mining.count_phrases`),
whose counts are written to ``vocab/partial/<level>/part-<p>/shard-<n>.npz`` split by key
partition (atomically, named by shard and partition); one task per partition then merges it with
:func:`~vocabert.distill.mining.merge_counts` and returns only the frequent keys. A rerun reuses
the shards already counted.

The work directory must be reachable from every node at the same path (one machine, or a shared
filesystem): tasks read the corpus shards, and the driver writes the results.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import shutil
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError, atomic_write, read_json, write_json
from vocabert.distill.corpus import Corpus, load_shard
from vocabert.distill.embedding import (
    BatchRows,
    PassJob,
    PassProgress,
    TeacherBatch,
    batch_sums,
    isolated_vectors,
    run_teacher_batch,
    select_teacher_texts,
    shard_batches,
    sum_by_entry,
)
from vocabert.distill.engine import EngineSettings
from vocabert.distill.mining import PARTIAL, counter_names, merge_counts
from vocabert.distill.teacher import Teacher
from vocabert.distill.teacher_pass import TeacherPass
from vocabert.distill.workspace import Workspace, log, peak_rss_mib

# ----------------------------------------------------------------------------------------- engine


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise VocabertError(
            "--engine ray needs Ray, which is not installed: pip install 'vocabert[ray]' (or 'ray[data]>=2.9')"
        ) from None
    return ray


class RayEngine:
    """The Ray engine of one command: it connects (or starts a local Ray) on first use, and :meth:`close`
    (or leaving the ``with`` block) stops what it started."""

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        require_ray()  # before any work: a missing extra is a one-line error, not a failure halfway
        if settings.ray_worker_cpus <= 0 or settings.ray_worker_gpus < 0:
            raise VocabertError("--ray-worker-cpus must be above 0 and --ray-worker-gpus at least 0")
        self._ray = None
        self._started = False
        self.start_seconds = 0.0  # starting or joining Ray

    def ray(self) -> Any:
        """The ``ray`` module, connected."""
        if self._ray is not None:
            return self._ray
        ray = require_ray()
        started = time.perf_counter()
        if not ray.is_initialized():
            from vocabert.model import available_cores

            quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
            address = self.settings.ray_address or os.environ.get("RAY_ADDRESS")
            if address:
                log(f"ray: joining the cluster at {address}")
                try:
                    ray.init(address=address, **quiet)
                except ConnectionError as e:
                    raise VocabertError(
                        f"cannot join the Ray cluster at {address} ({e}); is it running, and does it want a token "
                        "(Ray's RAY_AUTH_MODE=token)?"
                    ) from None
            else:
                cores = available_cores()
                log(f"ray: starting a local Ray with {cores} CPUs")
                ray.init(num_cpus=cores, include_dashboard=False, **quiet)
            self._started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the stages draw their own
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
        self._ray = ray
        self.start_seconds = time.perf_counter() - started
        return ray

    def workers(self) -> int:
        """Teacher workers: as asked, else as many as the cluster's CPUs (or GPUs) hold."""
        if self.settings.ray_workers:
            return self.settings.ray_workers
        resources = self.ray().cluster_resources()
        if self.settings.ray_worker_gpus > 0:
            count = resources.get("GPU", 0) // self.settings.ray_worker_gpus
            if count < 1:
                raise VocabertError("--ray-worker-gpus asks for GPUs, but the Ray cluster has none")
        else:
            count = resources.get("CPU", 1) // self.settings.ray_worker_cpus
        return max(1, int(count))

    def teacher_pass(self, ws: Workspace, job: PassJob) -> TeacherPass:
        """:func:`ray_teacher_pass` into the work directory."""
        passed, stats = ray_teacher_pass(self, ws, job, ws.show_progress_bar)
        rate = (stats["texts"] - stats["resumed_texts"]) / stats["seconds"]
        log(
            f"embed: {len(passed)} texts, {len(passed.token_ids)} tokens through the teacher on Ray -> "
            f"{ws.teacher_dir} ({stats['computed_batches']} of {stats['batches']} batches computed in "
            f"{stats['segments']} tasks; Ray started in {self.start_seconds:.1f} s, pass {stats['seconds']:.0f} s, "
            f"first task back at {stats['first_batch_seconds']:.1f} s, {rate:.1f} texts/s if none was resumed; "
            f"the driver received {stats['driver_bytes'] / 2**20:.0f} MiB of entry sums; peak RSS: driver "
            f"{peak_rss_mib():.0f} MiB, teacher workers {stats['worker_rss_mib']:.0f} MiB)"
        )
        return passed

    def isolated_vectors(
        self, ws: Workspace, patterns: np.ndarray, prefix: list[int], suffix: list[int], filler: int
    ) -> np.ndarray:
        """:func:`ray_isolated_vectors`: the driver loads no teacher."""
        return ray_isolated_vectors(self, ws.teacher_path, patterns, prefix, suffix, filler)

    def counting(self, ws: Workspace, corpus: Corpus, key: dict, max_keys: int, force: bool) -> RayCounts:
        """:class:`RayCounts` with its per-shard counts under ``vocab/partial`` (reused by a rerun with the
        same ``key``, unless ``force``)."""
        scratch = ws.vocab_dir / PARTIAL
        if force:
            shutil.rmtree(scratch, ignore_errors=True)
        return RayCounts(self, corpus, scratch, key, ws.show_progress_bar, max_keys=max_keys)

    def close(self) -> None:
        """Stop the Ray that this engine started (a joined cluster keeps running)."""
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------- teacher pass

# Tokens per Ray task of the teacher pass (whole batches of one shard). A task hands back the sums of the
# entries its texts hold, and those saturate (a vocabulary has so many entries): the larger the task, the fewer
# bytes the driver receives per token (measured on the bundled corpus: 130-280 bytes per token for tasks of
# 0.15-1M tokens, float32), and the more a retried task recomputes (seconds on a GPU, minutes on one CPU).
SEGMENT_TOKENS = 2_000_000
MAX_RETRIES = 3  # of a task whose worker died, before the pass stops with an error


def _segments(job: PassJob, done: np.ndarray) -> list[dict]:
    """The batches still to do, in runs of about ``SEGMENT_TOKENS`` tokens within a shard: one task each."""
    plan, out = job.plan, []
    for shard in range(len(plan.shard_texts)):
        first, last = int(plan.batch_first[shard]), int(plan.batch_first[shard + 1])
        numbers, tokens = [], 0
        for number in np.flatnonzero(~done[first:last]).tolist():
            start = int(plan.shard_first[shard]) + number * plan.batch_size
            stop = min(start + plan.batch_size, int(plan.shard_first[shard + 1]))
            numbers.append(number)
            tokens += int(plan.token_offsets[stop] - plan.token_offsets[start])
            if tokens >= SEGMENT_TOKENS:
                out.append({"shard": shard, "numbers": numbers})
                numbers, tokens = [], 0
        if numbers:
            out.append({"shard": shard, "numbers": numbers})
    return out


class TeacherWorker:
    """A Ray Data actor: one teacher, loaded once per worker, run on one segment (batches of one shard) per
    call. It writes the segment's rows into the pass's files itself, syncs them, and hands back only which
    batches it did and the entry sums of their texts."""

    def __init__(self, job_file: str):
        # The job (plan, vocabulary patterns: megabytes) comes from a file in the work directory, not as a
        # constructor argument: Ray keeps large arguments in its object store, and an actor restarted after
        # its worker died cannot be rebuilt once they have gone out of scope (ray-project/ray#53727).
        self.job = job = pickle.loads(Path(job_file).read_bytes())
        settings = job.settings
        self.teacher = Teacher(job.teacher_path, settings.device, settings.precision)
        self.files, self.index = job.files(), job.index()

    def run(self, batch: TeacherBatch) -> BatchRows:
        return run_teacher_batch(self.teacher, batch)

    def __call__(self, segment: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        job, plan = self.job, self.job.plan
        shard = int(segment["shard"][0])
        numbers = [int(n) for n in segment["numbers"][0]]
        corpus_shard = load_shard(job.corpus.shard_paths[shard], "teacher")
        selected, validation, _ = select_teacher_texts(
            corpus_shard, job.corpus.keys(corpus_shard), job.settings.teacher_share, job.settings.teacher_sources
        )
        partial, texts = [], 0
        for batch in shard_batches(shard, selected, validation, int(plan.shard_first[shard]), plan.batch_size, numbers):
            rows = self.run(batch)
            if self.files is not None:
                self.files.write(rows)
            if self.index is not None:
                partial.append(batch_sums(self.index, job.patterns, rows))
            texts += len(batch)
        if self.files is not None:
            self.files.sync()  # durable before the driver hears of it
        sums = _merge_partial(partial) if partial else None
        return {
            "ids": np.array([np.array([plan.batch_id(shard, n) for n in numbers], dtype=np.int64)], dtype=object),
            "texts": np.array([texts], dtype=np.int64),
            "sums": np.array([_to_bytes(sums) if sums is not None else b""], dtype=object),
            "rss_mib": np.array([peak_rss_mib()]),
        }


def _merge_partial(partial: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """The batches' partial sums as one: each entry once."""
    found, sums, counts = sum_by_entry(
        np.concatenate([p[0] for p in partial]),
        np.concatenate([p[1] for p in partial]).astype(np.float64),
        np.concatenate([p[2] for p in partial]),
    )
    return {"entries": found, "sums": sums.astype(np.float32), "counts": counts}  # float32: half the bytes


def _to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def ray_teacher_pass(
    engine: RayEngine,
    ws: Workspace,
    job: PassJob,
    show_progress_bar: bool = True,
    worker_cls: type | None = None,
) -> tuple[TeacherPass, dict]:
    """The teacher pass on Ray (see the module's docstring); returns it and what the run did.
    ``worker_cls`` replaces :class:`TeacherWorker` (tests use it to kill a worker)."""
    ray = engine.ray()
    started = time.perf_counter()
    worker_cls = worker_cls or TeacherWorker
    progress = job.progress()
    if job.write_rows:
        job.files().close()  # created at their final size once, before the workers open them
    resumed = job.plan.batch_texts(np.flatnonzero(progress.done))
    todo = _segments(job, progress.done)
    stats = {"texts": job.plan.texts, "batches": job.plan.batches, "segments": len(todo)}
    stats |= {"resumed_texts": resumed, "computed_batches": 0, "worker_rss_mib": 0.0, "first_batch_seconds": 0.0}
    stats |= {"driver_bytes": 0}
    if resumed:
        log(f"embed: resuming the teacher pass after {resumed} texts")
    quiet = not show_progress_bar
    bar = tqdm(total=job.plan.texts, initial=resumed, desc="embed: teacher pass (ray)", unit="text", disable=quiet)
    try:
        if todo:
            workers = min(engine.workers(), len(todo))
            gpus = engine.settings.ray_worker_gpus
            each = f"{gpus:g} GPU" if gpus else f"{engine.settings.ray_worker_cpus:g} CPU"
            log(f"embed: {len(todo)} tasks of about {SEGMENT_TOKENS} tokens, {workers} teacher workers ({each} each)")
            # The workers' device is the one Ray gives them, at the precision the pass's key records.
            precision = job.key.get("settings", {}).get("teacher_precision", "float32")
            device = "cuda" if gpus else "cpu"
            job = replace(job, settings=replace(job.settings, device=device, precision=precision))
            job_file = job.directory / f".ray-job-{os.getpid()}.pkl"  # read by every worker, removed after
            atomic_write(job_file, lambda p: p.write_bytes(pickle.dumps(job)))
            context = ray.data.DataContext.get_current()
            block_size, context.target_max_block_size = context.target_max_block_size, 1  # a block per task
            try:
                with warnings.catch_warnings():  # (Ray 2.60 names these ray_remote_args, deprecated, still honoured)
                    warnings.simplefilter("ignore", DeprecationWarning)
                    results = ray.data.from_items(todo).map_batches(
                        worker_cls,
                        batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=workers),
                        fn_constructor_kwargs={"job_file": str(job_file)},
                        num_cpus=engine.settings.ray_worker_cpus,
                        num_gpus=gpus,
                        # A dead worker is restarted and its task retried, a bounded number of times.
                        max_restarts=MAX_RETRIES,
                        max_task_retries=MAX_RETRIES,
                    )
                for row in results.iter_rows():
                    if not stats["computed_batches"]:  # the workers loading the teacher took this long
                        stats["first_batch_seconds"] = time.perf_counter() - started
                    data = bytes(row["sums"])
                    if _arrived(progress, np.asarray(row["ids"], dtype=np.int64), data):
                        stats["driver_bytes"] += len(data)
                        stats["computed_batches"] += len(row["ids"])
                        stats["worker_rss_mib"] = max(stats["worker_rss_mib"], float(row["rss_mib"]))
                        bar.update(int(row["texts"]))
            except Exception as e:  # Ray wraps the worker's error; the user wants one line
                if isinstance(e, VocabertError):
                    raise
                raise VocabertError(
                    f"the Ray teacher pass stopped: a task failed {MAX_RETRIES + 1} times or raised "
                    f"({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}); "
                    "rerun to resume from the batches done"
                ) from None
            finally:
                context.target_max_block_size = block_size
                job_file.unlink(missing_ok=True)
    finally:
        progress.save()  # every batch marked done was synced by its worker first
        stats["seconds"] = time.perf_counter() - started
        bar.close()
    return job.finish(progress), stats


def _arrived(progress: PassProgress, ids: np.ndarray, sums: bytes) -> bool:
    """A task's result is in: its batches are done and its entry sums added, once (a task that Ray ran
    twice wrote the same rows twice in place; its second result is dropped). False: already counted."""
    if progress.done[ids].any():
        return False
    found = _from_bytes(sums) if sums else None
    progress.record(ids, (found["entries"], found["sums"], found["counts"]) if found else None)
    if progress.due():
        progress.save()
    return True


def _isolated(teacher_path: str, patterns: np.ndarray, prefix: list[int], suffix: list[int], filler: int) -> np.ndarray:
    return isolated_vectors(Teacher(teacher_path), patterns, prefix, suffix, filler)


def ray_isolated_vectors(
    engine: RayEngine, teacher_path: str | Path, patterns: np.ndarray, prefix: list[int], suffix: list[int], filler: int
) -> np.ndarray:
    """:func:`~vocabert.distill.embedding.isolated_vectors` in a Ray task (the driver loads no teacher)."""
    ray = engine.ray()
    gpus = engine.settings.ray_worker_gpus
    task = ray.remote(num_cpus=engine.settings.ray_worker_cpus, num_gpus=gpus)(_isolated)
    return ray.get(task.remote(str(teacher_path), patterns, prefix, suffix, filler))


# ------------------------------------------------------------------------------------------ mining


def _sum_on_shard(path: str, fn: Callable[..., dict], kwargs: dict) -> dict:
    return fn(load_shard(path, "train"), **kwargs)


def _save_counts(path: Path, counts: dict[str, np.ndarray]) -> None:
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, **counts)

    atomic_write(path, write)


def _load_counts(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """A partition for every key (multiplicative hashing: the keys' low digits are token ids)."""
    return ((keys * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) % np.uint64(partitions)


def _count_partitioned(path: str, fn: Callable[..., dict], kwargs: dict, partitions: int, folder: str, number: int):
    """Count one shard and write its counts split by key partition (one file per partition, named by
    the shard: a retried task overwrites), then the shard's done-marker."""
    counts = fn(load_shard(path, "train"), **kwargs)
    split: list[dict[str, np.ndarray]] = [{} for _ in range(partitions)]
    for name in counter_names(counts):
        keys, values = counts[f"{name}.keys"], counts[f"{name}.counts"]
        part = _partition_of(keys, partitions)
        order = np.argsort(part, kind="stable")  # keeps each partition's keys sorted
        bounds = np.searchsorted(part[order], np.arange(partitions + 1))
        for p in range(partitions):
            rows = order[bounds[p] : bounds[p + 1]]
            split[p][f"{name}.keys"], split[p][f"{name}.counts"] = keys[rows], values[rows]
    for p, arrays in enumerate(split):
        _save_counts(Path(folder) / f"part-{p:03d}" / f"shard-{number:05d}.npz", arrays)
    atomic_write(Path(folder) / "done" / f"shard-{number:05d}", lambda f: f.write_bytes(b""))
    return number


def _reduce_partition(
    folder: str, partition: int, shards: int, min_count: int, max_keys: int | None = None
) -> dict[str, np.ndarray]:
    """Merge one partition of every shard's counts (``merge_counts``, as the local path); keep the frequent."""

    def counted():
        for number in range(shards):
            counts = _load_counts(Path(folder) / f"part-{partition:03d}" / f"shard-{number:05d}.npz")
            if counts is None:
                raise VocabertError(f"partial counts of shard {number} in {folder} are missing; rerun `vocabert mine`")
            yield counts

    out = {}
    for name, (keys, counts) in merge_counts(counted, min_count, max_keys).items():
        out[f"{name}.keys"], out[f"{name}.counts"] = keys, counts
    return out


class RayCounts:
    """:class:`~vocabert.distill.engine_protocol.Counting` on Ray. Per level, one task per shard counts it and
    writes its counts under ``scratch/<level>/``, split into ``partitions`` by key (atomically, named
    by shard and partition: a retried task overwrites, a rerun with the same ``key`` skips the shards
    that are done); then one task per partition merges that partition of every shard and returns only
    its frequent keys. So no process holds more than a partition of the distinct keys of a level,
    and the driver only the frequent ones."""

    def __init__(
        self,
        engine: RayEngine,
        corpus: Corpus,
        scratch: str | Path,
        key: dict,
        show_progress_bar: bool = True,
        partitions: int | None = None,
        max_keys: int | None = None,
    ):
        self.engine, self.show_progress_bar = engine, show_progress_bar
        self.paths = [str(p) for p in corpus.shard_paths]
        self.scratch = Path(scratch)
        key_file = self.scratch / "key.json"
        if self.scratch.exists() and (not key_file.is_file() or read_json(key_file, "partial counts") != key):
            shutil.rmtree(self.scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        write_json(key_file, key)
        self.partitions = partitions or max(16, 4 * int(engine.ray().cluster_resources().get("CPU", 1)))
        self.reused = self.computed = 0
        self.max_keys = max_keys  # of each partition's counters (see merge_counts)

    def summary(self) -> str:
        return (
            f"counted on Ray: {self.computed} shard tasks ({self.reused} shards' counts reused), "
            f"merged by {self.partitions} partition tasks per level; peak RSS {peak_rss_mib():.0f} MiB"
        )

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=f"mine: {desc} (ray)", unit="task", disable=not self.show_progress_bar)

    def _run(self, calls: list[tuple], task, desc: str) -> Iterator[tuple[Any, Any]]:
        """``task.remote(*args)`` for each ``(tag, args)``, a bounded number in flight; yields ``(tag, result)``."""
        ray = self.engine.ray()
        limit = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: dict[Any, Any] = {}
        queue = iter(calls)
        with self._bar(len(calls), desc) as bar:
            while True:
                while len(pending) < limit and (call := next(queue, None)) is not None:
                    pending[task.remote(*call[1])] = call[0]
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                tag = pending.pop(ready[0])
                result = ray.get(ready[0])
                bar.update()
                yield tag, result

    def total(self, name: str, fn: Callable[..., dict], kwargs: dict) -> dict[str, np.ndarray]:
        ray = self.engine.ray()
        folder = self.scratch / name
        out: dict[str, np.ndarray] = {}

        def add(counts: dict[str, np.ndarray]) -> None:
            nonlocal out
            out = {k: out[k] + v for k, v in counts.items()} if out else counts

        todo = []
        for number, path in enumerate(self.paths):
            counts = _load_counts(folder / f"shard-{number:05d}.npz")
            if counts is None:
                todo.append((number, (path, fn, kwargs)))
            else:
                self.reused += 1
                add(counts)
        task = ray.remote(num_cpus=1)(_sum_on_shard)
        for number, counts in self._run(todo, task, name):
            _save_counts(folder / f"shard-{number:05d}.npz", counts)  # small: a value per token id
            self.computed += 1
            add(counts)
        return out

    def frequent(
        self, name: str, fn: Callable[..., dict], kwargs: dict, min_count: int
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        ray = self.engine.ray()
        folder = self.scratch / name.replace(" ", "-")
        shared = ray.put(kwargs)  # once per level, not once per shard
        todo = []
        for number, path in enumerate(self.paths):
            if (folder / "done" / f"shard-{number:05d}").is_file():
                self.reused += 1
            else:
                todo.append((number, (path, fn, shared, self.partitions, str(folder), number)))
        count = ray.remote(num_cpus=1)(_count_partitioned)
        for _ in self._run(todo, count, name):
            self.computed += 1
        merge = ray.remote(num_cpus=1)(_reduce_partition)
        calls = [(p, (str(folder), p, len(self.paths), min_count, self.max_keys)) for p in range(self.partitions)]
        merged: dict[str, list[dict]] = {}
        for _, counts in self._run(calls, merge, f"{name}, merging"):
            for counter in counter_names(counts):
                merged.setdefault(counter, []).append(counts)
        out = {}
        for counter, parts in merged.items():
            keys = np.concatenate([c[f"{counter}.keys"] for c in parts])
            counts = np.concatenate([c[f"{counter}.counts"] for c in parts])
            order = np.argsort(keys)
            out[counter] = (keys[order], counts[order])
        return out
