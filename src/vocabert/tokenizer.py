"""The teacher's tokenizer as the student applies it (HF ``tokenizers``, no torch).

A model folder carries the teacher's ``tokenizer.json``; its fingerprint, recorded in every
artifact, is how a vocabulary built for one tokenizer is refused by another.

:class:`TextTokenizer` turns a batch of texts into one flat array of token ids. For BERT-style
tokenizers (BERT normalizer and pre-tokenizer, WordPiece, ``[CLS] $A [SEP]``) it keeps a cache of
the WordPiece ids of every whitespace-separated word it has seen: most words repeat, and a dict
lookup per word is ~20x cheaper than the Rust tokenizer's per-text work (normalization, Encoding
objects, Python lists of ids). Only unseen words go through the Rust tokenizer. The ids are the
Rust tokenizer's, exactly (tests compare both on the bundled corpus and on odd Unicode).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from itertools import chain, repeat

import numpy as np
from tokenizers import Tokenizer

# Characters that Python's str.split() treats as whitespace but the BERT normalizer deletes as control
# characters: a word split there would be tokenized as two words instead of one.
_DELETED_BY_BERT = "\x0b\x0c\x1c\x1d\x1e\x1f\x85"
_DELETED_RE = re.compile(f"[{_DELETED_BY_BERT}]")
_DELETE_TABLE = str.maketrans("", "", _DELETED_BY_BERT)
# Below this many texts the Rust tokenizer is faster than the cache's fixed cost (a few dozen numpy calls).
SMALL_BATCH = 4


def load_tokenizer(tokenizer_text: str, max_length: int | None) -> Tokenizer:
    """The teacher's tokenizer as sentence-transformers applies it: special tokens, truncation, no padding."""
    tokenizer = Tokenizer.from_str(tokenizer_text)
    tokenizer.no_padding()
    if max_length is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _word_cache_applies(tokenizer_text: str, tokenizer: Tokenizer) -> tuple[int, int] | None:
    """``(cls, sep)`` if tokenizing word by word gives the same ids as tokenizing the whole text, else None.

    True for BERT's pipeline: the normalizer works per character, the pre-tokenizer splits at whitespace
    (and punctuation, within a word), WordPiece works per word, and the post-processor wraps the text
    in one token on each side.
    """
    spec = json.loads(tokenizer_text)
    normalizer = (spec.get("normalizer") or {}).get("type")
    pre = (spec.get("pre_tokenizer") or {}).get("type")
    model = (spec.get("model") or {}).get("type")
    if normalizer not in (None, "BertNormalizer") or pre != "BertPreTokenizer" or model != "WordPiece":
        return None
    if any(any(c.isspace() for c in t.get("content", "")) for t in spec.get("added_tokens", [])):
        return None
    wrapped = tokenizer.encode("").ids
    if len(wrapped) != 2:
        return None
    probe = "Hello, world! Ünïcödé 東京 [MASK]"
    if tokenizer.encode(probe).ids != [wrapped[0], *tokenizer.encode(probe, add_special_tokens=False).ids, wrapped[1]]:
        return None
    return wrapped[0], wrapped[1]


