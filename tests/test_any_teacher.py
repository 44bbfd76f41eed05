"""Teachers other than MiniLM: tokenizer families, special tokens, Dense layers, and what is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures import VOCAB, tokenizer_text
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from vocabert.artifacts import VocabertError
from vocabert.distill.teacher import output_activation, resolve_teacher_path, teacher_refusal
from vocabert.networks import ACTIVATIONS
from vocabert.tokenizer import tokenizer_layout

BPE_VOCAB = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "new": 5, "Ġnew": 6, "Ġyork": 7, "Ġplay": 8,
             "ing": 9, ",": 10, "Ġ": 11, "n": 12, "e": 13, "w": 14, "y": 15, "o": 16, "r": 17, "k": 18, "p": 19,
             "l": 20, "a": 21, "i": 22, "g": 23, "Ġp": 24, "Ġy": 25, "Ġn": 26, "ne": 27, "in": 28, "Ġpl": 29,
             "Ġpla": 30, "Ġyo": 31, "Ġyor": 32, "Ġne": 33}  # fmt: skip
MERGES = [("n", "e"), ("ne", "w"), ("Ġ", "n"), ("Ġn", "e"), ("i", "n"), ("in", "g"), ("Ġ", "p"), ("Ġp", "l"),
          ("Ġpl", "a"), ("Ġpla", "y"), ("Ġ", "y"), ("Ġy", "o"), ("Ġyo", "r"), ("Ġyor", "k")]  # fmt: skip


def byte_level_bpe() -> str:
    """A RoBERTa-style tokenizer: byte-level BPE, ``<s> $A </s>``."""
    tokenizer = Tokenizer(models.BPE(BPE_VOCAB, [(a, b) for a, b in MERGES], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return tokenizer.to_str()


def sentencepiece_unigram(eos_only: bool = False) -> str:
    """An XLM-R-style tokenizer (Unigram, Metaspace ``▁``), or with ``eos_only`` a decoder's: EOS after the text."""
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁new", -2.0), ("▁york", -2.0),
              ("▁play", -2.0), ("ing", -2.0), ("▁", -3.0), (",", -2.0)]  # fmt: skip
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    template = "$A </s>" if eos_only else "<s> $A </s>"
    tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>"])
    return tokenizer.to_str()


def test_layout_of_wordpiece():
    layout = tokenizer_layout(tokenizer_text())
    assert layout.prefix == (VOCAB["[CLS]"],) and layout.suffix == (VOCAB["[SEP]"],) and layout.per_text == 2
    assert layout.filler == VOCAB["[MASK]"] and set(layout.special) == {VOCAB[t] for t in VOCAB if t.startswith("[")}
    tokens = sorted(VOCAB, key=VOCAB.get)
    continues = {t for t, c in zip(tokens, layout.continuation(tokens), strict=True) if c}
    assert continues == {"##s", "##ing"}
    assert layout.readable(["dog", "##s", "*", "##ing", "new", "york"]) == "dogs * ##ing new york"


def test_layout_of_byte_level_bpe():
    text = byte_level_bpe()
    layout = tokenizer_layout(text)
    assert layout.prefix == (0,) and layout.suffix == (2,) and layout.filler == 4
    assert layout.word_start == "Ġ" and layout.continuation_prefix is None
    assert layout.continues_word("ing") and not layout.continues_word("Ġyork") and not layout.continues_word(",")
    assert layout.readable(["Ġnew", "Ġyork", "Ġplay", "ing", ","]) == "new york playing ,"
    assert Tokenizer.from_str(text).encode("new york playing").tokens == ["<s>", "new", "Ġyork", "Ġplay", "ing", "</s>"]


def test_layout_of_sentencepiece_and_of_a_decoder_that_appends_eos():
    layout = tokenizer_layout(sentencepiece_unigram())
    assert layout.prefix == (0,) and layout.suffix == (2,) and layout.word_start == "▁"
    assert layout.filler == 3  # no mask token: the unknown token stands for a wildcard
    assert layout.continues_word("ing") and not layout.continues_word("▁play")
    decoder = tokenizer_layout(sentencepiece_unigram(eos_only=True))
    assert decoder.prefix == () and decoder.suffix == (2,) and decoder.per_text == 1


