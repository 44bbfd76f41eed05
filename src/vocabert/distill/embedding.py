"""Stage 3 (``vocabert embed``): the teacher pass, then the entry store.

**Teacher pass** (``<workdir>/teacher``). Every teacher-pass text goes through the teacher once. Per
batch, its sentence embedding (the training target), its token ids and its contextual token vectors
are appended to flat files in the work directory and made durable before the next batch starts: an
interruption loses at most the batch in flight, and the rerun resumes after the last durable one.
The pass does not depend on the vocabulary, so mining again reuses it. Texts are sent in order of
length within a shard, so a batch holds texts of similar length and little padding.

**Store** (``<workdir>/store``). Each entry's vector is the mean, over its occurrences in the
teacher-pass texts (validation texts excluded), of the mean of the token vectors it covers
(*contextual*). Entries that never occur there are run through the teacher alone, wildcards as
[MASK] (*isolated*, as Model2Vec does).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError, read_json, write_json, write_npy
from vocabert.distill.cache import EmbeddingCache
from vocabert.distill.corpus import Corpus, Shard, hash_fraction, open_corpus
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

    teacher_share: float = 0.5  # share of the training texts sent through the teacher (the expensive part)
    dtype: str = "float16"  # precision of the stored entry vectors: float16 or int8 (per-row scales)
    batch_size: int = 64  # texts per teacher call, and the unit that an interruption can lose


def teacher_texts(corpus: Corpus, share: float) -> Iterator[tuple[Shard, np.ndarray]]:
    """The training texts that the teacher sees, shard by shard in a fixed order, with a mask of
    the validation texts among them (their vectors stay out of the store, so that validation
    measures the student on texts it has not seen through the entries either)."""
    for shard in corpus.shards("train"):
        keys = corpus.keys(shard)
        chosen = np.array([share >= 1.0 or hash_fraction(k, "teacher:") < share for k in keys], dtype=bool)
        shard = shard.select(chosen)
        keys = [k for k, c in zip(keys, chosen, strict=True) if c]
        yield shard, np.array([hash_fraction(k, "validation:") < VALIDATION_SHARE for k in keys], dtype=bool)


# ----------------------------------------------------------------------------------- teacher pass

# The flat files of a teacher pass: name -> (dtype, values per row). Rows are texts, except for the
# per-token files, whose rows are tokens. Raw little-endian arrays, so they can be appended to.
_TEXT_FILES = {"targets": ("<f4", "dim"), "rows": ("<i8", 3)}  # rows: text index, tokens, validation
_TOKEN_FILES = {"token_ids": ("<i4", 1), "token_vectors": ("<f2", "dim")}


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

    def chunks(self, texts_per_chunk: int = 2048) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """``(rows, token ids, offsets)`` over runs of texts; offsets are relative to the chunk."""
        for start in range(0, len(self), texts_per_chunk):
            rows = slice(start, min(start + texts_per_chunk, len(self)))
            lo, hi = self.token_offsets[rows.start], self.token_offsets[rows.stop]
            ids = np.asarray(self.token_ids[lo:hi], dtype=np.int64)
            yield rows, ids, self.token_offsets[rows.start : rows.stop + 1] - lo


def run_teacher_pass(
    corpus: Corpus,
    out_dir: str | Path,
    teacher: Teacher,
    key: dict,
    settings: EmbedSettings,
    cache: EmbeddingCache | None = None,
    show_progress_bar: bool = True,
) -> TeacherPass:
    """Send the teacher-pass texts through the teacher, appending each batch durably; resumes.

    With ``cache``, the targets also go into the user's embedding cache, so that evaluating on
    those texts later (e.g. the retrieval corpus) costs no second teacher call."""
    out_dir = begin(out_dir)
    progress_file = out_dir / "progress.json"
    done_texts = done_tokens = 0
    if progress_file.is_file():
        progress = read_json(progress_file, "teacher pass progress")
        if progress.get("key") == key:
            done_texts, done_tokens = int(progress["texts"]), int(progress["tokens"])
    files = {
        name: _AppendFile(out_dir / f"{name}.bin", dtype, teacher.dim if width == "dim" else width)
        for name, (dtype, width) in (_TEXT_FILES | _TOKEN_FILES).items()
    }
    for name, f in files.items():  # cut whatever a killed batch half-wrote
        f.truncate(done_tokens if name in _TOKEN_FILES else done_texts)
    if done_texts:
        log(f"embed: resuming the teacher pass after {done_texts} texts")

    counts = corpus.manifest["counts"].values()  # the bar's total is an estimate: counting would read every shard
    total = round(settings.teacher_share * sum(c["texts"] - c["heldout"] - c.get("unseen", 0) for c in counts))
    bar = tqdm(total=total, initial=done_texts, desc="embed: teacher pass", unit="text", disable=not show_progress_bar)
    seen = first_index = 0
    try:
        for shard, validation in teacher_texts(corpus, settings.teacher_share):
            lengths = np.diff(shard.offsets)
            order = np.argsort(lengths, kind="stable")
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                seen += len(batch)
                if seen <= done_texts:
                    continue
                texts = [shard.texts[i] for i in batch]
                sentences, ids, vectors = teacher.forward(texts, batch_size=len(batch))
                expected = [shard.ids[shard.offsets[i] : shard.offsets[i + 1]] for i in batch]
                if any(len(a) != len(b) or not np.array_equal(a, b) for a, b in zip(ids, expected, strict=True)):
                    raise VocabertError(
                        "the teacher tokenizes differently from the corpus shards: the corpus was built with "
                        "another tokenizer; rebuild it with this teacher"
                    )
                rows = np.stack([first_index + batch, lengths[batch], validation[batch]], axis=1)
                files["targets"].append(sentences)
                files["rows"].append(rows)
                files["token_ids"].append(np.concatenate(ids))
                files["token_vectors"].append(np.concatenate(vectors))
                for f in files.values():
                    f.sync()
                done_texts, done_tokens = seen, done_tokens + int(lengths[batch].sum())
                write_json(progress_file, {"key": key, "texts": done_texts, "tokens": done_tokens})
                if cache is not None:
                    cache.put(texts, sentences)
                bar.update(len(batch))
            first_index += len(shard)
    finally:
        for f in files.values():
            f.close()
        bar.close()
        if cache is not None:
            cache.flush()
    if done_texts == 0:
        raise VocabertError("no training texts for the teacher pass (is the held-out fraction or share too high?)")
    finish(out_dir, "teacher pass", key, texts=done_texts, tokens=done_tokens, dim=teacher.dim)
    progress_file.unlink(missing_ok=True)
    return TeacherPass.open(out_dir)


# ------------------------------------------------------------------------------------------ store


def occurrence_sums(
    matches: Matches, patterns: np.ndarray, vectors: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per entry found: the sum over its occurrences of the mean vector of the tokens it covers."""
    fixed = patterns[matches.entry] >= 0  # (matches, width): positions that are tokens, not wildcards
    base = offsets[matches.text] + matches.start
    acc = np.zeros((len(matches), vectors.shape[1]), dtype=np.float32)
    for j in range(patterns.shape[1]):
        rows = np.flatnonzero(fixed[:, j])
        acc[rows] += vectors[base[rows] + j]
    acc /= fixed.sum(axis=1, keepdims=True)
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


