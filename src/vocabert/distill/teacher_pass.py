"""The teacher pass as it lies in ``<workdir>/teacher``, and reading it.

Every teacher-pass text went through the teacher once; its rows are flat raw little-endian files, so
that the ``embed`` stage (:mod:`vocabert.distill.embedding`, which writes them) can append to them
batch by batch. Mining (``--select semantics``), the entry vectors and training read them from here,
memory-mapped::

    targets.bin        (texts, dim) float32: the teacher's sentence embeddings (the training targets)
    rows.bin           (texts, 3) int64: text index in the teacher-pass order, tokens, validation
    token_ids.bin      (tokens,) int32
    token_vectors.bin  (tokens, dim) float16: the teacher's contextual token vectors
    manifest.json      written last: the pass is complete (texts, tokens, dim)
    progress.json      while the pass runs: its key and the texts and tokens made durable
    parts/             while a Ray pass runs: batches computed out of order, waiting for their turn
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vocabert.artifacts import VocabertError
from vocabert.distill.workspace import Workspace, check_same_teacher, read_manifest
from vocabert.matching import Matches

# The flat files: name -> (dtype, values per row). Rows are texts, except for the per-token files.
TEXT_FILES = {"targets": ("<f4", "dim"), "rows": ("<i8", 3)}  # rows: text index, tokens, validation
TOKEN_FILES = {"token_ids": ("<i4", 1), "token_vectors": ("<f2", "dim")}
PROGRESS = "progress.json"
PARTS = "parts"


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
