"""Stage 3 (``vocabert embed``): the teacher pass, then the entry store.

**Teacher pass** (``<workdir>/teacher``, :mod:`vocabert.distill.teacher_pass`). Every teacher-pass text
goes through the teacher once. What it keeps grows with the corpus only as it must: per text the sentence
embedding (the training target), per token its id, and the contextual token vectors of a bounded sample of
texts (``--token-sample``, for semantic mining and token-level studies). What is only needed as a sum is
not kept per token: while the teacher runs, each vocabulary entry's occurrence vectors are added up, so the
entry vectors need no second look at the tokens. The pass is planned before it starts (texts in order of
length within a shard, in batches; every batch's place in the files is known), so whoever computes a batch
writes its rows in place; progress (the batches done and the entry sums so far) is checkpointed, and an
interrupted pass resumes from its last checkpoint. The pass does not depend on the vocabulary: mining again
reuses it, and only the entry sums of the new vocabulary are computed again (from the token sample when it
holds every token, else by running the teacher over the texts once more). The batches are the same whichever
engine computes them (:mod:`vocabert.distill.engine` in this process, :mod:`vocabert.distill.ray_jobs` on
Ray), and so are the files they end in.

**Store** (``<workdir>/store``). Each entry's vector is the mean, over its occurrences in the
teacher-pass texts (validation texts excluded), of the mean of the token vectors it covers
(*contextual*). Entries that never occur there are run through the teacher alone, wildcards as
[MASK] (*isolated*, as Model2Vec does); ``--entry-vectors isolated`` makes every entry's vector that way,
for comparison.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vocabert.artifacts import VocabertError, atomic_write, write_npy
from vocabert.distill.corpus import Corpus, Shard, hash_fraction, open_corpus, parent_key
from vocabert.distill.engine_protocol import Engine, PartialSums
from vocabert.distill.teacher import PRECISIONS, Teacher, embedding_dim
from vocabert.distill.teacher_pass import (
    ENTRY_SUMS,
    PROGRESS,
    ROW_FIELDS,
    TARGET_DTYPES,
    TeacherPass,
    occurrence_means,
    pass_files,
    token_ids_dtype,
)
from vocabert.distill.vocabulary import open_vocabulary
from vocabert.distill.workspace import (
    Workspace,
    begin,
    check_same_teacher,
    digest,
    finish,
    is_current,
    log,
)
from vocabert.matching import PAD, EntryIndex, Matches
from vocabert.options import option
from vocabert.store import VocabularyStore
from vocabert.tokenizer import tokenizer_layout

VALIDATION_SHARE = 0.05  # of the teacher-pass texts: kept out of the entry vectors, picks the best epoch
# Progress is made durable at most this often: a checkpoint writes the entry sums so far (entries x dim
# float64), too much to write after every batch. An interruption loses at most this much of the teacher's work.
CHECKPOINT_SECONDS = float(os.environ.get("VOCABERT_CHECKPOINT_SECONDS", 60))


def source_names(text: str) -> tuple[str, ...]:
    """``--teacher-sources passages,queries`` -> ``("passages", "queries")`` (sorted, no repeats)."""
    return tuple(sorted({s.strip() for s in text.split(",") if s.strip()}))


def token_count(text: str) -> int:
    """``--token-sample 2000000``, or ``all`` (-1): every token's vector kept."""
    if text.strip().lower() == "all":
        return -1
    value = int(text.replace("_", ""))
    if value < 0:
        raise ValueError("a number of tokens >= 0, or all")
    return value


