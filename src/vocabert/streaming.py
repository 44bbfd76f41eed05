"""``vocabert encode``: a file of texts to a ``.npy`` matrix or a Parquet table, in memory bounded by the batch.

Texts are read lazily (:func:`vocabert.readers.read_texts`), encoded a batch at a time and written
as they come:

- ``.npy``: the header is written first for 0 rows (numpy leaves room in it for the row count to
  grow) and rewritten in place with the final count at the end;
- ``.parquet`` (needs pyarrow): columns ``id`` (the input's ids: TSV's first field, JSONL's ``_id``
  or ``id``, else the line number) and ``embedding`` (a fixed-size list), one row group per
  :data:`ROW_GROUP_ROWS` texts.

Rows line up with the input: row i is the vector of line i + 1, every line counted
(:func:`~vocabert.readers.read_texts` with ``every_line``). A blank line gets the empty text's vector
(the model defines one) rather than being refused or skipped: a user who joins the output to the input
by line number gets the right row for every line, and a warning names the blank lines. A TSV line's
text is everything after its first tab, tabs kept (nothing is dropped), and a warning names the lines
with more than one tab.

Either way the file is written under a temporary name and renamed at the end
(:func:`vocabert.artifacts.atomic_write`): a crash never leaves a half-written file under the
output's name, and an interrupted run (Ctrl-C, SIGTERM, SIGHUP) removes its temporary file. A run
killed outright (kill -9) cannot: the next run on the same output removes what it left, unless another
run holds it (each run holds its temporary file locked). There is no resume: a rerun encodes the file
from the start. (A resumed ``.npy`` would hold vectors of other batches, which differ at float rounding,
and a Parquet file cut short has no footer to append to.)

Before any work the input is read up to its first text (a binary, empty or malformed file is refused
then), and the output must be neither a folder nor the input itself (under any name: a symlink or a
hard link).

``int8``/``uint8`` need each dimension's range over all the texts, as
sentence-transformers computes it over all the embeddings of one ``encode`` call: a first pass
encodes the file to find them (or ``ranges`` gives them), and they are saved beside the output
(``<output>.ranges.npy``) so that other texts (queries) can be quantized alike.
"""

from __future__ import annotations

import glob
import io
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError, atomic_write, load_npy, write_npy
from vocabert.encoding import (
    LONG_TEXTS,
    PRECISIONS,
    RangeTracker,
    check_precision,
    quantize_embeddings,
    quantized_dtype,
    quantized_width,
)
from vocabert.options import option
from vocabert.readers import read_texts, require_file

try:
    import fcntl
except ImportError:  # Windows has no fcntl: there every temporary file found is taken for stale
    fcntl = None

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


def check_paths(input: str | Path, output: str | Path, writes_ranges: bool = False) -> tuple[Path, Path]:
    """``input`` and ``output`` as Paths, checked before any work is done or any folder is created.

    The input is read up to its first text, so that a binary, empty or malformed file is refused now; the
    output (and its ranges file, if one is written) must be neither a folder nor the input under any name.
    """
    input, output = require_file(input), Path(output)
    records = read_texts(input, warn=False)
    try:
        next(records)
    finally:
        records.close()
    for target in [output, ranges_path(output)] if writes_ranges else [output]:
        if target.is_dir():
            raise VocabertError(f"cannot write {target}: it is a directory")
        if target.exists() and os.path.samefile(target, input):  # the same file, through any path or link
            raise VocabertError(f"cannot write {target}: it is the input file {input}")
    return input, output


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VocabertError(f"cannot create the output folder {folder}: {e.strerror}") from None


