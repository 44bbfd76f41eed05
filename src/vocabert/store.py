"""The entry store: one teacher vector per vocabulary entry, in safetensors, memory-mapped on load.

A store holds ``embeddings`` (entries x dim, fp16; or int8 with per-row ``scales``) and
``patterns`` (the entries' token patterns, see :mod:`vocabert.matching`). The distillation keeps it
in ``embeddings.safetensors``; a model folder keeps the same tensors in ``model.safetensors``.
Tensors are opened with ``np.memmap``, so loading costs milliseconds whatever the vocabulary size,
and only rows a text uses are ever read from disk.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from vocabert.artifacts import VocabertError, atomic_write

_DTYPES = {"F16": np.float16, "F32": np.float32, "I8": np.int8, "I32": np.int32, "I64": np.int64, "U8": np.uint8}


_HALF_EXPONENT_BIAS = np.float32(2.0**112)  # float32's exponent bias (127) minus float16's (15), as a factor
_SIGN_AND_BODY = np.int32(-0x70000001)  # 0x8FFFFFFF: the sign bit and the 28 bits of exponent and mantissa


def half_to_float(half: np.ndarray) -> np.ndarray:
    """float16 to float32, exact for finite values, ~10x faster than numpy's cast (scalar code).

    A float16's exponent and mantissa, shifted left by 13 bits, are the bits of a float32 equal to
    the value times 2**-112 (subnormals included); its sign lands in the float32's sign bit.
    """
    bits = half.view(np.int16).astype(np.int32)  # sign-extended: a negative value sets bits 16..31
    bits <<= 13
    bits &= _SIGN_AND_BODY
    out = bits.view(np.float32)
    out *= _HALF_EXPONENT_BIAS
    return out


# Per float dtype: the unsigned integer of its width, the mask of all bits but the sign, and the bits of
# infinity. A value is NaN or infinite exactly when its exponent bits are all ones: its bits without the
# sign are at least those of infinity.
_NONFINITE_BITS = {
    np.dtype(np.float16): (np.uint16, 0x7FFF, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x7FFFFFFF, 0x7F800000),
    np.dtype(np.float64): (np.uint64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
}


def all_finite(array: np.ndarray, chunk: int = 1 << 18) -> bool:
    """Whether every value of a float array is finite (True for any other dtype).

    Reads the raw bits a chunk at a time, so a tensor costs one pass and no float copy (~10 ms for 77 MB
    of float16, where ``np.isfinite`` on float16 takes ~70 ms). A memory-mapped tensor is read from its
    file, not through its mapping: touching every page of the mapping would make the whole file resident
    in this process (its RSS), where encoding only ever needs the rows of the entries it meets.
    """
    if array.dtype not in _NONFINITE_BITS or array.size == 0:
        return True
    bits, body, infinity = _NONFINITE_BITS[array.dtype]
    buffer = np.empty(min(chunk, array.size), dtype=bits)
    found = np.empty_like(buffer)
    for part in _raw_chunks(array, buffer):
        np.bitwise_and(part, body, out=found[: len(part)])
        if found[: len(part)].max() >= infinity:
            return False
    return True


def _raw_chunks(array: np.ndarray, buffer: np.ndarray) -> Iterator[np.ndarray]:
    """The values of ``array`` as the unsigned integers of ``buffer``'s dtype, a buffer's length at a time."""
    mapped = _mapped_file(array)
    if mapped is None:
        raw = np.ascontiguousarray(array).reshape(-1).view(buffer.dtype)
        for lo in range(0, raw.size, len(buffer)):
            yield raw[lo : lo + len(buffer)]
        return
    path, offset = mapped
    with open(path, "rb") as f:
        f.seek(offset)
        for lo in range(0, array.size, len(buffer)):
            part = buffer[: min(len(buffer), array.size - lo)]
            if f.readinto(memoryview(part).cast("B")) != part.nbytes:
                raise VocabertError(f"{path} was cut short while it was being read")
            yield part


def _mapped_file(array: np.ndarray) -> tuple[str, int] | None:
    """``(file, offset)`` of an array that is a whole :class:`np.memmap` (not a view of one), else None."""
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.flags.c_contiguous:
        if array.filename is not None:
            return array.filename, array.offset
    return None


def quantize_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and one float32 scale per row (``values[i] ~ q[i] * scale[i]``): the row's largest
    magnitude maps to 127; a row of zeros (or of no values) gets scale 1."""
    flat = values.reshape(len(values), -1)
    scales = np.abs(flat).max(axis=1, initial=0) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.round(flat / scales[:, None]), -127, 127).astype(np.int8)
    return q.reshape(values.shape), scales.astype(np.float32)