@dataclass(frozen=True)
class EmbedSettings:
    """Settings of the ``embed`` stage, each a command-line option (every default lives here)."""

    teacher_share: float = option(1.0, "share of the training texts sent through the teacher")  # the expensive part
    dtype: str = option(  # int8 (one float32 scale per row) is as faithful as fp16 at 62% of the model's size
        "int8", "precision of the stored entry vectors", choices=("int8", "float16")
    )
    entry_vectors: str = option(
        "contextual",
        "an entry's vector: the mean of the teacher's contextual vectors over its occurrences in the teacher "
        "pass, or the teacher's vector of the entry alone (as Model2Vec does); entries that never occur are "
        "isolated either way",
        choices=("contextual", "isolated"),
    )
    teacher_sources: tuple[str, ...] = option(  # empty: all
        (),
        "send only these corpus sources' training texts through the teacher (the bundled corpus has passages, "
        "passage_sentences, queries, dev_queries and glosses) (default: all)",
        type=source_names,
        metavar="SOURCE,...",
    )
    batch_size: int = option(64, "texts per teacher call", flag="--teacher-batch-size")
    # 2M tokens is 1.5 GB at 384 dims: every token of a 100k-passage corpus, a bounded share of a larger one.
    token_sample: int = option(
        2_000_000,
        "keep the teacher's contextual token vectors of a sample of texts holding at most this many tokens "
        "(768 bytes each at 384 dims), or `all`; semantic mining reads them, the entry vectors need none",
        type=token_count,
        metavar="TOKENS",
    )
    # float16 halves the largest file of the pass; students trained on either agree to a cosine of 0.999997
    # (docs/scaling.md, "The default run on float16 targets").
    targets_dtype: str = option(
        "float16", "precision of the stored sentence embeddings (the targets)", choices=tuple(TARGET_DTYPES)
    )
    device: str = option("auto", "where the teacher runs: auto (CUDA when present), cpu, cuda or cuda:N")
    precision: str = option(
        "auto",
        "the teacher's precision: auto (float16 on CUDA, float32 on the CPU), float32, float16 or bfloat16",
        choices=("auto", *PRECISIONS),
        flag="--teacher-precision",
    )


def select_teacher_texts(
    shard: Shard, keys: list[str], share: float, sources: tuple[str, ...] = ()
) -> tuple[Shard, np.ndarray, list[str]]:
    """The texts of one (training) shard that the teacher sees (``share`` of them, of ``sources`` only if
    given), a mask of the validation texts among them (their vectors stay out of the store, so that
    validation measures the student on texts it has not seen through the entries either), and their keys
    (``source:id``)."""
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
    return shard.select(chosen), validation, keys


def teacher_texts(
    corpus: Corpus, share: float, sources: tuple[str, ...] = ()
) -> Iterator[tuple[Shard, np.ndarray, list[str]]]:
    """The training texts that the teacher sees, shard by shard in a fixed order (the teacher-pass
    order), each with its validation mask and keys."""
    for shard in corpus.shards("teacher"):
        yield select_teacher_texts(shard, corpus.keys(shard), share, sources)


# ----------------------------------------------------------------------------------- teacher pass
#
# The teacher pass is cut into *batches*, the same whatever runs them: a shard's teacher texts sorted by
# length, in runs of ``batch_size``. The plan (PassPlan) says where each batch's rows go in the files,
# before any is computed. ``run_teacher_batch`` is the one function that turns a batch into rows,
# ``PassFiles.write`` the one that puts them in place, ``batch_sums`` the one that adds a batch's entry
# occurrences up, and ``PassProgress`` what a checkpoint holds.


