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


def _umask() -> int:
    # Reading the umask means setting it (os.umask); /proc reports it without that race where it exists.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_dir(parent: str | Path, prefix: str) -> Path:
    """A new directory in ``parent`` with the permissions ``mkdir`` gives (mkdtemp's are 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result into place, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.close(fd)
        write(Path(tmp))
        # mkstemp makes the file 0600 and the rename keeps that: give it the mode open() would have,
        # so a model built by one user can be read by a server running as another.
        os.chmod(tmp, 0o666 & ~_umask())
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
