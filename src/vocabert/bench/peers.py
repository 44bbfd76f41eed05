"""The models vocabert is compared with, each a real library run offline.

Every dense model is wrapped as an :class:`Encoder` (float32, L2-normalised rows) so the bench
treats the teacher, Model2Vec and the student alike. BM25 is a retriever, not an encoder, and has
its own small class. A peer that cannot be built comes back as :class:`PeerUnavailable` with the
reason, so one broken library never takes the whole bench down and is never silently dropped.

``load_seconds`` is the in-process load time and leaves out importing the library (torch alone takes
seconds); :func:`vocabert.bench.speed.measure_memory` times a cold start, imports included, in a fresh process.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vocabert.artifacts import VocabertError, read_json, sha256_file, write_json
from vocabert.bench.report import package_version
from vocabert.distill.cache import EmbeddingCache, default_cache_dir
from vocabert.distill.teacher import resolve_teacher_path, teacher_fingerprint
from vocabert.model import normalize

# Written last into a distilled Model2Vec folder: the folder is reused only when it names the same inputs.
M2V_MARKER = "vocabert-distill.json"
# Files on disk that no model loads; left out of size_bytes.
_NOT_LOADED = {"README.md", M2V_MARKER}


def folder_bytes(path: Path) -> int:
    """Bytes of the files a model loads from ``path``: top-level files and numbered module folders.

    Sub-folders such as ``onnx/`` or ``openvino/`` hold alternative exports that are not loaded.
    """
    path = Path(path)
    files = [f for f in path.iterdir() if f.is_file() and f.name not in _NOT_LOADED]
    if (path / "model.safetensors").is_file():  # sentence-transformers prefers it over the .bin
        files = [f for f in files if f.name != "pytorch_model.bin"]
    for sub in path.iterdir():
        if sub.is_dir() and sub.name[:1].isdigit() and "_" in sub.name:  # 1_Pooling, 2_Normalize, ...
            files += [f for f in sub.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files)


def files_hash(root: Path, files: Sequence[Path]) -> str:
    """Content hash of model files, to key cached embeddings of models without a fingerprint."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def folder_hash(path: Path) -> str:
    """:func:`files_hash` of every file in a folder but the model card."""
    path = Path(path)
    return files_hash(path, [p for p in path.rglob("*") if p.is_file() and p.name not in _NOT_LOADED])


class Encoder:
    """What the bench needs of a dense model. Subclasses set the fields in ``__init__``."""

    name: str
    kind: str  # "teacher", "model2vec" or "student"
    path: Path
    dim: int
    load_seconds: float
    size_bytes: int
    model_key: str  # names the model in the embedding cache
    description: str
    available = True

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> dict:
        """How a fresh process loads this model again (for :func:`vocabert.bench.speed.measure_memory`)."""
        return {"kind": self.kind, "path": str(self.path)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, path={str(self.path)!r})"


@dataclass
class PeerUnavailable:
    """A peer that could not be built, with the reason; reported, never silently dropped."""

    name: str
    kind: str
    reason: str
    available = False


class TeacherEncoder(Encoder):
    """The sentence-transformers teacher (all-MiniLM-L6-v2 by default)."""

    def __init__(self, path: str | Path | None = None, name: str = "teacher", device: str = "cpu"):
        from vocabert.distill.teacher import Teacher

        self.path = resolve_teacher_path(path)
        try:
            import sentence_transformers  # noqa: F401  imported before the clock starts
        except ImportError:
            pass  # Teacher raises the user-facing error
        start = time.perf_counter()
        self.teacher = Teacher(self.path, device=device)
        self.load_seconds = time.perf_counter() - start
        self.name, self.kind = name, "teacher"
        self.dim = self.teacher.dim
        self.size_bytes = folder_bytes(self.path)
        self.model_key = self.teacher.cache_key  # shared with the pipeline's cache of training targets
        self.description = f"sentence-transformers {package_version('sentence-transformers')}, {self.path}"

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return normalize(self.teacher.encode(list(texts), batch_size=batch_size))


