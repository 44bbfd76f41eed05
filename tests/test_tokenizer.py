"""The student's tokenizer: special tokens, truncation, flattened batches and fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures import VOCAB, tokenizer_text

from vocabert.tokenizer import encode_ids, load_tokenizer, tokenizer_fingerprint


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


def test_encode_ids_flattens_a_batch():
    tokenizer = load_tokenizer(tokenizer_text(), 16)
    texts = ["the cat", "", "a big red car"]
    ids, offsets = encode_ids(tokenizer, texts)
    assert ids.dtype == np.int64 and offsets.dtype == np.int64
    assert offsets.tolist() == [0, 4, 6, 12]
    for i, text in enumerate(texts):
        assert ids[offsets[i] : offsets[i + 1]].tolist() == tokenizer.encode(text).ids


def test_encode_ids_of_no_texts():
    ids, offsets = encode_ids(load_tokenizer(tokenizer_text(), 16), [])
    assert ids.shape == (0,) and offsets.tolist() == [0]


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
