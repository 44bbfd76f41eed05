"""Atomic writes, manifests and fingerprints shared by every stage.

Each stage writes its files into one directory and writes ``manifest.json`` last. The manifest
names the tokenizer and teacher the artifact was built with and the settings, so a later stage can
refuse inputs built for another tokenizer, and a stage can tell that its own output is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"


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
    os.close(fd)
    try:
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


def write_manifest(directory: str | Path, kind: str, provenance: dict, settings: dict, **extra: Any) -> None:
    """Mark ``directory`` as a complete artifact of ``kind``; call after every other file is in place."""
    from vocabert import __version__

    manifest = {
        "artifact": kind,
        "vocabert_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "provenance": provenance,
        "settings": settings,
        **extra,
    }
    write_json(Path(directory) / MANIFEST, manifest)


def read_manifest(directory: str | Path, kind: str) -> dict:
    """Read the manifest of a finished artifact, or explain why ``directory`` is not one."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise VocabertError(f"{kind} directory {directory} does not exist")
    if not path.is_file():
        raise VocabertError(
            f"{directory} is not a finished {kind} artifact (no {MANIFEST}); was its stage interrupted? "
            "Run that stage again."
        )
    manifest = read_json(path, kind)
    if manifest.get("artifact") != kind:
        raise VocabertError(f"{directory} holds a {manifest.get('artifact')!r} artifact, expected {kind!r}")
    return manifest


def is_complete(directory: str | Path, kind: str, provenance: dict, settings: dict) -> bool:
    """True when ``directory`` already holds this stage's output for the same inputs and settings."""
    try:
        manifest = read_manifest(directory, kind)
    except VocabertError:
        return False
    return manifest.get("provenance") == provenance and manifest.get("settings") == settings


def check_same_tokenizer(expected: dict, found: dict, what: str) -> None:
    """Refuse an artifact whose tokenizer differs from the one in use, naming both."""
    if expected.get("tokenizer") != found.get("tokenizer"):
        raise VocabertError(
            f"{what} was built with tokenizer {found.get('tokenizer')} "
            f"({found.get('tokenizer_source', '?')}), but this run uses tokenizer {expected.get('tokenizer')} "
            f"({expected.get('tokenizer_source', '?')}). Rebuild it with the same teacher/tokenizer."
        )


def check_same_teacher(expected: dict, found: dict, what: str) -> None:
    check_same_tokenizer(expected, found, what)
    if expected.get("teacher") != found.get("teacher"):
        raise VocabertError(
            f"{what} was built with teacher {found.get('teacher')} ({found.get('teacher_source', '?')}), "
            f"but this run uses teacher {expected.get('teacher')} ({expected.get('teacher_source', '?')})."
        )