def entry_vectors(
    passed: TeacherPass, patterns: np.ndarray, vocab_size: int, show_progress_bar: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Contextual vector of every entry (zero where it never occurs) and its number of occurrences."""
    patterns = patterns.astype(np.int64)
    index = EntryIndex(patterns, vocab_size)
    dim = passed.token_vectors.shape[1]
    sums = np.zeros((len(patterns), dim), dtype=np.float64)
    counts = np.zeros(len(patterns), dtype=np.int64)
    chunks = tqdm(list(passed.chunks()), desc="embed: entry vectors", unit="chunk", disable=not show_progress_bar)
    for rows, ids, offsets in chunks:
        matches = index.match(ids, offsets)
        matches = matches.subset(~passed.validation[rows][matches.text])
        lo = passed.token_offsets[rows.start]
        vectors = np.asarray(passed.token_vectors[lo : lo + len(ids)], dtype=np.float32)
        entries, entry_sums, entry_counts = occurrence_sums(matches, patterns, vectors, offsets)
        sums[entries] += entry_sums
        counts[entries] += entry_counts
    seen = counts > 0
    vectors = np.zeros((len(patterns), dim), dtype=np.float32)
    vectors[seen] = (sums[seen] / counts[seen, None]).astype(np.float32)
    return vectors, counts


def run_embedding(ws: Workspace, settings: EmbedSettings, force: bool = False) -> VocabularyStore:
    """The ``embed`` stage: the teacher pass (skipped when current, resumed when interrupted), then the store."""
    if settings.dtype not in ("float16", "int8"):
        raise VocabertError(f"unknown store dtype {settings.dtype!r}: use float16 or int8")
    corpus = open_corpus(ws)
    vocab, _ = open_vocabulary(ws)
    check_same_teacher(ws.provenance, corpus.provenance, f"corpus {ws.corpus_dir}")
    pass_key = {
        "provenance": ws.provenance,
        "settings": {"teacher_share": settings.teacher_share, "batch_size": settings.batch_size},
        "inputs": {"corpus": digest(ws.corpus_dir)},
    }
    if force:
        (ws.teacher_dir / "progress.json").unlink(missing_ok=True)
    if not force and is_current(ws.teacher_dir, "teacher pass", pass_key):
        passed = TeacherPass.open(ws.teacher_dir)
        log(f"embed: teacher pass {ws.teacher_dir} is up to date ({len(passed)} texts)")
    else:
        teacher = ws.teacher()
        passed = run_teacher_pass(
            corpus, ws.teacher_dir, teacher, pass_key, settings, ws.teacher_cache(), ws.show_progress_bar
        )
        log(f"embed: {len(passed)} texts, {len(passed.token_ids)} tokens through the teacher -> {ws.teacher_dir}")

    store_key = {
        "provenance": ws.provenance,
        "settings": {"dtype": settings.dtype},
        "inputs": {"vocabulary": digest(ws.vocab_dir), "teacher pass": digest(ws.teacher_dir)},
    }
    if not force and is_current(ws.store_dir, "store", store_key):
        log(f"embed: {ws.store_dir} is up to date")
        return VocabularyStore.load(ws.store_dir / "embeddings.safetensors")
    out_dir = begin(ws.store_dir)
    vectors, counts = entry_vectors(passed, vocab.patterns, int(corpus.manifest["vocab_size"]), ws.show_progress_bar)
    alone = np.flatnonzero(counts == 0)
    if len(alone):
        special = special_tokens(ws.tokenizer_text)
        patterns = vocab.patterns[alone].astype(np.int64)
        vectors[alone] = isolated_vectors(ws.teacher(), patterns, special["cls"], special["sep"], special["mask"])
    metadata = {"teacher": ws.provenance["teacher"], "dim": vectors.shape[1], "dtype": settings.dtype}
    store = VocabularyStore.from_float(vocab.patterns, vectors, settings.dtype, metadata)
    store.save(out_dir / "embeddings.safetensors")
    write_npy(out_dir / "occurrences.npy", counts)
    finish(out_dir, "store", store_key, contextual=int((counts > 0).sum()), isolated=int(len(alone)))
    log(f"embed: {int((counts > 0).sum())} entries contextual, {len(alone)} isolated -> {out_dir}")
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
