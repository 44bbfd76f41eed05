"""A disk cache of embeddings keyed by model and text.

Teacher outputs are the expensive part of the pipeline (tens of texts per second on a CPU), so
they are computed once per (model, text) and kept. On disk, under ``<root>/<model_key>/``:

- **chunks**, append-only: ``chunk-*.vectors.npy`` (float32 rows) and ``chunk-*.keys.npy`` (the
  texts' 64-bit keys), each written atomically, vectors first and keys last, so a chunk counts only
  once its keys exist and an interrupted run loses at most the chunk it was writing;
- an **index**: ``index-<generation>-<pid>.keys.npy``, the keys of every entry, sorted, and
  ``.where.npy``, the chunk and row of each (``chunk << 32 | row``), over the chunks named in its
  ``.json`` twin (written last: it commits the index).

Nothing in a process grows with the cache: the index is memory-mapped (a lookup binary-searches
it), a hit's vector is read from its chunk file alone, and only the keys of chunks that no index
covers yet are held in memory, at most ``max_unindexed`` of them; past that they are merged into a
new index generation, streaming over the old one block by block. Chunks that an index does not name
(written by another process at the same time, or by an older vocabert) are read as unindexed and
merged later, so two writers never lose each other's vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import atomic_write, write_npy, write_text

_INDEX_NAME = re.compile(r"index-(\d+)-\d+\.(json|keys\.npy|where\.npy)")
_MERGE_BLOCK = 1 << 20  # rows of the old index read at a time while merging


def default_cache_dir() -> Path:
    return Path(os.environ.get("VOCABERT_CACHE", Path.home() / ".cache" / "vocabert"))


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """64-bit keys of texts (blake2b); collisions are negligible below billions of texts."""
    digests = b"".join(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest() for t in texts)
    return np.frombuffer(digests, dtype="<u8").copy()


def _sorted_unique(keys: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entries sorted by key, the first of each key kept."""
    order = np.argsort(keys, kind="stable")
    keys, where = keys[order], where[order]
    keep = np.ones(len(keys), dtype=bool)
    keep[1:] = keys[1:] != keys[:-1]
    return keys[keep], where[keep]


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in ``sorted_keys`` and whether each is there (binary search: on a
    memory-mapped array it reads only the pages it visits)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return pos, np.asarray(sorted_keys[pos]) == keys


