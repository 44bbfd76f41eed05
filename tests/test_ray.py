"""The Ray engine on a small slice with a local Ray: same vocabulary, targets and entry vectors as the
local path, a worker killed mid-run changes nothing, an interrupted job resumes from what it did."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vocabert.artifacts import VocabertError
from vocabert.cli import main
from vocabert.distill import ray_jobs
from vocabert.distill.corpus import CorpusSettings, open_corpus, run_corpus
from vocabert.distill.embedding import BatchRows, EmbedSettings, PassWriter, entry_vectors, run_embedding
from vocabert.distill.engine import EngineSettings, LocalEngine
from vocabert.distill.mining import MineSettings, mine_vocabulary, run_mining
from vocabert.distill.pipeline import open_engine
from vocabert.distill.teacher_pass import TeacherPass
from vocabert.distill.vocabulary import Vocabulary, open_store
from vocabert.distill.workspace import Workspace, special_tokens

pytestmark = pytest.mark.ray
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'vocabert[ray]')"
)

# ~150 short texts in shards of 40, batches of 16: several shards, several batches per shard.
MINE = MineSettings(budget=3000, min_count=2)
MINE_ARGS = {k: v for k, v in vars(MINE).items() if k != "budget_mb"}  # mine_vocabulary's arguments
EMBED = EmbedSettings(teacher_share=1.0, batch_size=16)


def _head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def local(small_data, tmp_path_factory) -> Workspace:
    """The slice through corpus, mine and embed on the local path: the reference."""
    root = tmp_path_factory.mktemp("ray-slice")
    data = {
        "passages": _head(small_data["passages"], root / "passages.tsv", 50),
        "queries": _head(small_data["queries"], root / "queries.tsv", 100),
    }
    ws = Workspace(root / "local", None, cache_dir=root / "cache-local", show_progress_bar=False)
    run_corpus(ws, data, CorpusSettings(shard_size=40, unseen_topics="none"))
    run_mining(ws, MINE, LocalEngine())
    run_embedding(ws, EMBED, LocalEngine())
    return ws


@pytest.fixture(scope="module")
def engine():
    """A local Ray started the way the command starts it (this machine's cores), 2 teacher workers."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'vocabert[ray]')")
    with open_engine(EngineSettings(engine="ray", ray_workers=2)) as ray_engine:
        ray_engine.ray()
        yield ray_engine


def _copy(local: Workspace, root: Path, *stages: str) -> Workspace:
    ws = Workspace(root, None, cache_dir=root.parent / f"cache-{root.name}", show_progress_bar=False)
    for stage in stages:
        shutil.copytree(local.root / stage, ws.root / stage)
    return ws


def _assert_same_pass(found: TeacherPass, expected: TeacherPass) -> None:
    assert len(found) == len(expected)
    np.testing.assert_array_equal(found.text_index, expected.text_index)  # same order, row for row
    np.testing.assert_array_equal(found.validation, expected.validation)
    np.testing.assert_array_equal(found.token_offsets, expected.token_offsets)
    np.testing.assert_array_equal(found.token_ids, expected.token_ids)
    np.testing.assert_allclose(found.targets, expected.targets, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(found.token_vectors, np.float32), np.asarray(expected.token_vectors, np.float32), atol=2e-3
    )  # fp16 on disk: one rounding step apart at most


def _dying_worker(marker: Path, shard: int, number: int) -> type:
    """A teacher worker whose process dies on its first call for one batch (as if killed)."""

    class DyingTeacherWorker(ray_jobs.TeacherWorker):
        def run(self, batch):
            if (batch.shard, batch.number) == (shard, number) and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().run(batch)

    return DyingTeacherWorker


@needs_ray
def test_ray_mining_gives_the_same_vocabulary(local, engine, tmp_path):
    ws = _copy(local, tmp_path / "ray", "corpus")
    found = run_mining(ws, MINE, engine=engine)
    expected = Vocabulary.load(local.vocab_dir)
    for name in ("patterns", "kind", "count"):
        np.testing.assert_array_equal(getattr(found, name), getattr(expected, name), err_msg=name)
    np.testing.assert_array_equal(found.npmi, expected.npmi)
    assert (ws.vocab_dir / "vocabulary.tsv").read_text() == (local.vocab_dir / "vocabulary.tsv").read_text()
    assert not (ws.vocab_dir / "partial").exists()  # per-shard counts go once the vocabulary is complete


@needs_ray
def test_ray_mining_resumes_from_the_shards_counted(local, engine, tmp_path):
    """Stopped in its 3-gram level, a rerun takes the token and 2-gram counts from disk."""
    corpus = open_corpus(local)
    special = special_tokens(local.tokenizer_text)["all"]
    key = {"test": "resume"}
    counting = ray_jobs.RayCounts(engine, corpus, tmp_path / "partial", key, show_progress_bar=False, partitions=3)
    frequent = counting.frequent

    def stopped(name, fn, kwargs, min_count):
        if name == "3-grams":
            raise KeyboardInterrupt
        return frequent(name, fn, kwargs, min_count)

    counting.frequent = stopped
    with pytest.raises(KeyboardInterrupt):
        mine_vocabulary(corpus, special_ids=special, show_progress_bar=False, counting=counting, **MINE_ARGS)
    shards = len(corpus.shard_paths)
    assert counting.computed == 2 * shards  # tokens and 2-grams

    again = ray_jobs.RayCounts(engine, corpus, tmp_path / "partial", key, show_progress_bar=False, partitions=3)
    found = mine_vocabulary(corpus, special_ids=special, show_progress_bar=False, counting=again, **MINE_ARGS)
    assert again.reused == 2 * shards and again.computed == (MINE.max_ngram - 2) * shards
    np.testing.assert_array_equal(found.patterns, Vocabulary.load(local.vocab_dir).patterns)


@needs_ray
def test_ray_embed_with_a_killed_worker_equals_the_local_path(local, engine, tmp_path, monkeypatch):
    ws = _copy(local, tmp_path / "ray", "corpus", "vocab")
    marker = tmp_path / "killed"
    monkeypatch.setattr(ray_jobs, "TeacherWorker", _dying_worker(marker, shard=1, number=1))
    store = run_embedding(ws, EMBED, engine=engine)
    assert marker.is_file(), "no worker was killed"
    found, expected = TeacherPass.open(ws.teacher_dir), TeacherPass.open(local.teacher_dir)
    _assert_same_pass(found, expected)
    assert not (ws.teacher_dir / "progress.json").exists() and not (ws.teacher_dir / "parts").exists()

    # Entry vectors before the store's fp16: sums from Ray tasks over the Ray pass, against the local path's.
    vocab = Vocabulary.load(local.vocab_dir)
    vocab_size = int(open_corpus(local).manifest["vocab_size"])

    patterns, dim = vocab.patterns.astype(np.int64), found.token_vectors.shape[1]
    found_sums = engine.entry_sums(ws, found, patterns, vocab_size)
    expected_sums = LocalEngine().entry_sums(local, expected, patterns, vocab_size)
    found_vectors, found_counts = entry_vectors(found_sums, len(patterns), dim)
    expected_vectors, expected_counts = entry_vectors(expected_sums, len(patterns), dim)
    np.testing.assert_array_equal(found_counts, expected_counts)
    np.testing.assert_allclose(found_vectors, expected_vectors, atol=1e-4)
    expected_store, _ = open_store(local)
    every = np.arange(len(store))
    np.testing.assert_allclose(store.vectors(every), expected_store.vectors(every), atol=1e-3)  # fp16; isolated too
    # The targets reached the user's cache too, as on the local path.
    texts = [t for shard in open_corpus(local).shards("train") for t in shard.texts]
    cached, hit = ws.teacher_cache().lookup(texts)
    assert hit.all()


@needs_ray
def test_interrupted_ray_pass_resumes_from_the_batches_done(local, engine, tmp_path, monkeypatch):
    """The driver stops after a few batches (some written as parts, not yet appended): the rerun
    computes only the batches that were not done, and ends with the same pass."""
    engine = open_engine(EngineSettings(engine="ray", ray_workers=1))  # on the Ray already started: quicker to start
    ws = _copy(local, tmp_path / "ray", "corpus", "vocab")
    corpus = open_corpus(ws)
    key = {"test": "interrupted"}
    append_ready, calls = ray_jobs._append_ready, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return append_ready(*args)

    monkeypatch.setattr(ray_jobs, "_append_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ray_jobs.ray_teacher_pass(engine, corpus, ws.teacher_dir, ws.teacher_path, key, EMBED, None, False)
    monkeypatch.setattr(ray_jobs, "_append_ready", append_ready)
    assert not (ws.teacher_dir / "manifest.json").exists()
    durable = json.loads((ws.teacher_dir / "progress.json").read_text())["texts"]
    assert durable > 0

    passed, stats = ray_jobs.ray_teacher_pass(engine, corpus, ws.teacher_dir, ws.teacher_path, key, EMBED, None, False)
    assert stats["resumed_texts"] >= durable
    # _append_ready runs once at the start, then after each result: the stop came with the 4th result, and
    # the 4 results in (appended, or waiting as parts) are not computed again.
    assert stats["computed_batches"] == stats["batches"] - 4
    _assert_same_pass(passed, TeacherPass.open(local.teacher_dir))


def test_results_are_appended_in_order_and_once(tmp_path):
    """The driver's side of the Ray pass, without Ray: results in any order, one twice, a stop and a
    restart; the pass ends with every batch once, in order."""
    dim, size = 4, 3
    layout = ray_jobs._Layout(np.array([5, 0, 4]), size)  # shard 0: batches of 3 + 2 texts; shard 2: 3 + 1

    def result(shard, number):
        start, stop = layout.start(shard, number), layout.end(shard, number)
        n = stop - start
        rows = np.stack([np.arange(start, stop), np.ones(n, int), np.zeros(n, int)], axis=1)
        targets = np.full((n, dim), start, np.float32)
        return BatchRows(shard, number, start, ["t"] * n, targets, rows, np.zeros(n, np.int32), np.ones((n, dim)))

    key = {"k": 1}
    writer = PassWriter(tmp_path / "teacher", key, dim)
    parts = ray_jobs._Parts(tmp_path / "teacher" / "parts", key)
    for shard, number in [(2, 1), (0, 1), (2, 1)]:  # all early, one twice
        ray_jobs._arrived(writer, parts, layout, shard, number, result(shard, number).to_bytes())
    assert writer.texts == 0 and parts.present() == {(0, 1), (2, 1)}
    ray_jobs._arrived(writer, parts, layout, 0, 0, result(0, 0).to_bytes())
    assert writer.texts == 5 and parts.present() == {(2, 1)}
    ray_jobs._arrived(writer, parts, layout, 0, 1, result(0, 1).to_bytes())  # a retry of one appended: ignored
    writer.close()

    writer = PassWriter(tmp_path / "teacher", key, dim)  # the driver restarts
    parts = ray_jobs._Parts(tmp_path / "teacher" / "parts", key)
    assert writer.texts == 5 and parts.present() == {(2, 1)}
    ray_jobs._arrived(writer, parts, layout, 2, 0, result(2, 0).to_bytes())
    assert writer.texts == 9 and parts.present() == set()
    passed = writer.finish()
    np.testing.assert_array_equal(passed.text_index, np.arange(9))
    np.testing.assert_array_equal(np.asarray(passed.targets)[:, 0], [0, 0, 0, 3, 3, 5, 5, 5, 8])


def test_engine_ray_without_ray_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(VocabertError, match=r"pip install 'vocabert\[ray\]'"):
        open_engine(EngineSettings(engine="ray"))
    argv = ["embed", "--engine", "ray", "--workdir", str(tmp_path / "work"), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vocabert: error: --engine ray needs Ray")


def test_nothing_imports_ray_unless_asked():
    """Ray is an extra: the CLI and every stage module load without it (ray_jobs is imported on demand)."""
    modules = "corpus, mining, embedding, engine, training, pipeline, teacher, cache, workspace"
    code = (
        f"import sys, vocabert.cli\nfrom vocabert.distill import {modules}\nvocabert.cli.build_parser()\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'ray' or m.endswith('ray_jobs'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