@dataclass
class TeacherBatch:
    """The texts of one teacher call: batch ``number`` of corpus shard ``shard``, from text ``start`` of
    the teacher pass."""

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
class BatchRows:
    """What the teacher made of one batch."""

    batch: TeacherBatch
    targets: np.ndarray  # (texts, dim) float32: sentence embeddings
    token_vectors: np.ndarray  # (tokens, dim) float16: contextual token vectors

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class PassPlan:
    """Where every batch of the teacher pass goes: texts per shard, and per text (in the teacher-pass
    order) its tokens and its place in the token sample."""

    batch_size: int
    shard_texts: np.ndarray  # (shards,) teacher texts of each corpus shard
    lengths: np.ndarray  # (texts,) tokens of each text
    vector_offsets: np.ndarray  # (texts,) start of its rows in token_vectors.bin, -1: not in the sample

    def __post_init__(self) -> None:
        self.shard_first = np.concatenate([[0], np.cumsum(self.shard_texts)]).astype(np.int64)
        self.token_offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        batches = -(-self.shard_texts // self.batch_size)
        self.batch_first = np.concatenate([[0], np.cumsum(batches)]).astype(np.int64)  # per shard

    @property
    def texts(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        return int(self.token_offsets[-1])

    @property
    def sampled_tokens(self) -> int:
        return int(self.lengths[self.vector_offsets >= 0].sum())

    @property
    def batches(self) -> int:
        return int(self.batch_first[-1])

    def batch_id(self, shard: int, number: int) -> int:
        """The batch's number over the whole pass (its bit in the progress)."""
        return int(self.batch_first[shard]) + number

    def batch_texts(self, ids: np.ndarray) -> int:
        """How many texts the batches ``ids`` hold."""
        shard = np.searchsorted(self.batch_first, ids, side="right") - 1
        number = ids - self.batch_first[shard]
        return int(np.minimum(self.batch_size, self.shard_texts[shard] - number * self.batch_size).sum())


def plan_pass(corpus: Corpus, share: float, batch_size: int, sources: tuple[str, ...], token_sample: int) -> PassPlan:
    """Read every shard once: the teacher texts' lengths in the teacher-pass order, and the token sample
    (the texts whose key hashes lowest, as many as ``token_sample`` tokens hold; all with -1)."""
    shard_texts, lengths, draws = [], [], []
    for shard, _, keys in teacher_texts(corpus, share, sources):
        n = np.diff(shard.offsets)
        order = np.argsort(n, kind="stable")  # the batches' order (shard_batches)
        shard_texts.append(len(shard))
        lengths.append(n[order])
        draws.append(np.array([hash_fraction(keys[i], "token sample:") for i in order]))
    lengths = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
    draws = np.concatenate(draws) if draws else np.zeros(0)
    sampled = np.ones(len(lengths), dtype=bool)
    if token_sample >= 0 and lengths.sum() > token_sample:
        by_draw = np.argsort(draws, kind="stable")
        sampled[:] = False
        sampled[by_draw[np.cumsum(lengths[by_draw]) <= token_sample]] = True
    starts = np.cumsum(lengths * sampled) - lengths * sampled
    vector_offsets = np.where(sampled, starts, -1).astype(np.int64)
    return PassPlan(batch_size, np.asarray(shard_texts, dtype=np.int64), lengths, vector_offsets)


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
        batch=batch,
        targets=np.asarray(sentences, dtype=np.float32),
        token_vectors=np.concatenate(vectors).astype(np.float16),
    )


def batch_sums(index: EntryIndex, patterns: np.ndarray, rows: BatchRows) -> PartialSums:
    """The entry sums of one batch (validation texts left out), from the token vectors as the pass
    stores them (float16)."""
    batch = rows.batch
    offsets = np.concatenate([[0], np.cumsum(batch.lengths)]).astype(np.int64)
    matches = index.match(np.asarray(batch.ids, dtype=np.int64), offsets)
    matches = matches.subset(~batch.validation[matches.text])
    return occurrence_sums(matches, patterns, rows.token_vectors.astype(np.float32), offsets)


class PassFiles:
    """The teacher pass's flat files, created at their final size; a batch's rows are written in place
    (``os.pwrite``), so batches may arrive in any order and from other processes."""

    def __init__(self, directory: Path, plan: PassPlan, dim: int, targets_dtype: str, ids_dtype: str):
        self.plan, self.dim = plan, dim
        self.specs = pass_files(plan.texts, plan.tokens, plan.sampled_tokens, dim, targets_dtype, ids_dtype)
        self.fds = {}
        for name, (dtype, shape) in self.specs.items():
            path = directory / f"{name}.bin"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)  # sparse until written
            self.fds[name] = fd

    def _write(self, name: str, row: int, array: np.ndarray) -> None:
        dtype, shape = self.specs[name]
        data = np.ascontiguousarray(array, dtype=dtype).tobytes()
        width = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
        written = os.pwrite(self.fds[name], data, row * width)
        if written != len(data):
            raise VocabertError(f"teacher pass: short write to {name}.bin (disk full?)")

    def write(self, rows: BatchRows) -> None:
        batch, plan = rows.batch, self.plan
        if rows.targets.shape[1:] != (self.dim,) or rows.token_vectors.shape[1:] != (self.dim,):
            raise VocabertError(f"teacher pass: the teacher gave {rows.targets.shape[1]}-dim vectors, not {self.dim}")
        texts = np.arange(batch.start, batch.start + len(batch))
        if not np.array_equal(plan.lengths[texts], batch.lengths):
            raise VocabertError("teacher pass: a batch does not fit the plan (has the corpus changed?)")
        table = np.stack([batch.index, batch.lengths, batch.validation, plan.vector_offsets[texts]], axis=1)
        self._write("targets", batch.start, rows.targets)
        self._write("rows", batch.start, table.astype(np.int64).reshape(-1, ROW_FIELDS))
        self._write("token_ids", int(plan.token_offsets[batch.start]), batch.ids)
        sampled = plan.vector_offsets[texts] >= 0
        if sampled.any():  # a batch's sampled texts lie next to each other in the sample too
            within = np.concatenate([[0], np.cumsum(batch.lengths)])
            keep = np.concatenate([np.arange(within[i], within[i + 1]) for i in np.flatnonzero(sampled)])
            self._write("token_vectors", int(plan.vector_offsets[texts[sampled][0]]), rows.token_vectors[keep])

    def sync(self) -> None:
        for fd in self.fds.values():
            os.fsync(fd)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


