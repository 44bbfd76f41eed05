"""The vocabulary (``<workdir>/vocab``) and the entry store (``<workdir>/store``) as the stages read them.

:mod:`vocabert.distill.mining` mines the vocabulary, :mod:`vocabert.distill.embedding` computes the
store's entry vectors; the stages after them read both through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vocabert.artifacts import VocabertError, write_text
from vocabert.distill.workspace import Workspace, check_same_teacher, check_same_tokenizer, read_manifest
from vocabert.matching import PAD, WILDCARD
from vocabert.store import VocabularyStore, load_safetensors, save_safetensors

KIND_TOKEN, KIND_NGRAM, KIND_SKIPGRAM, KIND_WORD = 0, 1, 2, 3
KIND_NAMES = {KIND_TOKEN: "token", KIND_NGRAM: "ngram", KIND_SKIPGRAM: "skipgram", KIND_WORD: "word"}
# Why an entry is in (the chosen_by column): tokens always, phrases by the criterion that ranked them.
CHOSEN_TOKEN, CHOSEN_SEMANTICS = 0, 4
CHOSEN_BY_SCORE = {"npmi": 1, "llr": 2, "count": 3}
CHOSEN_NAMES = {
    0: "token that occurs",
    1: "statistics: count*npmi",
    2: "statistics: llr",
    3: "statistics: count",
    4: "semantics: error removed",
}


@dataclass
class Vocabulary:
    """Mined entries: patterns (see :mod:`vocabert.matching`) with the statistics that chose them."""

    patterns: np.ndarray  # int32 (entries, width)
    kind: np.ndarray  # int8
    count: np.ndarray  # int64, occurrences in the mining corpus
    npmi: np.ndarray  # float32, nan for tokens
    score: np.ndarray  # float32, the selection score (count for tokens; for phrases the chosen criterion's)
    llr: np.ndarray | None = None  # float32, log-likelihood ratio of the weakest split, nan for tokens
    chosen: np.ndarray | None = None  # int8, a key of CHOSEN_NAMES

    def __post_init__(self) -> None:
        # Vocabularies mined before these columns existed: unknown LLR, phrases chosen by count*npmi.
        if self.llr is None:
            self.llr = np.full(len(self.patterns), np.nan, dtype=np.float32)
        if self.chosen is None:
            self.chosen = np.where(self.kind == KIND_TOKEN, CHOSEN_TOKEN, CHOSEN_BY_SCORE["npmi"]).astype(np.int8)

    def __len__(self) -> int:
        return len(self.patterns)

    def save(self, directory: Path, tokens: list[str]) -> None:
        save_safetensors(
            directory / "vocabulary.safetensors",
            {
                "patterns": self.patterns.astype(np.int32),
                "kind": self.kind.astype(np.int8),
                "count": self.count.astype(np.int64),
                "npmi": self.npmi.astype(np.float32),
                "score": self.score.astype(np.float32),
                "llr": self.llr.astype(np.float32),
                "chosen": self.chosen.astype(np.int8),
            },
        )
        write_text(directory / "vocabulary.tsv", listing(self, tokens))

    @classmethod
    def load(cls, directory: Path) -> Vocabulary:
        t, _ = load_safetensors(Path(directory) / "vocabulary.safetensors", "vocabulary")
        try:
            arrays = [np.asarray(t[k]) for k in ("patterns", "kind", "count", "npmi", "score")]
        except KeyError as e:
            raise VocabertError(f"vocabulary in {directory} lacks tensor {e}") from None
        return cls(*arrays, **{k: np.asarray(t[k]) for k in ("llr", "chosen") if k in t})


def describe(pattern: np.ndarray, tokens: list[str]) -> str:
    """Readable form of a pattern: ``how * much``, ``new york``."""
    return " ".join("*" if t == WILDCARD else tokens[t] for t in pattern if t != PAD)


def listing(vocab: Vocabulary, tokens: list[str]) -> str:
    """``vocabulary.tsv``: one readable line per entry, with the statistics that chose it."""
    lines = ["entry\tkind\tcount\tnpmi\tllr\tscore\tchosen_by"]
    columns = (vocab.patterns, vocab.kind, vocab.count, vocab.npmi, vocab.llr, vocab.score, vocab.chosen)
    for p, k, c, n, g, s, why in zip(*columns, strict=True):
        lines.append(
            f"{describe(p, tokens)}\t{KIND_NAMES[int(k)]}\t{c}\t{n:.3f}\t{g:.1f}\t{s:.1f}\t{CHOSEN_NAMES[int(why)]}"
        )
    return "\n".join(lines) + "\n"


def open_vocabulary(ws: Workspace) -> tuple[Vocabulary, dict]:
    """The finished vocabulary of a work directory and its manifest, checked against the tokenizer."""
    manifest = read_manifest(ws.vocab_dir, "vocabulary")
    check_same_tokenizer(ws.provenance, manifest["key"]["provenance"], f"vocabulary {ws.vocab_dir}")
    return Vocabulary.load(ws.vocab_dir), manifest


def open_store(ws: Workspace) -> tuple[VocabularyStore, dict]:
    """The finished entry store of a work directory and its manifest, checked against the teacher."""
    manifest = read_manifest(ws.store_dir, "store")
    check_same_teacher(ws.provenance, manifest["key"]["provenance"], f"entry store {ws.store_dir}")
    return VocabularyStore.load(ws.store_dir / "embeddings.safetensors"), manifest
