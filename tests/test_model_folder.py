"""The model folder on a synthetic tokenizer and store: what save writes, what load refuses (one line, never a
traceback), and the folder in sentence-transformers; int8 keys and queries against float32 ones also on the
session's small real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures import DIM, PHRASES, VOCAB, WORDS, tiny_context_model, tiny_model, tokenizer_text

import vocabert
from vocabert.artifacts import VocabertError, write_text
from vocabert.card import EVAL_END, EVAL_START, NOT_EVALUATED
from vocabert.model import StudentModel
from vocabert.model_folder import MODEL_FILES
from vocabert.store import load_safetensors, save_safetensors

TEXTS = ["the cat sat on the mat", "New York City is big", "how long do cats live", "a zebra", "the big red car"]


@pytest.fixture
def model() -> StudentModel:
    return tiny_model()


@pytest.fixture
def saved(model, tmp_path) -> Path:
    return model.save(tmp_path / "model", vocabulary_listing="entry\tcount\ncat\t3\n")


# ------------------------------------------------------------------------------------- model folder


def test_save_load_round_trip(model, saved):
    names = {p.name for p in saved.iterdir()}
    assert names == {*MODEL_FILES, "vocabulary.tsv", "README.md", "modules.json", "config_sentence_transformers.json"}
    again = vocabert.load(saved)
    np.testing.assert_array_equal(again.encode(TEXTS), model.encode(TEXTS))
    assert isinstance(again.store.embeddings, np.memmap)  # rows are read lazily
    config = json.loads((saved / "config.json").read_text())
    assert config["format_version"] == 3 and config["dim"] == DIM and config["entries"] == len(model.store)
    assert config["dtype"] == "float16" and config["provenance"] == model.config["provenance"]


def test_model_safetensors_holds_entries_and_network(saved):
    tensors, metadata = load_safetensors(saved / "model.safetensors")
    assert set(tensors) == {"patterns", "embeddings", "student.entry_weight", "student.weight", "student.bias"}
    assert tensors["embeddings"].dtype == np.float16 and tensors["patterns"].dtype == np.int32
    assert metadata["architecture"] == "weighted_mean" and metadata["format_version"] == "3"


def test_int8_round_trip(tmp_path):
    model = tiny_model("int8")
    path = model.save(tmp_path / "m8")
    tensors, _ = load_safetensors(path / "model.safetensors")
    assert tensors["embeddings"].dtype == np.int8 and tensors["scales"].shape == (len(model.store),)
    assert json.loads((path / "config.json").read_text())["dtype"] == "int8"
    np.testing.assert_array_equal(vocabert.load(path).encode(TEXTS), model.encode(TEXTS))


def test_a_loaded_model_saved_elsewhere_keeps_listing_and_evaluation(saved, tmp_path):
    card = saved / "README.md"
    card.write_text(card.read_text().replace(NOT_EVALUATED, "| fidelity | 0.9 |"))
    copy = vocabert.load(saved).save(tmp_path / "copy")
    assert (copy / "vocabulary.tsv").read_text() == "entry\tcount\ncat\t3\n"
    assert "| fidelity | 0.9 |" in (copy / "README.md").read_text()


def test_overwriting_a_folder_keeps_its_evaluation_and_nothing_else(model, saved):
    from vocabert.bench.report import EVAL_END as BENCH_END
    from vocabert.bench.report import EVAL_START as BENCH_START
    from vocabert.bench.report import update_model_card

    assert (BENCH_START, BENCH_END) == (EVAL_START, EVAL_END)  # the bench fills the section the card keeps
    update_model_card(saved, "| model | cos |\n|---|---:|\n| tiny | 0.5 |")
    (saved / "stray.txt").write_text("left by someone")
    tiny_model(seed=1).save(saved)
    text = (saved / "README.md").read_text()
    assert text.count(EVAL_START) == 1 and "| tiny | 0.5 |" in text and NOT_EVALUATED not in text
    assert not (saved / "stray.txt").exists()
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]  # no temporary or old folder left
    np.testing.assert_allclose(vocabert.load(saved).encode(TEXTS), tiny_model(seed=1).encode(TEXTS), atol=1e-6)


def test_model_card(saved):
    card = (saved / "README.md").read_text()
    assert "example-org/tiny-teacher" in card and "base_model: example-org/tiny-teacher" in card
    assert "/home/builder" not in card  # the teacher by name, never a path of the machine that built it
    assert 'vocabert.load("path/to/this/folder")' in card
    assert 'SentenceTransformer("path/to/this/folder", trust_remote_code=True)' in card
    assert f"{len(WORDS) + len(PHRASES)} entries" in card and f"dimension {DIM}" in card and "16 tokens" in card
    assert "0.5000 (plain mean of the entry vectors) -> 0.7500" in card and "90 texts" in card
    assert card.count(EVAL_START) == 1 and card.index(EVAL_START) < card.index(NOT_EVALUATED) < card.index(EVAL_END)


def test_model_card_without_training_or_teacher_name(tmp_path):
    model = tiny_model()
    del model.config["training"], model.config["provenance"]["teacher_name"]
    card = (model.save(tmp_path / "m") / "README.md").read_text()
    assert "## Training" not in card and "base_model" not in card
    assert "`tiny-teacher`" in card and "/home/builder" not in card


def test_files_and_folder_get_the_modes_of_the_umask(model, tmp_path):
    old = os.umask(0o022)
    try:
        path = model.save(tmp_path / "shared")
        write_text(tmp_path / "note.txt", "x")
        save_safetensors(tmp_path / "t.safetensors", {"a": np.zeros(2, np.float32)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o755
    for f in [*path.iterdir(), tmp_path / "note.txt", tmp_path / "t.safetensors"]:
        assert f.stat().st_mode & 0o777 == 0o644, f
    os.umask(0o077)
    try:
        private = model.save(tmp_path / "private")
    finally:
        os.umask(old)
    assert private.stat().st_mode & 0o777 == 0o700 and (private / "model.safetensors").stat().st_mode & 0o777 == 0o600


def test_load_needs_no_torch(saved):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['sentence_transformers'] = None\n"
        "import vocabert\n"
        f"m = vocabert.load({str(saved)!r})\n"
        "print(m.encode(['the cat']).shape)\n"
        "assert 'transformers' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"(1, {DIM})" in out.stdout


# ------------------------------------------------------------------------------------ damaged folders


def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(VocabertError, match=match) as info:
        vocabert.load(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def _rewrite_tensors(folder: Path, change) -> None:
    """model.safetensors of ``folder`` after ``change(tensors)`` (a dict of writable arrays), metadata kept."""
    tensors, metadata = load_safetensors(folder / "model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items()}
    change(tensors)
    save_safetensors(folder / "model.safetensors", tensors, metadata)


def test_missing_folder(tmp_path):
    _one_line_error(tmp_path / "nope", "does not exist")


def test_a_file_is_no_model_folder(saved):
    for file in (saved / "model.safetensors", saved / "config.json"):
        assert "is a file, not a model folder" in _one_line_error(file, str(file))


def test_old_format_folder(saved):
    (saved / "model.safetensors").rename(saved / "embeddings.safetensors")
    save_safetensors(saved / "student.safetensors", {"entry_weight": np.ones(3, np.float32)})
    message = _one_line_error(saved, "older vocabert format")
    assert "vocabert train --force" in message and str(saved) in message


@pytest.mark.parametrize("missing", MODEL_FILES)
def test_missing_file(saved, missing):
    (saved / missing).unlink()
    _one_line_error(saved, missing)


@pytest.mark.parametrize("where", ["header", "data", "last byte"])
def test_truncated_model_safetensors(saved, where):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    cut = {"header": 20, "data": len(data) // 2, "last byte": len(data) - 1}[where]
    path.write_bytes(data[:cut])
    assert str(path) in _one_line_error(saved, "truncated")


def test_corrupt_model_safetensors(saved):
    path = saved / "model.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size=500).astype(np.uint8).tobytes())
    assert str(path) in _one_line_error(saved, "model weights")


def test_model_safetensors_without_a_network_tensor(saved):
    _rewrite_tensors(saved, lambda t: t.pop("student.bias"))
    _one_line_error(saved, "student.bias")


def test_network_that_does_not_fit_the_store(saved):
    _rewrite_tensors(saved, lambda t: t.update({"student.entry_weight": t["student.entry_weight"][:-1]}))
    _one_line_error(saved, "do not fit")


@pytest.mark.parametrize(
    "name, change",
    [
        ("entry_key", lambda v: v[:, 0, 0]),  # too few axes for (entries, heads, rank)
        ("entry_query", lambda v: v[:, :, :2]),  # a rank the keys do not have
        ("weight", lambda v: v[0]),
        ("mlp_in", lambda v: np.float32(1.0)),
        ("window_offset_bias", lambda v: v[:-1]),  # an odd length: no window of K on each side
        ("entry_window", lambda v: v[:, :3]),
        ("entry_context", lambda v: v[:-1]),
        ("context_in", lambda v: v[:, :-1]),  # does not read the heads' pooled vectors
        ("context_out", lambda v: v[:, :-1]),  # a rank the entries do not have
        ("special_out", lambda v: v[:, :-1]),
    ],
)
def test_context_pool_tensors_of_the_wrong_shape(tmp_path, name, change):
    folder = tiny_context_model(3, 5, heads=2, window=2, context=3, special_hidden=4).save(tmp_path / "m")
    _rewrite_tensors(folder, lambda t: t.update({f"student.{name}": np.asarray(change(t[f"student.{name}"]))}))
    assert name in _one_line_error(folder, "do not fit")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    "make, name",
    [
        (tiny_model, "embeddings"),  # float16: NaN and inf once became finite garbage
        (lambda: tiny_model("int8"), "scales"),
        (tiny_model, "student.entry_weight"),
        (tiny_model, "student.weight"),
        (lambda: tiny_context_model(3, 5, heads=2, window=2), "student.entry_key_scale"),
        (lambda: tiny_context_model(3, 5, heads=2, window=2), "student.mlp_out_bias"),
        (lambda: tiny_context_model(3, 5, heads=2, window=2), "student.entry_window"),
        (lambda: tiny_context_model(3, 5, heads=2, context=3), "student.entry_context_scale"),
    ],
)
def test_nan_or_infinite_weights_are_refused(tmp_path, make, name, value):
    folder = make().save(tmp_path / "m")

    def spoil(tensors):
        flat = tensors[name].reshape(-1)
        flat[len(flat) // 2] = value

    _rewrite_tensors(folder, spoil)
    assert f"tensor {name} holds NaN or infinite values" in _one_line_error(folder, "NaN or infinite")


def test_the_largest_finite_weights_are_kept(tmp_path):
    model = tiny_model()
    model.store.embeddings[3, 1] = np.finfo(np.float16).max
    model.store.embeddings[4, 2] = -np.finfo(np.float16).max
    model.store.embeddings[5, 0] = np.finfo(np.float16).smallest_subnormal
    model.network.t["bias"][0] = np.finfo(np.float32).max / 1e30
    assert np.isfinite(vocabert.load(model.save(tmp_path / "m")).encode(TEXTS)).all()


# ---------------------------------------------------------------------- attention keys and queries


def _as_older_folder(folder: Path, key: np.ndarray, query: np.ndarray) -> None:
    """``folder`` as format 2 wrote it, before int8 keys: float32 ``entry_key`` and ``entry_query``, no scales."""

    def older(tensors):
        for name, table in (("entry_key", key), ("entry_query", query)):
            tensors[f"student.{name}"] = np.asarray(table, dtype=np.float32)
            del tensors[f"student.{name}_scale"]

    _rewrite_tensors(folder, older)
    config = json.loads((folder / "config.json").read_text())
    write_text(folder / "config.json", json.dumps({**config, "format_version": 2}))


def test_keys_and_queries_are_stored_in_int8_and_read_memory_mapped(tmp_path):
    model = tiny_context_model(3, 5, heads=2)
    folder = model.save(tmp_path / "m")
    tensors, _ = load_safetensors(folder / "model.safetensors")
    for name in ("entry_key", "entry_query"):
        assert tensors[f"student.{name}"].dtype == np.int8
        assert tensors[f"student.{name}"].shape == (len(model.store), 2, 3)
        assert tensors[f"student.{name}_scale"].dtype == np.float32
        assert tensors[f"student.{name}_scale"].shape == (len(model.store),)
    again = vocabert.load(folder)
    for name in ("entry_key", "entry_query", "entry_key_scale", "entry_query_scale"):
        assert isinstance(again.network.t[name], np.memmap)  # a batch reads its own entries' rows only
    assert again.network.t["entry_key"].dtype == np.int8
    np.testing.assert_array_equal(again.encode(TEXTS), model.encode(TEXTS))  # the model holds them as it saves them


def test_an_older_folder_with_float32_keys_loads_and_encodes_as_before(tmp_path):
    """Keys and queries in float32 (folders written before int8): read as they are, memory-mapped, and the
    vectors are those of the float32 network; saved again, the folder has int8 keys, a tight tolerance off."""
    from vocabert.networks import ContextPool

    model = tiny_context_model(3, 5, heads=2)
    rng = np.random.default_rng(1)
    key, query = rng.normal(size=(2, len(model.store), 2, 3)).astype(np.float32)
    folder = model.save(tmp_path / "old")
    _as_older_folder(folder, key, query)
    old = vocabert.load(folder)
    assert old.network.t["entry_key"].dtype == np.float32 and isinstance(old.network.t["entry_key"], np.memmap)
    assert "entry_key_scale" not in old.network.t
    stored = {k: v for k, v in model.network.tensors().items() if not k.endswith("_scale")}
    as_before = ContextPool.from_tensors({**stored, "entry_key": key, "entry_query": query})
    assert as_before.t["entry_key"] is key  # as stored: float32, no copy, no quantization
    expected = StudentModel(model.config, model.tokenizer_text, model.store, as_before).encode(TEXTS)
    np.testing.assert_array_equal(old.encode(TEXTS), expected)

    resaved = vocabert.load(old.save(tmp_path / "new"))
    assert resaved.network.t["entry_key"].dtype == np.int8
    cosine = np.einsum("ij,ij->i", resaved.encode(TEXTS), expected)
    assert cosine.min() > 0.9999 and not np.array_equal(resaved.encode(TEXTS), expected)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda t: t.pop("student.entry_key_scale"), "an int8 entry_key needs a float32 entry_key_scale"),
        (lambda t: t.update({"student.entry_query_scale": np.ones(3, np.float32)}), "entry_query_scale has shape"),
        (
            lambda t: t.update({"student.entry_key_scale": t["student.entry_key_scale"].astype(np.float16)}),
            "entry_key_scale must be float32",
        ),
        (
            lambda t: t.update({"student.entry_key": t["student.entry_key"].astype(np.int32)}),
            "entry_key must be float32, float16 or int8",
        ),
    ],
)
def test_int8_keys_without_their_scales(tmp_path, change, match):
    folder = tiny_context_model(3, 5, heads=2).save(tmp_path / "m")
    _rewrite_tensors(folder, change)
    _one_line_error(folder, match)


def test_int8_keys_stay_within_a_tight_tolerance_of_float32_on_real_texts(workspace, tmp_path):
    """The small real model of the session (keys and queries as trained, then quantized), its tables moved off
    the int8 grid by up to half a step each (what a float32 table fresh from training is to the quantizer) and
    written as an older, float32 folder; saved again by today's code, in int8: on real passages and queries the
    vectors stay within a tight tolerance of the float32 ones."""
    from vocabert.distill.corpus import open_corpus

    trained = vocabert.load(workspace.model_dir)
    rng = np.random.default_rng(0)
    net, every = trained.network, np.arange(len(trained.store))
    key, query = (
        net.entry_rows(name, every)
        + rng.uniform(-0.5, 0.5, size=net.t[name].shape).astype(np.float32) * net.t[f"{name}_scale"][:, None, None]
        for name in ("entry_key", "entry_query")
    )
    folder = trained.save(tmp_path / "fp32")
    _as_older_folder(folder, key, query)
    fp32 = vocabert.load(folder)
    int8 = vocabert.load(fp32.save(tmp_path / "int8"))
    assert fp32.network.t["entry_key"].dtype == np.float32 and int8.network.t["entry_key"].dtype == np.int8
    corpus = open_corpus(workspace)
    texts = corpus.texts("heldout", "passages")[:200] + corpus.texts("heldout", "queries")[:200]
    a, b = fp32.encode(texts), int8.encode(texts)
    cosine = np.einsum("ij,ij->i", a, b)
    assert cosine.min() > 0.9995 and cosine.mean() > 0.99995, (cosine.min(), cosine.mean())
    assert np.abs(a - b).max() < 0.01


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda t: t.update(patterns=t["patterns"].astype(np.float32)), "patterns must be token ids"),
        (lambda t: t.update(patterns=t["patterns"][:, :0]), "patterns must be token ids"),
        (lambda t: t.update(patterns=t["patterns"].reshape(-1)), "shapes do not fit"),
        (lambda t: t["patterns"].__setitem__((3, 0), len(VOCAB)), f"holds {len(VOCAB)}, not a token id"),
        (lambda t: t["patterns"].__setitem__((3, 1), -3), "holds -3, not a token id"),
        (lambda t: t.update(embeddings=t["embeddings"].astype(np.int32)), "embeddings must be float16"),
        (lambda t: t.update(embeddings=t["embeddings"][:, :-1]), "says dim 8"),
        (lambda t: t.update(scales=np.ones(len(t["embeddings"]), np.float32)), "int8 embeddings need"),
    ],
)
def test_entry_tensors_that_do_not_fit(saved, change, match):
    _rewrite_tensors(saved, change)
    _one_line_error(saved, match)


def test_int8_entries_without_float32_scales(tmp_path):
    folder = tiny_model("int8").save(tmp_path / "m")
    _rewrite_tensors(folder, lambda t: t.update(scales=t["scales"].astype(np.float16)))
    _one_line_error(folder, "scales must be float32")
    _rewrite_tensors(folder, lambda t: t.pop("scales"))
    _one_line_error(folder, "int8 embeddings need")


def test_tokenizer_of_another_vocabulary(model, saved):
    spec = json.loads(tokenizer_text())
    spec["model"]["vocab"]["cat"], spec["model"]["vocab"]["dog"] = VOCAB["dog"], VOCAB["cat"]
    (saved / "tokenizer.json").write_text(json.dumps(spec))
    message = _one_line_error(saved, "tokenizer")
    assert model.config["provenance"]["tokenizer"] in message
    (saved / "tokenizer.json").write_text("{broken")
    _one_line_error(saved, "not valid JSON")
    (saved / "tokenizer.json").write_bytes(b'{"a": "\xff"}')
    _one_line_error(saved, "not valid JSON")
    (saved / "tokenizer.json").write_text("[1, 2]")
    _one_line_error(saved, "not a tokenizer")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: c.pop("vocab_size"), "lacks 'vocab_size'"),
        (lambda c: c.pop("dim"), "lacks 'dim'"),
        (lambda c: c.pop("entries"), "lacks 'entries'"),
        (lambda c: c.pop("provenance"), "lacks 'provenance'"),
        (lambda c: c.pop("architecture"), "lacks 'architecture'"),
        (lambda c: c.update(max_length="long"), "'max_length' must be an integer"),
        (lambda c: c.update(max_length=1), "'max_length' must be an integer of at least 2"),
        (lambda c: c.update(max_length=16.0), "'max_length' must be an integer"),
        (lambda c: c.update(vocab_size=True), "'vocab_size' must be a positive integer, not true"),
        (lambda c: c.update(vocab_size=0), "'vocab_size' must be a positive integer"),
        (lambda c: c.update(vocab_size=5), "not a token id of the vocabulary"),
        (lambda c: c.update(dim=-8), "'dim' must be a positive integer, not -8"),
        (lambda c: c.update(dim="8"), "'dim' must be a positive integer"),
        (lambda c: c.update(dim=16), "says dim 16, but"),
        (lambda c: c.update(entries=3), "says entries 3, but"),
        (lambda c: c.update(dtype="int8"), "says dtype int8, but"),
        (lambda c: c.update(dtype=8), "'dtype' must be a string"),
        (lambda c: c.update(provenance=["x" * 100]), "'provenance' must be a JSON object, not"),
        (lambda c: c.update(architecture=["weighted_mean"]), "'architecture' must be a string"),
        (lambda c: c.update(architecture="transformer"), "unknown architecture"),
        (lambda c: c.update(format_version=99), "newer vocabert"),
        (lambda c: c.update(format_version="2"), "'format_version' must be a positive integer"),
        (lambda c: c.update(prompts=["query: "]), "'prompts' must be a JSON object of strings"),
    ],
)
def test_bad_config(saved, change, match):
    config = json.loads((saved / "config.json").read_text())
    change(config)
    (saved / "config.json").write_text(json.dumps(config))
    _one_line_error(saved, match)


def test_config_that_is_not_json(saved):
    (saved / "config.json").write_text("[1, 2")
    _one_line_error(saved, "not valid JSON")
    (saved / "config.json").write_text("[1, 2]")
    _one_line_error(saved, "not a JSON object")


# ---------------------------------------------------------------------------------- sentence-transformers


@pytest.fixture(scope="module")
def sentence_transformer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return pytest.importorskip("sentence_transformers").SentenceTransformer


def test_sentence_transformers_gives_the_same_vectors(sentence_transformer, model, saved):
    st = sentence_transformer(str(saved), trust_remote_code=True, device="cpu")
    expected = model.encode(TEXTS)
    np.testing.assert_allclose(st.encode(TEXTS), expected, atol=1e-6)
    np.testing.assert_allclose(st.encode(TEXTS, batch_size=2), expected, atol=1e-6)
    np.testing.assert_allclose(st.encode(TEXTS[1]), expected[1], atol=1e-6)
    assert st.get_embedding_dimension() == DIM and st.max_seq_length == 16
    assert float(st.similarity(st.encode(TEXTS[:1]), st.encode(TEXTS[:1]))) == pytest.approx(1.0, abs=1e-5)
    assert "entries=" in repr(st[0])


def test_sentence_transformers_save_reloads_in_both(sentence_transformer, model, saved, tmp_path):
    st = sentence_transformer(str(saved), trust_remote_code=True, device="cpu")
    st.save(str(tmp_path / "resaved"))
    np.testing.assert_array_equal(vocabert.load(tmp_path / "resaved").encode(TEXTS), model.encode(TEXTS))
    again = sentence_transformer(str(tmp_path / "resaved"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(again.encode(TEXTS), model.encode(TEXTS), atol=1e-6)


def test_sentence_transformers_asks_to_trust_vocabert(sentence_transformer, saved):
    # sentence-transformers >= 6 imports no module class outside its own package without the flag.
    with pytest.raises(ValueError, match="trust_remote_code"):
        sentence_transformer(str(saved), device="cpu")