class PassProgress:
    """What a checkpoint of a pass holds: its key, which batches are done (their rows written and synced),
    and the entry sums and occurrence counts of those batches. ``save`` writes it atomically."""

    def __init__(self, path: Path, key: dict, batches: int, entries: int, dim: int):
        self.path, self.key = path, key
        self.done = np.zeros(batches, dtype=bool)
        self.sums = np.zeros((entries, dim), dtype=np.float64) if entries else None
        self.counts = np.zeros(entries, dtype=np.int64)
        self.saved_at = time.monotonic()
        self._recording = False
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    same = json.loads(str(z["key"])) == key and z["done"].shape == self.done.shape
                    if same and self.sums is not None:
                        same = z["sums"].shape == self.sums.shape
                    if same:
                        self.done[:] = z["done"]
                        self.counts[:] = z["counts"]
                        if self.sums is not None:
                            self.sums[:] = z["sums"]
            except (OSError, ValueError, KeyError, EOFError):
                pass  # a progress file that does not open: start over

    def record(self, batches: np.ndarray | int, partial: PartialSums | None) -> None:
        """Batches done, with the entry sums of their texts. A stop in the middle leaves the progress
        half-updated: ``save`` then keeps the last checkpoint instead."""
        self._recording = True
        if partial is not None and self.sums is not None:
            entries, sums, counts = partial
            self.sums[entries] += sums
            self.counts[entries] += counts
        self.done[batches] = True
        self._recording = False

    def due(self) -> bool:
        return time.monotonic() - self.saved_at >= CHECKPOINT_SECONDS

    def save(self) -> None:
        if self._recording:
            return
        arrays = {"key": np.array(json.dumps(self.key, sort_keys=True)), "done": self.done, "counts": self.counts}
        if self.sums is not None:
            arrays["sums"] = self.sums

        def write(p: Path) -> None:
            with open(p, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(self.path, write)
        self.saved_at = time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def save_entry_sums(directory: Path, vocabulary: str, sums: np.ndarray, counts: np.ndarray) -> None:
    """The entry sums of a vocabulary (``digest`` of its artifact) as means and counts, atomically."""
    seen = counts > 0
    means = np.zeros(sums.shape, dtype=np.float32)
    means[seen] = (sums[seen] / counts[seen, None]).astype(np.float32)

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, vocabulary=np.array(vocabulary), means=means, counts=counts)

    atomic_write(directory / ENTRY_SUMS, write)


