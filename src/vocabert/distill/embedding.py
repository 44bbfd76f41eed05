"""Stage 3 (``vocabert embed``): the teacher pass, then the entry store.

**Teacher pass** (``<workdir>/teacher``). Every teacher-pass text goes through the teacher once. Per
batch, its sentence embedding (the training target), its token ids and its contextual token vectors
are appended to flat files in the work directory and made durable before the next batch starts: an
interruption loses at most the batch in flight, and the rerun resumes after the last durable one.
The pass does not depend on the vocabulary, so mining again reuses it. Texts are sent in order of
length within a shard, so a batch holds texts of similar length and little padding. The batches
are the same whichever engine computes them (``--engine ray``: :mod:`vocabert.distill.ray_jobs`),
and so are the files they end in.

**Store** (``<workdir>/store``). Each entry's vector is the mean, over its occurrences in the
teacher-pass texts (validation texts excluded), of the mean of the token vectors it covers
(*contextual*). Entries that never occur there are run through the teacher alone, wildcards as
[MASK] (*isolated*, as Model2Vec does); ``--entry-vectors isolated`` makes every entry's vector that way,
for comparison.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError, read_json, write_json, write_npy
from vocabert.distill.cache import EmbeddingCache
from vocabert.distill.corpus import (
    Corpus,
    Shard,
    _pack_strings,
    _unpack_strings,
    hash_fraction,
    open_corpus,
    parent_key,
)
from vocabert.distill.engine import Engine, peak_rss_mib
from vocabert.distill.mining import open_vocabulary
from vocabert.distill.teacher import Teacher
from vocabert.distill.workspace import (
    Workspace,
    begin,
    check_same_teacher,
    digest,
    finish,
    is_current,
    log,
    read_manifest,
    special_tokens,
)
from vocabert.matching import PAD, EntryIndex, Matches
from vocabert.store import VocabularyStore

VALIDATION_SHARE = 0.05  # of the teacher-pass texts: kept out of the entry vectors, picks the best epoch


@dataclass(frozen=True)
class EmbedSettings:
    """Settings of the ``embed`` stage (every default lives here)."""

    teacher_share: float = 1.0  # share of the training texts sent through the teacher (the expensive part)
    dtype: str = "float16"  # precision of the stored entry vectors: float16 or int8 (per-row scales)
    entry_vectors: str = "contextual"  # contextual (mean over occurrences) or isolated (each entry alone)
    teacher_sources: tuple[str, ...] = ()  # corpus sources whose training texts the teacher sees (empty: all)
    batch_size: int = 64  # texts per teacher call, and the unit that an interruption can lose


def select_teacher_texts(
    shard: Shard, keys: list[str], share: float, sources: tuple[str, ...] = ()
) -> tuple[Shard, np.ndarray]:
    """The texts of one (training) shard that the teacher sees (``share`` of them, of ``sources`` only if
    given), and a mask of the validation texts among them (their vectors stay out of the store, so that
    validation measures the student on texts it has not seen through the entries either). ``keys`` are
    the texts' ``source:id``."""
    chosen = np.array(
        [
            (share >= 1.0 or hash_fraction(parent_key(k), "teacher:") < share)
            and (not sources or k.split(":", 1)[0] in sources)
            for k in keys
        ],
        dtype=bool,
    )
    keys = [k for k, c in zip(keys, chosen, strict=True) if c]
    validation = np.array([hash_fraction(parent_key(k), "validation:") < VALIDATION_SHARE for k in keys], dtype=bool)
    return shard.select(chosen), validation


def teacher_texts(corpus: Corpus, share: float, sources: tuple[str, ...] = ()) -> Iterator[tuple[Shard, np.ndarray]]:
    """The training texts that the teacher sees, shard by shard in a fixed order (the teacher-pass
    order), each with its validation mask."""
    for shard in corpus.shards("teacher"):
        yield select_teacher_texts(shard, corpus.keys(shard), share, sources)


