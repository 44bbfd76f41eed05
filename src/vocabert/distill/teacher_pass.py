"""The teacher pass as it lies in ``<workdir>/teacher``, and reading it.

Every teacher-pass text went through the teacher once. Its rows are flat raw little-endian files whose
sizes are known before the pass starts (the corpus says how many tokens each text has), so that whoever
computes a batch (this process, or a Ray worker) writes its rows in place at their offsets, in any order.
Mining (``--select semantics``), the entry vectors and training read them from here: the targets and the
token ids with ``pread`` (:class:`FileArray`), the bounded token sample memory-mapped::

    targets.bin        (texts, dim) float32 or float16: the teacher's sentence embeddings (training targets)
    rows.bin           (texts, 4) int64: text index in the teacher-pass order, tokens, validation,
                       offset of the text's rows in token_vectors.bin (-1: not in the token sample)
    token_ids.bin      (tokens,) uint16 (int32 for a tokenizer of more than 65,536 ids)
    token_vectors.bin  (sampled tokens, dim) float16: the teacher's contextual token vectors of a bounded
                       sample of texts (``--token-sample``); what is only needed as a sum is not kept per token
    entry_sums.npz     the mean contextual vector of every vocabulary entry over its occurrences, and their
                       counts, accumulated while the teacher ran (for the vocabulary named inside)
    manifest.json      written last: the pass is complete (texts, tokens, sampled tokens, dim)
    progress.npz       while the pass runs: its key, the batches made durable, the entry sums so far

Bytes kept per text: ``dim x 2`` (targets; 4 in float32) + 32 (rows); per token: 2 (ids); per sampled
token: ``dim x 2``. The entry sums are ``entries x dim x 4`` bytes whatever the corpus size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vocabert.artifacts import VocabertError
from vocabert.distill.workspace import Workspace, check_same_teacher, read_manifest
from vocabert.matching import Matches

ROW_FIELDS = 4  # text index, tokens, validation, offset in token_vectors.bin (-1: not sampled)
PROGRESS = "progress.npz"
ENTRY_SUMS = "entry_sums.npz"
TARGET_DTYPES = {"float32": "<f4", "float16": "<f2"}


def token_ids_dtype(vocab_size: int) -> str:
    """The token ids' dtype: 2 bytes where the tokenizer's ids fit (BERT's 30,522 do), else 4."""
    return "<u2" if vocab_size <= 2**16 else "<i4"


def pass_files(
    texts: int, tokens: int, sampled: int, dim: int, targets_dtype: str, ids_dtype: str
) -> dict[str, tuple[str, tuple]]:
    """The flat files of a pass of this size: name -> (dtype, shape)."""
    return {
        "targets": (TARGET_DTYPES[targets_dtype], (texts, dim)),
        "rows": ("<i8", (texts, ROW_FIELDS)),
        "token_ids": (ids_dtype, (tokens,)),
        "token_vectors": ("<f2", (sampled, dim)),
    }


class FileArray:
    """A read-only array on a flat file, read with ``pread`` instead of memory-mapped.

    What a process reads of a memory-mapped file counts in its resident memory (the kernel maps whole
    neighbourhoods of pages on each fault), so random reads over a large file grow the process's RSS to the
    file's size. What is read here goes to the page cache, which the kernel reclaims: reading rows at random
    from a 7 GB targets file costs the process only the rows it holds. Indexing: an int, a slice with step 1,
    or an array of positions (read one run of consecutive positions at a time); ``np.asarray`` reads it all.
    """

    def __init__(self, path: str | Path, dtype: str | np.dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(int(n) for n in shape)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getstate__(self) -> dict:  # (a file descriptor does not travel to another process)
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = (stop - start) * self._row_bytes
        data = bytearray(size)
        view, done = memoryview(data), 0
        while done < size:  # (pread may return less than asked)
            got = os.preadv(self._fd, [view[done:]], start * self._row_bytes + done)
            if got <= 0:
                raise VocabertError(f"{self.path} is shorter than its manifest says: rerun the stage that wrote it")
            done += got
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("FileArray: slices with a step are not supported")
            return self._read(start, max(start, stop))
        if np.isscalar(key):
            i = int(key) + (len(self) if int(key) < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} is out of bounds for {len(self)} rows")
            return self._read(i, i + 1)[0]
        idx = np.asarray(key)
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise IndexError("FileArray: index with an int, a slice or an array of ints")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"an index is out of bounds for {len(self)} rows")
        unique, inverse = np.unique(idx.ravel(), return_inverse=True)
        if not len(unique):
            return np.zeros((*idx.shape, *self.shape[1:]), dtype=self.dtype)
        # Runs of consecutive positions, one read each (a text's matches, a chunk's tokens).
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        firsts, lasts = unique[np.r_[0, breaks]], unique[np.r_[breaks - 1, len(unique) - 1]]
        rows = np.concatenate([self._read(int(a), int(b) + 1) for a, b in zip(firsts, lasts, strict=True)])
        return rows[inverse].reshape((*idx.shape, *self.shape[1:]))


@dataclass
class TeacherPass:
    """A finished teacher pass, read from its files: rows are texts in the order the teacher saw them."""

    targets: np.ndarray | FileArray  # (texts, dim) float32 or float16: the teacher's sentence embeddings
    text_index: np.ndarray  # (texts,) position of each text in the teacher-pass order (teacher_texts)
    validation: np.ndarray  # (texts,) bool
    token_offsets: np.ndarray  # (texts + 1,) rows of text i are token_offsets[i]:token_offsets[i+1]
    token_ids: np.ndarray | FileArray  # (tokens,) uint16 or int32
    token_vectors: np.ndarray  # (sampled tokens, dim) float16: contextual token vectors of the sampled texts
    vector_offsets: np.ndarray | None = None  # (texts,) start of text i in token_vectors, -1: not sampled

    def __post_init__(self) -> None:
        if self.vector_offsets is None:  # every token's vector is here
            self.vector_offsets = np.asarray(self.token_offsets[:-1], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def dim(self) -> int:
        return int(self.targets.shape[1])

    @property
    def sampled(self) -> np.ndarray:
        """The texts whose token vectors are kept, in the teacher-pass order."""
        return np.flatnonzero(self.vector_offsets >= 0)

    @property
    def every_token_sampled(self) -> bool:
        return len(self.token_vectors) == len(self.token_ids)

    @classmethod
    def open(cls, directory: str | Path) -> TeacherPass:
        directory = Path(directory)
        m = read_manifest(directory, "teacher pass")
        texts, tokens, dim = int(m["texts"]), int(m["tokens"]), int(m["dim"])
        # (passes written before the ids' dtype was recorded hold int32)
        ids_dtype = m.get("token_ids_dtype", "<i4")
        files = pass_files(texts, tokens, int(m["sampled_tokens"]), dim, m["targets_dtype"], ids_dtype)

        def opened(name: str, read: bool = True) -> np.ndarray | FileArray:
            """``read``: through :class:`FileArray`; else memory-mapped (the bounded token sample, which
            training reads a token at a time)."""
            dtype, shape = files[name]
            path = directory / f"{name}.bin"
            need = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if not path.is_file() or path.stat().st_size != need:
                raise VocabertError(f"teacher pass {path} is missing or has the wrong size; run `vocabert embed`")
            if not need:
                return np.zeros(shape, dtype)
            return FileArray(path, dtype, shape) if read else np.memmap(path, dtype=dtype, mode="r", shape=shape)

        rows = np.asarray(opened("rows"))
        offsets = np.zeros(texts + 1, dtype=np.int64)
        np.cumsum(rows[:, 1], out=offsets[1:])
        return cls(
            targets=opened("targets"),
            text_index=rows[:, 0].copy(),
            validation=rows[:, 2].astype(bool),
            token_offsets=offsets,
            token_ids=opened("token_ids"),
            token_vectors=opened("token_vectors", read=False),
            vector_offsets=rows[:, 3].copy(),
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

    def sampled_chunks(
        self, texts_per_chunk: int = 2048
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """``(texts, token ids, offsets, token vectors as float32)`` over runs of the sampled texts (the only
        ones whose token vectors are kept); offsets are relative to the chunk."""
        sampled = self.sampled
        for a in range(0, len(sampled), texts_per_chunk):
            texts = sampled[a : a + texts_per_chunk]
            lengths = self.token_offsets[texts + 1] - self.token_offsets[texts]
            offsets = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
            ids = np.asarray(self.token_ids[np.repeat(self.token_offsets[texts], lengths) + within], dtype=np.int64)
            # The sampled texts' vectors follow each other in the teacher-pass order: one slice.
            lo = int(self.vector_offsets[texts[0]])
            vectors = np.asarray(self.token_vectors[lo : lo + offsets[-1]], dtype=np.float32)
            yield texts, ids, offsets, vectors


def open_teacher_pass(ws: Workspace) -> TeacherPass:
    """The finished teacher pass of a work directory, checked against the teacher."""
    manifest = read_manifest(ws.teacher_dir, "teacher pass")
    check_same_teacher(ws.provenance, manifest["key"]["provenance"], f"teacher pass {ws.teacher_dir}")
    return TeacherPass.open(ws.teacher_dir)


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
