"""``vocabert encode``: a file of texts to a ``.npy`` matrix or a Parquet table, in memory bounded by the batch.

Texts are read lazily (:func:`vocabert.readers.read_texts`), encoded a batch at a time and written
as they come:

- ``.npy``: the header is written first for 0 rows (numpy leaves room in it for the row count to
  grow) and rewritten in place with the final count at the end;
- ``.parquet`` (needs pyarrow): columns ``id`` (the input's ids: TSV's first field, JSONL's ``_id``
  or ``id``, else the line number) and ``embedding`` (a fixed-size list), one row group per
  :data:`ROW_GROUP_ROWS` texts.

Either way the file is written under a temporary name and renamed at the end
(:func:`vocabert.artifacts.atomic_write`): a crash never leaves a half-written file under the
output's name. ``int8``/``uint8`` need each dimension's range over all the texts, as
sentence-transformers computes it over all the embeddings of one ``encode`` call: a first pass
encodes the file to find them (or ``ranges`` gives them), and they are saved beside the output
(``<output>.ranges.npy``) so that other texts (queries) can be quantized alike.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError, atomic_write, load_npy, write_npy
from vocabert.encoding import (
    LONG_TEXTS,
    RangeTracker,
    check_precision,
    quantize_embeddings,
    quantized_dtype,
    quantized_width,
)
from vocabert.readers import read_texts, require_file

if TYPE_CHECKING:
    from vocabert.model import StudentModel

# Parquet rows buffered per row group: 6.3 MB of float32 vectors at dim 384. pyarrow's writer holds several
# copies of a row group while it encodes it (peak RSS ~150 MB at this size, ~200 MB at 8192 rows).
ROW_GROUP_ROWS = 4096


def output_format(path: str | Path) -> str:
    """``parquet`` for a ``.parquet`` (or ``.pq``) name, else ``npy``."""
    return "parquet" if Path(path).suffix.lower() in (".parquet", ".pq") else "npy"


def ranges_path(output: str | Path) -> Path:
    """Where the int8/uint8 ranges of ``output`` are saved: ``emb.npy`` -> ``emb.ranges.npy``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.ranges.npy")


def batched(records: Iterable, size: int) -> Iterator[list]:
    it = iter(records)
    while batch := list(islice(it, size)):
        yield batch