def save_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors atomically."""
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_safetensors(path: str | Path, what: str = "safetensors file") -> tuple[dict[str, np.ndarray], dict]:
    """Memory-map every tensor of a safetensors file, after the safetensors library has validated it."""
    path = Path(path)
    if not path.is_file():
        raise VocabertError(f"{what}: {path} is missing")
    try:
        # safe_open checks the header (JSON, dtypes, shapes against offsets, tensors back to back)
        # and that the data covers the file exactly, so a cut or padded file fails here.
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            specs = [
                (name, f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.offset_keys()
            ]
    except SafetensorError as e:
        reason = " ".join(str(e).split())
        raise VocabertError(f"{what}: {path} is truncated or corrupt ({reason})") from None
    with open(path, "rb") as f:
        offset = 8 + int.from_bytes(f.read(8), "little")  # the header length, validated above
    tensors = {}
    for name, dtype_name, shape in specs:  # in file order: each tensor starts where the previous one ends
        dtype = _DTYPES.get(dtype_name)
        if dtype is None:
            raise VocabertError(f"{what}: {path}: tensor {name} has unsupported dtype {dtype_name}")
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if size == 0:
            tensors[name] = np.zeros(shape, dtype=dtype)
        else:
            tensors[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        offset += size
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

    @property
    def dtype(self) -> str:
        """How the vectors are stored: float16, float32, or int8 (with one scale per row)."""
        return "int8" if self.scales is not None else str(self.embeddings.dtype)

    def __len__(self) -> int:
        return len(self.patterns)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of entries ``rows``, float32."""
        if self.embeddings.dtype == np.float16:
            return half_to_float(self.embeddings[rows])
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
            return cls(patterns, *quantize_rows(vectors), metadata)
        raise VocabertError(f"unknown store dtype {dtype!r}: use float16 or int8")

    def tensors(self) -> dict[str, np.ndarray]:
        """The store as safetensors tensors (``patterns``, ``embeddings`` and, for int8, ``scales``)."""
        tensors = {"patterns": np.asarray(self.patterns).astype(np.int32), "embeddings": self.embeddings}
        if self.scales is not None:
            tensors["scales"] = np.asarray(self.scales).astype(np.float32)
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], metadata: dict, where: str) -> VocabularyStore:
        """The store in ``tensors`` (as :meth:`tensors` names them); ``where`` names the file in errors."""
        for name in ("patterns", "embeddings"):
            if name not in tensors:
                raise VocabertError(f"{where} has no {name!r} tensor")
        patterns, embeddings, scales = tensors["patterns"], tensors["embeddings"], tensors.get("scales")
        if patterns.ndim != 2 or embeddings.ndim != 2 or (scales is not None and scales.shape != (len(embeddings),)):
            raise VocabertError(
                f"{where}: tensor shapes do not fit (patterns {patterns.shape}, embeddings {embeddings.shape}, "
                f"scales {None if scales is None else scales.shape})"
            )
        if not np.issubdtype(patterns.dtype, np.integer) or patterns.shape[1] == 0:
            raise VocabertError(
                f"{where}: patterns must be token ids (integers), not {patterns.dtype} of {patterns.shape}"
            )
        if embeddings.dtype not in (np.float16, np.float32, np.int8):
            raise VocabertError(f"{where}: embeddings must be float16, float32 or int8, not {embeddings.dtype}")
        if (embeddings.dtype == np.int8) != (scales is not None):  # int8 rows mean nothing without their scales
            raise VocabertError(f"{where}: int8 embeddings need a float32 scales tensor, and only they have one")
        if scales is not None and scales.dtype != np.float32:
            raise VocabertError(f"{where}: scales must be float32, not {scales.dtype}")
        return cls(np.asarray(patterns), embeddings, scales, metadata)

    def save(self, path: str | Path) -> None:
        save_safetensors(path, self.tensors(), {k: str(v) for k, v in self.metadata.items()})

    @classmethod
    def load(cls, path: str | Path) -> VocabularyStore:
        tensors, metadata = load_safetensors(path, "entry store")
        return cls.from_tensors(tensors, metadata, f"entry store {path}")
