"""Synthetic building blocks for the inference tests: a tiny BERT-style tokenizer and a tiny model.

No teacher and no data: everything is built in memory in milliseconds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tokenizers.processors import TemplateProcessing

from vocabert.matching import PAD, WILDCARD
from vocabert.model import StudentModel
from vocabert.networks import ContextPool, WeightedMean, mlp_keys
from vocabert.store import VocabularyStore
from vocabert.tokenizer import tokenizer_fingerprint

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a cat cats dog sat on mat big small house car red blue runs fast in park how long do live what is "
    "good day of new york city ##s ##ing"
).split()
VOCAB = {token: i for i, token in enumerate(SPECIALS + WORDS)}
DIM = 8


def tokenizer_text() -> str:
    """tokenizer.json of a WordPiece tokenizer over ``WORDS`` that wraps texts in [CLS] ... [SEP]."""
    tokenizer = Tokenizer(WordPiece(VOCAB, unk_token="[UNK]"))
    tokenizer.normalizer = BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = BertPreTokenizer()
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])],
    )
    tokenizer.add_special_tokens(SPECIALS)
    return tokenizer.to_str()


def ids(*tokens: str) -> list[int]:
    return [WILDCARD if t == "*" else VOCAB[t] for t in tokens]


# Every word, and phrases of each shape: n-grams of 2 and 3, skip-grams with gaps of 1 and 2.
PHRASES = [("new", "york"), ("new", "york", "city"), ("how", "long"), ("the", "*", "sat"), ("big", "*", "*", "car")]


def patterns() -> np.ndarray:
    rows = [ids(w) for w in WORDS] + [ids(*p) for p in PHRASES]
    out = np.full((len(rows), 4), PAD, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def config(tokenizer: str, max_length: int = 16) -> dict:
    return {
        "architecture": WeightedMean.name,
        "max_length": max_length,
        "vocab_size": len(VOCAB),
        "provenance": {
            "teacher": "0123456789abcdef",
            "teacher_name": "example-org/tiny-teacher",
            "teacher_source": "/home/builder/private/tiny-teacher",
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "tokenizer_source": "/home/builder/private/tiny-teacher",
        },
        "training": {
            "settings": {"epochs": 2, "lr": 0.01},
            "history": {"n_train": 90, "n_val": 10, "val_cosine_before": 0.5, "best_val_cosine": 0.75},
            "seconds": 1.5,
        },
    }


def tiny_model(dtype: str = "float16", max_length: int = 16, seed: int = 0) -> StudentModel:
    """An untrained student over ``WORDS`` and ``PHRASES`` with random vectors of dimension ``DIM``."""
    rng = np.random.default_rng(seed)
    text = tokenizer_text()
    p = patterns()
    store = VocabularyStore.from_float(p, rng.normal(size=(len(p), DIM)).astype(np.float32), dtype, {"dim": DIM})
    network = WeightedMean(
        rng.uniform(0.5, 2.0, size=len(p)),
        np.eye(DIM) + 0.1 * rng.normal(size=(DIM, DIM)),
        0.01 * rng.normal(size=DIM),
    )
    return StudentModel(config(text, max_length), text, store, network)


def tiny_context_model(
    rank: int = 3,
    hidden: int = 5,
    seed: int = 0,
    heads: int = 1,
    window: int = 0,
    window_rank: int = 4,
    context: int = 0,
    special_hidden: int = 0,
) -> StudentModel:
    """An untrained ``context_pool`` student (``heads`` attention heads of rank ``rank``, MLP of ``hidden``
    units, windowed attention over ``window`` matches each side, context features of rank ``context``)."""
    rng = np.random.default_rng(seed)
    text = tokenizer_text()
    p = patterns()
    store = VocabularyStore.from_float(p, rng.normal(size=(len(p), DIM)).astype(np.float32), "float16", {"dim": DIM})
    t = {
        "entry_weight": rng.uniform(0.5, 2.0, size=len(p)),
        "entry_key": rng.normal(size=(len(p), heads, rank)),
        "entry_query": rng.normal(size=(len(p), heads, rank)),
        "weight": np.tile(np.eye(DIM), heads) / heads + 0.1 * rng.normal(size=(DIM, heads * DIM)),
        "bias": 0.01 * rng.normal(size=DIM),
        "special_weight": 0.5 * rng.normal(size=(DIM, heads * DIM)),
        "special_bias": 0.5 * rng.normal(size=DIM),
    }
    for name, units in (("mlp", hidden), ("special", special_hidden)):
        if units:
            shapes = ((units, heads * DIM), units, (DIM, units), DIM)
            t |= {key: rng.normal(size=shape) for key, shape in zip(mlp_keys(name), shapes, strict=True)}
    if window:
        t |= {
            "entry_window": rng.normal(size=(len(p), 4, window_rank)),
            "window_offset_bias": rng.normal(size=2 * window),
            "window_weight": rng.normal(size=(DIM, window_rank)),
            "window_bias": rng.normal(size=DIM),
        }
    if context:
        t |= {
            "entry_context": rng.normal(size=(len(p), context)),
            "context_in": 0.5 * rng.normal(size=(context, heads * DIM)),
            "context_in_bias": rng.normal(size=context),
            "context_out": rng.normal(size=(DIM, context)),
            "context_out_bias": rng.normal(size=DIM),
        }
    return StudentModel({**config(text), "architecture": ContextPool.name}, text, store, ContextPool(t))


def assert_store_vectors_close(found: np.ndarray, expected: np.ndarray, atol: float = 2e-3) -> None:
    """Entry vectors of two stores built by different paths from nearly equal means: within ``atol`` (fp16
    rounding), or one int8 step of the row's scale (the default store: a float rounding can flip a step)."""
    step = np.abs(expected).max(axis=1, keepdims=True) / 127
    bad = np.abs(found - expected) > np.maximum(step, atol) + 1e-6
    assert not bad.any(), f"{int(bad.sum())} values apart, rows {np.flatnonzero(bad.any(axis=1))[:10].tolist()}"


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
