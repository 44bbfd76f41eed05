"""The stages in order, over one work directory. The CLI and ``vocabert run`` call these.

::

    <workdir>/corpus   token shards                     (vocabert corpus)
    <workdir>/vocab    mined vocabulary                 (vocabert mine)
    <workdir>/store    entry vectors from the teacher   (vocabert embed)
    <workdir>/model    the student model directory      (vocabert train)
    <workdir>/eval     evaluation report                (vocabert evaluate)

A stage whose output is already complete for the same inputs and settings is skipped; ``force``
redoes it. Every artifact records the teacher and tokenizer it was built with, and each stage
checks its inputs against the teacher in use.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from vocabert.artifacts import (
    VocabertError,
    check_same_teacher,
    check_same_tokenizer,
    is_complete,
    read_manifest,
    write_npy,
)
from vocabert.distill import teacher as teacher_lib
from vocabert.distill.cache import EmbeddingCache, default_cache_dir
from vocabert.distill.corpus import Corpus, build_corpus
from vocabert.distill.mining import Vocabulary, load_vocabulary, run_mining
from vocabert.model import StudentModel
from vocabert.store import VocabularyStore
from vocabert.tokenizer import load_tokenizer


def log(message: str) -> None:
    print(f"[vocabert] {message}", flush=True)


@dataclass
class Workspace:
    """Where a pipeline run keeps its artifacts, which teacher it uses, and where caches live."""

    root: Path
    teacher_path: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    show_progress_bar: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.teacher_path = teacher_lib.resolve_teacher_path(self.teacher_path)
        self._provenance: dict | None = None
        self._teacher: teacher_lib.Teacher | None = None

    corpus_dir = property(lambda self: self.root / "corpus")
    vocab_dir = property(lambda self: self.root / "vocab")
    store_dir = property(lambda self: self.root / "store")
    model_dir = property(lambda self: self.root / "model")
    eval_dir = property(lambda self: self.root / "eval")

    @property
    def provenance(self) -> dict:
        if self._provenance is None:
            self._provenance = teacher_lib.provenance(self.teacher_path)
        return self._provenance

    @property
    def tokenizer_text(self) -> str:
        return teacher_lib.tokenizer_json(self.teacher_path)

    @property
    def max_length(self) -> int:
        return teacher_lib.max_seq_length(self.teacher_path)

    def teacher(self) -> teacher_lib.Teacher:
        if self._teacher is None:
            log(f"loading teacher {self.teacher_path}")
            self._teacher = teacher_lib.Teacher(self.teacher_path)
        return self._teacher

    def teacher_cache(self) -> EmbeddingCache:
        """Teacher sentence embeddings, keyed by teacher fingerprint and text."""
        teacher = self.teacher()
        return EmbeddingCache(self.cache_dir / "embeddings", teacher.cache_key, teacher.dim)


def digest(directory: Path, name: str = "manifest.json") -> str:
    """Identity of a finished upstream artifact: a downstream stage reruns when it changes."""
    return hashlib.sha256((directory / name).read_bytes()).hexdigest()[:16]


def special_tokens(tokenizer_text: str) -> dict:
    """Ids of the tokens the tokenizer adds around a text, of [MASK], and of every special token."""
    tokenizer = load_tokenizer(tokenizer_text, 512)
    wrapped = tokenizer.encode("").ids
    spec = json.loads(tokenizer_text)
    specials = [t["id"] for t in spec.get("added_tokens", []) if t.get("special")]
    mask = next((t["id"] for t in spec.get("added_tokens", []) if "mask" in t["content"].lower()), None)
    if not wrapped or mask is None:
        raise VocabertError(
            "the teacher's tokenizer adds no special tokens or has no mask token; vocabert needs a BERT-style tokenizer"
        )
    return {"cls": wrapped[0], "sep": wrapped[-1], "mask": mask, "all": sorted(set(specials))}


# -------------------------------------------------------------------------------------------- stages


def stage_corpus(ws: Workspace, sources: dict[str, Path], heldout_fraction: float = 0.1, force: bool = False) -> Corpus:
    if force:  # without the manifest and the recorded settings, every shard is rebuilt
        for name in ("manifest.json", "settings.json"):
            (ws.corpus_dir / name).unlink(missing_ok=True)
    log(f"corpus: tokenizing {', '.join(f'{k}={v}' for k, v in sources.items())}")
    corpus = build_corpus(
        sources,
        ws.corpus_dir,
        ws.provenance,
        ws.tokenizer_text,
        ws.max_length,
        heldout_fraction=heldout_fraction,
        show_progress_bar=ws.show_progress_bar,
    )
    for name, c in corpus.manifest["counts"].items():
        log(f"corpus: {name}: {c['texts']} texts ({c['heldout']} held out), {c['tokens']} tokens")
    return corpus


def open_corpus(ws: Workspace) -> Corpus:
    corpus = Corpus(ws.corpus_dir)
    check_same_tokenizer(ws.provenance, corpus.provenance, f"corpus {ws.corpus_dir}")
    return corpus


def stage_mine(ws: Workspace, settings: dict, force: bool = False) -> Vocabulary:
    corpus = open_corpus(ws)
    settings = {**settings, "inputs": {"corpus": digest(ws.corpus_dir)}}
    if not force and is_complete(ws.vocab_dir, "vocabulary", corpus.provenance, settings):
        log(f"mine: {ws.vocab_dir} is up to date")
        return load_vocabulary(ws.vocab_dir)[0]
    tokenizer = load_tokenizer(ws.tokenizer_text, ws.max_length)
    tokens = [tokenizer.id_to_token(i) or f"[{i}]" for i in range(int(corpus.manifest["vocab_size"]))]
    vocab = run_mining(
        corpus,
        ws.vocab_dir,
        settings,
        tokens,
        special_tokens(ws.tokenizer_text)["all"],
        show_progress_bar=ws.show_progress_bar,
    )
    summary = read_manifest(ws.vocab_dir, "vocabulary")["summary"]
    log(
        f"mine: {len(vocab)} entries ({summary['token']} tokens, {summary['ngram']} n-grams, "
        f"{summary['skipgram']} skip-grams) -> {ws.vocab_dir / 'vocabulary.tsv'}"
    )
    return vocab


def open_vocabulary(ws: Workspace) -> Vocabulary:
    vocab, manifest = load_vocabulary(ws.vocab_dir)
    check_same_tokenizer(ws.provenance, manifest["provenance"], f"vocabulary {ws.vocab_dir}")
    return vocab


def stage_embed(
    ws: Workspace, teacher_share: float = 0.5, dtype: str = "float16", force: bool = False
) -> VocabularyStore:
    from vocabert.distill.embedding import embed_vocabulary

    corpus = open_corpus(ws)
    vocab = open_vocabulary(ws)
    settings = {
        "teacher_share": teacher_share,
        "dtype": dtype,
        "entries": len(vocab),
        "inputs": {"vocabulary": digest(ws.vocab_dir)},
    }
    if not force and is_complete(ws.store_dir, "store", ws.provenance, settings):
        log(f"embed: {ws.store_dir} is up to date")
        return VocabularyStore.load(ws.store_dir / "embeddings.safetensors")
    check_same_teacher(ws.provenance, corpus.provenance, f"corpus {ws.corpus_dir}")
    teacher = ws.teacher()
    store = embed_vocabulary(
        corpus,
        vocab,
        ws.store_dir,
        teacher,
        ws.teacher_cache(),
        special_tokens(ws.tokenizer_text),
        teacher_share=teacher_share,
        dtype=dtype,
        inputs=settings["inputs"],
        show_progress_bar=ws.show_progress_bar,
    )
    m = read_manifest(ws.store_dir, "store")
    log(
        f"embed: {m['texts']} texts through the teacher; {m['contextual']} entries contextual, "
        f"{m['isolated']} isolated -> {ws.store_dir}"
    )
    return store


def open_store(ws: Workspace) -> tuple[VocabularyStore, dict]:
    manifest = read_manifest(ws.store_dir, "store")
    check_same_teacher(ws.provenance, manifest["provenance"], f"entry store {ws.store_dir}")
    return VocabularyStore.load(ws.store_dir / "embeddings.safetensors"), manifest


def stage_train(ws: Workspace, settings: dict, force: bool = False) -> StudentModel:
    from vocabert.distill.training import train_student, training_data

    corpus = open_corpus(ws)
    store, store_manifest = open_store(ws)
    inputs = {"store": digest(ws.store_dir)}
    config_file = ws.model_dir / "config.json"
    if not force and config_file.is_file():
        config = json.loads(config_file.read_text())
        if config.get("training", {}).get("settings") == settings and config.get("inputs") == inputs:
            log(f"train: {ws.model_dir} is up to date")
            return StudentModel.load(ws.model_dir)
    share = store_manifest["settings"]["teacher_share"]
    started = time.perf_counter()
    data = training_data(corpus, store, ws.teacher_cache(), share, show_progress_bar=ws.show_progress_bar)
    log(f"train: {len(data)} texts ({int(data.validation.sum())} for validation), {len(data.entries)} matches")
    network, history = train_student(data, store, show_progress_bar=ws.show_progress_bar, **settings)
    log(f"train: validation cosine {history['val_cosine_before']:.4f} (plain mean) -> {history['best_val_cosine']:.4f}")
    config = {
        "architecture": network.name,
        "dim": store.dim,
        "entries": len(store),
        "max_length": ws.max_length,
        "vocab_size": int(corpus.manifest["vocab_size"]),
        "provenance": ws.provenance,
        "inputs": inputs,
        "training": {"settings": settings, "history": history, "seconds": round(time.perf_counter() - started, 1)},
        "vocabulary": read_manifest(ws.vocab_dir, "vocabulary")["settings"],
        "store": store_manifest["settings"],
    }
    model = StudentModel(config, ws.tokenizer_text, store, network)
    vocab_listing = (ws.vocab_dir / "vocabulary.tsv").read_text(encoding="utf-8")
    model.save(ws.model_dir, vocabulary_listing=vocab_listing, model_card=model_card(config))
    log(f"train: model written to {ws.model_dir}")
    return StudentModel.load(ws.model_dir)


def model_card(config: dict) -> str:
    history = config["training"]["history"]
    return f"""# vocabert model

A static-vocabulary student of the sentence encoder `{config["provenance"]["teacher_source"]}`
(teacher fingerprint `{config["provenance"]["teacher"]}`), built with vocabert.

```python
import vocabert
model = vocabert.load("path/to/this/folder")
embeddings = model.encode(["how long do cats live"])  # (1, {config["dim"]}) float32, L2-normalized
```

- Architecture: `{config["architecture"]}`; {config["entries"]} vocabulary entries
  (see `vocabulary.tsv`), dimension {config["dim"]}, max length {config["max_length"]} tokens.
- Trained on {history["n_train"]} texts; validation cosine to the teacher {history["best_val_cosine"]:.4f}.

## Evaluation

<!-- vocabert-eval-start -->
Not evaluated yet: run `vocabert evaluate`.
<!-- vocabert-eval-end -->
"""


def encode_file(
    model: StudentModel, input_path: Path, output_path: Path, batch_size: int = 64, show_progress_bar: bool = True
) -> int:
    """Encode every text of a file (TSV, JSONL or lines) into a .npy matrix, rows in file order."""
    from vocabert.readers import read_texts

    texts = [t for _, t in read_texts(input_path)]
    vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
    write_npy(output_path, vectors)
    return len(texts)
