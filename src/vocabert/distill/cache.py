"""A disk cache of embeddings keyed by model and text.

Teacher outputs are the expensive part of the pipeline (tens of texts per second on a CPU), so
they are computed once per (model, text) and kept. The cache is a folder of append-only chunks;
each chunk is written atomically (vectors first, keys last), so an interrupted run loses at most
the chunk it was writing and the next run picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import write_npy


def default_cache_dir() -> Path:
    return Path(os.environ.get("VOCABERT_CACHE", Path.home() / ".cache" / "vocabert"))


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """64-bit keys of texts (blake2b); collisions are negligible below billions of texts."""
    digests = b"".join(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest() for t in texts)
    return np.frombuffer(digests, dtype="<u8").copy()


class EmbeddingCache:
    """Embeddings of texts under one model, stored in ``root/<model_key>/``."""

    def __init__(self, root: str | Path, model_key: str, dim: int, chunk_size: int = 4096):
        self.dir = Path(root) / model_key
        self.dim = dim
        self.chunk_size = chunk_size
        self._keys = np.zeros(0, dtype="<u8")
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._pending_keys: list[np.ndarray] = []
        self._pending_vectors: list[np.ndarray] = []
        self._load()

    def _load(self) -> None:
        keys, vectors = [], []
        for key_file in sorted(self.dir.glob("chunk-*.keys.npy")):
            vec_file = key_file.with_name(key_file.name.replace(".keys.npy", ".vectors.npy"))
            try:
                k = np.load(key_file, allow_pickle=False)
                v = np.load(vec_file, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                continue  # a damaged chunk is only a cache miss
            if v.ndim != 2 or v.shape != (len(k), self.dim):
                continue
            keys.append(k)
            vectors.append(v.astype(np.float32, copy=False))
        if keys:
            self._add(np.concatenate(keys), np.concatenate(vectors))

    def _add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        all_keys = np.concatenate([self._keys, keys])
        all_vectors = np.concatenate([self._vectors, vectors])
        order = np.argsort(all_keys, kind="stable")
        all_keys, all_vectors = all_keys[order], all_vectors[order]
        keep = np.ones(len(all_keys), dtype=bool)
        keep[1:] = all_keys[1:] != all_keys[:-1]
        self._keys, self._vectors = all_keys[keep], all_vectors[keep]

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``texts`` (zeros where missing) and a mask of which were found."""
        keys = text_keys(texts)
        pos = np.searchsorted(self._keys, keys)
        pos = np.minimum(pos, max(len(self._keys) - 1, 0))
        found = (len(self._keys) > 0) & (self._keys[pos] == keys) if len(self._keys) else np.zeros(len(keys), bool)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        out[found] = self._vectors[pos[found]]
        return out, found

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Add vectors; they reach the disk once a chunk fills up or on :meth:`flush`."""
        vectors = np.asarray(vectors, dtype=np.float32)
        self._pending_keys.append(text_keys(texts))
        self._pending_vectors.append(vectors)
        if sum(len(k) for k in self._pending_keys) >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        if not self._pending_keys:
            return
        keys = np.concatenate(self._pending_keys)
        vectors = np.concatenate(self._pending_vectors)
        self._pending_keys, self._pending_vectors = [], []
        self._add(keys, vectors)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"chunk-{len(list(self.dir.glob('chunk-*.keys.npy'))):06d}-{os.getpid()}-{keys[0]:016x}"
        write_npy(self.dir / f"{name}.vectors.npy", vectors)
        write_npy(self.dir / f"{name}.keys.npy", keys)  # last: a chunk counts only once its keys exist

    def encode(
        self,
        texts: Sequence[str],
        encode_fn: Callable[[list[str]], np.ndarray],
        batch_size: int = 256,
        show_progress_bar: bool = False,
        desc: str = "encoding",
    ) -> np.ndarray:
        """Vectors of all ``texts``, calling ``encode_fn`` only on those not cached yet."""
        texts = list(texts)
        out, found = self.lookup(texts)
        missing = np.flatnonzero(~found)
        # Duplicated texts are encoded once.
        unique: dict[str, list[int]] = {}
        for i in missing:
            unique.setdefault(texts[i], []).append(int(i))
        todo = list(unique)
        bar = tqdm(total=len(todo), desc=desc, unit="text", disable=not show_progress_bar or not todo)
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            vectors = np.asarray(encode_fn(batch), dtype=np.float32)
            self.put(batch, vectors)
            for text, vector in zip(batch, vectors, strict=True):
                out[unique[text]] = vector
            bar.update(len(batch))
        bar.close()
        self.flush()
        return out
