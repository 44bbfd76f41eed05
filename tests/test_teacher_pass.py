"""The teacher pass in bounded disk and memory: a bounded token sample, entry sums added up while the teacher
runs (and again for a new vocabulary), training that streams from the work directory, the teacher's device."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_MINE
from fixtures import assert_store_vectors_close

from vocabert.artifacts import VocabertError
from vocabert.distill import training
from vocabert.distill.corpus import open_corpus
from vocabert.distill.embedding import EmbedSettings, run_embedding, token_count
from vocabert.distill.engine import LocalEngine
from vocabert.distill.mining import run_mining
from vocabert.distill.teacher import Teacher
from vocabert.distill.teacher_pass import FileArray, TeacherPass, open_teacher_pass
from vocabert.distill.training import train_student, training_data
from vocabert.distill.vocabulary import open_store
from vocabert.distill.workspace import Workspace, read_manifest

SAMPLE = 700  # tokens: a fraction of the small run's


def _copy(workspace: Workspace, root, *stages: str) -> Workspace:
    ws = Workspace(root, None, cache_dir=root.parent / f"cache-{root.name}", show_progress_bar=False)
    for stage in stages:
        shutil.copytree(workspace.root / stage, ws.root / stage)
    return ws


@pytest.fixture(scope="module")
def sampled(workspace, tmp_path_factory) -> Workspace:
    """The small run's corpus and vocabulary, with a teacher pass that keeps a bounded token sample."""
    ws = _copy(workspace, tmp_path_factory.mktemp("sampled") / "work", "corpus", "vocab")
    run_embedding(ws, EmbedSettings(token_sample=SAMPLE), LocalEngine())
    return ws


def _rows_by_text(passed: TeacherPass) -> np.ndarray:
    return np.argsort(passed.text_index)


def test_the_token_sample_is_bounded_and_holds_the_teachers_vectors(sampled, workspace):
    passed, full = open_teacher_pass(sampled), open_teacher_pass(workspace)
    assert full.every_token_sampled and not passed.every_token_sampled  # the default keeps all of a small run's
    assert 0.5 * SAMPLE < len(passed.token_vectors) <= SAMPLE
    assert read_manifest(sampled.teacher_dir, "teacher pass")["sampled_tokens"] == len(passed.token_vectors)
    np.testing.assert_array_equal(passed.token_ids, full.token_ids)  # only the vectors are sampled
    np.testing.assert_allclose(np.asarray(passed.targets), np.asarray(full.targets), atol=1e-5)
    seen = 0
    for texts, ids, offsets, vectors in passed.sampled_chunks(texts_per_chunk=7):
        for i, text in enumerate(texts):
            lo, hi = full.token_offsets[text], full.token_offsets[text + 1]
            np.testing.assert_array_equal(ids[offsets[i] : offsets[i + 1]], full.token_ids[lo:hi])
            np.testing.assert_allclose(vectors[offsets[i] : offsets[i + 1]], full.token_vectors[lo:hi], atol=2e-3)
            seen += 1
    assert seen == len(passed.sampled) > 0


def test_entry_vectors_do_not_depend_on_the_sample(sampled, workspace):
    """Added up while the teacher ran, the entry sums cover every token, whatever the sample keeps."""
    found, _ = open_store(sampled)
    expected, _ = open_store(workspace)
    every = np.arange(len(expected))
    assert_store_vectors_close(found.vectors(every), expected.vectors(every))
    np.testing.assert_array_equal(
        np.load(sampled.store_dir / "occurrences.npy"), np.load(workspace.store_dir / "occurrences.npy")
    )