class Model2VecEncoder(Encoder):
    """A Model2Vec static model loaded with ``StaticModel.from_pretrained``."""

    def __init__(self, path: str | Path, name: str | None = None, model_key: str | None = None):
        try:
            from model2vec import StaticModel
        except ImportError:
            raise VocabertError("Model2Vec is not installed: pip install 'model2vec[distill]'") from None
        self.path = Path(path)
        start = time.perf_counter()
        self.model = StaticModel.from_pretrained(str(self.path))
        self.load_seconds = time.perf_counter() - start
        self.dim = int(self.model.dim)
        self.name = name or f"model2vec-{self.dim}"
        self.kind = "model2vec"
        self.size_bytes = folder_bytes(self.path)
        self.model_key = model_key or f"model2vec-{folder_hash(self.path)}"
        pca = self.model.config.get("apply_pca")
        self.description = f"model2vec {package_version('model2vec')}, PCA {pca or 'none'}, {self.dim} dims"

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # Library defaults otherwise (incl. its threading above 10k texts): the peer as its users run it.
        return normalize(self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=False))


class StudentEncoder(Encoder):
    """A vocabert student loaded with :func:`vocabert.load`."""

    def __init__(self, path: str | Path, name: str = "vocabert"):
        import vocabert

        self.path = Path(path)
        if not self.path.is_dir():
            raise VocabertError(f"student model folder {self.path} does not exist")
        start = time.perf_counter()
        self.model = vocabert.load(self.path)
        self.load_seconds = time.perf_counter() - start
        self.name, self.kind = name, "student"
        dim = getattr(self.model, "dim", None)
        self.dim = int(dim) if dim else int(np.asarray(self.model.encode(["dimension probe"])).shape[1])
        # Only the files load() reads: the model card (rewritten with each bench) and the
        # vocabulary listing change neither the size nor the cache key.
        from vocabert.model_folder import MODEL_FILES

        files = [self.path / f for f in MODEL_FILES]
        self.size_bytes = sum(f.stat().st_size for f in files)
        self.model_key = f"student-{files_hash(self.path, files)}"
        self.description = f"vocabert {vocabert.__version__}, {self.path}"

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.model.encode(list(texts), batch_size=batch_size)  # already L2-normalized


# --- Model2Vec distillation -------------------------------------------------------------------


def model2vec_dir(cache_root: str | Path, teacher_path: str | Path | None, pca_dims: int | None) -> Path:
    """Where the Model2Vec distillation of a teacher is kept: one folder per (teacher, PCA)."""
    fingerprint = teacher_fingerprint(resolve_teacher_path(teacher_path))
    return Path(cache_root) / "model2vec" / f"{fingerprint}-pca{pca_dims or 'none'}"


def _m2v_settings(teacher: Path, pca_dims: int | None) -> dict:
    return {
        "teacher": teacher_fingerprint(teacher),
        "pca_dims": pca_dims,
        "model2vec_version": package_version("model2vec"),
    }


def _m2v_complete(out_dir: Path, settings: dict) -> bool:
    if not (out_dir / M2V_MARKER).is_file():
        return False
    try:
        marker = read_json(out_dir / M2V_MARKER, "Model2Vec distillation")
    except VocabertError:
        return False
    return marker.get("settings") == settings


