"""The synthetic teachers of tests/synthetic_teachers.py: each loads with sentence-transformers and transformers,
has the property its kind is about, and is built byte for byte the same from the same texts and seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic_teachers import (
    DENSE_OUT,
    EOS,
    FILLER,
    HIDDEN,
    KINDS,
    MAX_SEQ_LENGTH,
    OUTPUT_DIM,
    PROMPTS,
    build_teacher,
    bundled_texts,
)

pytest.importorskip("sentence_transformers")

N_TEXTS = 500
QUERIES = ["what is the capital of france", "how long do cats live", "symptoms of the flu"]


@pytest.fixture(scope="module")
def texts(data_dir) -> list[str]:
    return bundled_texts(data_dir, N_TEXTS)


@pytest.fixture(scope="module")
def built(texts, tmp_path_factory):
    """kind -> (first build, second build) of every kind, from the same texts and seed."""
    root = tmp_path_factory.mktemp("teachers")
    return {
        kind: (build_teacher(kind, root / f"{kind}-a", texts), build_teacher(kind, root / f"{kind}-b", texts))
        for kind in KINDS
    }


def _load(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def _backend(path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json"))


def test_bundled_texts_are_the_first_passages(data_dir, texts):
    assert len(texts) == N_TEXTS and all(isinstance(t, str) and t and "\t" not in t for t in texts)
    assert bundled_texts(data_dir, 3) == texts[:3]


@pytest.mark.parametrize("kind", KINDS)
def test_builds_are_deterministic(built, kind):
    a, b = built[kind]
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "1_Pooling/config.json",
    ):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("kind", KINDS)
def test_loads_and_encodes(built, kind, texts):
    from transformers import AutoTokenizer

    path = built[kind][0]
    for name in ("modules.json", "config_sentence_transformers.json", "special_tokens_map.json", "README.md"):
        assert (path / name).is_file(), name
    assert json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"] == MAX_SEQ_LENGTH
    model = _load(path)
    assert model.get_embedding_dimension() == OUTPUT_DIM[kind]
    assert model.max_seq_length == MAX_SEQ_LENGTH
    vectors = model.encode([QUERIES[0], QUERIES[1], texts[0]])
    assert vectors.shape == (3, OUTPUT_DIM[kind]) and np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1])
    if kind != "roberta-dense":  # the others end with Normalize
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    assert tokenizer.is_fast and tokenizer.padding_side == "right" and tokenizer.pad_token is not None
    assert tokenizer(texts[0])["input_ids"] == _backend(path).encode(texts[0]).ids


def test_bert_cls(built):
    path = built["bert-cls"][0]
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "cls" and pooling["embedding_dimension"] == HIDDEN["bert-cls"]
    tok = json.loads((path / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "WordPiece" and tok["pre_tokenizer"]["type"] == "BertPreTokenizer"
    assert tok["normalizer"]["type"] == "BertNormalizer" and tok["normalizer"]["lowercase"]
    enc = _backend(path).encode("Unbelievably, the tokenizers differ")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]" and any(t.startswith("##") for t in enc.tokens)
    assert [_backend(path).token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    # CLS pooling: the sentence vector is the normalized [CLS] position of the token vectors.
    model = _load(path)
    tokens = model.encode(QUERIES[0], output_value="token_embeddings")
    sentence = model.encode(QUERIES[0])
    np.testing.assert_allclose(sentence, tokens[0].numpy() / np.linalg.norm(tokens[0].numpy()), atol=1e-5)


def test_roberta_dense(built):
    path = built["roberta-dense"][0]
    modules = json.loads((path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense"]
    dense = json.loads((path / "2_Dense" / "config.json").read_text())
    assert (dense["in_features"], dense["out_features"]) == (HIDDEN["roberta-dense"], DENSE_OUT)
    assert dense["activation_function"].endswith("Tanh")
    tok = json.loads((path / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE" and tok["pre_tokenizer"]["type"] == "ByteLevel"
    assert tok["pre_tokenizer"]["add_prefix_space"] is False and tok["decoder"]["type"] == "ByteLevel"
    enc = _backend(path).encode("Hello world again")
    assert enc.tokens[0] == "<s>" and enc.tokens[-1] == "</s>"
    assert not enc.tokens[1].startswith("Ġ") and enc.tokens[-2].startswith("Ġ")  # the first word has no Ġ
    assert [_backend(path).token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]


def test_xlmr_unigram(built, texts):
    path = built["xlmr-unigram"][0]
    tok = _backend(path)
    size = tok.get_vocab_size()
    assert size > 65_536
    spec = json.loads((path / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "Unigram" and spec["pre_tokenizer"]["type"] == "Metaspace"
    assert spec["pre_tokenizer"]["replacement"] == "▁" and spec["decoder"]["type"] == "Metaspace"
    assert json.loads((path / "config.json").read_text())["vocab_size"] == size
    assert tok.token_to_id("<mask>") == size - 1
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    ids = np.concatenate([e.ids for e in tok.encode_batch(texts[:100])])
    real = ids[(ids != 0) & (ids != 2)]
    assert real.min() > 65_535 and 3 not in real  # every real piece lies above 16 bits; no unknowns
    enc = tok.encode("Hello world")
    assert enc.tokens[0] == "<s>" and enc.tokens[-1] == "</s>" and enc.tokens[1].startswith("▁")
    assert tok.decode(enc.ids) == "Hello world"
    assert not ((ids >= 4) & (ids < 4 + FILLER)).any()  # the filler pieces are never used


def test_last_token(built, texts):
    path = built["last-token"][0]
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "lasttoken"
    tok = _backend(path)
    eos = tok.token_to_id(EOS)
    assert tok.encode("Hello world").ids[-1] == eos and tok.encode("Hello world").ids[0] != eos  # appended only
    model = _load(path)
    # Truncation keeps the appended EOS: a long passage still ends with it.
    features = getattr(model, "preprocess", model.tokenize)([QUERIES[0], texts[0] * 5])  # tokenize before ST 6
    ids, mask = features["input_ids"], features["attention_mask"]
    assert ids.shape[1] == MAX_SEQ_LENGTH and mask[0, -1] == 0  # right padding
    assert ids[0, int(mask[0].sum()) - 1] == eos and ids[1, -1] == eos
    # Last-token pooling takes the EOS position, whatever the padding: alone or beside a longer text.
    alone = model.encode(QUERIES[0])
    padded = model.encode([QUERIES[0], texts[0]])[0]
    np.testing.assert_allclose(alone, padded, atol=1e-5)
    hidden = model.encode(QUERIES[0], output_value="token_embeddings")[-1].numpy()
    np.testing.assert_allclose(alone, hidden / np.linalg.norm(hidden), atol=1e-5)


def test_prompts(built):
    path = built["prompts"][0]
    st_config = json.loads((path / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == PROMPTS and st_config["default_prompt_name"] is None
    model = _load(path)
    assert model.prompts["query"] == "query: " and model.prompts["passage"] == "passage: "
    assert model.default_prompt_name is None
    plain = model.encode(QUERIES)
    np.testing.assert_allclose(
        model.encode(QUERIES, prompt_name="query"), model.encode(["query: " + q for q in QUERIES]), atol=1e-5
    )
    np.testing.assert_allclose(
        model.encode(QUERIES, prompt="passage: "), model.encode(["passage: " + q for q in QUERIES]), atol=1e-5
    )
    assert not np.allclose(plain, model.encode(QUERIES, prompt_name="query"))
    np.testing.assert_allclose(model.encode_query(QUERIES), model.encode(QUERIES, prompt_name="query"), atol=1e-5)


def test_legacy_configs_load_the_same(built, texts, tmp_path):
    path = build_teacher("roberta-dense", tmp_path / "legacy", texts, legacy_configs=True)
    assert (path / "model.safetensors").read_bytes() == (built["roberta-dense"][0] / "model.safetensors").read_bytes()
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == HIDDEN["roberta-dense"] and pooling["pooling_mode_mean_tokens"]
    assert not pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_lasttoken"]
    assert json.loads((path / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 128,
        "do_lower_case": False,
    }
    types = [m["type"] for m in json.loads((path / "modules.json").read_text())]
    assert types == [f"sentence_transformers.models.{name}" for name in ("Transformer", "Pooling", "Dense")]
    np.testing.assert_allclose(_load(path).encode(QUERIES), _load(built["roberta-dense"][0]).encode(QUERIES), atol=1e-6)


def test_training_changes_the_weights_deterministically(texts, tmp_path):
    from safetensors.numpy import load_file

    random = load_file(build_teacher("bert-cls", tmp_path / "random", texts) / "model.safetensors")
    a = build_teacher("bert-cls", tmp_path / "a", texts, train_steps=5)
    b = build_teacher("bert-cls", tmp_path / "b", texts, train_steps=5)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    trained = load_file(a / "model.safetensors")
    assert trained.keys() == random.keys()
    name = "embeddings.word_embeddings.weight"
    assert not np.array_equal(trained[name], random[name])
    np.testing.assert_array_equal(trained["pooler.dense.weight"], random["pooler.dense.weight"])
    assert "contrastive training, 5 steps" in (a / "README.md").read_text()


def test_refuses_unknown_kinds_and_full_folders(texts, tmp_path):
    with pytest.raises(ValueError, match="unknown teacher kind"):
        build_teacher("t5", tmp_path / "t5", texts)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError):
        build_teacher("bert-cls", tmp_path / "full", texts)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_training_lowers_the_loss(texts, tmp_path, kind):
    # The CLS teacher learns slowest: its first position hardly depends on the text at first (loss 3.50 -> 3.48
    # in 60 steps, 2.6 after 300; the others are below 1.2 after 60).
    path = build_teacher(kind, tmp_path / kind, texts, train_steps=300 if kind == "bert-cls" else 60)
    readme = (path / "README.md").read_text()
    first, last = (float(x.split(" ")[0]) for x in readme.split("loss ")[1].split(" -> "))
    assert last < first - 0.5
    assert _load(path).encode(QUERIES).shape == (3, OUTPUT_DIM[kind])