def lock(f: BinaryIO, wait: bool = True) -> bool:
    """Hold an exclusive lock on open file ``f`` (until it is closed or the process dies); False if another
    process holds it and ``wait`` is False."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def remove_stale_temporaries(output: Path) -> None:
    """Remove the temporary files a run killed outright (kill -9) left for ``output``.

    They are :func:`~vocabert.artifacts.atomic_write`'s ``.<name>.<8 characters>.tmp``; a running encode
    holds its own locked, and one found locked means another encode is writing ``output`` now.
    """
    for tmp in output.parent.glob(f".{glob.escape(output.name)}.????????.tmp"):
        try:
            with open(tmp, "rb") as f:
                if not lock(f, wait=False):
                    raise VocabertError(f"another vocabert encode is writing {output} now (it holds {tmp.name})")
                tmp.unlink()
        except FileNotFoundError:  # removed meanwhile
            pass


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
    """Encode the texts of ``input`` (TSV, JSONL or lines, gz or plain) into ``output`` (.npy or .parquet).

    Row i is the vector of line i + 1 of ``input`` (see the module's docstring for blank lines and tabs).
    """
    try:
        check_precision(precision)
    except ValueError as e:
        raise VocabertError(str(e)) from None
    if long_texts not in LONG_TEXTS:
        raise VocabertError(f"long texts: {long_texts!r} is not one of {', '.join(LONG_TEXTS)}")
    if batch_size < 1:
        raise VocabertError(f"batch size must be at least 1, got {batch_size}")
    quantized_ranges = precision in ("int8", "uint8")
    if ranges is not None and not quantized_ranges:
        raise VocabertError(f"ranges apply to int8 and uint8 only, not to {precision}")
    input, output = check_paths(input, output, writes_ranges=quantized_ranges and ranges is None)
    fmt = output_format(output)
    if fmt == "parquet":
        require_pyarrow()  # before any work
    width, dtype = quantized_width(model.dim, precision), quantized_dtype(precision)
    if isinstance(ranges, str | Path):
        ranges = np.asarray(load_npy(ranges, "quantization ranges", mmap=False), dtype=np.float32)
    if ranges is not None and ranges.shape != (2, model.dim):
        raise VocabertError(f"quantization ranges must have shape (2, {model.dim}), not {ranges.shape}")
    make_folder(output.parent)
    remove_stale_temporaries(output)

    def records(warn: bool = True) -> Iterator[tuple[str, str]]:
        return read_texts(input, every_line=True, warn=warn)

    saved_ranges = None
    if quantized_ranges and ranges is None:
        with tqdm(desc=f"encode: {precision} ranges (pass 1 of 2)", unit="text", disable=not progress) as bar:
            ranges = calibrate(model, records(warn=False), precision, batch_size, long_texts, bar)
        saved_ranges = ranges_path(output)
        write_npy(saved_ranges, ranges.astype(np.float32))

    count = 0

    def stream(tmp: Path) -> None:
        nonlocal count
        desc = "encode" + (" (pass 2 of 2)" if saved_ranges is not None else "")
        with open(tmp, "ab") as held, tqdm(desc=desc, unit="text", disable=not progress) as bar:
            lock(held)  # marks the temporary file as in use: see remove_stale_temporaries
            options = dict(batch_size=batch_size, precision=precision, ranges=ranges, long_texts=long_texts, bar=bar)
            if fmt == "parquet":
                writer = ParquetWriter(tmp, width, dtype, {"vocabert.precision": precision})
                try:
                    count = encode_records(model, records(), writer.write, **options)
                finally:
                    writer.close()
            else:
                with open(tmp, "wb") as f:
                    writer = NpyWriter(f, width, dtype)
                    count = encode_records(model, records(), writer.write, **options)
                    writer.close()

    atomic_write(output, stream)
    return EncodeResult(count, width, dtype.name, saved_ranges)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt, so that the same clean-up runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While in the block, SIGTERM and SIGHUP raise :class:`Interrupted` (their default ends the process
    at once, leaving the temporary file behind). Main thread only, as :func:`signal.signal`."""

    def interrupt(signum: int, frame) -> None:
        raise Interrupted(signum)

    previous = {number: signal.signal(number, interrupt) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@dataclass(frozen=True)
class EncodeSettings:
    """The ``vocabert encode`` options: :func:`encode_command`'s arguments of the same names."""

    model_dir: str = option(help="model directory", flag="--model")
    input: str = option(help="texts to encode")
    output: str = option(
        help="file to write: a .parquet name writes a table with columns id and embedding (needs pyarrow), any "
        "other name a .npy matrix (row i is the input's line i + 1, blank lines included)"
    )
    batch_size: int = option(64, "texts per batch")
    precision: str = option(
        "float32",
        "as sentence-transformers' quantize_embeddings: int8/uint8 take each dimension's range over the whole "
        "file (a first pass; saved as <output>.ranges.npy), binary/ubinary pack the sign bits",
        choices=PRECISIONS,
    )
    ranges: str | None = option(
        None,
        "int8/uint8: the ranges to quantize with (a (2, dim) .npy, e.g. the .ranges.npy of the corpus encoded "
        "before), instead of the first pass",
        metavar="FILE",
    )
    long_texts: str = option(
        "truncate",
        "texts longer than the teacher's maximum length: truncate them as the teacher does, or embed them in "
        "windows of that length and average the windows' vectors, weighted by tokens",
        choices=LONG_TEXTS,
    )
    progress: bool = option(True, "no progress bars", flag="--no-progress")


def encode_command(
    model_dir: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    batch_size: int,
    precision: str,
    long_texts: str,
    ranges: str | Path | None,
    progress: bool,
) -> None:
    """``vocabert encode``: :func:`encode_file` with the model loaded from ``model_dir``, and a summary line.
    Every argument comes from :class:`EncodeSettings`, where the defaults live.

    Ctrl-C, SIGTERM and SIGHUP remove the temporary file, say that nothing was written and exit with
    128 + the signal's number (130 for Ctrl-C), as a shell reports a process the signal ended.
    """
    from vocabert.model import load

    try:
        with stop_signals_interrupt():
            result = encode_file(
                load(model_dir),
                input,
                output,
                batch_size=batch_size,
                precision=precision,
                long_texts=long_texts,
                ranges=ranges,
                progress=progress,
            )
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        # A signal inside mkstemp, after it made the file and before atomic_write could take charge of it,
        # leaves the temporary file behind: ours is unlocked now, another encode's is left alone.
        with suppress(VocabertError):
            remove_stale_temporaries(Path(output))
        print(
            f"vocabert: interrupted ({signal.Signals(signum).name}): {output} not written "
            "(encode does not resume: a rerun starts over)",
            file=sys.stderr,
        )
        raise SystemExit(128 + signum) from None
    print(
        f"[vocabert] encode: {result.texts} texts -> {output} ({result.texts} x {result.width} {result.dtype})"
        + (f"; {result.dtype} ranges -> {result.ranges}" if result.ranges else ""),
        flush=True,
    )