def distill_model2vec(
    teacher_path: str | Path | None, out_dir: str | Path, pca_dims: int | None = 256, show_progress_bar: bool = True
) -> Path:
    """Distil a Model2Vec model from the local teacher into ``out_dir``, or reuse one already there.

    Runs offline: Model2Vec only asks the Hub for a model card when given a Hub name, not a folder.
    The model is saved into a temporary sibling folder and renamed into place, with a marker naming
    the teacher fingerprint and PCA setting, so a half-written folder is never reused.
    """
    teacher = resolve_teacher_path(teacher_path)
    out_dir = Path(out_dir)
    if pca_dims is not None and (not isinstance(pca_dims, int) or pca_dims <= 0):
        raise VocabertError(f"pca_dims must be a positive int or None, got {pca_dims!r}")
    settings = _m2v_settings(teacher, pca_dims)
    if _m2v_complete(out_dir, settings):
        return out_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from model2vec.distill import distill
    except ImportError as e:
        raise VocabertError(f"Model2Vec distillation is not available ({e}): pip install 'model2vec[distill]'") from e

    start = time.perf_counter()
    # Model2Vec has no switch for its progress bar; when ours are off, its stderr goes nowhere.
    with contextlib.nullcontext() if show_progress_bar else contextlib.redirect_stderr(io.StringIO()):
        model = distill(model_name=str(teacher), vocabulary=None, device="cpu", pca_dims=pca_dims)
    seconds = time.perf_counter() - start

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        write_json(
            tmp / M2V_MARKER,
            {"settings": settings, "distill_seconds": seconds, "teacher_source": str(teacher)},
        )
        if out_dir.exists():  # a stale or unfinished folder (its marker is missing or names other inputs)
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except OSError:
        if not _m2v_complete(out_dir, settings):  # another process may have finished the same job first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def distill_seconds(model_dir: str | Path) -> float | None:
    """How long the distillation of a model saved by :func:`distill_model2vec` took."""
    try:
        return float(read_json(Path(model_dir) / M2V_MARKER, "Model2Vec distillation")["distill_seconds"])
    except (VocabertError, KeyError, TypeError, ValueError):
        return None


def model2vec_peer(
    teacher_path: str | Path | None, cache_root: str | Path, pca_dims: int | None, show_progress_bar: bool = True
) -> Model2VecEncoder:
    """A Model2Vec distillation of the teacher (distilled on first use, then reused)."""
    out_dir = model2vec_dir(cache_root, teacher_path, pca_dims)
    distill_model2vec(teacher_path, out_dir, pca_dims, show_progress_bar)
    name = f"model2vec-pca{pca_dims}" if pca_dims else "model2vec-nopca"
    return Model2VecEncoder(out_dir, name=name, model_key=f"model2vec-{out_dir.name}")


# --- building peers without letting one failure stop the bench -------------------------------


def try_peer(name: str, kind: str, build: Callable[[], object]):
    """``build()``, or a :class:`PeerUnavailable` saying why it failed."""
    try:
        return build()
    except Exception as e:  # any library failure is a reportable result, not a crash
        return PeerUnavailable(name, kind, f"{type(e).__name__}: {e}")


def build_peers(
    teacher_path: str | Path | None = None,
    cache_root: str | Path | None = None,
    pca_dims: Sequence[int | None] = (256, None),
    students: Sequence[str | Path] = (),
    show_progress_bar: bool = True,
) -> list[Encoder | PeerUnavailable]:
    """The teacher, Model2Vec at each PCA setting (256 is Model2Vec's default; None keeps 384), students."""
    cache_root = Path(cache_root) if cache_root else default_cache_dir()
    peers: list[Encoder | PeerUnavailable] = [try_peer("teacher", "teacher", lambda: TeacherEncoder(teacher_path))]
    for pca in pca_dims:
        name = f"model2vec-pca{pca}" if pca else "model2vec-nopca"
        peers.append(
            try_peer(
                name, "model2vec", lambda pca=pca: model2vec_peer(teacher_path, cache_root, pca, show_progress_bar)
            )
        )
    for path, name in zip(students, student_names(students), strict=True):
        peers.append(try_peer(name, "student", lambda path=path, name=name: StudentEncoder(path, name=name)))
    return peers


