"""The student's tokenizer: special tokens, truncation, flattened batches and fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures import VOCAB, tokenizer_text

from vocabert.tokenizer import TextTokenizer, load_tokenizer, tokenizer_fingerprint


def test_wraps_texts_in_special_tokens_and_lowercases():
    tokenizer = load_tokenizer(tokenizer_text(), 16)
    assert tokenizer.encode("The CAT sat").ids == [VOCAB[t] for t in ("[CLS]", "the", "cat", "sat", "[SEP]")]
    assert tokenizer.encode("").ids == [VOCAB["[CLS]"], VOCAB["[SEP]"]]


def test_wordpieces_and_unknown_words():
    tokenizer = load_tokenizer(tokenizer_text(), 16)
    assert tokenizer.encode("dogs zebra").tokens == ["[CLS]", "dog", "##s", "[UNK]", "[SEP]"]


def test_truncation_keeps_the_closing_token():
    tokenizer = load_tokenizer(tokenizer_text(), 6)
    ids = tokenizer.encode("the cat sat on the mat in the park").ids
    assert len(ids) == 6
    assert ids[0] == VOCAB["[CLS]"] and ids[-1] == VOCAB["[SEP]"]
    assert ids[1:-1] == [VOCAB[t] for t in ("the", "cat", "sat", "on")]


def test_no_padding_even_if_the_file_asks_for_it():
    spec = json.loads(tokenizer_text())
    spec["padding"] = {"strategy": {"Fixed": 32}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                       "pad_type_id": 0, "pad_token": "[PAD]"}  # fmt: skip
    tokenizer = load_tokenizer(json.dumps(spec), 16)
    assert [len(e.ids) for e in tokenizer.encode_batch(["cat", "the big cat"])] == [3, 5]


@pytest.mark.parametrize("cache", [True, False])
def test_encode_ids_flattens_a_batch(cache):
    tokenizer = TextTokenizer(tokenizer_text(), 16)
    if not cache:
        tokenizer._specials = None  # the Rust tokenizer's own path, used for non-BERT tokenizers
    texts = ["the cat", "", "a big red car"]
    ids, offsets = tokenizer.encode_ids(texts)
    assert ids.dtype == np.int64 and offsets.dtype == np.int64
    assert offsets.tolist() == [0, 4, 6, 12]
    for i, text in enumerate(texts):
        assert ids[offsets[i] : offsets[i + 1]].tolist() == tokenizer.hf.encode(text).ids


def test_encode_ids_of_no_texts():
    ids, offsets = TextTokenizer(tokenizer_text(), 16).encode_ids([])
    assert ids.shape == (0,) and offsets.tolist() == [0]


ODD_TEXTS = [
    "",
    " ",
    "\t\n\r",
    "a\x0bb",  # Python splits at \x0b, \x1f, \x85; BERT deletes them
    "x\x1fy\x85z cats",
    "ab\u200bcd",  # zero-width space: deleted inside the word
    "\u3000東京\u3000タワー",  # CJK characters become words of their own
    "Ünïcödé CAFÉ naïve",
    "e\u0301 \u0301a",  # a combining accent at a word's start
    "[MASK]x[CLS] y [SEP]",  # special tokens inside words
    "ΣΑΣ σας İstanbul ǅ ß ﬁ",
    "don't-stop...now!!",
    "\u2028x\u2029y\u00a0z\u202fw",
    "\x00\ufffd cat",
    "a" * 300,
    "the cat " * 200,  # truncated
]


def test_word_cache_gives_the_rust_tokenizers_ids_on_real_and_odd_texts(teacher_tokenizer_text, data_dir):
    from itertools import islice

    from vocabert.readers import read_texts

    tokenizer = TextTokenizer(teacher_tokenizer_text, 256)
    assert tokenizer.caches_words
    texts = ODD_TEXTS + [t for _, t in islice(read_texts(data_dir / "msmarco_passage/collection_subset.tsv.gz"), 3000)]
    texts += [t for _, t in islice(read_texts(data_dir / "general_text" / "wordnet_glosses.txt.gz"), 2000)]
    for start in range(0, len(texts), 64):
        batch = texts[start : start + 64]
        ids, offsets = tokenizer.encode_ids(batch)
        expected = [e.ids for e in tokenizer.hf.encode_batch(batch)]
        assert [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)] == expected


def _rust_ids(tokenizer: TextTokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.hf.encode_batch(texts)]


def _split(ids: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def test_word_cache_is_bounded_in_bytes_and_starts_over(teacher_tokenizer_text):
    budget = 256 << 10
    tokenizer = TextTokenizer(teacher_tokenizer_text, 32, cache_bytes=budget)
    empty = tokenizer.cached_bytes
    long_word = " " + "q" * 100  # in every 50th text: never cached, while the others fill the cache
    texts = [f"word{i} and more words number {i * 7} w{i}x{i}" + long_word * (i % 50 == 0) for i in range(6000)]
    sizes = []
    for start in range(0, len(texts), 200):
        batch = texts[start : start + 200]
        ids, offsets = tokenizer.encode_ids(batch)
        sizes.append(tokenizer.cached_bytes)
        assert tokenizer.cached_bytes <= budget
        assert _split(ids, offsets) == _rust_ids(tokenizer, batch)
    assert max(sizes) > budget / 2 and min(sizes[1:]) < max(sizes)  # filled up, then started over
    # A batch with more new words than the whole budget is encoded right, and not kept.
    batch = [f"big{i}-{j}" for i in range(4000) for j in range(2)]
    assert _split(*tokenizer.encode_ids(batch)) == _rust_ids(tokenizer, batch)
    assert tokenizer.cached_bytes == empty


def test_words_too_long_to_cache_are_tokenized_by_rust_and_never_kept(teacher_tokenizer_text):
    tokenizer = TextTokenizer(teacher_tokenizer_text, 256, max_cached_word_chars=20)
    tokenizer.encode_ids(["the cat sat", "on the mat", "a b", "c d"])
    cached = dict(tokenizer._index)
    long_word = "x" * 21
    batch = [
        "the cat " + long_word,
        "on the mat",
        f"{long_word}y {long_word}y",
        "a.b.c." * 400,  # one word of 2,400 characters, 2,400 tokens before truncation
        "",
        "the mat",
        "Ünïcödé " + "é" * 30,
    ]
    for texts in (batch, batch[::-1], [batch[0]] * 5, [batch[1]] * 5):
        ids, offsets = tokenizer.encode_ids(texts)
        assert _split(ids, offsets) == _rust_ids(tokenizer, texts)
        assert all(len(w) <= 20 for w in tokenizer._index)
    assert cached.items() <= tokenizer._index.items()  # the short words stay cached
    # Unique long words by the thousand leave the cache as it was.
    before = tokenizer.cached_bytes
    for start in range(0, 2000, 100):
        tokenizer.encode_ids([f"{i:05d}" + "z" * 200 for i in range(start, start + 100)])
    assert tokenizer.cached_bytes == before


def test_cached_words_longer_than_the_truncation_keep_all_their_pieces(teacher_tokenizer_text):
    """One Rust tokenizer, truncating, gives the word pieces: a word with more pieces than the truncation
    length is tokenized again whole, so it is cached whole and the next text truncates it as Rust does."""
    tokenizer = TextTokenizer(teacher_tokenizer_text, 256)
    tokenizer.max_length = 6  # as sentence-transformers' max_seq_length does
    word = "supercalifragilisticexpialidocious"  # 11 pieces, well within the cacheable length
    assert len(tokenizer.hf.encode(word, add_special_tokens=False).ids) == 6  # the truncating tokenizer cuts it
    texts = [word, f"a {word} b", "the cat sat", f"{word} {word}"]
    assert _split(*tokenizer.encode_ids(texts)) == _rust_ids(tokenizer, texts)
    assert tokenizer._length[tokenizer._index[word]] == 11
    tokenizer.max_length = 64  # a longer truncation reads the cached pieces, all 11 of them
    assert _split(*tokenizer.encode_ids(texts)) == _rust_ids(tokenizer, texts)


def test_no_truncation_when_max_length_is_none(teacher_tokenizer_text):
    tokenizer = TextTokenizer(teacher_tokenizer_text, None)
    ids, offsets = tokenizer.encode_ids(["the cat " * 300])
    assert offsets[-1] == 602 and tokenizer.max_length is None
    tokenizer.max_length = 10
    assert tokenizer.encode_ids(["the cat " * 300])[1][-1] == 10


def test_other_tokenizers_use_the_rust_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, "cat": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    text = TextTokenizer(tokenizer.to_str(), 16)
    assert not text.caches_words
    ids, offsets = text.encode_ids(["the cat", "dog"])
    assert ids.tolist() == [1, 2, 0] and offsets.tolist() == [0, 2, 3]


def test_fingerprint_ignores_truncation_and_padding_but_not_the_vocabulary():
    text = tokenizer_text()
    spec = json.loads(text)
    spec["truncation"] = {"direction": "Right", "max_length": 7, "strategy": "LongestFirst", "stride": 0}
    assert tokenizer_fingerprint(json.dumps(spec)) == tokenizer_fingerprint(text)
    assert tokenizer_fingerprint(json.dumps(spec, indent=4)) == tokenizer_fingerprint(text)
    vocab = spec["model"]["vocab"]
    vocab["cat"], vocab["dog"] = vocab["dog"], vocab["cat"]
    assert tokenizer_fingerprint(json.dumps(spec)) != tokenizer_fingerprint(text)
    assert len(tokenizer_fingerprint(text)) == 16


def test_fingerprint_of_invalid_json_raises():
    with pytest.raises(json.JSONDecodeError):
        tokenizer_fingerprint("{not json")
