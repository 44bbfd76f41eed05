"""Streaming readers of text files: the one way vocabert opens an input (gz or plain).

Used by the corpus stage, ``vocabert encode`` and the benchmark's dataset readers alike. Invalid
UTF-8 becomes U+FFFD (a stray bad byte must not stop a corpus halfway), and the reader says how
many lines that hit; a file that is plainly binary is refused.
"""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

from vocabert.artifacts import VocabertError

TEXT_FORMATS = "TSV (id<TAB>text), JSONL (a 'text' field) or one text per line, gz or plain"


def require_file(path: str | Path, what: str = "input file") -> Path:
    """``path`` as a Path if it is a readable file, else a one-line error naming it."""
    path = Path(path)
    if path.is_dir():
        raise VocabertError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise VocabertError(f"{what} {path} does not exist")
    return path


def read_lines(path: str | Path, what: str = "input file") -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` of every non-blank line, newline stripped; errors name the file."""
    path = require_file(path, what)
    opener = gzip.open if path.name.endswith(".gz") else open
    invalid = 0
    found = False
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if number == 1:
                    if b"\x00" in raw[:4096]:
                        raise VocabertError(f"{what} {path} looks binary (NUL bytes), not text")
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is not part of the first text
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    invalid += 1
                    line = raw.decode("utf-8", "replace")
                line = line.rstrip("\r\n")
                if line.strip():
                    found = True
                    yield number, line
    except (EOFError, OSError, zlib.error) as e:
        raise VocabertError(f"{what} {path} cannot be read to the end ({e}); is it truncated?") from None
    finally:
        if invalid:
            print(
                f"vocabert: warning: {path}: {invalid} line(s) were not valid UTF-8 (bad bytes replaced by U+FFFD)",
                file=sys.stderr,
            )
    if not found:
        raise VocabertError(f"{what} {path} is empty: it holds no texts")


def text_format(path: str | Path) -> str:
    """``tsv``, ``jsonl`` or ``lines``, from the file name."""
    name = Path(path).name.removesuffix(".gz")
    return "jsonl" if name.endswith((".jsonl", ".json")) else "tsv" if name.endswith(".tsv") else "lines"


def read_json_lines(path: str | Path, what: str = "input file") -> Iterator[tuple[int, object]]:
    """``(line_number, value)`` of every non-blank line of a JSON-lines file; callers check the value's shape."""
    for lineno, line in read_lines(path, what):
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise VocabertError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_texts(path: str | Path, what: str = "input file", fmt: str | None = None) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` pairs from TSV (``id<TAB>text``), JSONL (``text`` field) or plain text.

    ``fmt`` (``tsv``, ``jsonl`` or ``lines``) overrides :func:`text_format`, for files whose layout is
    known whatever their name (e.g. MS MARCO's ``queries.dev.txt`` is ``id<TAB>text``).
    """
    fmt = fmt or text_format(path)
    if fmt == "jsonl":
        for lineno, record in read_json_lines(path, what):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise VocabertError(f"{path}:{lineno}: expected a JSON object with a 'text' string")
            yield str(record.get("_id", record.get("id", lineno))), record["text"]
        return
    for lineno, line in read_lines(path, what):
        if fmt == "tsv":
            parts = line.split("\t")
            if len(parts) < 2:
                raise VocabertError(f"{path}:{lineno}: expected 'id<TAB>text', found no tab")
            yield parts[0], parts[1]
        else:
            yield str(lineno), line