def _read_rows(path: Path, rows: np.ndarray, dim: int) -> np.ndarray | None:
    """Rows of a chunk's ``.npy`` vectors, read with ``pread`` (no mapping: scattered rows of a
    memory map would bring ~64 kB around each into this process's resident memory); ``None`` if
    the chunk is gone, damaged, or shorter than ``rows`` need."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
            offset = f.tell()
            if len(shape) != 2 or shape[1] != dim or fortran or dtype != np.float32 or int(rows.max()) >= shape[0]:
                return None
            width = dim * 4
            out = np.empty((len(rows), dim), dtype=np.float32)
            for i, row in enumerate(rows.tolist()):
                data = os.pread(f.fileno(), width, offset + row * width)
                if len(data) != width:
                    return None
                out[i] = np.frombuffer(data, dtype="<f4")
            return out
    except (OSError, ValueError, EOFError):
        return None


class EmbeddingCache:
    """Embeddings of texts under one model, stored in ``root/<model_key>/``."""

    def __init__(
        self, root: str | Path, model_key: str, dim: int, chunk_size: int = 4096, max_unindexed: int = 1 << 18
    ):
        self.dir = Path(root) / model_key
        self.dim = dim
        self.chunk_size = chunk_size
        self.max_unindexed = max_unindexed
        self._generation = 0
        # The index (memory-mapped once one exists) and the entries no index covers yet (in memory):
        # keys sorted, and where each entry's vector is (chunk << 32 | row).
        self._index_keys = self._index_where = np.zeros(0, dtype="<u8")
        self._new_keys = self._new_where = np.zeros(0, dtype="<u8")
        self._chunks: list[str] = []  # chunk names; an entry's chunk is a position in this list
        self._pending_keys: list[np.ndarray] = []
        self._pending_vectors: list[np.ndarray] = []
        self._load()

    # ------------------------------------------------------------------------------ reading

    def _load(self) -> None:
        self._open_index()
        indexed = set(self._chunks)
        keys, where = [], []
        for path in sorted(self.dir.glob("chunk-*.keys.npy")):
            name = path.name.removesuffix(".keys.npy")
            if name in indexed:
                continue
            try:
                k = np.load(path, allow_pickle=False)
                v = np.load(self.dir / f"{name}.vectors.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError):
                continue  # a damaged chunk is only a cache miss
            if k.ndim != 1 or v.shape != (len(k), self.dim):
                continue
            keys.append(k)
            where.append(self._where(self._add_chunk(name), len(k)))
        if keys:
            self._add_unindexed(np.concatenate(keys), np.concatenate(where))

    def _open_index(self) -> None:
        """The newest committed index: its .json exists and its tables have the rows it says."""
        found = [(int(m.group(1)), p) for p in self.dir.glob("index-*.json") if (m := _INDEX_NAME.fullmatch(p.name))]
        for generation, meta_path in sorted(found, reverse=True):
            stem = meta_path.name.removesuffix(".json")
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                keys = np.load(self.dir / f"{stem}.keys.npy", mmap_mode="r", allow_pickle=False)
                where = np.load(self.dir / f"{stem}.where.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError, UnicodeDecodeError):
                continue
            rows = meta.get("rows")
            if keys.shape != (rows,) or where.shape != (rows,) or meta.get("dim") != self.dim:
                continue
            self._generation, self._chunks = generation, list(meta["chunks"])
            self._index_keys, self._index_where = keys, where
            return

    @staticmethod
    def _where(chunk: int, rows: int) -> np.ndarray:
        return (np.uint64(chunk) << np.uint64(32)) | np.arange(rows, dtype=np.uint64)

    def _add_chunk(self, name: str) -> int:
        self._chunks.append(name)
        return len(self._chunks) - 1

    def _add_unindexed(self, keys: np.ndarray, where: np.ndarray) -> None:
        _, in_index = _find(self._index_keys, keys)
        self._new_keys, self._new_where = _sorted_unique(
            np.concatenate([self._new_keys, keys[~in_index]]), np.concatenate([self._new_where, where[~in_index]])
        )

    def __len__(self) -> int:
        return len(self._index_keys) + len(self._new_keys)

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``texts`` (zeros where missing) and a mask of which were found."""
        keys = text_keys(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        where = np.zeros(len(keys), dtype=np.uint64)
        for table_keys, table_where in ((self._index_keys, self._index_where), (self._new_keys, self._new_where)):
            todo = np.flatnonzero(~found)
            pos, hit = _find(table_keys, keys[todo])
            where[todo[hit]] = table_where[pos[hit]]
            found[todo[hit]] = True
        chunk_of, row_of = where >> np.uint64(32), (where & np.uint64(0xFFFFFFFF)).astype(np.int64)
        for chunk in np.unique(chunk_of[found]):
            rows = np.flatnonzero(found & (chunk_of == chunk))
            vectors = _read_rows(self.dir / f"{self._chunks[int(chunk)]}.vectors.npy", row_of[rows], self.dim)
            if vectors is None:
                found[rows] = False  # deleted or damaged since: a miss
                continue
            out[rows] = vectors
        return out, found

    # ------------------------------------------------------------------------------ writing

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
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"chunk-{len(self._chunks):06d}-{os.getpid()}-{keys[0]:016x}"
        write_npy(self.dir / f"{name}.vectors.npy", vectors)
        write_npy(self.dir / f"{name}.keys.npy", keys)  # last: a chunk counts only once its keys exist
        self._add_unindexed(keys, self._where(self._add_chunk(name), len(keys)))
        if len(self._new_keys) > self.max_unindexed:
            self.merge_index()

    def merge_index(self) -> None:
        """Write a new index generation holding every entry (the old index is streamed, not loaded)."""
        if len(self._new_keys) == 0:
            return
        old_keys, old_where, new_keys, new_where = self._index_keys, self._index_where, self._new_keys, self._new_where
        generation = self._generation + 1
        stem = f"index-{generation:08d}-{os.getpid()}"
        insert_at = np.searchsorted(old_keys, new_keys)  # new entry i goes before old entry insert_at[i]

        def merged(old: np.ndarray, new: np.ndarray) -> Callable[[Path], None]:
            def write(path: Path) -> None:
                out = np.lib.format.open_memmap(path, mode="w+", dtype="<u8", shape=(len(old) + len(new),))
                written = taken = 0
                for start in range(0, max(len(old), 1), _MERGE_BLOCK):
                    stop = min(start + _MERGE_BLOCK, len(old))
                    upto = len(new) if stop >= len(old) else int(np.searchsorted(insert_at, stop))
                    block = np.insert(np.asarray(old[start:stop]), insert_at[taken:upto] - start, new[taken:upto])
                    out[written : written + len(block)] = block
                    written, taken = written + len(block), upto
                out.flush()
                del out

            return write

        atomic_write(self.dir / f"{stem}.keys.npy", merged(old_keys, new_keys))
        atomic_write(self.dir / f"{stem}.where.npy", merged(old_where, new_where))
        meta = {"rows": len(old_keys) + len(new_keys), "dim": self.dim, "chunks": self._chunks}
        write_text(self.dir / f"{stem}.json", json.dumps(meta) + "\n")  # last: commits the index
        for path in self.dir.glob("index-*"):
            m = _INDEX_NAME.fullmatch(path.name)
            if m and int(m.group(1)) < generation:
                path.unlink(missing_ok=True)  # a reader that has it mapped keeps its pages
        self._generation = generation
        self._index_keys = np.load(self.dir / f"{stem}.keys.npy", mmap_mode="r", allow_pickle=False)
        self._index_where = np.load(self.dir / f"{stem}.where.npy", mmap_mode="r", allow_pickle=False)
        self._new_keys = self._new_where = np.zeros(0, dtype="<u8")

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