def test_a_new_vocabulary_gets_its_entry_sums_without_a_new_pass(sampled, workspace, tmp_path, capsys):
    """Mined again, the vocabulary changes: with a sampled pass the teacher runs over the texts once more for
    the new entries' sums (the pass itself stays: same manifest); with every token kept they come from disk.
    Both give the same vectors."""
    mine = replace(SMALL_MINE, budget=SMALL_MINE.budget // 2)
    ws = _copy(sampled, tmp_path / "sampled", "corpus", "vocab", "teacher")
    reference = _copy(workspace, tmp_path / "full", "corpus", "vocab", "teacher")
    manifest = (ws.teacher_dir / "manifest.json").read_bytes()
    for w in (ws, reference):
        run_mining(w, mine, LocalEngine(), force=True)
    capsys.readouterr()
    found = run_embedding(ws, EmbedSettings(token_sample=SAMPLE), LocalEngine())
    assert "runs over its texts again" in capsys.readouterr().out
    assert (ws.teacher_dir / "manifest.json").read_bytes() == manifest  # the pass was not redone
    expected = run_embedding(reference, EmbedSettings(), LocalEngine())
    assert "token vectors (it kept every token's)" in capsys.readouterr().out
    every = np.arange(len(expected))
    assert len(found) == len(expected) < len(open_store(workspace)[0])
    assert_store_vectors_close(found.vectors(every), expected.vectors(every))


def test_streaming_training_equals_training_in_memory(workspace, tmp_path, monkeypatch):
    """Matches on disk and targets in the teacher pass, read a batch at a time with pread (so that the
    resident memory stays bounded): the same student as with everything in memory."""
    passed = open_teacher_pass(workspace)
    store, _ = open_store(workspace)
    vocab_size = int(read_manifest(workspace.corpus_dir, "corpus")["vocab_size"])
    in_memory = training_data(passed, store, vocab_size)
    in_memory.targets = np.array(in_memory.targets)
    streamed = training_data(passed, store, vocab_size, tmp_path)
    assert isinstance(streamed.entries, FileArray) and isinstance(streamed.targets, FileArray)
    assert not isinstance(in_memory.entries, FileArray)
    np.testing.assert_array_equal(streamed.ptr, in_memory.ptr)
    np.testing.assert_array_equal(np.asarray(streamed.entries), in_memory.entries)
    monkeypatch.setattr(training, "REMAP_STEPS", 3)
    settings = {"epochs": 2, "batch_size": 64, "show_progress_bar": False}
    _, _, a = train_student(in_memory, store, **settings)
    _, _, b = train_student(streamed, store, **settings)
    assert isinstance(streamed.targets, FileArray)  # still the file
    for x, y in zip(a["epochs"], b["epochs"], strict=True):  # every epoch: here the best is the untrained mean
        assert abs(x["val_cosine"] - y["val_cosine"]) < 1e-5 and abs(x["train_loss"] - y["train_loss"]) < 1e-5


def test_float16_targets_stay_within_a_rounding_of_float32(workspace, tmp_path):
    # The default pass stores float16 targets and uint16 ids; a float32 pass holds the same texts twice as wide.
    ws = _copy(workspace, tmp_path / "work", "corpus", "vocab", "teacher")
    run_embedding(ws, EmbedSettings(targets_dtype="float32"), LocalEngine(), pass_only=True)
    full, half = open_teacher_pass(ws), open_teacher_pass(workspace)
    assert half.targets.dtype == np.float16 and full.targets.dtype == np.float32
    assert (ws.teacher_dir / "targets.bin").stat().st_size == 2 * (workspace.teacher_dir / "targets.bin").stat().st_size
    assert half.token_ids.dtype == np.uint16 and (workspace.teacher_dir / "token_ids.bin").stat().st_size == 2 * len(
        half.token_ids
    )
    np.testing.assert_array_equal(np.asarray(half.token_ids), np.asarray(full.token_ids))
    a, b = np.asarray(half.targets, np.float32), np.asarray(full.targets)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99999

    # A pass of the previous default layout (float32 targets, int32 ids, no ids dtype in the manifest), upgraded
    # without the teacher, is byte for byte the default pass, under its key.
    old = tmp_path / "old-teacher"
    ws.teacher_dir.rename(old)
    np.asarray(full.token_ids).astype("<i4").tofile(old / "token_ids.bin")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["token_ids_dtype"], manifest["key"]["settings"]["token_ids_dtype"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    script = Path(__file__).parents[1] / "scripts" / "upgrade_teacher_pass.py"
    done = subprocess.run([sys.executable, script, old, ws.root], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("targets.bin", "token_ids.bin", "rows.bin", "token_vectors.bin"):
        assert (ws.teacher_dir / name).read_bytes() == (workspace.teacher_dir / name).read_bytes(), name
    manifests = [read_manifest(w.teacher_dir, "teacher pass") for w in (ws, workspace)]
    for m in manifests:
        m.pop("created"), m.pop("upgraded_from", None)
    assert manifests[0] == manifests[1]  # the key and every fact embed records


def test_token_sample_option():
    assert token_count("all") == -1 and token_count("2_000_000") == 2_000_000 and token_count("0") == 0
    with pytest.raises(ValueError):
        token_count("-5")


def test_the_teacher_runs_on_cuda_when_there_is_one():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        assert Teacher.resolve("auto", "auto") == ("cuda", "float16")
    else:
        assert Teacher.resolve("auto", "auto") == ("cpu", "float32")
    assert Teacher.resolve("cuda:1", "auto") == ("cuda:1", "float16")
    assert Teacher.resolve("cpu", "bfloat16") == ("cpu", "bfloat16")
    with pytest.raises(VocabertError, match="precision"):
        Teacher.resolve("cpu", "int4")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _has_cuda(), reason="no GPU here: the CUDA path runs where one is at hand")
def test_the_teacher_on_cuda_in_float16_matches_float32_on_the_cpu(workspace):
    texts = [t for shard in open_corpus(workspace).shards("train") for t in shard.texts][:256]
    cpu = Teacher(None, "cpu", "float32").forward(texts)[0]
    gpu = Teacher(None, "cuda", "float16").forward(texts)[0]
    cosine = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cosine.min() >= 0.9999


def test_token_level_targets_are_each_occurrences_teacher_vectors(sampled, tmp_path):
    """The token-level loss's target of a match is the mean of the teacher's vectors of the tokens its entry
    covers (as the entry sums count them), in the sampled texts only; training with it learns, streamed."""
    passed = open_teacher_pass(sampled)
    store, _ = open_store(sampled)
    vocab_size = int(read_manifest(sampled.corpus_dir, "corpus")["vocab_size"])
    data = training_data(passed, store, vocab_size, tmp_path, with_starts=True)
    assert data.has_token_vectors and isinstance(data.starts, FileArray)
    patterns = np.asarray(store.patterns)
    texts = np.arange(len(data))
    flat = np.arange(int(data.ptr[-1]))
    sampled_matches, found = data.occurrence_targets(texts, flat, patterns)
    text_of = np.repeat(texts, np.diff(data.ptr))
    assert set(np.unique(text_of[sampled_matches])) == set(passed.sampled.tolist())
    rng = np.random.default_rng(0)
    for k in rng.choice(len(sampled_matches), size=min(50, len(sampled_matches)), replace=False):
        i = sampled_matches[k]
        t, entry, start = text_of[i], data.entries[i], int(data.starts[i])
        ids = passed.token_ids[passed.token_offsets[t] : passed.token_offsets[t + 1]]
        fixed = np.flatnonzero(patterns[entry] >= 0)  # the positions that are tokens, not wildcards
        covered = start + fixed
        assert (ids[covered] == patterns[entry][fixed]).all()
        expected = np.mean([passed.token_vectors[passed.vector_offsets[t] + c] for c in covered], axis=0)
        np.testing.assert_allclose(found[k], expected, atol=1e-3)
    settings = {"epochs": 3, "batch_size": 64, "show_progress_bar": False, "context": 8, "lr": 0.01}
    _, _, plain = train_student(data, store, **settings)
    network, _, tokens = train_student(data, store, token_loss=0.5, **settings)
    assert network.context == 8 and "train_token_loss" not in plain["epochs"][0]
    first, last = tokens["epochs"][0]["train_token_loss"], tokens["epochs"][-1]["train_token_loss"]
    assert 0 < last < first  # each match's vector as read in its text moves toward the teacher's


def test_token_level_loss_needs_token_vectors(workspace):
    passed = open_teacher_pass(workspace)
    store, _ = open_store(workspace)
    vocab_size = int(read_manifest(workspace.corpus_dir, "corpus")["vocab_size"])
    with pytest.raises(VocabertError, match="kept token vectors"):
        train_student(training_data(passed, store, vocab_size), store, token_loss=1.0, show_progress_bar=False)


def test_file_array_reads_what_a_memory_map_reads_without_holding_it(tmp_path):
    """FileArray (the targets, token ids and matches) reads the rows a memory map would give, for every kind
    of index training and the passes use, and the process's resident memory does not take in the file:
    random rows read from a memory map grow it toward the file's size, read with pread they do not."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5000, 7)).astype("<f4")
    path = tmp_path / "rows.bin"
    path.write_bytes(values.tobytes())
    array = FileArray(path, "<f4", values.shape)
    assert len(array) == 5000 and array.shape == (5000, 7) and array.dtype == np.float32 and array.ndim == 2
    idx = rng.integers(0, 5000, size=300)
    runs = np.concatenate([np.arange(10, 40), np.arange(4000, 4003), [7, 7, 4999, 0]])  # runs, repeats, ends
    for key in (idx, runs, idx.reshape(20, 15), slice(100, 250), slice(4990, 6000), slice(3, 3), 17, -1):
        np.testing.assert_array_equal(array[key], values[key])
    np.testing.assert_array_equal(np.asarray(array), values)
    assert array[np.zeros(0, dtype=np.int64)].shape == (0, 7)
    for bad in (5000, -5001, np.array([0, 5000]), slice(0, 10, 2), np.array([True, False])):
        with pytest.raises(IndexError):
            array[bad]
    ids = FileArray(path, "<i4", (35000,))  # 1-d, like the token ids and matches
    np.testing.assert_array_equal(ids[np.arange(100, 180)], values.view("<i4").ravel()[100:180])
    path.write_bytes(values.tobytes()[:-4])  # the file lost its last row: one clear line, no garbage
    with pytest.raises(VocabertError, match="shorter"):
        FileArray(path, "<f4", values.shape)[4999]

    # 48 MB of rows read at random: through a memory map the process holds most of them afterwards.
    big = tmp_path / "big.bin"
    rows = 96_000  # 512-byte rows
    with open(big, "wb") as f:
        for _ in range(6):
            f.write(rng.standard_normal((rows // 6, 128)).astype("<f4").tobytes())

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc here")
    picks = [rng.integers(0, rows, size=256) for _ in range(200)]
    before = rss_mib()
    read = FileArray(big, "<f4", (rows, 128))
    total = sum(float(read[p].sum()) for p in picks)
    grown_by_pread = rss_mib() - before
    mapped = np.memmap(big, dtype="<f4", mode="r", shape=(rows, 128))
    before = rss_mib()
    assert sum(float(mapped[p].sum()) for p in picks) == pytest.approx(total, rel=1e-6)
    grown_by_map = rss_mib() - before
    del mapped
    assert grown_by_pread < 8 and grown_by_map > 3 * max(grown_by_pread, 4), (grown_by_pread, grown_by_map)