class TextTokenizer:
    """Texts to token ids as the teacher tokenizes them: ``encode_ids(texts) -> (ids, offsets)``.

    ``max_length`` truncates as the teacher does (``[CLS]``, the first ``max_length - 2`` tokens,
    ``[SEP]``); None keeps every token. Thread-safe.
    """

    def __init__(self, tokenizer_text: str, max_length: int | None, max_cached_words: int = 1 << 20):
        self.hf = load_tokenizer(tokenizer_text, max_length)  # the HF tokenizer itself, truncating as we do
        self._specials = _word_cache_applies(tokenizer_text, self.hf)
        self._words = load_tokenizer(tokenizer_text, None)  # word pieces of single words, no truncation
        self._max_cached_words = max_cached_words
        self._lock = threading.Lock()
        self._clear()

    @property
    def max_length(self) -> int | None:
        return self.hf.truncation["max_length"] if self.hf.truncation else None

    @max_length.setter
    def max_length(self, value: int | None) -> None:
        if value is None:
            self.hf.no_truncation()
        else:
            self.hf.enable_truncation(max_length=int(value))

    @property
    def caches_words(self) -> bool:
        return self._specials is not None

    def _clear(self) -> None:
        self._index: dict[str, int] = {}  # word -> its row in _start/_length
        self._start = np.zeros(1024, dtype=np.int64)  # where the word's ids begin in _ids
        self._length = np.zeros(1024, dtype=np.int64)
        self._ids = np.zeros(1 << 14, dtype=np.int64)
        self._n_ids = 0

    def encode_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``texts`` flattened into one array, with ``offsets`` (len(texts) + 1), int64."""
        if self._specials is None or len(texts) < SMALL_BATCH:
            return self._encode_with_rust(texts)
        with self._lock:
            return self._encode_with_cache(texts)

    def _encode_with_rust(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.hf.encode_batch_fast(texts)  # no character offsets: we only need ids
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=int(offsets[-1]))
        return ids, offsets

    def _add_words(self, words: list[str]) -> None:
        pieces = [e.ids for e in self._words.encode_batch_fast(words, add_special_tokens=False)]
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        n_words, n_ids = len(self._index), int(lengths.sum())
        if n_words + len(words) > len(self._start):
            grow = max(2 * len(self._start), n_words + len(words))
            self._start = np.resize(self._start, grow)
            self._length = np.resize(self._length, grow)
        if self._n_ids + n_ids > len(self._ids):
            self._ids = np.resize(self._ids, max(2 * len(self._ids), self._n_ids + n_ids))
        self._start[n_words : n_words + len(words)] = self._n_ids + np.cumsum(lengths) - lengths
        self._length[n_words : n_words + len(words)] = lengths
        self._ids[self._n_ids : self._n_ids + n_ids] = np.fromiter(chain.from_iterable(pieces), np.int64, n_ids)
        self._n_ids += n_ids
        self._index.update(zip(words, range(n_words, n_words + len(words)), strict=True))

    def _encode_with_cache(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        splits = [(t.translate(_DELETE_TABLE) if _DELETED_RE.search(t) else t).split() for t in texts]
        words_per_text = np.fromiter(map(len, splits), dtype=np.int64, count=len(splits))
        words = list(chain.from_iterable(splits))
        row = np.fromiter(map(self._index.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        missing = row < 0
        if missing.any():
            new = list(dict.fromkeys(words[i] for i in np.flatnonzero(missing)))
            if len(self._index) + len(new) > self._max_cached_words:
                # A bounded cache: start over rather than grow with an endless stream of new words.
                self._clear()
                new, missing = list(dict.fromkeys(words)), np.ones(len(words), dtype=bool)
            self._add_words(new)
            row[missing] = [self._index[words[i]] for i in np.flatnonzero(missing)]
        start, length = self._start[row], self._length[row]

        # Tokens of each text, then truncated to what the teacher keeps between [CLS] and [SEP].
        ends = np.cumsum(length)
        word_bounds = np.concatenate([[0], np.cumsum(words_per_text)])
        token_bounds = np.concatenate([[0], ends])[word_bounds]
        n_tokens = np.diff(token_bounds)
        max_length = self.max_length
        keep = n_tokens if max_length is None else np.minimum(n_tokens, max_length - 2)
        source = np.repeat(start - (ends - length), length) + np.arange(int(ends[-1]) if len(ends) else 0)
        if (keep < n_tokens).any():
            position = np.arange(len(source)) - np.repeat(token_bounds[:-1], n_tokens)
            source = source[position < np.repeat(keep, n_tokens)]

        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(keep + 2, out=offsets[1:])
        ids = np.empty(int(offsets[-1]), dtype=np.int64)
        cls, sep = self._specials
        ids[offsets[:-1]] = cls
        ids[offsets[1:] - 1] = sep
        body = np.repeat(offsets[:-1] + 1 - (np.cumsum(keep) - keep), keep) + np.arange(int(keep.sum()))
        ids[body] = self._ids[source]
        return ids, offsets


def tokenizer_fingerprint(tokenizer_text: str) -> str:
    """Hash of what decides token ids (vocabulary, normalizer, ...), not of padding or truncation settings."""
    spec = json.loads(tokenizer_text)
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