# ----------------------------------------------------------------------------------- teacher pass
#
# The teacher pass is cut into *batches*, the same whatever runs them: a shard's teacher texts (as
# teacher_texts selects them) sorted by length, in runs of ``batch_size``. A batch is the unit of
# work (one teacher call; one task of a Ray worker) and of durability. ``run_teacher_batch`` is the
# one function that turns a batch into rows of the teacher pass, and ``PassWriter`` the one place
# that appends rows to the work directory, in the teacher-pass order, whoever computed them.

# The flat files of a teacher pass: name -> (dtype, values per row). Rows are texts, except for the
# per-token files, whose rows are tokens. Raw little-endian arrays, so they can be appended to.
_TEXT_FILES = {"targets": ("<f4", "dim"), "rows": ("<i8", 3)}  # rows: text index, tokens, validation
_TOKEN_FILES = {"token_ids": ("<i4", 1), "token_vectors": ("<f2", "dim")}
PARTS = "parts"  # batches computed out of order, waiting for their turn (Ray engine)


def _to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class _BatchBytes:
    """Bytes of a batch dataclass whose fields are ``shard``, ``number``, ``start``, ``texts`` and then
    arrays (one .npz), so that a Ray task can hand it over or the driver park it on disk."""

    _HEAD = ("shard", "number", "start", "texts")

    def to_bytes(self) -> bytes:
        texts, text_offsets = _pack_strings(self.texts)
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._HEAD}
        head = np.array([self.shard, self.number, self.start], dtype=np.int64)
        return _to_bytes({"head": head, "texts": texts, "text_offsets": text_offsets, **arrays})

    @classmethod
    def from_bytes(cls, data: bytes):
        a = _from_bytes(data)
        shard, number, start = (int(x) for x in a["head"])
        texts = _unpack_strings(a["texts"], a["text_offsets"])
        arrays = {f.name: a[f.name] for f in fields(cls) if f.name not in cls._HEAD}
        return cls(shard, number, start, texts, **arrays)


@dataclass
class TeacherBatch(_BatchBytes):
    """The texts of one teacher call: batch ``number`` of corpus shard ``shard``, after ``start``
    texts of the teacher pass."""

    shard: int
    number: int
    start: int
    texts: list[str]
    ids: np.ndarray  # the corpus's token ids of the texts, concatenated (the teacher must agree)
    lengths: np.ndarray  # tokens per text
    index: np.ndarray  # position of each text in the teacher-pass order (teacher_texts)
    validation: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class BatchRows(_BatchBytes):
    """What the teacher made of one batch: its rows of the teacher-pass files."""

    shard: int
    number: int
    start: int
    texts: list[str]  # for the user's embedding cache
    targets: np.ndarray  # (texts, dim) float32: sentence embeddings
    rows: np.ndarray  # (texts, 3) int64: text index, tokens, validation
    token_ids: np.ndarray  # (tokens,) int32
    token_vectors: np.ndarray  # (tokens, dim) float16: contextual token vectors

    def __len__(self) -> int:
        return len(self.targets)


