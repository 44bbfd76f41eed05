"""The teacher's tokenizer as the student applies it (HF ``tokenizers``, no torch).

A model folder carries the teacher's ``tokenizer.json``; its fingerprint, recorded in every
artifact, is how a vocabulary built for one tokenizer is refused by another.

:class:`TextTokenizer` turns a batch of texts into one flat array of token ids. For BERT-style
tokenizers (BERT normalizer and pre-tokenizer, WordPiece, ``[CLS] $A [SEP]``) it keeps a cache of
the WordPiece ids of every whitespace-separated word it has seen: most words repeat, and a dict
lookup per word is ~20x cheaper than the Rust tokenizer's per-text work (normalization, Encoding
objects, Python lists of ids). Only unseen words go through the Rust tokenizer (the same one, truncating:
a word that fills the truncation length is tokenized again without it). The ids are the Rust tokenizer's,
exactly (tests compare both on the bundled corpus and on odd Unicode).

The cache is bounded in bytes, whatever the texts: words longer than ``max_cached_word_chars`` (64)
are never cached (texts holding one are tokenized by the Rust tokenizer: 0.003% of MS MARCO's words
are that long, URLs mostly, while a stream of unique 10,000-character words would otherwise fill the
memory), and when the cache's memory (words, dict, id arrays) would pass ``cache_bytes`` (64 MiB,
about 380,000 MS MARCO words: 174 bytes each) it starts over empty.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from dataclasses import dataclass
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
# The word cache's bound (see the module's docstring).
DEFAULT_CACHE_BYTES = 64 << 20
MAX_CACHED_WORD_CHARS = 64
# A new word's memory besides its str, as the check before adding it counts it: its dict entry, its row
# number (an int object), its start and length, and a few ids.
_BYTES_PER_WORD = 100
_INT_BYTES = sys.getsizeof(1 << 10)  # a row number above 256: an int object of its own


def load_tokenizer(tokenizer_text: str, max_length: int | None) -> Tokenizer:
    """The teacher's tokenizer as sentence-transformers applies it: special tokens, truncation, no padding."""
    tokenizer = Tokenizer.from_str(tokenizer_text)
    tokenizer.no_padding()
    if max_length is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def added_tokens(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after every text: ``[CLS]`` and ``[SEP]`` for BERT, ``<s>``
    and ``</s>`` for RoBERTa and XLM-R, an EOS after the text for many decoders, or none."""
    probe = "vocabert probe text"
    inner = tokenizer.encode(probe, add_special_tokens=False).ids
    full = tokenizer.encode(probe).ids
    for start in range(len(full) - len(inner) + 1):
        if full[start : start + len(inner)] == inner:
            return full[:start], full[start + len(inner) :]
    raise ValueError("the tokenizer changes a text's own tokens when it adds its special tokens")


@dataclass(frozen=True)
class TokenizerLayout:
    """What the pipeline needs to know about a tokenizer besides its ids, read from tokenizer.json.

    ``prefix``/``suffix``: the ids added around every text; ``special``: every special token's id;
    ``filler``: the id that stands for a skip-gram's wildcard when an entry is embedded on its own (the
    mask token, else the unknown token, else padding); words: WordPiece marks a word's continuations
    (``continuation_prefix``, ``##``), byte-level BPE and SentencePiece mark a word's start (``word_start``,
    ``Ġ`` or ``▁``); neither is known for other tokenizers.
    """

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    special: tuple[int, ...]
    filler: int
    continuation_prefix: str | None = None
    word_start: str | None = None

    @property
    def per_text(self) -> int:
        """Tokens the tokenizer adds to every text."""
        return len(self.prefix) + len(self.suffix)

    @property
    def knows_words(self) -> bool:
        return bool(self.continuation_prefix or self.word_start)

    def continues_word(self, token: str) -> bool:
        """Whether ``token`` continues the word of the token before it (never true of a word's first token)."""
        if self.continuation_prefix:
            return token.startswith(self.continuation_prefix) and len(token) > len(self.continuation_prefix)
        if self.word_start:
            # A piece without the start marker continues a word if it starts with a letter or digit:
            # punctuation after a word (``,``, ``'s``) is a pre-token of its own.
            return bool(token) and not token.startswith(self.word_start) and token[0].isalnum()
        return False

    def continuation(self, tokens: list[str]) -> np.ndarray | None:
        """Per token id, whether it continues a word; None where the tokenizer's convention is unknown."""
        if not self.knows_words:
            return None
        special = set(self.special)
        return np.array([i not in special and self.continues_word(t) for i, t in enumerate(tokens)], dtype=bool)

    def readable(self, tokens: list[str]) -> str:
        """Tokens as text: WordPiece continuations and SentencePiece/byte-level pieces joined into words,
        ``*`` (a wildcard) kept apart: ``play ##ing`` -> ``playing``, ``▁new ▁york`` -> ``new york``."""
        out = ""
        for i, token in enumerate(tokens):
            glued = i > 0 and tokens[i - 1] != "*" and token != "*" and self.continues_word(token)
            if self.continuation_prefix and glued:
                token = token[len(self.continuation_prefix) :]
            elif self.word_start and token.startswith(self.word_start) and len(token) > len(self.word_start):
                token = token[len(self.word_start) :]
            out += token if glued or not out else " " + token
        return out


# WordPiece's convention alone, for listings read without their tokenizer.
WORDPIECE = TokenizerLayout((), (), (), 0, continuation_prefix="##")


def tokenizer_layout(tokenizer_text: str) -> TokenizerLayout:
    """The :class:`TokenizerLayout` of a tokenizer.json."""
    spec = json.loads(tokenizer_text)
    tokenizer = load_tokenizer(tokenizer_text, None)
    prefix, suffix = added_tokens(tokenizer)
    added = spec.get("added_tokens") or []
    special = sorted({t["id"] for t in added if t.get("special")} | set(prefix) | set(suffix))
    model = spec.get("model") or {}

    def find(name: str) -> int | None:
        token = model.get(name)
        return tokenizer.token_to_id(token) if isinstance(token, str) else None

    mask = next((t["id"] for t in added if "mask" in t["content"].lower()), None)
    unk = find("unk_token") if model.get("type") != "Unigram" else model.get("unk_id")
    pad = next((t["id"] for t in added if "pad" in t["content"].lower()), None)
    filler = next((i for i in (mask, unk, pad) if i is not None), special[0] if special else 0)
    continuation_prefix = word_start = None
    if model.get("type") == "WordPiece":
        continuation_prefix = model.get("continuing_subword_prefix") or "##"
    else:
        word_start = _word_start_marker(spec.get("pre_tokenizer"), spec.get("normalizer"))
    return TokenizerLayout(tuple(prefix), tuple(suffix), tuple(special), int(filler), continuation_prefix, word_start)


def _word_start_marker(pre_tokenizer: dict | None, normalizer: dict | None) -> str | None:
    """``Ġ`` for byte-level pre-tokenizers, the replacement character (``▁``) for Metaspace ones, also where
    a normalizer puts it in place of spaces (Llama-style); None otherwise."""

    def walk(node: dict | None):
        if not isinstance(node, dict):
            return
        yield node
        for child in node.get("pretokenizers") or node.get("normalizers") or []:
            yield from walk(child)

    for node in walk(pre_tokenizer):
        if node.get("type") == "ByteLevel":
            return "\u0120"
        if node.get("type") == "Metaspace":
            return node.get("replacement") or "\u2581"
    for node in walk(normalizer):
        if node.get("type") == "Replace" and node.get("content") in ("\u2581", "\u0120"):
            return node["content"]
    return None


def _word_cache_applies(tokenizer: Tokenizer) -> tuple[int, int] | None:
    """``(cls, sep)`` if tokenizing word by word gives the same ids as tokenizing the whole text, else None.

    True for BERT's pipeline: the normalizer works per character, the pre-tokenizer splits at whitespace
    (and punctuation, within a word), WordPiece works per word, and the post-processor wraps the text
    in one token on each side. Read from the tokenizer itself (parsing its JSON again would cost memory).
    """
    normalizer = type(tokenizer.normalizer).__name__ if tokenizer.normalizer is not None else None
    pre = type(tokenizer.pre_tokenizer).__name__ if tokenizer.pre_tokenizer is not None else None
    if normalizer not in (None, "BertNormalizer") or pre != "BertPreTokenizer":
        return None
    if type(tokenizer.model).__name__ != "WordPiece":
        return None
    if any(any(c.isspace() for c in t.content) for t in tokenizer.get_added_tokens_decoder().values()):
        return None
    wrapped = tokenizer.encode("").ids
    if len(wrapped) != 2:
        return None
    probe = "Hello, world! Ünïcödé 東京 [MASK]"
    truncation = tokenizer.truncation
    tokenizer.no_truncation()  # (a short maximum length would cut the probe, not tell us anything)
    try:
        whole = tokenizer.encode(probe).ids
        inner = tokenizer.encode(probe, add_special_tokens=False).ids
    finally:
        if truncation:
            tokenizer.enable_truncation(**truncation)
    return (wrapped[0], wrapped[1]) if whole == [wrapped[0], *inner, wrapped[1]] else None


class TextTokenizer:
    """Texts to token ids as the teacher tokenizes them: ``encode_ids(texts) -> (ids, offsets)``.

    ``max_length`` truncates as the teacher does (``[CLS]``, the first ``max_length - 2`` tokens,
    ``[SEP]``); None keeps every token. The word cache holds at most ``cache_bytes`` bytes and no word
    longer than ``max_cached_word_chars`` characters. Thread-safe.
    """

    def __init__(
        self,
        tokenizer_text: str,
        max_length: int | None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_cached_word_chars: int = MAX_CACHED_WORD_CHARS,
    ):
        self.hf = load_tokenizer(tokenizer_text, max_length)  # the HF tokenizer itself, truncating as we do
        self._specials = _word_cache_applies(self.hf)
        # Word pieces of single words come from self.hf (one Rust tokenizer: each costs ~6 MB); a word as long
        # as the truncation length goes through this one, made the first time it is needed, not truncating.
        self._whole_words: Tokenizer | None = None
        self.cache_bytes = cache_bytes
        self.max_cached_word_chars = max_cached_word_chars
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
        self._word_bytes = 0  # the cached words' str objects and row numbers

    @property
    def cached_bytes(self) -> int:
        """Memory the word cache holds now, in bytes (its arrays' capacity counted, not only what is used)."""
        arrays = self._start.nbytes + self._length.nbytes + self._ids.nbytes
        return self._word_bytes + sys.getsizeof(self._index) + arrays

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

    def _word_pieces(self, words: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Each word's WordPiece ids (no special tokens, never truncated) and their counts."""
        pieces = [e.ids for e in self.hf.encode_batch_fast(words, add_special_tokens=False)]
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        limit = self.max_length
        cut = np.flatnonzero(lengths >= limit) if limit is not None else ()
        if len(cut):  # may have been truncated: tokenize those again, whole
            if self._whole_words is None:
                self._whole_words = Tokenizer.from_str(self.hf.to_str())
                self._whole_words.no_truncation()
            again = self._whole_words.encode_batch_fast([words[i] for i in cut], add_special_tokens=False)
            for i, e in zip(cut, again, strict=True):
                pieces[i] = e.ids
                lengths[i] = len(e.ids)
        return pieces, lengths

    def _add_words(self, words: list[str]) -> None:
        pieces, lengths = self._word_pieces(words)
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
        self._word_bytes += sum(map(sys.getsizeof, words)) + _INT_BYTES * len(words)

    def _encode_with_cache(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        splits = [(t.translate(_DELETE_TABLE) if _DELETED_RE.search(t) else t).split() for t in texts]
        words_per_text = np.fromiter(map(len, splits), dtype=np.int64, count=len(splits))
        words = list(chain.from_iterable(splits))
        row = np.fromiter(map(self._index.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        missing = row < 0
        uncached = None  # texts holding a word too long to cache: the Rust tokenizer's ids go in at the end
        if missing.any():
            new = list(dict.fromkeys(words[i] for i in np.flatnonzero(missing)))
            if max(map(len, new)) > self.max_cached_word_chars:
                long_words = [i for i in np.flatnonzero(missing) if len(words[i]) > self.max_cached_word_chars]
                uncached = np.unique(np.searchsorted(np.cumsum(words_per_text), long_words, side="right"))
                in_uncached = np.repeat(np.isin(np.arange(len(texts)), uncached), words_per_text)
                row[in_uncached] = 0  # any row: these words count no tokens below
                missing &= ~in_uncached
                new = list(dict.fromkeys(words[i] for i in np.flatnonzero(missing)))
            if self.cached_bytes + sum(map(sys.getsizeof, new)) + _BYTES_PER_WORD * len(new) > self.cache_bytes:
                # A bounded cache: start over rather than grow with an endless stream of new words.
                self._clear()
                missing = np.ones(len(words), dtype=bool) if uncached is None else ~in_uncached  # all but those
                new = list(dict.fromkeys(words[i] for i in np.flatnonzero(missing)))
            self._add_words(new)
            row[missing] = [self._index[words[i]] for i in np.flatnonzero(missing)]
        start, length = self._start[row], self._length[row]
        if uncached is not None:
            length[in_uncached] = 0

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
        if self.cached_bytes > self.cache_bytes:  # one batch alone had more new words than the cache holds
            self._clear()
        if uncached is not None:
            ids, offsets = _replace_texts(ids, offsets, uncached, *self._encode_with_rust([texts[i] for i in uncached]))
        return ids, offsets


def _replace_texts(
    ids: np.ndarray, offsets: np.ndarray, where: np.ndarray, new_ids: np.ndarray, new_offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, offsets)`` of a batch with its texts at the (sorted) positions ``where`` replaced by those of
    ``(new_ids, new_offsets)``."""
    lengths = np.diff(offsets)
    replaced = np.zeros(len(lengths), dtype=bool)
    replaced[where] = True
    kept = np.flatnonzero(~replaced)
    lengths[where] = np.diff(new_offsets)
    out_offsets = np.zeros(len(offsets), dtype=np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    out = np.empty(int(out_offsets[-1]), dtype=np.int64)
    for at, source, starts in ((kept, ids, offsets[kept]), (where, new_ids, new_offsets[:-1])):
        n = lengths[at]
        within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # each token's place in its text
        out[np.repeat(out_offsets[at], n) + within] = source[np.repeat(starts, n) + within]
    return out, out_offsets


def tokenizer_fingerprint(tokenizer_text: str) -> str:
    """Hash of what decides token ids (vocabulary, normalizer, ...), not of padding or truncation settings."""
    spec = json.loads(tokenizer_text)
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