@pytest.mark.parametrize("family", ["wordpiece", "byte-level", "unigram", "eos-only"])
def test_text_tokenizer_gives_the_tokenizers_own_ids(family, teacher_tokenizer_text):
    """BERT's word cache where it applies, the tokenizer itself elsewhere: the same ids either way."""
    from vocabert.tokenizer import TextTokenizer, load_tokenizer

    text = {
        "wordpiece": lambda: teacher_tokenizer_text,
        "byte-level": byte_level_bpe,
        "unigram": sentencepiece_unigram,
        "eos-only": lambda: sentencepiece_unigram(eos_only=True),
    }[family]()
    texts = ["new york playing", "the cat sat on the mat", "", "new, york", "playing new york new york new"] * 3
    tokenizer = TextTokenizer(text, 8)
    assert tokenizer.caches_words == (family == "wordpiece")
    ids, offsets = tokenizer.encode_ids(texts)
    expected = [e.ids for e in load_tokenizer(text, 8).encode_batch(texts)]
    assert [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)] == expected
    assert max(map(len, expected)) == 8  # one text was cut, keeping the tokens added after it


def _write(folder, files: dict) -> None:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))


def test_refusals_are_one_line_each(tmp_path):
    cases = {
        "cross-encoder": ({"config.json": {"architectures": ["BertForSequenceClassification"]}}, "cross-encoder"),
        "no-pooling": (
            {"modules.json": [{"path": "", "type": "sentence_transformers.models.Transformer"}]},
            "no Pooling",
        ),  # fmt: skip
        "two-poolings": (
            {
                "modules.json": [{"path": "", "type": "Transformer"}, {"path": "1_Pooling", "type": "Pooling"}],
                "1_Pooling/config.json": {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
            },
            "several poolings",
        ),
        "gelu-dense": (
            {
                "modules.json": [
                    {"path": "", "type": "Transformer"},
                    {"path": "1_Pooling", "type": "Pooling"},
                    {"path": "2_Dense", "type": "sentence_transformers.models.Dense"},
                ],  # fmt: skip
                "1_Pooling/config.json": {"pooling_mode_cls_token": True},
                "2_Dense/config.json": {"activation_function": "torch.nn.modules.activation.GELU"},
            },
            "ends in gelu",
        ),
        "unknown-module": (
            {
                "modules.json": [
                    {"path": "", "type": "Transformer"},
                    {"path": "1", "type": "Pooling"},
                    {"path": "2", "type": "my_package.Rerank"},
                ]
            },  # fmt: skip
            "Rerank is not one",
        ),
    }
    for name, (files, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        _write(folder, files)
        assert message in teacher_refusal(folder)
        with pytest.raises(VocabertError, match=message) as error:
            resolve_teacher_path(folder)
        assert "\n" not in str(error.value)


def test_a_dense_layer_sets_the_students_output_activation(tmp_path):
    _write(
        tmp_path,
        {
            "modules.json": [
                {"path": "", "type": "Transformer"},
                {"path": "1_Pooling", "type": "Pooling"},
                {"path": "2_Dense", "type": "Dense"},
            ],  # fmt: skip
            "1_Pooling/config.json": {"pooling_mode_mean_tokens": True},
            "2_Dense/config.json": {"in_features": 8, "out_features": 4},  # sentence-transformers' default: Tanh
        },
    )
    assert teacher_refusal(tmp_path) is None
    assert output_activation(tmp_path) == "tanh"
    np.testing.assert_allclose(ACTIVATIONS["tanh"](np.array([0.5])), np.tanh(0.5))


# --------------------------------------------------------------------------- end to end, synthetic teachers


@pytest.fixture(scope="module")
def bundled(data_dir):
    from synthetic_teachers import bundled_texts

    return bundled_texts(data_dir, 500)


def _run(kind: str, bundled: list[str], small_data, tmp_path):
    """A synthetic teacher of ``kind``, every stage on the small slices, and the student it gives."""
    from conftest import SMALL_MINE
    from synthetic_teachers import build_teacher

    import vocabert
    from vocabert.distill.pipeline import build_model
    from vocabert.distill.training import TrainSettings
    from vocabert.distill.workspace import Workspace

    teacher = build_teacher(kind, tmp_path / f"teacher-{kind}", bundled)
    ws = Workspace(tmp_path / "work", teacher, cache_dir=tmp_path / "cache", show_progress_bar=False)
    build_model(ws, small_data, mine=SMALL_MINE, train=TrainSettings(epochs=2, batch_size=128))
    return teacher, ws, vocabert.load(ws.model_dir)


def _fidelity(teacher, student, texts: list[str], **kwargs) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(teacher), device="cpu").encode(texts, normalize_embeddings=True, **kwargs)
    return np.einsum("ij,ij->i", student.encode(texts, **kwargs), reference)


HELD_OUT = [
    "how long does it take to renew a passport",
    "The Eiffel Tower was finished in 1889 for the World's Fair in Paris.",
    "what is the capital of australia",
]


@pytest.mark.parametrize("kind", ["bert-cls", "roberta-dense", "xlmr-unigram", "last-token", "prompts"])
def test_a_synthetic_teacher_runs_end_to_end(kind, bundled, small_data, tmp_path):
    """Every stage with a teacher of another tokenizer family, pooling, head or prompts; the model folder
    loads with vocabert and with sentence-transformers, and the student follows its teacher."""
    from sentence_transformers import SentenceTransformer

    from vocabert.distill.corpus import open_corpus
    from vocabert.distill.teacher import embedding_dim

    teacher, ws, student = _run(kind, bundled, small_data, tmp_path)
    layout = tokenizer_layout(ws.tokenizer_text)
    assert student.dim == embedding_dim(teacher)
    history = student.config["training"]["history"]
    # Training never leaves the student below the plain mean on held-out texts; where the teacher's output
    # is not a mean of its token vectors (one position's vector), it must beat it. (A random-weight teacher
    # that mean-pools is matched by the plain mean already, to ~0.97 on these slices.)
    assert history["best_val_cosine"] >= history["val_cosine_before"]
    if kind in ("bert-cls", "last-token"):
        assert history["best_val_cosine"] > history["val_cosine_before"] + 0.01
    assert _fidelity(teacher, student, HELD_OUT).mean() > 0.5
    via_st = SentenceTransformer(str(ws.model_dir), device="cpu", trust_remote_code=True).encode(HELD_OUT)
    np.testing.assert_allclose(via_st, student.encode(HELD_OUT), atol=1e-6)
    vocab_size = student.config["vocab_size"]
    if kind == "roberta-dense":
        assert student.dim == 64 and student.config["output_activation"] == "tanh" and layout.word_start == "Ġ"
    if kind == "xlmr-unigram":
        assert vocab_size > 65_536 and layout.word_start == "▁"
        shard = next(ws.corpus_dir.glob("shard-*.npz"))
        assert np.load(shard)["ids"].dtype == np.uint32 and int(next(open_corpus(ws).shards()).ids.max()) > 65_535
    if kind == "last-token":
        assert layout.prefix == () and len(layout.suffix) == 1 and student.added_per_text == 1
    if kind == "prompts":
        assert student.config["prompts"] == {"query": "query: ", "passage": "passage: "}
        texts = next(open_corpus(ws).shards()).texts
        assert all(t.startswith(("query: ", "passage: ")) for t in texts)
        np.testing.assert_allclose(
            student.encode(HELD_OUT, prompt_name="query"), student.encode(["query: " + t for t in HELD_OUT])
        )
        assert _fidelity(teacher, student, HELD_OUT, prompt_name="query").mean() > 0.5


def test_bench_puts_the_teachers_prompts_before_queries_and_passages(tmp_path):
    """A teacher's prompts reach the bench: queries get the query prompt, passages the passage one."""
    from vocabert.bench.benchmark import prompted
    from vocabert.distill.teacher import source_prompts

    _write(tmp_path, {"config_sentence_transformers.json": {"prompts": {"query": "query: ", "document": "doc: "}}})
    prompts = source_prompts(tmp_path, ["queries", "passages", "glosses"])
    assert prompts == {"queries": "query: ", "passages": "doc: "}  # glosses: no prompt and no default
    seen = []
    prompted(seen.extend, prompts["queries"])(["a", "b"])
    assert seen == ["query: a", "query: b"]
    assert prompted(len, "") is len
    _write(
        tmp_path, {"config_sentence_transformers.json": {"prompts": {"q": "q: ", "": ""}, "default_prompt_name": "q"}}
    )
    assert source_prompts(tmp_path, ["passages"]) == {"passages": "q: "}