def shard_batches(
    shard_number: int,
    shard: Shard,
    validation: np.ndarray,
    first: int,
    batch_size: int,
    numbers: Iterable[int] | None = None,
) -> Iterator[TeacherBatch]:
    """The batches of one shard's teacher texts (those of ``numbers``, or all); ``first`` is the
    teacher-pass position of the shard's first text."""
    lengths = np.diff(shard.offsets)
    order = np.argsort(lengths, kind="stable")
    for number in range(-(-len(order) // batch_size)) if numbers is None else numbers:
        batch = order[number * batch_size : (number + 1) * batch_size]
        yield TeacherBatch(
            shard=shard_number,
            number=number,
            start=first + number * batch_size,
            texts=[shard.texts[i] for i in batch],
            ids=np.concatenate([shard.ids[shard.offsets[i] : shard.offsets[i + 1]] for i in batch]),
            lengths=lengths[batch],
            index=first + batch,
            validation=validation[batch],
        )


def teacher_batches(
    corpus: Corpus, share: float, batch_size: int, sources: tuple[str, ...] = ()
) -> Iterator[TeacherBatch]:
    """Every batch of the teacher pass, in the teacher-pass order."""
    first = 0
    for number, (shard, validation) in enumerate(teacher_texts(corpus, share, sources)):
        yield from shard_batches(number, shard, validation, first, batch_size)
        first += len(shard)


def run_teacher_batch(teacher: Teacher, batch: TeacherBatch) -> BatchRows:
    """One batch through the teacher: sentence embeddings (the targets) and contextual token vectors."""
    sentences, ids, vectors = teacher.forward(batch.texts, batch_size=len(batch))
    found = np.concatenate(ids)
    if [len(i) for i in ids] != batch.lengths.tolist() or not np.array_equal(found, batch.ids):
        raise VocabertError(
            "the teacher tokenizes differently from the corpus shards: the corpus was built with "
            "another tokenizer; rebuild it with this teacher"
        )
    return BatchRows(
        shard=batch.shard,
        number=batch.number,
        start=batch.start,
        texts=batch.texts,
        targets=np.asarray(sentences, dtype=np.float32),
        rows=np.stack([batch.index, batch.lengths, batch.validation], axis=1).astype(np.int64),
        token_ids=found.astype(np.int32),
        token_vectors=np.concatenate(vectors).astype(np.float16),
    )


class _AppendFile:
    """A raw array file that grows by appends; ``truncate`` cuts it back to a durable length."""

    def __init__(self, path: Path, dtype: str, width: int):
        self.path, self.dtype, self.width = path, np.dtype(dtype), width
        self.file = open(path, "ab")  # noqa: SIM115 (closed by close())

    def truncate(self, rows: int) -> None:
        self.file.truncate(rows * self.width * self.dtype.itemsize)

    def append(self, array: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(array, dtype=self.dtype).tobytes())

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


class PassWriter:
    """Appends batches to the teacher pass in ``out_dir`` in the teacher-pass order, each made durable
    (synced, then counted in ``progress.json``) before the next. Opening it resumes after the last
    durable batch of an interrupted pass with the same key (and cuts what a killed batch half-wrote)."""

    def __init__(self, out_dir: str | Path, key: dict, dim: int, cache: EmbeddingCache | None = None):
        self.dir = begin(out_dir)
        self.key, self.dim, self.cache = key, dim, cache
        self.progress_file = self.dir / "progress.json"
        self.texts = self.tokens = 0
        if self.progress_file.is_file():
            progress = read_json(self.progress_file, "teacher pass progress")
            if progress.get("key") == key:
                self.texts, self.tokens = int(progress["texts"]), int(progress["tokens"])
        self.files = {
            name: _AppendFile(self.dir / f"{name}.bin", dtype, dim if width == "dim" else width)
            for name, (dtype, width) in (_TEXT_FILES | _TOKEN_FILES).items()
        }
        for name, f in self.files.items():
            f.truncate(self.tokens if name in _TOKEN_FILES else self.texts)

    def append(self, out: BatchRows) -> None:
        if out.start != self.texts:  # the order is what makes a batch count once, never twice
            raise VocabertError(
                f"teacher pass: batch {out.number} of shard {out.shard} starts at text {out.start}, "
                f"but {self.texts} texts are written"
            )
        if out.targets.shape[1:] != (self.dim,) or out.token_vectors.shape[1:] != (self.dim,):
            raise VocabertError(f"teacher pass: the teacher gave {out.targets.shape[1]}-dim vectors, not {self.dim}")
        self.files["targets"].append(out.targets)
        self.files["rows"].append(out.rows)
        self.files["token_ids"].append(out.token_ids)
        self.files["token_vectors"].append(out.token_vectors)
        for f in self.files.values():
            f.sync()
        self.texts, self.tokens = self.texts + len(out), self.tokens + len(out.token_ids)
        write_json(self.progress_file, {"key": self.key, "texts": self.texts, "tokens": self.tokens})
        if self.cache is not None:
            self.cache.put(out.texts, out.targets)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        if self.cache is not None:
            self.cache.flush()

    def finish(self) -> TeacherPass:
        """Mark the pass complete (its manifest, last), then drop its progress and leftovers."""
        self.close()
        if self.texts == 0:
            raise VocabertError("no training texts for the teacher pass (is the held-out fraction or share too high?)")
        finish(self.dir, "teacher pass", self.key, texts=self.texts, tokens=self.tokens, dim=self.dim)
        reset_progress(self.dir)
        return TeacherPass.open(self.dir)


def reset_progress(directory: str | Path) -> None:
    """Forget an interrupted teacher pass: its progress and the batches waiting for their turn."""
    (Path(directory) / "progress.json").unlink(missing_ok=True)
    shutil.rmtree(Path(directory) / PARTS, ignore_errors=True)


@dataclass
class TeacherPass:
    """A finished teacher pass, memory-mapped: rows are texts in the order the teacher saw them."""

    targets: np.ndarray  # (texts, dim) float32: the teacher's sentence embeddings
    text_index: np.ndarray  # (texts,) position of each text in the teacher-pass order (teacher_texts)
    validation: np.ndarray  # (texts,) bool
    token_offsets: np.ndarray  # (texts + 1,) rows of text i are token_offsets[i]:token_offsets[i+1]
    token_ids: np.ndarray  # (tokens,) int32
    token_vectors: np.ndarray  # (tokens, dim) float16: the teacher's contextual token vectors

    def __len__(self) -> int:
        return len(self.targets)

    @classmethod
    def open(cls, directory: str | Path) -> TeacherPass:
        directory = Path(directory)
        m = read_manifest(directory, "teacher pass")
        texts, tokens, dim = int(m["texts"]), int(m["tokens"]), int(m["dim"])

        def mapped(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
            path = directory / f"{name}.bin"
            need = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if not path.is_file() or path.stat().st_size != need:
                raise VocabertError(f"teacher pass {path} is missing or has the wrong size; run `vocabert embed`")
            return np.memmap(path, dtype=dtype, mode="r", shape=shape) if need else np.zeros(shape, dtype)

        rows = mapped("rows", "<i8", (texts, 3))
        offsets = np.zeros(texts + 1, dtype=np.int64)
        np.cumsum(rows[:, 1], out=offsets[1:])
        return cls(
            targets=mapped("targets", "<f4", (texts, dim)),
            text_index=np.asarray(rows[:, 0]),
            validation=np.asarray(rows[:, 2]).astype(bool),
            token_offsets=offsets,
            token_ids=mapped("token_ids", "<i4", (tokens,)),
            token_vectors=mapped("token_vectors", "<f2", (tokens, dim)),
        )

    def chunk_rows(self, texts_per_chunk: int = 2048) -> list[slice]:
        """Runs of texts, the unit of the passes over the teacher pass."""
        return [slice(a, min(a + texts_per_chunk, len(self))) for a in range(0, len(self), texts_per_chunk)]

    def chunk(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of texts ``rows`` and their offsets, relative to the chunk."""
        lo, hi = self.token_offsets[rows.start], self.token_offsets[rows.stop]
        return np.asarray(self.token_ids[lo:hi], dtype=np.int64), self.token_offsets[rows.start : rows.stop + 1] - lo

    def chunks(self, texts_per_chunk: int = 2048) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """``(rows, token ids, offsets)`` over runs of texts; offsets are relative to the chunk."""
        for rows in self.chunk_rows(texts_per_chunk):
            yield rows, *self.chunk(rows)


def run_teacher_pass(
    corpus: Corpus,
    out_dir: str | Path,
    teacher: Teacher,
    key: dict,
    settings: EmbedSettings,
    cache: EmbeddingCache | None = None,
    show_progress_bar: bool = True,
) -> TeacherPass:
    """Send the teacher-pass texts through the teacher in this process, appending each batch
    durably; resumes. (``vocabert.distill.engine.ray_teacher_pass`` does the same on Ray.)

    With ``cache``, the targets also go into the user's embedding cache, so that evaluating on
    those texts later (e.g. the retrieval corpus) costs no second teacher call."""
    writer = PassWriter(out_dir, key, teacher.dim, cache)
    if writer.texts:
        log(f"embed: resuming the teacher pass after {writer.texts} texts")
    # The bar's total is an estimate: counting would read every shard.
    counts = [
        c for s, c in corpus.manifest["counts"].items() if not settings.teacher_sources or s in settings.teacher_sources
    ]
    total = round(settings.teacher_share * sum(c["texts"] - c["heldout"] - c.get("unseen", 0) for c in counts))
    quiet = not show_progress_bar
    bar = tqdm(total=total, initial=writer.texts, desc="embed: teacher pass", unit="text", disable=quiet)
    try:
        for batch in teacher_batches(corpus, settings.teacher_share, settings.batch_size, settings.teacher_sources):
            if batch.start + len(batch) <= writer.texts:
                continue
            writer.append(run_teacher_batch(teacher, batch))
            bar.update(len(batch))
    finally:
        writer.close()
        bar.close()
    return writer.finish()


# ------------------------------------------------------------------------------------------ store


def occurrence_means(matches: Matches, patterns: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per match: the mean of the vectors of the tokens its entry covers (wildcards left out)."""
    fixed = patterns[matches.entry] >= 0  # (matches, width): positions that are tokens, not wildcards
    base = offsets[matches.text] + matches.start
    acc = np.zeros((len(matches), vectors.shape[1]), dtype=np.float32)
    for j in range(patterns.shape[1]):
        rows = np.flatnonzero(fixed[:, j])
        acc[rows] += vectors[base[rows] + j]
    acc /= fixed.sum(axis=1, keepdims=True)
    return acc


def occurrence_sums(
    matches: Matches, patterns: np.ndarray, vectors: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per entry found: the sum over its occurrences of the mean vector of the tokens it covers."""
    acc = occurrence_means(matches, patterns, vectors, offsets)
    order = np.argsort(matches.entry, kind="stable")
    entries, first = np.unique(matches.entry[order], return_index=True)
    sums = np.add.reduceat(acc[order], first, axis=0)
    counts = np.diff(np.append(first, len(order)))
    return entries, sums, counts


def isolated_vectors(teacher: Teacher, patterns: np.ndarray, cls_id: int, sep_id: int, mask_id: int) -> np.ndarray:
    """Each pattern alone through the teacher (wildcards as [MASK]); mean of its tokens' vectors."""
    patterns = [p[p != PAD] for p in patterns]
    rows = [[cls_id, *np.where(p >= 0, p, mask_id).tolist(), sep_id] for p in patterns]
    out = np.zeros((len(patterns), teacher.dim), dtype=np.float32)
    for i, (p, vecs) in enumerate(zip(patterns, teacher.token_vectors(rows), strict=True)):
        out[i] = vecs[np.flatnonzero(p >= 0) + 1].mean(axis=0)  # +1 skips [CLS]
    return out


def chunk_occurrence_sums(
    passed: TeacherPass, index: EntryIndex, patterns: np.ndarray, rows: slice
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`occurrence_sums` over the texts ``rows`` of the teacher pass, validation texts left out:
    the per-chunk work of the entry vectors, whichever engine runs it."""
    ids, offsets = passed.chunk(rows)
    matches = index.match(ids, offsets)
    matches = matches.subset(~passed.validation[rows][matches.text])
    lo = passed.token_offsets[rows.start]
    vectors = np.asarray(passed.token_vectors[lo : lo + len(ids)], dtype=np.float32)
    return occurrence_sums(matches, patterns, vectors, offsets)


# Partial sums of the entry vectors from elsewhere (Ray): (patterns, vocab_size) -> (entries, sums, counts), ...
PartialSums = Callable[[np.ndarray, int], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]]


def entry_vectors(
    passed: TeacherPass,
    patterns: np.ndarray,
    vocab_size: int,
    show_progress_bar: bool = True,
    partial_sums: PartialSums | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Contextual vector of every entry (zero where it never occurs) and its number of occurrences.
    The sums come chunk by chunk from :func:`chunk_occurrence_sums`, here, or from ``partial_sums``."""
    patterns = patterns.astype(np.int64)
    dim = passed.token_vectors.shape[1]
    sums = np.zeros((len(patterns), dim), dtype=np.float64)
    counts = np.zeros(len(patterns), dtype=np.int64)
    if partial_sums is None:
        index = EntryIndex(patterns, vocab_size)
        chunks = tqdm(passed.chunk_rows(), desc="embed: entry vectors", unit="chunk", disable=not show_progress_bar)
        partial = (chunk_occurrence_sums(passed, index, patterns, rows) for rows in chunks)
    else:
        partial = partial_sums(patterns, vocab_size)
    for entries, entry_sums, entry_counts in partial:
        sums[entries] += entry_sums
        counts[entries] += entry_counts
    seen = counts > 0
    vectors = np.zeros((len(patterns), dim), dtype=np.float32)
    vectors[seen] = (sums[seen] / counts[seen, None]).astype(np.float32)
    return vectors, counts


def run_embedding(
    ws: Workspace, settings: EmbedSettings, force: bool = False, engine: Engine | None = None, pass_only: bool = False
) -> VocabularyStore | None:
    """The ``embed`` stage: the teacher pass (skipped when current, resumed when interrupted), then the
    store (not with ``pass_only``: the pass needs no vocabulary, and semantic mining reads it). With a Ray
    ``engine`` the teacher's work runs on Ray (:mod:`vocabert.distill.ray_jobs`)."""
    if engine is None:
        with Engine() as local:
            return run_embedding(ws, settings, force, local, pass_only)
    if settings.dtype not in ("float16", "int8"):
        raise VocabertError(f"unknown store dtype {settings.dtype!r}: use float16 or int8")
    if settings.entry_vectors not in ("contextual", "isolated"):
        raise VocabertError(f"unknown entry vectors {settings.entry_vectors!r}: use contextual or isolated")
    corpus = open_corpus(ws)
    check_same_teacher(ws.provenance, corpus.provenance, f"corpus {ws.corpus_dir}")
    unknown = sorted(set(settings.teacher_sources) - set(corpus.sources))
    if unknown:
        raise VocabertError(
            f"unknown teacher source(s) {', '.join(unknown)}: the corpus has {', '.join(corpus.sources)}"
        )
    pass_settings = {"teacher_share": settings.teacher_share, "batch_size": settings.batch_size}
    if settings.teacher_sources:  # (only when given, so that passes over every source keep their key)
        pass_settings["teacher_sources"] = sorted(settings.teacher_sources)
    pass_key = {
        "provenance": ws.provenance,
        "settings": pass_settings,
        "inputs": {"corpus": digest(ws.corpus_dir)},
    }
    if force:
        reset_progress(ws.teacher_dir)
    if not force and is_current(ws.teacher_dir, "teacher pass", pass_key):
        passed = TeacherPass.open(ws.teacher_dir)
        log(f"embed: teacher pass {ws.teacher_dir} is up to date ({len(passed)} texts)")
    elif engine.is_ray:
        from vocabert.distill.ray_jobs import ray_teacher_pass

        cache = ws.teacher_cache()
        passed, stats = ray_teacher_pass(
            engine, corpus, ws.teacher_dir, ws.teacher_path, pass_key, settings, cache, ws.show_progress_bar
        )
        rate = (stats["texts"] - stats["resumed_texts"]) / stats["seconds"]
        log(
            f"embed: {len(passed)} texts, {len(passed.token_ids)} tokens through the teacher on Ray -> "
            f"{ws.teacher_dir} ({stats['computed_batches']} of {stats['batches']} batches computed; Ray started in "
            f"{engine.start_seconds:.1f} s, pass {stats['seconds']:.0f} s of which {stats['plan_seconds']:.1f} s "
            f"planning, first batch back at {stats['first_batch_seconds']:.1f} s, {rate:.1f} texts/s if none was "
            f"resumed; peak RSS: driver {peak_rss_mib():.0f} MiB, "
            f"teacher workers {stats['worker_rss_mib']:.0f} MiB)"
        )
    else:
        teacher = ws.teacher()
        started = time.perf_counter()
        passed = run_teacher_pass(
            corpus, ws.teacher_dir, teacher, pass_key, settings, ws.teacher_cache(), ws.show_progress_bar
        )
        seconds = time.perf_counter() - started
        log(
            f"embed: {len(passed)} texts, {len(passed.token_ids)} tokens through the teacher -> {ws.teacher_dir} "
            f"({seconds:.0f} s, {len(passed) / seconds:.1f} texts/s if none was resumed; "
            f"peak RSS {peak_rss_mib():.0f} MiB)"
        )

    if pass_only:
        return None
    vocab, _ = open_vocabulary(ws)
    store_key = {
        "provenance": ws.provenance,
        # (entry_vectors only when not the default, so that existing stores keep their key)
        "settings": {"dtype": settings.dtype}
        | ({"entry_vectors": settings.entry_vectors} if settings.entry_vectors != "contextual" else {}),
        "inputs": {"vocabulary": digest(ws.vocab_dir), "teacher pass": digest(ws.teacher_dir)},
    }
    if not force and is_current(ws.store_dir, "store", store_key):
        log(f"embed: {ws.store_dir} is up to date")
        return VocabularyStore.load(ws.store_dir / "embeddings.safetensors")
    out_dir = begin(ws.store_dir)
    partial_sums = None
    if engine.is_ray:
        from vocabert.distill.ray_jobs import ray_entry_sums

        def partial_sums(patterns: np.ndarray, vocab_size: int):
            return ray_entry_sums(engine, ws.teacher_dir, patterns, vocab_size, ws.show_progress_bar)

    vocab_size = int(corpus.manifest["vocab_size"])
    vectors, counts = entry_vectors(passed, vocab.patterns, vocab_size, ws.show_progress_bar, partial_sums)
    alone = np.flatnonzero(counts == 0) if settings.entry_vectors == "contextual" else np.arange(len(counts))
    if len(alone):
        special = special_tokens(ws.tokenizer_text)
        patterns = vocab.patterns[alone].astype(np.int64)
        ids = special["cls"], special["sep"], special["mask"]
        if engine.is_ray:  # the driver loads no teacher
            from vocabert.distill.ray_jobs import ray_isolated_vectors

            vectors[alone] = ray_isolated_vectors(engine, ws.teacher_path, patterns, *ids)
        else:
            vectors[alone] = isolated_vectors(ws.teacher(), patterns, *ids)
    metadata = {"teacher": ws.provenance["teacher"], "dim": vectors.shape[1], "dtype": settings.dtype}
    store = VocabularyStore.from_float(vocab.patterns, vectors, settings.dtype, metadata)
    store.save(out_dir / "embeddings.safetensors")
    write_npy(out_dir / "occurrences.npy", counts)
    contextual = len(counts) - len(alone)
    finish(out_dir, "store", store_key, contextual=contextual, isolated=int(len(alone)))
    log(f"embed: {contextual} entries contextual, {len(alone)} isolated -> {out_dir}")
    return store


def open_store(ws: Workspace) -> tuple[VocabularyStore, dict]:
    """The finished entry store of a work directory and its manifest, checked against the teacher."""
    manifest = read_manifest(ws.store_dir, "store")
    check_same_teacher(ws.provenance, manifest["key"]["provenance"], f"entry store {ws.store_dir}")
    return VocabularyStore.load(ws.store_dir / "embeddings.safetensors"), manifest


def open_teacher_pass(ws: Workspace) -> TeacherPass:
    """The finished teacher pass of a work directory, checked against the teacher."""
    manifest = read_manifest(ws.teacher_dir, "teacher pass")
    check_same_teacher(ws.provenance, manifest["key"]["provenance"], f"teacher pass {ws.teacher_dir}")
    return TeacherPass.open(ws.teacher_dir)
