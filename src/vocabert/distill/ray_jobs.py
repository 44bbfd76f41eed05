"""The Ray engine (``--engine ray``): :class:`RayEngine` starts or joins Ray, and its jobs run the teacher
pass on Ray Data, and the entry vectors' sums and the counting of mining as Ray tasks.

Ray is an optional extra (``pip install 'vocabert[ray]'``): nothing imports it, or this module, unless
``--engine ray`` is asked for. With ``--ray-address ADDR`` (or ``RAY_ADDRESS``, Ray's own convention)
the command joins that cluster; otherwise it starts a local Ray on this machine's cores and stops it
when it is done.

The jobs run the local engine's per-batch and per-shard functions (the stages'); what this module adds
is only where they run, and how their results come back exactly once.

**Teacher pass.** Ray Data reads the corpus shards and cuts them into the teacher pass's batches
(:func:`~vocabert.distill.embedding.shard_batches`, as the local pass does); a pool of actors,
each loading the teacher once (CPU, or GPU with ``num_gpus``), runs
:func:`~vocabert.distill.embedding.run_teacher_batch` on each batch. The driver appends every
result through the local path's :class:`~vocabert.distill.embedding.PassWriter`, in the
teacher-pass order: the next batch at once, a batch that arrives early after it waits in
``teacher/parts/part-<shard>-<batch>.npz`` (written atomically under the batch's name, so a batch
that Ray computes twice overwrites its file; each part is read once and deleted once durable). A
batch is appended only at its place, so nothing counts twice or goes missing. The work directory
ends with the same files as the local pass, ``progress.json`` included, and an interrupted job
resumes after the durable batches and the waiting parts, whichever engine resumes it.

**Entry vectors.** The sums of the contextual vectors of every entry's occurrences come from Ray
tasks, each over a share of the teacher pass's chunks (read memory-mapped from the work directory)
with the local path's :func:`~vocabert.distill.embedding.chunk_occurrence_sums`; the driver adds
them up, once each. The entries that never occur are run through the teacher in a Ray task too, so
the driver never loads the teacher.

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
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError, atomic_write, read_json, write_json
from vocabert.distill.cache import EmbeddingCache
from vocabert.distill.corpus import Corpus, load_shard, shard_keys
from vocabert.distill.embedding import (
    BatchRows,
    EmbedSettings,
    PassWriter,
    TeacherBatch,
    chunk_occurrence_sums,
    isolated_vectors,
    run_teacher_batch,
    select_teacher_texts,
    shard_batches,
)
from vocabert.distill.engine import EngineSettings
from vocabert.distill.mining import PARTIAL, counter_names, merge_counts
from vocabert.distill.teacher import Teacher, embedding_dim
from vocabert.distill.teacher_pass import PARTS, TeacherPass
from vocabert.distill.workspace import Workspace, log, peak_rss_mib
from vocabert.matching import EntryIndex

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

    def teacher_pass(self, ws: Workspace, corpus: Corpus, key: dict, settings: EmbedSettings) -> TeacherPass:
        """:func:`ray_teacher_pass` into the work directory, with the user's embedding cache."""
        passed, stats = ray_teacher_pass(
            self, corpus, ws.teacher_dir, ws.teacher_path, key, settings, ws.teacher_cache(), ws.show_progress_bar
        )
        rate = (stats["texts"] - stats["resumed_texts"]) / stats["seconds"]
        log(
            f"embed: {len(passed)} texts, {len(passed.token_ids)} tokens through the teacher on Ray -> "
            f"{ws.teacher_dir} ({stats['computed_batches']} of {stats['batches']} batches computed; Ray started in "
            f"{self.start_seconds:.1f} s, pass {stats['seconds']:.0f} s of which {stats['plan_seconds']:.1f} s "
            f"planning, first batch back at {stats['first_batch_seconds']:.1f} s, {rate:.1f} texts/s if none was "
            f"resumed; peak RSS: driver {peak_rss_mib():.0f} MiB, "
            f"teacher workers {stats['worker_rss_mib']:.0f} MiB)"
        )
        return passed

    def entry_sums(
        self, ws: Workspace, passed: TeacherPass, patterns: np.ndarray, vocab_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:func:`ray_entry_sums` over the work directory's teacher pass."""
        return ray_entry_sums(self, ws.teacher_dir, patterns, vocab_size, ws.show_progress_bar)

    def isolated_vectors(
        self, ws: Workspace, patterns: np.ndarray, cls_id: int, sep_id: int, mask_id: int
    ) -> np.ndarray:
        """:func:`ray_isolated_vectors`: the driver loads no teacher."""
        return ray_isolated_vectors(self, ws.teacher_path, patterns, cls_id, sep_id, mask_id)

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


def _teacher_texts_of(path: str, sources: list[str], share: float, only: tuple[str, ...]):
    shard = load_shard(path, "teacher")
    return select_teacher_texts(shard, shard_keys(shard, sources), share, only)


def _count_teacher_texts(row: dict, sources: list[str], share: float, only: tuple[str, ...]) -> dict:
    selected, _ = _teacher_texts_of(row["path"], sources, share, only)
    return {"shard": row["shard"], "texts": len(selected)}


def _read_batches(
    row: dict, sources: list[str], share: float, only: tuple[str, ...], batch_size: int
) -> Iterator[dict]:
    """The batches of one shard still to do (the teacher-pass batches of the local path)."""
    selected, validation = _teacher_texts_of(row["path"], sources, share, only)
    skip = {int(b) for b in (row["skip"] if row["skip"] is not None else [])}
    numbers = [b for b in range(int(row["from"]), -(-len(selected) // batch_size)) if b not in skip]
    for batch in shard_batches(int(row["shard"]), selected, validation, int(row["first"]), batch_size, numbers):
        yield {"shard": batch.shard, "number": batch.number, "data": batch.to_bytes()}


class TeacherWorker:
    """A Ray Data actor: one teacher, loaded once per worker, run on one batch per call."""

    def __init__(self, teacher_path: str, device: str = "cpu"):
        self.teacher = Teacher(teacher_path, device=device)

    def run(self, batch: TeacherBatch) -> BatchRows:
        return run_teacher_batch(self.teacher, batch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = [self.run(TeacherBatch.from_bytes(bytes(data))) for data in batch["data"]]
        return {
            "shard": np.asarray(batch["shard"]),
            "number": np.asarray(batch["number"]),
            "texts": np.array([len(o) for o in outputs], dtype=np.int64),
            "data": np.array([o.to_bytes() for o in outputs], dtype=object),
            "rss_mib": np.full(len(outputs), peak_rss_mib()),
        }


class _Layout:
    """Where each batch falls in the teacher-pass order, from the number of teacher texts per shard."""

    def __init__(self, texts_per_shard: np.ndarray, batch_size: int):
        self.texts, self.batch_size = np.asarray(texts_per_shard, dtype=np.int64), batch_size
        self.ends = np.cumsum(self.texts)
        self.firsts = self.ends - self.texts
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def batches(self, shard: int) -> int:
        return -(-int(self.texts[shard]) // self.batch_size)

    def start(self, shard: int, number: int) -> int:
        return int(self.firsts[shard]) + number * self.batch_size

    def end(self, shard: int, number: int) -> int:
        return min(self.start(shard, number + 1), int(self.ends[shard]))

    def at(self, start: int) -> tuple[int, int]:
        """The batch that begins at text ``start`` of the teacher pass."""
        shard = int(np.searchsorted(self.ends, start, side="right"))
        return shard, (start - int(self.firsts[shard])) // self.batch_size


class _Parts:
    """Results of batches, one file each, named by the batch, waiting to be appended in order."""

    def __init__(self, directory: Path, key: dict):
        self.dir = directory
        key_file = directory / "key.json"
        if directory.exists() and (not key_file.is_file() or read_json(key_file, "parts") != key):
            shutil.rmtree(directory)  # left by a pass with other settings or inputs
        directory.mkdir(parents=True, exist_ok=True)
        write_json(key_file, key)

    def path(self, shard: int, number: int) -> Path:
        return self.dir / f"part-{shard:05d}-{number:06d}.npz"

    def present(self) -> set[tuple[int, int]]:
        """The batches whose part is here (a part that does not open is removed: it is computed again)."""
        found = set()
        for path in self.dir.glob("part-*.npz"):
            try:
                with np.load(path, allow_pickle=False) as z:  # reads the archive's directory only
                    complete = {"head", "targets", "rows", "token_ids", "token_vectors"} <= set(z.files)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile):
                complete = False
            if complete:
                found.add((int(path.stem.split("-")[1]), int(path.stem.split("-")[2])))
            else:
                path.unlink(missing_ok=True)
        return found

    def write(self, shard: int, number: int, data: bytes) -> None:
        atomic_write(self.path(shard, number), lambda p: p.write_bytes(data))

    def read(self, shard: int, number: int) -> BatchRows | None:
        try:
            return BatchRows.from_bytes(self.path(shard, number).read_bytes())
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def discard(self, shard: int, number: int) -> None:
        self.path(shard, number).unlink(missing_ok=True)


def _append_ready(writer: PassWriter, parts: _Parts, layout: _Layout) -> int:
    """Append every part that continues the pass, in order; returns the texts appended."""
    appended = 0
    while writer.texts < layout.total:
        shard, number = layout.at(writer.texts)
        rows = parts.read(shard, number)
        if rows is None:
            break
        writer.append(rows)
        parts.discard(shard, number)  # after it is durable: a crash in between leaves a part below the prefix
        appended += len(rows)
    return appended


def _arrived(writer: PassWriter, parts: _Parts, layout: _Layout, shard: int, number: int, data: bytes) -> None:
    """A batch's result is in: appended at once if it is the next one, else kept as a part until
    its turn (a result that arrives twice is written twice under one name, and appended once)."""
    if writer.texts < layout.total and layout.at(writer.texts) == (shard, number):
        writer.append(BatchRows.from_bytes(data))
        parts.discard(shard, number)
    elif layout.end(shard, number) > writer.texts:
        parts.write(shard, number, data)
    _append_ready(writer, parts, layout)


def ray_teacher_pass(
    engine: RayEngine,
    corpus: Corpus,
    out_dir: str | Path,
    teacher_path: str | Path,
    key: dict,
    settings: EmbedSettings,
    cache: EmbeddingCache | None = None,
    show_progress_bar: bool = True,
    worker_cls: type | None = None,
) -> tuple[TeacherPass, dict]:
    """The teacher pass on Ray (see the module's docstring); returns it and what the run did.
    ``worker_cls`` replaces :class:`TeacherWorker` (tests use it to kill a worker)."""
    ray = engine.ray()
    started = time.perf_counter()
    worker_cls = worker_cls or TeacherWorker
    writer = PassWriter(out_dir, key, embedding_dim(teacher_path), cache)
    parts = _Parts(writer.dir / PARTS, key)
    sources, share, batch_size = corpus.sources, settings.teacher_share, settings.batch_size
    only = tuple(settings.teacher_sources)
    shards = [{"shard": i, "path": str(p)} for i, p in enumerate(corpus.shard_paths)]
    planned = ray.data.from_items(shards).map(
        _count_teacher_texts, fn_kwargs={"sources": sources, "share": share, "only": only}
    )
    texts_per_shard = np.zeros(len(shards), dtype=np.int64)
    for row in planned.iter_rows():
        texts_per_shard[int(row["shard"])] = int(row["texts"])
    layout = _Layout(texts_per_shard, batch_size)
    stats = {"texts": layout.total, "batches": sum(layout.batches(s) for s in range(len(shards)))}
    stats |= {"resumed_texts": writer.texts, "computed_batches": 0, "worker_rss_mib": 0.0, "first_batch_seconds": 0.0}
    stats["plan_seconds"] = time.perf_counter() - started  # counting the teacher texts of every shard

    for shard, number in sorted(parts.present()):
        if shard >= len(shards) or layout.end(shard, number) <= writer.texts:
            parts.discard(shard, number)  # appended already (the driver stopped before deleting it)
    _append_ready(writer, parts, layout)
    waiting = parts.present()  # computed, not yet appended: not computed again
    todo = []
    for shard in range(len(shards)):
        if layout.batches(shard) == 0 or layout.end(shard, layout.batches(shard) - 1) <= writer.texts:
            continue
        first = 0 if writer.texts <= layout.firsts[shard] else layout.at(writer.texts)[1]
        skip = sorted(n for s, n in waiting if s == shard)
        if first + len([n for n in skip if n >= first]) < layout.batches(shard):
            row = {"shard": shard, "path": str(corpus.shard_paths[shard]), "first": int(layout.firsts[shard])}
            todo.append(row | {"from": first, "skip": skip})
    done = writer.texts + sum(layout.end(s, n) - layout.start(s, n) for s, n in waiting)
    if writer.texts or waiting:
        log(f"embed: resuming the teacher pass after {writer.texts} texts ({len(waiting)} batches waiting)")
    quiet = not show_progress_bar
    bar = tqdm(total=layout.total, initial=done, desc="embed: teacher pass (ray)", unit="text", disable=quiet)
    try:
        if todo:
            workers = engine.workers()
            gpus = engine.settings.ray_worker_gpus
            each = f"{gpus:g} GPU" if gpus else f"{engine.settings.ray_worker_cpus:g} CPU"
            log(
                f"embed: {stats['batches']} batches of {layout.total} texts, {len(todo)} shards to read, "
                f"{workers} teacher workers ({each} each)"
            )
            context = ray.data.DataContext.get_current()
            block_size, context.target_max_block_size = context.target_max_block_size, 1  # a block per batch
            try:
                batches = ray.data.from_items(todo).flat_map(
                    _read_batches,
                    fn_kwargs={"sources": sources, "share": share, "only": only, "batch_size": batch_size},
                    num_cpus=0,  # light: the teacher workers hold the CPUs
                    compute=ray.data.TaskPoolStrategy(size=2),  # a shard is read in well under a second
                )
                results = batches.map_batches(
                    worker_cls,
                    batch_size=1,
                    compute=ray.data.ActorPoolStrategy(size=workers),
                    fn_constructor_kwargs={"teacher_path": str(teacher_path), "device": "cuda" if gpus else "cpu"},
                    num_cpus=engine.settings.ray_worker_cpus,
                    num_gpus=gpus,
                )  # Ray Data restarts a dead worker and retries the batch it held (its actor defaults)
                for row in results.iter_rows():
                    if not stats["computed_batches"]:  # reading, and the workers loading the teacher, took this long
                        stats["first_batch_seconds"] = time.perf_counter() - started
                    _arrived(writer, parts, layout, int(row["shard"]), int(row["number"]), bytes(row["data"]))
                    stats["computed_batches"] += 1
                    stats["worker_rss_mib"] = max(stats["worker_rss_mib"], float(row["rss_mib"]))
                    bar.update(int(row["texts"]))
            finally:
                context.target_max_block_size = block_size
        _append_ready(writer, parts, layout)
    finally:
        stats["seconds"] = time.perf_counter() - started
        writer.close()
        bar.close()
    if writer.texts != layout.total:
        raise VocabertError(
            f"the Ray teacher pass ended with {writer.texts} of {layout.total} texts written; rerun to resume"
        )
    return writer.finish(), stats


def _range_sums(
    teacher_dir: str, patterns: np.ndarray, vocab_size: int, chunks: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entry sums over some chunks of the teacher pass (read memory-mapped from the work directory)."""
    passed = TeacherPass.open(teacher_dir)
    index = EntryIndex(patterns, vocab_size)
    sums = np.zeros((len(patterns), passed.token_vectors.shape[1]), dtype=np.float64)
    counts = np.zeros(len(patterns), dtype=np.int64)
    for start, stop in chunks:
        entries, entry_sums, entry_counts = chunk_occurrence_sums(passed, index, patterns, slice(start, stop))
        sums[entries] += entry_sums
        counts[entries] += entry_counts
    found = np.flatnonzero(counts)
    return found, sums[found].astype(np.float32), counts[found]


def ray_entry_sums(
    engine: RayEngine, teacher_dir: str | Path, patterns: np.ndarray, vocab_size: int, show_progress_bar: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Partial sums of the entry vectors (see ``embedding.entry_vectors``) from Ray tasks, each over a
    share of the teacher pass's chunks, each result handed over once (Ray retries a lost task)."""
    ray = engine.ray()
    passed = TeacherPass.open(teacher_dir)
    chunks = [(rows.start, rows.stop) for rows in passed.chunk_rows(512)]  # smaller than the local path's
    workers = engine.workers()
    per_task = max(1, -(-len(chunks) // (2 * workers)))  # two tasks per worker: balance, and bounded results
    task = ray.remote(num_cpus=engine.settings.ray_worker_cpus)(_range_sums)
    shared = ray.put(patterns)
    pending = [
        task.remote(str(teacher_dir), shared, vocab_size, chunks[i : i + per_task])
        for i in range(0, len(chunks), per_task)
    ]
    quiet = not show_progress_bar
    with tqdm(total=len(pending), desc="embed: entry vectors (ray)", unit="task", disable=quiet) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
            bar.update()


def _isolated(teacher_path: str, patterns: np.ndarray, cls_id: int, sep_id: int, mask_id: int) -> np.ndarray:
    return isolated_vectors(Teacher(teacher_path), patterns, cls_id, sep_id, mask_id)


def ray_isolated_vectors(engine: RayEngine, teacher_path: str | Path, patterns: np.ndarray, *ids: int) -> np.ndarray:
    """:func:`~vocabert.distill.embedding.isolated_vectors` in a Ray task (the driver loads no teacher)."""
    ray = engine.ray()
    gpus = engine.settings.ray_worker_gpus
    task = ray.remote(num_cpus=engine.settings.ray_worker_cpus, num_gpus=gpus)(_isolated)
    return ray.get(task.remote(str(teacher_path), patterns, *ids))


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
