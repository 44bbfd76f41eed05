"""Atomic file writes and the error type whose message the CLI shows (no traceback).

Every file vocabert writes goes through :func:`atomic_write`: a temporary file in the same folder,
then a rename, so a reader (or a rerun after a crash) never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class VocabertError(Exception):
    """An error with a message meant for the user (the CLI prints it without a traceback)."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result into place, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    def _save(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, array)

    atomic_write(path, _save)


def read_json(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VocabertError(f"{what}: {path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VocabertError(f"{what}: {path} is not valid JSON ({e})") from None


def load_npy(path: str | Path, what: str, mmap: bool = True) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise VocabertError(f"{what}: {path} is missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise VocabertError(f"{what}: {path} is corrupt or truncated ({e})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
