"""The teacher's tokenizer as the student applies it (HF ``tokenizers``, no torch).

A model folder carries the teacher's ``tokenizer.json``; its fingerprint, recorded in every
artifact, is how a vocabulary built for one tokenizer is refused by another.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from tokenizers import Tokenizer


def load_tokenizer(tokenizer_text: str, max_length: int) -> Tokenizer:
    """The teacher's tokenizer as sentence-transformers applies it: special tokens, truncation, no padding."""
    tokenizer = Tokenizer.from_str(tokenizer_text)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def encode_ids(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``texts`` flattened into one array, with ``offsets`` (len(texts) + 1)."""
    encodings = tokenizer.encode_batch_fast(texts)  # no character offsets: we only need ids
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings]) if encodings else np.zeros(0, np.int64)
    return ids, offsets


def tokenizer_fingerprint(tokenizer_text: str) -> str:
    """Hash of what decides token ids (vocabulary, normalizer, ...), not of padding or truncation settings."""
    spec = json.loads(tokenizer_text)
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
