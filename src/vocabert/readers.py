"""Streaming readers of text files: the one way vocabert opens an input (gz or plain).

Used by the corpus stage, ``vocabert encode`` and the benchmark's dataset readers alike. Invalid
UTF-8 becomes U+FFFD (a stray bad byte must not stop a corpus halfway), and the reader says how
many lines that hit; a file whose first block is plainly not text (a known binary format, NUL bytes,
or mostly bytes that are not UTF-8 text) is refused.

Two readings of the same file (:func:`read_texts`):

- by default (the corpus stage, the benchmark), blank lines are skipped and a TSV line's text is its
  second field. The corpus stage depends on this: its corpus must not change;
- ``every_line=True`` (``vocabert encode``) gives one record per line, so that row i of an output is line
  i + 1 of the input: a blank line is the empty text, and a TSV line's text is everything after its
  first tab (tabs kept, nothing dropped). A warning says how many lines were blank or had several tabs.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from vocabert.artifacts import VocabertError

TEXT_FORMATS = "TSV (id<TAB>text), JSONL (a 'text' field) or one text per line, gz or plain"

# The first bytes of files that are not text, and what they are. (Compressed data with no magic number,
# e.g. bz2, is caught by the share of bytes that are not text.)
BINARY_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF87a": "a GIF image",
    b"GIF89a": "a GIF image",
    b"%PDF-": "a PDF document",
    b"PK\x03\x04": "a ZIP archive (or .docx, .xlsx)",
    b"\x1f\x8b": "gzip data: name it .gz to read the texts inside",
    b"\xfd7zXZ\x00": "xz data",
    b"\x28\xb5\x2f\xfd": "zstd data",
    b"\x7fELF": "a program",
    b"\x93NUMPY": "a .npy array",
    b"PAR1": "a Parquet file",
    b"SQLite format 3\x00": "an SQLite database",
    b"\xff\xfe": "UTF-16 text: convert it to UTF-8",
    b"\xfe\xff": "UTF-16 text: convert it to UTF-8",
}
SNIFF_BYTES = 8192  # how much of a file is looked at to tell text from binary
# Characters text does not hold: undecodable bytes (U+FFFD) and control characters other than \t\n\v\f\r.
NOT_TEXT = re.compile("[\ufffd\x00-\x08\x0e-\x1f\x7f-\x9f]")
# Over this share of such characters the first block is binary: text in a legacy encoding (a stray é in
# Latin-1) stays far below it, random bytes are above 50%.
MAX_NOT_TEXT = 0.3
SHOWN_LINES = 5  # line numbers a warning lists


def require_file(path: str | Path, what: str = "input file") -> Path:
    """``path`` as a Path if it is a readable file, else a one-line error naming it."""
    path = Path(path)
    if path.is_dir():
        raise VocabertError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise VocabertError(f"{what} {path} does not exist")
    return path


def binary_kind(head: bytes) -> str | None:
    """What ``head`` (the first bytes of a file) is if it is not text, else None."""
    for signature, kind in BINARY_SIGNATURES.items():
        if head.startswith(signature):
            return kind
    if b"\x00" in head:
        return "NUL bytes"
    text = head.decode("utf-8", "replace")
    if len(NOT_TEXT.findall(text)) > MAX_NOT_TEXT * len(text):
        return "mostly bytes that are not UTF-8 text"
    return None


@dataclass
class LineTally:
    """Lines of one kind, for a one-line warning at the end of a read: how many, and the first few."""

    what: str
    count: int = 0
    first: list[int] = field(default_factory=list)

    def add(self, number: int) -> None:
        self.count += 1
        if len(self.first) < SHOWN_LINES:
            self.first.append(number)

    def warn(self, path: Path) -> None:
        if self.count:
            shown = ", ".join(map(str, self.first)) + (", ..." if self.count > len(self.first) else "")
            lines = "line" if self.count == 1 else "lines"
            print(f"vocabert: warning: {path}: {self.count} {self.what}: {lines} {shown}", file=sys.stderr)


def read_lines(
    path: str | Path, what: str = "input file", *, keep_blank: bool = False, warn: bool = True
) -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` of every non-blank line (every line with ``keep_blank``), newline stripped.

    Errors name the file; a file of blank lines only is refused as empty. ``warn=False`` leaves out the
    warning about invalid UTF-8 (for a second read of the same file).
    """
    path = require_file(path, what)
    opener = gzip.open if path.name.endswith(".gz") else open
    invalid = LineTally("line(s) were not valid UTF-8 (bad bytes replaced by U+FFFD)")
    found = False
    try:
        with opener(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
            kind = binary_kind(head)
            if kind:
                raise VocabertError(f"{what} {path} looks binary ({kind}), not text")
            head = head.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is not part of the first text
            # The lines of the block read (its last line completed), then those of the rest of the file.
            for number, raw in enumerate(chain(io.BytesIO(head + f.readline()), f), 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    invalid.add(number)
                    line = raw.decode("utf-8", "replace")
                line = line.rstrip("\r\n")
                if line.strip():
                    found = True
                    yield number, line
                elif keep_blank:
                    yield number, line
    except (EOFError, OSError, zlib.error) as e:
        raise VocabertError(f"{what} {path} cannot be read to the end ({e}); is it truncated?") from None
    finally:
        if warn:
            invalid.warn(path)
    if not found:
        raise VocabertError(f"{what} {path} is empty: it holds no texts")


def text_format(path: str | Path) -> str:
    """``tsv``, ``jsonl`` or ``lines``, from the file name."""
    name = Path(path).name.removesuffix(".gz")
    return "jsonl" if name.endswith((".jsonl", ".json")) else "tsv" if name.endswith(".tsv") else "lines"


def parse_json_line(path: str | Path, lineno: int, line: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise VocabertError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_json_lines(path: str | Path, what: str = "input file") -> Iterator[tuple[int, object]]:
    """``(line_number, value)`` of every non-blank line of a JSON-lines file; callers check the value's shape."""
    for lineno, line in read_lines(path, what):
        yield lineno, parse_json_line(path, lineno, line)


def read_texts(
    path: str | Path, what: str = "input file", fmt: str | None = None, *, every_line: bool = False, warn: bool = True
) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` pairs from TSV (``id<TAB>text``), JSONL (``text`` field) or plain text.

    ``fmt`` (``tsv``, ``jsonl`` or ``lines``) overrides :func:`text_format`, for files whose layout is
    known whatever their name (e.g. MS MARCO's ``queries.dev.txt`` is ``id<TAB>text``).

    By default blank lines are skipped and a TSV text is the line's second field (the corpus stage's
    reading, which must not change). ``every_line=True`` yields one pair per line: a blank line is the
    empty text (its id: the line number, or in TSV the empty first field), and a TSV text is everything
    after the first tab, tabs kept; a warning at the end counts both kinds of line. ``warn=False`` leaves
    out every warning (for a second read of the same file).
    """
    fmt = fmt or text_format(path)
    blank = LineTally("blank line(s) read as empty texts")
    tabbed = LineTally("line(s) with more than one tab: the text is everything after the first tab")
    for lineno, line in read_lines(path, what, keep_blank=every_line, warn=warn):
        if not line.strip():  # only with every_line: the empty text keeps the line's row
            blank.add(lineno)
            yield ("" if fmt == "tsv" else str(lineno)), ""
        elif fmt == "jsonl":
            record = parse_json_line(path, lineno, line)
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise VocabertError(f"{path}:{lineno}: expected a JSON object with a 'text' string")
            yield str(record.get("_id", record.get("id", lineno))), record["text"]
        elif fmt == "tsv":
            text_id, tab, text = line.partition("\t")
            if not tab:
                raise VocabertError(f"{path}:{lineno}: expected 'id<TAB>text', found no tab")
            if "\t" in text:
                if every_line:
                    tabbed.add(lineno)
                else:
                    text = text.split("\t", 1)[0]
            yield text_id, text
        else:
            yield str(lineno), line
    if warn:
        blank.warn(path)
        tabbed.warn(path)
