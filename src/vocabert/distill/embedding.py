"""Stage 3 (``vocabert embed``): the teacher pass, then the entry store.

**Teacher pass** (``<workdir>/teacher``). Every teacher-pass text goes through the teacher once. Per
batch, its sentence embedding (the training target), its token ids and its contextual token vectors
are appended to flat files in the work directory and made durable before the next batch starts: an
interruption loses at most the batch in flight, and the rerun resumes after the last durable one.
The pass does not depend on the vocabulary, so mining again reuses it. Texts are sent in order of
length within a shard, so a batch holds texts of similar length and little padding. The batches
are the same whichever engine computes them (:mod:`vocabert.distill.engine` in this process,
:mod:`vocabert.distill.ray_jobs` on Ray), and so are the files they end in
(:mod:`vocabert.distill.teacher_pass`, which the later stages read).

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

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
from vocabert.distill.engine_protocol import Engine, PartialSums
from vocabert.distill.teacher import Teacher
from vocabert.distill.teacher_pass import (
    PARTS,
    PROGRESS,
    TEXT_FILES,
    TOKEN_FILES,
    TeacherPass,
    occurrence_means,
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
    special_tokens,
)
from vocabert.matching import PAD, EntryIndex, Matches
from vocabert.options import option
from vocabert.store import VocabularyStore

VALIDATION_SHARE = 0.05  # of the teacher-pass texts: kept out of the entry vectors, picks the best epoch


def source_names(text: str) -> tuple[str, ...]:
    """``--teacher-sources passages,queries`` -> ``("passages", "queries")`` (sorted, no repeats)."""
    return tuple(sorted({s.strip() for s in text.split(",") if s.strip()}))


@dataclass(frozen=True)
class EmbedSettings:
    """Settings of the ``embed`` stage, each a command-line option (every default lives here)."""

    teacher_share: float = option(1.0, "share of the training texts sent through the teacher")  # the expensive part
    dtype: str = option(  # int8: with per-row scales
        "float16", "precision of the stored entry vectors", choices=("float16", "int8")
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
    batch_size: int = option(
        64, "texts per teacher call; an interruption loses at most one such batch", flag="--teacher-batch-size"
    )


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
# that appends rows to the work directory (its files: vocabert.distill.teacher_pass), in the
# teacher-pass order, whoever computed them.


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
        self.progress_file = self.dir / PROGRESS
        self.texts = self.tokens = 0
        if self.progress_file.is_file():
            progress = read_json(self.progress_file, "teacher pass progress")
            if progress.get("key") == key:
                self.texts, self.tokens = int(progress["texts"]), int(progress["tokens"])
        self.files = {
            name: _AppendFile(self.dir / f"{name}.bin", dtype, dim if width == "dim" else width)
            for name, (dtype, width) in (TEXT_FILES | TOKEN_FILES).items()
        }
        for name, f in self.files.items():
            f.truncate(self.tokens if name in TOKEN_FILES else self.texts)

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
    (Path(directory) / PROGRESS).unlink(missing_ok=True)
    shutil.rmtree(Path(directory) / PARTS, ignore_errors=True)


# ------------------------------------------------------------------------------------------ store


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


def entry_vectors(partial_sums: Iterable[PartialSums], entries: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Contextual vector of each of ``entries`` entries (zero where it never occurs) and its number of
    occurrences, from the partial sums of :func:`chunk_occurrence_sums` (an engine's ``entry_sums``)."""
    sums = np.zeros((entries, dim), dtype=np.float64)
    counts = np.zeros(entries, dtype=np.int64)
    for found, found_sums, found_counts in partial_sums:
        sums[found] += found_sums
        counts[found] += found_counts
    seen = counts > 0
    vectors = np.zeros((entries, dim), dtype=np.float32)
    vectors[seen] = (sums[seen] / counts[seen, None]).astype(np.float32)
    return vectors, counts


def run_embedding(
    ws: Workspace, settings: EmbedSettings, engine: Engine, force: bool = False, pass_only: bool = False
) -> VocabularyStore | None:
    """The ``embed`` stage: the teacher pass (skipped when current, resumed when interrupted), then the
    store (not with ``pass_only``: the pass needs no vocabulary, and semantic mining reads it). The
    teacher's work and the entry sums run where ``engine`` runs them (this process, or Ray)."""
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
    else:
        passed = engine.teacher_pass(ws, corpus, pass_key, settings)

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
    vocab_size = int(corpus.manifest["vocab_size"])
    patterns = vocab.patterns.astype(np.int64)
    partial_sums = engine.entry_sums(ws, passed, patterns, vocab_size)
    vectors, counts = entry_vectors(partial_sums, len(patterns), passed.token_vectors.shape[1])
    alone = np.flatnonzero(counts == 0) if settings.entry_vectors == "contextual" else np.arange(len(counts))
    if len(alone):
        special = special_tokens(ws.tokenizer_text)
        patterns = vocab.patterns[alone].astype(np.int64)
        vectors[alone] = engine.isolated_vectors(ws, patterns, special["cls"], special["sep"], special["mask"])
    metadata = {"teacher": ws.provenance["teacher"], "dim": vectors.shape[1], "dtype": settings.dtype}
    store = VocabularyStore.from_float(vocab.patterns, vectors, settings.dtype, metadata)
    store.save(out_dir / "embeddings.safetensors")
    write_npy(out_dir / "occurrences.npy", counts)
    contextual = len(counts) - len(alone)
    finish(out_dir, "store", store_key, contextual=contextual, isolated=int(len(alone)))
    log(f"embed: {contextual} entries contextual, {len(alone)} isolated -> {out_dir}")
    return store