def student_names(paths: list[str | Path]) -> list[str]:
    """``vocabert`` for one student; for several, ``vocabert-`` and the shortest tail of their paths that tells
    them apart, after the folder names they all end with (``sizes/b25000/model`` -> ``vocabert-b25000``)."""
    if len(paths) == 1:
        return ["vocabert"]
    parts = [Path(p).resolve().parts for p in paths]
    if len(set(parts)) < len(parts):
        raise VocabertError("the same model folder is given twice")
    while all(len(p) > 1 for p in parts) and len({p[-1] for p in parts}) == 1:
        parts = [p[:-1] for p in parts]  # a folder name every path ends with tells nothing apart
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["-".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return [f"vocabert-{n}" for n in names]
    raise AssertionError("distinct paths always have distinct tails")


# --- cached encodings, for quality only --------------------------------------------------------


class CachedEncoder(Encoder):
    """An encoder whose outputs go through the on-disk :class:`EmbeddingCache`.

    For QUALITY evaluation only: a cache hit costs nothing, so never time this wrapper. Speed is
    measured on ``.uncached`` (the raw encoder); :func:`vocabert.bench.speed.measure_throughput` refuses this class.
    """

    def __init__(self, encoder: Encoder, cache_root: str | Path):
        self.uncached = encoder
        for field in (
            "name",
            "kind",
            "path",
            "dim",
            "load_seconds",
            "size_bytes",
            "model_key",
            "description",
        ):
            setattr(self, field, getattr(encoder, field))
        self.cache = EmbeddingCache(Path(cache_root) / "embeddings", encoder.model_key, encoder.dim)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.cache.encode(list(texts), lambda batch: self.uncached.encode(batch, batch_size), batch_size=1024)

    def spec(self) -> dict:
        return self.uncached.spec()


def cached(encoder: Encoder, cache_root: str | Path) -> CachedEncoder:
    """``encoder`` with a disk cache of its embeddings, for quality metrics (never for timing)."""
    if isinstance(encoder, CachedEncoder):
        return encoder
    return CachedEncoder(encoder, cache_root)


# --- BM25 ---------------------------------------------------------------------------------------


def _stemmer() -> tuple[Callable | None, str]:
    try:
        import Stemmer  # PyStemmer, the stemmer bm25s recommends
    except ImportError:
        return None, "no stemmer (PyStemmer not installed)"
    return Stemmer.Stemmer("english"), "English Snowball stemmer (PyStemmer)"


class BM25Retriever:
    """Lexical baseline: bm25s with its defaults (Lucene BM25, k1=1.5, b=0.75) and English stopwords."""

    name = "bm25"
    kind = "bm25"
    available = True

    def __init__(self, name: str = "bm25"):
        try:
            import bm25s
        except ImportError:
            raise VocabertError("bm25s is not installed: pip install bm25s") from None
        self._bm25s = bm25s
        self.name = name
        self.stemmer, stemming = _stemmer()
        self.description = f"bm25s {package_version('bm25s')}, Lucene BM25 k1=1.5 b=0.75, English stopwords, {stemming}"
        self.retriever = None
        self.n_docs = 0
        self.index_seconds: float | None = None

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        # Token strings, not ids: queries are then mapped onto the corpus vocabulary by bm25s itself.
        return self._bm25s.tokenize(
            list(texts), stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False
        )

    def index(self, corpus_texts: list[str]) -> float:
        """Index the corpus; returns (and keeps in ``index_seconds``) the time taken, tokenizing included."""
        if not corpus_texts:
            raise VocabertError("BM25: cannot index an empty corpus")
        start = time.perf_counter()
        retriever = self._bm25s.BM25()
        retriever.index(self._tokenize(corpus_texts), show_progress=False)
        self.index_seconds = time.perf_counter() - start
        self.retriever, self.n_docs = retriever, len(corpus_texts)
        return self.index_seconds

    def search(self, query_texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` document indices and scores per query, best first, shape (n_queries, min(k, n_docs))."""
        if self.retriever is None:
            raise VocabertError("BM25: call index() before search()")
        k = min(k, self.n_docs)
        if not query_texts:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        docs, scores = self.retriever.retrieve(self._tokenize(query_texts), k=k, show_progress=False)
        return np.asarray(docs, dtype=np.int64), np.asarray(scores, dtype=np.float32)