def load_entry_sums(directory: Path, vocabulary: str, entries: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The entry means and counts of this vocabulary, if the pass (or a later sums run) left them."""
    path = directory / ENTRY_SUMS
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["vocabulary"]) == vocabulary and len(z["counts"]) == entries:
                return z["means"], z["counts"]
    except (OSError, ValueError, KeyError, EOFError):
        pass
    return None


@dataclass
class PassJob:
    """One teacher pass to run, as the stage hands it to an engine: what to compute and where."""

    directory: Path
    key: dict
    teacher_path: Path
    corpus: Corpus
    plan: PassPlan
    dim: int
    settings: EmbedSettings
    patterns: np.ndarray | None  # the vocabulary whose entry sums to add up, if any
    vocabulary: str | None  # its digest
    vocab_size: int
    write_rows: bool = True  # False: the pass is done, only the entry sums of a new vocabulary are wanted

    def progress(self) -> PassProgress:
        name = PROGRESS if self.write_rows else "entry_sums.progress.npz"
        entries = 0 if self.patterns is None else len(self.patterns)
        key = self.key | ({"vocabulary": self.vocabulary} if self.vocabulary else {})
        return PassProgress(self.directory / name, key, self.plan.batches, entries, self.dim)

    def files(self) -> PassFiles | None:
        if not self.write_rows:
            return None
        return PassFiles(
            self.directory, self.plan, self.dim, self.settings.targets_dtype, token_ids_dtype(self.vocab_size)
        )

    def batches(self, done: np.ndarray) -> Iterator[TeacherBatch]:
        """The batches not ``done``, in the teacher-pass order (shards whose batches are all done are not read)."""
        settings, plan = self.settings, self.plan
        for number, shard in enumerate(self.corpus.shards("teacher")):
            first, last = plan.batch_first[number], plan.batch_first[number + 1]
            todo = np.flatnonzero(~done[first:last])
            if len(todo):
                selected, validation, _ = select_teacher_texts(
                    shard, self.corpus.keys(shard), settings.teacher_share, settings.teacher_sources
                )
                yield from shard_batches(
                    number, selected, validation, int(plan.shard_first[number]), plan.batch_size, todo
                )

    def index(self) -> EntryIndex | None:
        return None if self.patterns is None else EntryIndex(self.patterns, self.vocab_size)

    def finish(self, progress: PassProgress) -> TeacherPass:
        """Mark the pass (or the sums run) complete: the entry sums, then the manifest, last."""
        if not progress.done.all():
            left = int((~progress.done).sum())
            raise VocabertError(f"the teacher pass ended with {left} of {len(progress.done)} batches not done; rerun")
        if self.plan.texts == 0:
            raise VocabertError("no training texts for the teacher pass (is the held-out fraction or share too high?)")
        if self.vocabulary is not None:
            save_entry_sums(self.directory, self.vocabulary, progress.sums, progress.counts)
        if self.write_rows:
            finish_pass(self.directory, self.key, self.plan, self.dim, self.settings, self.vocab_size)
        progress.remove()
        return TeacherPass.open(self.directory)


def finish_pass(
    directory: Path, key: dict, plan: PassPlan, dim: int, settings: EmbedSettings, vocab_size: int, **facts
) -> None:
    """The pass's manifest, written last: its key and what :meth:`TeacherPass.open` needs to read the files."""
    finish(
        directory,
        "teacher pass",
        key,
        texts=plan.texts,
        tokens=plan.tokens,
        sampled_tokens=plan.sampled_tokens,
        dim=dim,
        targets_dtype=settings.targets_dtype,
        token_ids_dtype=token_ids_dtype(vocab_size),
        **facts,
    )


def reset_progress(directory: str | Path) -> None:
    """Forget an interrupted teacher pass."""
    for name in (PROGRESS, "entry_sums.progress.npz"):
        (Path(directory) / name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ store


def occurrence_sums(
    matches: Matches, patterns: np.ndarray, vectors: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per entry found: the sum over its occurrences of the mean vector of the tokens it covers."""
    acc = occurrence_means(matches, patterns, vectors, offsets)
    return sum_by_entry(matches.entry, acc, np.ones(len(acc), dtype=np.int64))


def sum_by_entry(entries: np.ndarray, rows: np.ndarray, counts: np.ndarray) -> PartialSums:
    """``rows`` and ``counts`` added up per entry: each entry found once, in order."""
    order = np.argsort(entries, kind="stable")
    found, first = np.unique(entries[order], return_index=True)
    if not len(order):
        return found, np.zeros((0, rows.shape[1]), rows.dtype), np.zeros(0, np.int64)
    return found, np.add.reduceat(rows[order], first, axis=0), np.add.reduceat(counts[order], first)


def isolated_vectors(
    teacher: Teacher, patterns: np.ndarray, prefix: list[int], suffix: list[int], filler: int
) -> np.ndarray:
    """Each pattern alone through the teacher, between the tokens its tokenizer adds around a text
    (wildcards as ``filler``, the mask token where there is one); the mean of its tokens' vectors."""
    patterns = [p[p != PAD] for p in patterns]
    rows = [[*prefix, *np.where(p >= 0, p, filler).tolist(), *suffix] for p in patterns]
    vectors = teacher.token_vectors(rows)
    out = np.zeros((len(patterns), vectors[0].shape[1] if vectors else teacher.dim), dtype=np.float32)
    for i, (p, vecs) in enumerate(zip(patterns, vectors, strict=True)):
        out[i] = vecs[np.flatnonzero(p >= 0) + len(prefix)].mean(axis=0)
    return out


def sample_occurrence_sums(passed: TeacherPass, patterns: np.ndarray, vocab_size: int) -> PartialSums:
    """The entry sums from the token vectors the pass kept (used when they are every token's)."""
    index = EntryIndex(patterns, vocab_size)
    sums = np.zeros((len(patterns), passed.dim), dtype=np.float64)
    counts = np.zeros(len(patterns), dtype=np.int64)
    for texts, ids, offsets, vectors in passed.sampled_chunks():
        matches = index.match(ids, offsets)
        matches = matches.subset(~passed.validation[texts][matches.text])
        entries, found_sums, found_counts = occurrence_sums(matches, patterns, vectors, offsets)
        sums[entries] += found_sums
        counts[entries] += found_counts
    return np.arange(len(patterns)), sums, counts


def entry_vectors(partial_sums: Iterable[PartialSums], entries: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Contextual vector of each of ``entries`` entries (zero where it never occurs) and its number of
    occurrences, from partial sums."""
    sums = np.zeros((entries, dim), dtype=np.float64)
    counts = np.zeros(entries, dtype=np.int64)
    for found, found_sums, found_counts in partial_sums:
        sums[found] += found_sums
        counts[found] += found_counts
    seen = counts > 0
    vectors = np.zeros((entries, dim), dtype=np.float32)
    vectors[seen] = (sums[seen] / counts[seen, None]).astype(np.float32)
    return vectors, counts


def _pass_job(
    ws: Workspace, corpus: Corpus, settings: EmbedSettings, key: dict, vocab, write_rows: bool = True
) -> PassJob:
    plan = plan_pass(
        corpus, settings.teacher_share, settings.batch_size, settings.teacher_sources, settings.token_sample
    )
    patterns = None if vocab is None else vocab.patterns.astype(np.int64)
    return PassJob(
        directory=begin(ws.teacher_dir) if write_rows else ws.teacher_dir,  # (a sums run keeps the pass whole)
        key=key,
        teacher_path=ws.teacher_path,
        corpus=corpus,
        plan=plan,
        dim=embedding_dim(ws.teacher_path),
        settings=settings,
        patterns=patterns,
        vocabulary=None if vocab is None else digest(ws.vocab_dir),
        vocab_size=int(corpus.manifest["vocab_size"]),
        write_rows=write_rows,
    )


def pass_key(ws: Workspace, settings: EmbedSettings, vocab_size: int) -> dict:
    """The teacher pass's key: the teacher, the settings that change what it holds (and the layout of its
    files, so that a pass interrupted under another layout is restarted, not resumed), the corpus."""
    pass_settings = {
        "teacher_share": settings.teacher_share,
        "batch_size": settings.batch_size,
        "token_sample": settings.token_sample,
        "targets_dtype": settings.targets_dtype,
        "token_ids_dtype": token_ids_dtype(vocab_size),
    }
    if settings.teacher_sources:  # (only when given, so that passes over every source keep their key)
        pass_settings["teacher_sources"] = sorted(settings.teacher_sources)
    precision = Teacher.resolve(settings.device, settings.precision)[1]
    if precision != "float32":  # another precision gives other targets (within a cosine of 1e-4)
        pass_settings["teacher_precision"] = precision
    return {"provenance": ws.provenance, "settings": pass_settings, "inputs": {"corpus": digest(ws.corpus_dir)}}


def run_embedding(
    ws: Workspace, settings: EmbedSettings, engine: Engine, force: bool = False, pass_only: bool = False
) -> VocabularyStore | None:
    """The ``embed`` stage: the teacher pass (skipped when current, resumed when interrupted), adding up the
    entry sums of the vocabulary at hand as it goes, then the store (not with ``pass_only``: the pass needs
    no vocabulary, and semantic mining reads it). The teacher's work runs where ``engine`` runs it (this
    process, or Ray)."""
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
    key = pass_key(ws, settings, int(corpus.manifest["vocab_size"]))
    vocab = None if pass_only or settings.entry_vectors == "isolated" else open_vocabulary(ws)[0]
    if force:
        reset_progress(ws.teacher_dir)
    if not force and is_current(ws.teacher_dir, "teacher pass", key):
        passed = TeacherPass.open(ws.teacher_dir)
        log(f"embed: teacher pass {ws.teacher_dir} is up to date ({len(passed)} texts)")
    else:
        passed = engine.teacher_pass(ws, _pass_job(ws, corpus, settings, key, vocab))

    if pass_only:
        return None
    vocab = vocab if vocab is not None else open_vocabulary(ws)[0]
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
    vocab_size = int(corpus.manifest["vocab_size"])
    patterns = vocab.patterns.astype(np.int64)
    if settings.entry_vectors == "contextual":
        vectors, counts = _contextual_vectors(ws, corpus, settings, key, engine, passed, patterns, vocab_size)
    else:
        vectors, counts = np.zeros((len(patterns), passed.dim), np.float32), np.zeros(len(patterns), np.int64)
    alone = np.flatnonzero(counts == 0) if settings.entry_vectors == "contextual" else np.arange(len(counts))
    if len(alone):
        layout = tokenizer_layout(ws.tokenizer_text)
        patterns = vocab.patterns[alone].astype(np.int64)
        vectors[alone] = engine.isolated_vectors(ws, patterns, list(layout.prefix), list(layout.suffix), layout.filler)
    metadata = {"teacher": ws.provenance["teacher"], "dim": vectors.shape[1], "dtype": settings.dtype}
    store = VocabularyStore.from_float(vocab.patterns, vectors, settings.dtype, metadata)
    store.save(out_dir / "embeddings.safetensors")
    write_npy(out_dir / "occurrences.npy", counts)
    contextual = len(counts) - len(alone)
    finish(out_dir, "store", store_key, contextual=contextual, isolated=int(len(alone)))
    log(f"embed: {contextual} entries contextual, {len(alone)} isolated -> {out_dir}")
    return store


def _contextual_vectors(
    ws: Workspace,
    corpus: Corpus,
    settings: EmbedSettings,
    key: dict,
    engine: Engine,
    passed: TeacherPass,
    patterns: np.ndarray,
    vocab_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every entry's mean contextual vector and occurrences: added up while the teacher ran, else from the
    token sample when it holds every token, else by running the teacher over the texts again."""
    vocabulary = digest(ws.vocab_dir)
    found = load_entry_sums(ws.teacher_dir, vocabulary, len(patterns))
    if found is None and passed.every_token_sampled:
        log("embed: entry sums from the teacher pass's token vectors (it kept every token's)")
        found = entry_vectors([sample_occurrence_sums(passed, patterns, vocab_size)], len(patterns), passed.dim)
    if found is None:
        log(
            f"embed: the teacher pass kept {len(passed.token_vectors)} of {len(passed.token_ids)} token vectors "
            "and added up another vocabulary's entries: the teacher runs over its texts again for this one's "
            "(`--token-sample all` keeps every token's vector instead)"
        )
        job = _pass_job(ws, corpus, settings, key, open_vocabulary(ws)[0], write_rows=False)
        engine.teacher_pass(ws, job)
        found = load_entry_sums(ws.teacher_dir, vocabulary, len(patterns))
    means, counts = found
    return np.array(means, dtype=np.float32), np.array(counts, dtype=np.int64)
