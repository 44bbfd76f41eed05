"""The pipeline end to end on real data slices, the model API, and bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_MINE, SMALL_TRAIN
from fixtures import assert_store_vectors_close

import vocabert
from vocabert.artifacts import VocabertError
from vocabert.cli import main
from vocabert.distill.corpus import CorpusSettings, open_corpus, run_corpus
from vocabert.distill.embedding import EmbedSettings, isolated_vectors, run_embedding, teacher_texts
from vocabert.distill.engine import LocalEngine
from vocabert.distill.mining import run_mining
from vocabert.distill.pipeline import build_model
from vocabert.distill.teacher_pass import open_teacher_pass
from vocabert.distill.training import run_training
from vocabert.distill.workspace import Workspace, read_manifest
from vocabert.store import VocabularyStore
from vocabert.tokenizer import tokenizer_layout

# ------------------------------------------------------------------------------------- model API


def test_encode_shape_dtype_and_norm(model):
    texts = ["how long do cats live", "what is the capital of france", "the side effects of ibuprofen"]
    out = model.encode(texts)
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert model.encode(texts[0]).shape == (384,)
    # Batching does not change the result.
    np.testing.assert_allclose(model.encode(texts, batch_size=1), out, atol=1e-6)


def test_student_is_close_to_teacher_on_heldout(workspace, model):
    from vocabert.bench.metrics import fidelity

    texts = open_corpus(workspace).texts("heldout", "passages")
    assert len(texts) >= 20
    target = workspace.teacher_cache().encode(texts, workspace.teacher().encode)
    result = fidelity(model.encode(texts), target)
    # A 400-passage slice is far from the full run; this guards against a broken pipeline (random ~0.0-0.3).
    assert result["cosine_mean"] > 0.6, result


def test_threads_micro_batches_and_batch_sizes_give_the_same_vectors(model, small_data, monkeypatch):
    from vocabert import model as model_module
    from vocabert.readers import read_texts

    texts = [t for _, t in read_texts(small_data["passages"])][:150] + ["", "a b"]
    model.threads = 1
    expected = model.encode(texts, batch_size=64)
    try:
        model.threads = 2
        np.testing.assert_allclose(model.encode(texts, batch_size=64), expected, atol=1e-6)
        np.testing.assert_allclose(model.encode(texts, batch_size=1000), expected, atol=1e-6)
        np.testing.assert_allclose(model.encode(texts[:40], batch_size=1), expected[:40], atol=1e-6)
        monkeypatch.setattr(model_module, "MICRO_BATCH", 5)
        np.testing.assert_allclose(model.encode(texts, batch_size=64), expected, atol=1e-6)
    finally:
        model.threads = model_module.available_cores()


def test_empty_and_whitespace_texts_get_finite_vectors(model):
    out = model.encode(["", "   ", "\n\t", "word"])
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # nothing but [CLS] [SEP] in both
    assert model.encode([]).shape == (0, 384)


def test_long_text_is_truncated_like_the_teacher(model):
    words = " ".join(f"word{i}" for i in range(2000))
    ids = model.tokenizer.encode(words).ids
    assert len(ids) == model.config["max_length"]
    cut = model.tokenizer.decode(ids[1:-1])
    np.testing.assert_allclose(model.encode([words]), model.encode([cut]), atol=1e-5)


def test_surrogates_and_odd_unicode(model):
    texts = ["caf\udce9 au lait", "Ã¢Â€Â™ mojibake", "\x00\x01 control", "emoji 🙂 text"]
    out = model.encode(texts)
    assert np.isfinite(out).all() and out.shape == (4, 384)


def test_encode_rejects_non_strings(model):
    with pytest.raises(TypeError):
        model.encode(["ok", None])


def test_save_load_roundtrip(model, tmp_path):
    model.save(tmp_path / "copy")
    again = vocabert.load(tmp_path / "copy")
    texts = ["new york city hotels", "how much does a plumber cost"]
    np.testing.assert_array_equal(again.encode(texts), model.encode(texts))
    for name in (
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "vocabulary.tsv",
        "README.md",
        "modules.json",
        "config_sentence_transformers.json",
    ):
        assert (tmp_path / "copy" / name).is_file()


def test_sentence_transformers_loads_the_model(workspace, model):
    from sentence_transformers import SentenceTransformer

    texts = ["how long do cats live", "the side effects of ibuprofen", "", "new york city hotels " * 100]
    st = SentenceTransformer(str(workspace.model_dir), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(st.encode(texts), model.encode(texts), atol=1e-5)
    assert st.get_embedding_dimension() == 384 and st.max_seq_length == model.config["max_length"]


def test_model_card_names_the_teacher_not_its_path(workspace):
    card = (workspace.model_dir / "README.md").read_text()
    assert "sentence-transformers/all-MiniLM-L6-v2" in card
    assert str(workspace.teacher_path) not in card and "site-packages" not in card
    assert "<!-- vocabert-eval-start -->" in card and "## Training" in card


def test_load_and_encode_without_torch(workspace):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['sentence_transformers'] = None\n"
        "import vocabert\n"
        f"m = vocabert.load({str(workspace.model_dir)!r})\n"
        "print(m.encode(['hello world']).shape)\n"
        "assert 'transformers' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(1, 384)" in out.stdout


# -------------------------------------------------------------------------------- teacher & cache


def test_tokenizer_matches_sentence_transformers(workspace, model):
    teacher = workspace.teacher()
    texts = ["Hello, World!", "The U.S. economy grew 3.2% in Q4 — café", "x " * 400]
    features = teacher.model.tokenize(texts)
    for i, text in enumerate(texts):
        expected = features["input_ids"][i][features["attention_mask"][i].bool()].tolist()
        assert model.tokenizer.encode(text).ids == expected


def test_teacher_forward_matches_encode(workspace):
    teacher = workspace.teacher()
    texts = ["a short query", "a somewhat longer passage about the history of the roman empire"]
    sentences, ids, vectors = teacher.forward(texts)
    np.testing.assert_allclose(sentences, teacher.encode(texts), atol=1e-5)
    for v, s in zip(vectors, sentences, strict=True):  # mean pooling + normalize, as sentence-transformers
        mean = v.mean(axis=0)
        np.testing.assert_allclose(mean / np.linalg.norm(mean), s, atol=1e-5)


def test_teacher_cache_is_used(workspace, tmp_path):
    from vocabert.distill.cache import EmbeddingCache

    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.ones((len(texts), 4), dtype=np.float32) * np.arange(len(texts))[:, None]

    cache = EmbeddingCache(tmp_path, "m", 4)
    first = cache.encode(["a", "b", "a"], encode)
    assert calls == [["a", "b"]]
    again = EmbeddingCache(tmp_path, "m", 4).encode(["b", "a"], encode)
    assert len(calls) == 1
    np.testing.assert_array_equal(again, first[[1, 0]])


def test_teacher_name_sources(tmp_path):
    from vocabert.distill.teacher import teacher_name

    folder = tmp_path / "my-teacher"
    folder.mkdir()
    assert teacher_name(folder) == "my-teacher"  # nothing to go by: the folder's name
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "org/plain-bert"}))
    assert teacher_name(folder) == "org/plain-bert"
    (folder / "modules.json").write_text("[]")  # a sentence-transformers folder: that is the model it came from
    assert teacher_name(folder) == "my-teacher"
    (folder / "README.md").write_text(
        "---\nbase_model: org/base\n---\n```python\nmodel = SentenceTransformer('sentence_transformers_model_id')\n"
        'model = SentenceTransformer("org/sentence-model")\n```\n'
    )
    assert teacher_name(folder) == "org/sentence-model"
    cached = tmp_path / "hub" / "models--org--cached-model" / "snapshots" / "0123abcd"
    cached.mkdir(parents=True)
    assert teacher_name(cached) == "org/cached-model"


# ---------------------------------------------------------------------------------------- stages


def test_finished_stages_are_not_redone(workspace, small_data, capsys):
    before = (workspace.model_dir / "model.safetensors").stat().st_mtime_ns
    build_model(workspace, small_data, mine=SMALL_MINE, train=SMALL_TRAIN)
    out = capsys.readouterr().out
    # mine, the teacher pass, the store and train (corpus is quiet when current)
    assert out.count("is up to date") == 4, out
    assert (workspace.model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_artifacts_record_provenance(workspace):
    prov = workspace.provenance
    assert prov["teacher_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    dirs = (workspace.corpus_dir, workspace.vocab_dir, workspace.teacher_dir, workspace.store_dir, workspace.model_dir)
    for directory in dirs:
        manifest = json.loads((directory / "manifest.json").read_text())
        assert manifest["key"]["provenance"]["tokenizer"] == prov["tokenizer"], directory
        assert manifest["key"]["provenance"]["teacher"] == prov["teacher"], directory
    config = json.loads((workspace.model_dir / "config.json").read_text())
    assert config["provenance"] == prov


def test_training_reads_only_the_work_directory(workspace, tmp_path):
    """Targets live in the work directory: an empty user cache does not stop training."""
    ws = Workspace(tmp_path / "copy", None, cache_dir=tmp_path / "empty-cache", show_progress_bar=False)
    shutil.copytree(workspace.root, ws.root)
    run_training(ws, SMALL_TRAIN, force=True)
    assert not (tmp_path / "empty-cache").exists()
    assert vocabert.load(ws.model_dir).encode(["a query"]).shape == (1, 384)


def test_teacher_pass_matches_the_teacher(workspace):
    passed = open_teacher_pass(workspace)
    corpus = open_corpus(workspace)
    texts = [t for shard, _, _ in teacher_texts(corpus, EmbedSettings().teacher_share) for t in shard.texts]
    assert len(passed) == len(texts) and sorted(passed.text_index.tolist()) == list(range(len(texts)))
    sample = np.arange(0, len(texts), 37)
    row_of = np.argsort(passed.text_index)
    expected = workspace.teacher().encode([texts[i] for i in sample])
    np.testing.assert_allclose(np.asarray(passed.targets[row_of[sample]]), expected, atol=1e-4)
    tokens = passed.token_offsets[row_of[sample] + 1] - passed.token_offsets[row_of[sample]]
    assert tokens.tolist() == [len(workspace.teacher().model.tokenize([texts[i]])["input_ids"][0]) for i in sample]


def test_isolated_entry_vectors(workspace, tmp_path):
    """--entry-vectors isolated: every entry's vector is the teacher's of the entry alone."""
    ws = Workspace(tmp_path / "copy", None, cache_dir=tmp_path / "cache", show_progress_bar=False)
    shutil.copytree(workspace.root, ws.root)
    contextual = VocabularyStore.load(ws.store_dir / "embeddings.safetensors").vectors(np.arange(40))
    store = run_embedding(ws, EmbedSettings(entry_vectors="isolated"), LocalEngine())
    assert read_manifest(ws.store_dir, "store")["isolated"] == len(store)
    layout = tokenizer_layout(ws.tokenizer_text)
    sample = np.arange(40)
    patterns = np.asarray(store.patterns)[sample]
    expected = isolated_vectors(workspace.teacher(), patterns, list(layout.prefix), list(layout.suffix), layout.filler)
    assert_store_vectors_close(store.vectors(sample), expected)
    assert not np.allclose(store.vectors(sample), contextual, atol=2e-3)
    with pytest.raises(VocabertError, match="contextual or isolated"):
        run_embedding(ws, EmbedSettings(entry_vectors="alone"), LocalEngine())


def test_teacher_sources_restrict_the_teacher_pass(workspace, tmp_path):
    """--teacher-sources queries: the pass holds the queries of the full pass, and only them."""
    ws = Workspace(tmp_path / "copy", None, cache_dir=tmp_path / "cache", show_progress_bar=False)
    shutil.copytree(workspace.root, ws.root)
    full = open_teacher_pass(workspace)
    corpus = open_corpus(ws)
    settings = EmbedSettings(teacher_sources=("queries",))
    run_embedding(ws, settings, LocalEngine(), pass_only=True)
    passed = open_teacher_pass(ws)
    keys = [k for _, _, shard_keys in teacher_texts(corpus, settings.teacher_share) for k in shard_keys]
    chosen = [k for k in keys if k.startswith("queries:")]
    assert 0 < len(passed) == len(chosen) < len(full)
    assert read_manifest(ws.teacher_dir, "teacher pass")["key"]["settings"]["teacher_sources"] == ["queries"]
    # The same texts get the same targets as in the pass over every source.
    row_of_full = {keys[i]: r for r, i in enumerate(full.text_index)}
    rows = [row_of_full[chosen[i]] for i in passed.text_index]
    np.testing.assert_allclose(np.asarray(passed.targets), np.asarray(full.targets[rows]), atol=1e-4)
    with pytest.raises(VocabertError, match="unknown teacher source.*glossary.*passages"):
        run_embedding(ws, EmbedSettings(teacher_sources=("glossary",)), LocalEngine(), pass_only=True)


@pytest.fixture
def other_teacher(tmp_path) -> Path:
    """A teacher folder whose tokenizer differs (two vocabulary entries swapped)."""
    from vocabert.distill.teacher import resolve_teacher_path

    src = resolve_teacher_path(None)
    dst = tmp_path / "other-teacher"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    os.symlink(src / "model.safetensors", dst / "model.safetensors")
    spec = json.loads((src / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["cat"], vocab["dog"] = vocab["dog"], vocab["cat"]
    (dst / "tokenizer.json").write_text(json.dumps(spec))
    return dst


def test_stage_refuses_vocabulary_of_another_tokenizer(workspace, other_teacher, tmp_path):
    ws = Workspace(workspace.root, other_teacher, cache_dir=tmp_path / "cache", show_progress_bar=False)
    with pytest.raises(VocabertError) as e:
        run_embedding(ws, EmbedSettings(), LocalEngine())
    message = str(e.value)
    assert workspace.provenance["tokenizer"] in message and ws.provenance["tokenizer"] in message


def test_model_with_another_tokenizer_is_refused(model, other_teacher, tmp_path):
    model.save(tmp_path / "m")
    shutil.copy(other_teacher / "tokenizer.json", tmp_path / "m" / "tokenizer.json")
    with pytest.raises(VocabertError, match="tokenizer"):
        vocabert.load(tmp_path / "m")


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "model.safetensors"])
def test_model_missing_a_file(model, tmp_path, missing):
    model.save(tmp_path / "m")
    (tmp_path / "m" / missing).unlink()
    with pytest.raises(VocabertError, match=missing):
        vocabert.load(tmp_path / "m")


def test_model_with_truncated_safetensors(model, tmp_path):
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VocabertError, match="truncated"):
        vocabert.load(tmp_path / "m")


def test_killed_teacher_pass_loses_at_most_one_checkpoint(workspace, small_data, tmp_path):
    """kill -9 in the middle of the teacher pass (checkpointing after every batch here): the rerun resumes
    after the last checkpoint and ends with the same targets and entry vectors as an uninterrupted pass."""
    ws = Workspace(tmp_path / "work", None, cache_dir=tmp_path / "cache", show_progress_bar=False)
    run_corpus(ws, small_data, CorpusSettings())
    run_mining(ws, SMALL_MINE, LocalEngine())
    batch = 8
    command = [sys.executable, "-m", "vocabert.cli", "embed", "--workdir", str(ws.root), "--no-progress"]
    command += ["--cache-dir", str(tmp_path / "cache"), "--teacher-batch-size", str(batch)]
    env = _env() | {"VOCABERT_CHECKPOINT_SECONDS": "0"}
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    progress = ws.teacher_dir / "progress.npz"

    def durable() -> int:
        try:
            with np.load(progress) as z:
                return int(z["done"].sum()) * batch
        except (OSError, ValueError, KeyError, EOFError):
            return 0

    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            if durable() >= 4 * batch:
                break
            time.sleep(0.02)
        assert child.poll() is None, f"the pass ended before it could be killed: {child.stderr.read()}"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    done = durable()
    assert done >= 4 * batch and not (ws.teacher_dir / "manifest.json").exists()

    result = _cli(
        "embed",
        "--workdir",
        str(ws.root),
        "--no-progress",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--teacher-batch-size",
        str(batch),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    resumed_at = int(re.search(r"resuming the teacher pass after (\d+) texts", result.stdout).group(1))
    assert resumed_at >= done  # nothing the killed run made durable is computed again

    resumed, reference = open_teacher_pass(ws), open_teacher_pass(workspace)
    assert len(resumed) == len(reference)
    a, b = np.argsort(resumed.text_index), np.argsort(reference.text_index)
    np.testing.assert_allclose(np.asarray(resumed.targets)[a], np.asarray(reference.targets)[b], atol=1e-4)
    np.testing.assert_array_equal(np.diff(resumed.token_offsets)[a], np.diff(reference.token_offsets)[b])
    same = VocabularyStore.load(ws.store_dir / "embeddings.safetensors")  # the entry sums counted each batch once
    expected = VocabularyStore.load(workspace.store_dir / "embeddings.safetensors")
    if len(same) == len(expected) and np.array_equal(np.asarray(same.patterns), np.asarray(expected.patterns)):
        assert_store_vectors_close(same.vectors(np.arange(len(same))), expected.vectors(np.arange(len(same))))


# ------------------------------------------------------------------------------------------- CLI


def test_cli_help_for_every_command(capsys):
    for command in ("corpus", "mine", "embed", "train", "encode", "evaluate", "bench", "run"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        assert command in capsys.readouterr().out


def test_cli_encode_file(workspace, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\nsecond text\n\nthird\n")
    out = tmp_path / "out.npy"
    assert (
        main(
            [
                "encode",
                "--model",
                str(workspace.model_dir),
                "--input",
                str(texts),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    vectors = np.load(out)
    assert vectors.shape == (4, 384)  # one row per line: the blank line is the empty text's


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vocabert.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=_env()
    )


@pytest.mark.parametrize("content", ["", "no tab on this line\n", "\n\n   \n"])
def test_cli_bad_corpus_input_is_one_clear_line(tmp_path, content):
    bad = tmp_path / "bad.tsv"
    bad.write_text(content)
    result = _cli("corpus", "--workdir", str(tmp_path / "w"), "--passages", str(bad), "--no-progress", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("vocabert: error:") and "bad.tsv" in result.stderr


def test_cli_missing_inputs(tmp_path):
    result = _cli("corpus", "--workdir", str(tmp_path / "w"), "--passages", str(tmp_path / "nope.tsv"), cwd=tmp_path)
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = _cli("encode", "--model", str(tmp_path / "nomodel"), "--input", "x", "--output", "y.npy", cwd=tmp_path)
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = _cli("mine", "--workdir", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_cli_missing_data_dir_names_msmarco(tmp_path):
    result = _cli("corpus", "--workdir", str(tmp_path / "w"), "--data-dir", str(tmp_path / "nodata"), cwd=tmp_path)
    assert result.returncode == 1 and "MS MARCO" in result.stderr and "Traceback" not in result.stderr


def test_cli_encode_bad_paths_are_one_line(workspace, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model = str(workspace.model_dir)
    # An output folder that cannot be created (a file stands where a folder should be).
    out = str(blocker / "out.npy")
    result = _cli("encode", "--model", model, "--input", str(texts), "--output", out, "--no-progress", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "a-file" in result.stderr and "cannot create" in result.stderr
    # A directory as input says so, and says nothing about MS MARCO.
    result = _cli(
        "encode", "--model", model, "--input", str(tmp_path), "--output", str(tmp_path / "o.npy"), cwd=tmp_path
    )
    assert result.returncode == 1 and "is a directory" in result.stderr
    assert "MS MARCO" not in result.stderr and "Traceback" not in result.stderr


def test_cli_encode_warns_about_invalid_utf8_and_refuses_binary(workspace, tmp_path):
    model = str(workspace.model_dir)
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes(b"good line\nbad \xff\xfe byte\nanother good one\ncaf\xe9\n")
    result = _cli("encode", "--model", model, "--input", str(mixed), "--output", str(tmp_path / "m.npy"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 line(s) were not valid UTF-8" in result.stderr
    assert np.load(tmp_path / "m.npy").shape == (4, 384)
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    result = _cli("encode", "--model", model, "--input", str(binary), "--output", str(tmp_path / "b.npy"), cwd=tmp_path)
    assert result.returncode == 1 and "looks binary" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "b.npy").exists()


def test_run_with_semantic_selection_reads_the_teacher_pass(workspace, small_data, tmp_path):
    """`vocabert run --select semantics`: the teacher pass first (here current: copied), then mining by the
    error the phrases remove, then the store and the student from that vocabulary."""
    import dataclasses

    from vocabert.distill.vocabulary import CHOSEN_SEMANTICS, KIND_TOKEN, Vocabulary

    ws = Workspace(tmp_path / "work", None, cache_dir=tmp_path / "cache", show_progress_bar=False)
    for stage in ("corpus", "teacher"):
        shutil.copytree(workspace.root / stage, ws.root / stage)
    mine = dataclasses.replace(SMALL_MINE, select="semantics")
    build_model(ws, small_data, mine=mine, train=dataclasses.replace(SMALL_TRAIN, epochs=1))
    vocab = Vocabulary.load(ws.vocab_dir)
    phrases = vocab.kind != KIND_TOKEN
    assert phrases.any() and (vocab.chosen[phrases] == CHOSEN_SEMANTICS).all()
    assert "semantics: error removed" in (ws.vocab_dir / "vocabulary.tsv").read_text(encoding="utf-8")
    assert (ws.model_dir / "model.safetensors").is_file()
