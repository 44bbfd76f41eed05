"""The entry store: one teacher vector per vocabulary entry, in safetensors, memory-mapped on load.

``embeddings.safetensors`` holds ``embeddings`` (entries x dim, fp16; or int8 with per-row
``scales``) and ``patterns`` (the entries' token patterns, see :mod:`vocabert.matching`). The file
is opened with ``np.memmap``, so loading costs milliseconds whatever the vocabulary size, and only
rows a text uses are ever read from disk.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from vocabert.artifacts import VocabertError, atomic_write

_HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
_DTYPES = {"F16": np.float16, "F32": np.float32, "I8": np.int8, "I32": np.int32, "I64": np.int64, "U8": np.uint8}


def save_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors atomically."""
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_safetensors(path: str | Path, what: str = "safetensors file") -> tuple[dict[str, np.ndarray], dict]:
    """Memory-map every tensor of a safetensors file, checking that the file is whole."""
    path = Path(path)
    if not path.is_file():
        raise VocabertError(f"{what}: {path} is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise VocabertError(f"{what}: {path} is truncated (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise VocabertError(f"{what}: {path} is truncated or not safetensors (header exceeds the file)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise VocabertError(f"{what}: {path} is corrupt (unreadable header)") from None
    try:
        metadata = header.pop("__metadata__", {}) or {}
        if not isinstance(metadata, dict):
            raise TypeError("metadata is not an object")
        entries = []
        for name, info in header.items():
            begin, end = info["data_offsets"]
            entries.append((name, info["dtype"], tuple(info["shape"]), int(begin), int(end)))
    except (AttributeError, TypeError, KeyError, ValueError) as e:
        raise VocabertError(f"{what}: {path} is corrupt (unexpected header layout: {e})") from None
    base = 8 + header_len
    tensors = {}
    for name, dtype_name, shape, begin, end in entries:
        dtype = _DTYPES.get(dtype_name)
        if dtype is None:
            raise VocabertError(f"{what}: {path}: tensor {name} has unsupported dtype {dtype_name}")
        if base + end > size:
            raise VocabertError(f"{what}: {path} is truncated ({size} bytes, tensor {name} needs {base + end})")
        if not 0 <= begin <= end or int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize != end - begin:
            raise VocabertError(f"{what}: {path} is corrupt (tensor {name} size does not match its shape)")
        if end == begin:
            tensors[name] = np.zeros(shape, dtype=dtype)
        else:
            tensors[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + begin, shape=shape)
    return tensors, metadata


class VocabularyStore:
    """Entry patterns and their vectors; ``vectors(rows)`` returns float32 rows."""

    def __init__(
        self,
        patterns: np.ndarray,
        embeddings: np.ndarray,
        scales: np.ndarray | None = None,
        metadata: dict | None = None,
    ):
        if len(patterns) != len(embeddings):
            raise VocabertError(f"store has {len(patterns)} patterns but {len(embeddings)} vectors")
        self.patterns = patterns
        self.embeddings = embeddings
        self.scales = scales
        self.metadata = dict(metadata or {})

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.patterns)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        if self.embeddings.dtype == np.float16:
            # numpy's float16 cast is scalar code; a 64k-entry table lookup is faster and exact.
            return _HALF_TO_FLOAT[self.embeddings[rows].view(np.uint16)]
        out = np.asarray(self.embeddings[rows], dtype=np.float32)
        if self.scales is not None:
            out *= self.scales[rows, None]
        return out

    @classmethod
    def from_float(
        cls, patterns: np.ndarray, vectors: np.ndarray, dtype: str = "float16", metadata: dict | None = None
    ) -> VocabularyStore:
        """Quantize float32 vectors to fp16, or to int8 with one scale per row."""
        if dtype == "float16":
            return cls(patterns, vectors.astype(np.float16), None, metadata)
        if dtype == "int8":
            scales = np.abs(vectors).max(axis=1) / 127.0
            scales[scales == 0] = 1.0
            q = np.clip(np.round(vectors / scales[:, None]), -127, 127).astype(np.int8)
            return cls(patterns, q, scales.astype(np.float32), metadata)
        raise VocabertError(f"unknown store dtype {dtype!r}: use float16 or int8")

    def save(self, path: str | Path) -> None:
        tensors = {"patterns": self.patterns.astype(np.int32), "embeddings": self.embeddings}
        if self.scales is not None:
            tensors["scales"] = self.scales.astype(np.float32)
        save_safetensors(path, tensors, {k: str(v) for k, v in self.metadata.items()})

    @classmethod
    def load(cls, path: str | Path) -> VocabularyStore:
        tensors, metadata = load_safetensors(path, "entry store")
        for name in ("patterns", "embeddings"):
            if name not in tensors:
                raise VocabertError(f"entry store {path} has no {name!r} tensor")
        return cls(np.asarray(tensors["patterns"]), tensors["embeddings"], tensors.get("scales"), metadata)