class NpyWriter:
    """Rows appended to an open ``.npy`` file; :meth:`close` writes the row count into the header."""

    def __init__(self, f: BinaryIO, width: int, dtype: np.dtype):
        self.f, self.width, self.dtype, self.rows = f, width, np.dtype(dtype), 0
        self.header_size = self._write_header(f, 0)

    def _header(self, rows: int) -> bytes:
        buf = io.BytesIO()
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (rows, self.width),
        }
        np.lib.format.write_array_header_1_0(buf, header)  # leaves room for the row count to grow
        return buf.getvalue()

    def _write_header(self, f: BinaryIO, rows: int) -> int:
        header = self._header(rows)
        f.write(header)
        return len(header)

    def write(self, ids: list[str], rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        assert rows.ndim == 2 and rows.shape[1] == self.width, rows.shape
        self.f.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        header = self._header(self.rows)
        if len(header) != self.header_size:  # numpy < 1.23 left no room: never with numpy >= 1.24
            raise VocabertError("numpy wrote a .npy header of another size for the final row count")
        self.f.seek(0)
        self.f.write(header)
        self.f.seek(0, io.SEEK_END)


def require_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise VocabertError(
            "writing Parquet needs pyarrow: pip install 'vocabert[parquet]' (or give the output a .npy name)"
        ) from None
    return pa, pq


class ParquetWriter:
    """Rows (id, embedding) into a Parquet file, :data:`ROW_GROUP_ROWS` rows per row group."""

    def __init__(self, path: Path, width: int, dtype: np.dtype, metadata: dict[str, str]):
        self.pa, pq = require_pyarrow()
        self.width, self.dtype = width, np.dtype(dtype)
        self.schema = self.pa.schema(
            [("id", self.pa.string()), ("embedding", self.pa.list_(self.pa.from_numpy_dtype(self.dtype), width))],
            metadata=metadata,
        )
        # No dictionary or min/max statistics for the vectors: they would cost memory and help no reader.
        self.writer = pq.ParquetWriter(str(path), self.schema, use_dictionary=["id"], write_statistics=["id"])
        self.ids: list[str] = []
        self.rows: list[np.ndarray] = []
        self.buffered = 0

    def write(self, ids: list[str], rows: np.ndarray) -> None:
        self.ids.extend(ids)
        self.rows.append(np.ascontiguousarray(rows, dtype=self.dtype))
        self.buffered += len(rows)
        if self.buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.buffered:
            return
        flat = np.concatenate(self.rows).reshape(-1)
        embedding = self.pa.FixedSizeListArray.from_arrays(self.pa.array(flat), self.width)
        table = self.pa.Table.from_arrays([self.pa.array(self.ids, self.pa.string()), embedding], schema=self.schema)
        self.writer.write_table(table)
        self.ids, self.rows, self.buffered = [], [], 0

    def close(self) -> None:
        self._flush()
        self.writer.close()


@dataclass
class EncodeResult:
    texts: int
    width: int
    dtype: str
    ranges: Path | None = None  # where the int8/uint8 ranges were saved


def encode_records(
    model: StudentModel,
    records: Iterable[tuple[str, str]],
    write: Callable[[list[str], np.ndarray], None],
    *,
    batch_size: int = 64,
    precision: str = "float32",
    ranges: np.ndarray | None = None,
    long_texts: str = "truncate",
    bar: tqdm | None = None,
) -> int:
    """Encode ``(id, text)`` records a batch at a time, handing each batch to ``write(ids, rows)``; the count.

    At most one batch of texts and vectors is held at a time.
    """
    n = 0
    for batch in batched(records, batch_size):
        ids = [i for i, _ in batch]
        vectors = model.encode([t for _, t in batch], batch_size=batch_size, long_texts=long_texts)
        if precision != "float32":
            vectors = quantize_embeddings(vectors, precision, ranges=ranges)
        write(ids, vectors)
        n += len(batch)
        if bar is not None:
            bar.update(len(batch))
    return n


def calibrate(
    model: StudentModel, records: Iterable[tuple[str, str]], precision: str, batch_size: int, long_texts: str, bar
) -> np.ndarray:
    """int8/uint8 ranges of the embeddings of ``records``: a pass that keeps only a running min and max."""
    tracker = RangeTracker()
    encode_records(
        model, records, lambda _, rows: tracker.update(rows), batch_size=batch_size, long_texts=long_texts, bar=bar
    )
    try:
        return tracker.ranges(precision)
    except ValueError as e:
        raise VocabertError(f"{e} Pass --ranges FILE (e.g. the .ranges.npy of a larger file encoded before).") from None


def encode_file(
    model: StudentModel,
    input: str | Path,
    output: str | Path,
    *,
    batch_size: int = 64,
    precision: str = "float32",
    long_texts: str = "truncate",
    ranges: str | Path | np.ndarray | None = None,
    progress: bool = True,
) -> EncodeResult:
    """Encode the texts of ``input`` (TSV, JSONL or lines, gz or plain) into ``output`` (.npy or .parquet)."""
    try:
        check_precision(precision)
    except ValueError as e:
        raise VocabertError(str(e)) from None
    if long_texts not in LONG_TEXTS:
        raise VocabertError(f"long texts: {long_texts!r} is not one of {', '.join(LONG_TEXTS)}")
    if batch_size < 1:
        raise VocabertError(f"batch size must be at least 1, got {batch_size}")
    input, output = require_file(input), Path(output)
    fmt = output_format(output)
    if fmt == "parquet":
        require_pyarrow()  # before any work
    width, dtype = quantized_width(model.dim, precision), quantized_dtype(precision)
    quantized_ranges = precision in ("int8", "uint8")
    if ranges is not None and not quantized_ranges:
        raise VocabertError(f"ranges apply to int8 and uint8 only, not to {precision}")
    if isinstance(ranges, str | Path):
        ranges = np.asarray(load_npy(ranges, "quantization ranges", mmap=False), dtype=np.float32)
    if ranges is not None and ranges.shape != (2, model.dim):
        raise VocabertError(f"quantization ranges must have shape (2, {model.dim}), not {ranges.shape}")
    saved_ranges = None
    if quantized_ranges and ranges is None:
        with tqdm(desc=f"encode: {precision} ranges (pass 1 of 2)", unit="text", disable=not progress) as bar:
            ranges = calibrate(model, read_texts(input), precision, batch_size, long_texts, bar)
        saved_ranges = ranges_path(output)
        write_npy(saved_ranges, ranges.astype(np.float32))

    count = 0

    def stream(tmp: Path) -> None:
        nonlocal count
        desc = "encode" + (" (pass 2 of 2)" if saved_ranges is not None else "")
        with tqdm(desc=desc, unit="text", disable=not progress) as bar:
            options = dict(batch_size=batch_size, precision=precision, ranges=ranges, long_texts=long_texts, bar=bar)
            if fmt == "parquet":
                writer = ParquetWriter(tmp, width, dtype, {"vocabert.precision": precision})
                try:
                    count = encode_records(model, read_texts(input), writer.write, **options)
                finally:
                    writer.close()
            else:
                with open(tmp, "wb") as f:
                    writer = NpyWriter(f, width, dtype)
                    count = encode_records(model, read_texts(input), writer.write, **options)
                    writer.close()

    atomic_write(output, stream)
    return EncodeResult(count, width, dtype.name, saved_ranges)
