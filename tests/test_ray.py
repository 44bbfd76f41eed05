"""The Ray engine on a small slice with a local Ray: same vocabulary, targets and entry vectors as the
local path, a worker killed mid-run changes nothing, an interrupted job resumes from what it did."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures import assert_store_vectors_close

from vocabert.artifacts import VocabertError
from vocabert.cli import main
from vocabert.distill import embedding, ray_jobs
from vocabert.distill.corpus import CorpusSettings, open_corpus, run_corpus
from vocabert.distill.embedding import EmbedSettings, PassProgress, run_embedding
from vocabert.distill.engine import EngineSettings, LocalEngine
from vocabert.distill.mining import MineSettings, mine_vocabulary, run_mining
from vocabert.distill.pipeline import open_engine
from vocabert.distill.teacher_pass import TeacherPass
from vocabert.distill.vocabulary import Vocabulary, open_store
from vocabert.distill.workspace import Workspace
from vocabert.tokenizer import tokenizer_layout

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


def _dying_worker(marker: Path, shard: int, number: int, always: bool = False) -> type:
    """A teacher worker whose process dies on its first call for one batch (as if killed), or on every one."""

    class DyingTeacherWorker(ray_jobs.TeacherWorker):
        def run(self, batch):
            if (batch.shard, batch.number) == (shard, number) and (always or not marker.exists()):
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
    special = list(tokenizer_layout(local.tokenizer_text).special)
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
    """Workers write their rows in place and hand back only entry sums; one dies mid-task and is retried:
    the same files and entry vectors as the local path."""
    ws = _copy(local, tmp_path / "ray", "corpus", "vocab")
    marker = tmp_path / "killed"
    monkeypatch.setattr(ray_jobs, "TeacherWorker", _dying_worker(marker, shard=1, number=1))
    store = run_embedding(ws, EMBED, engine=engine)
    assert marker.is_file(), "no worker was killed"
    found, expected = TeacherPass.open(ws.teacher_dir), TeacherPass.open(local.teacher_dir)
    _assert_same_pass(found, expected)
    assert not (ws.teacher_dir / "progress.npz").exists()
    # The entry sums the workers added up (no second look at the tokens), against the local path's.
    found_sums, expected_sums = (np.load(w.teacher_dir / "entry_sums.npz") for w in (ws, local))
    np.testing.assert_array_equal(found_sums["counts"], expected_sums["counts"])
    np.testing.assert_allclose(found_sums["means"], expected_sums["means"], atol=1e-4)
    expected_store, _ = open_store(local)
    every = np.arange(len(store))
    assert_store_vectors_close(store.vectors(every), expected_store.vectors(every), atol=1e-3)  # isolated too


@needs_ray
def test_interrupted_ray_pass_resumes_from_the_batches_done(local, engine, tmp_path, monkeypatch):
    """The driver stops after two results: the rerun computes only the batches that were not done, and ends
    with the same pass and entry sums."""
    monkeypatch.setattr(embedding, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(ray_jobs, "SEGMENT_TOKENS", 1)  # a task per batch: many results
    engine = open_engine(EngineSettings(engine="ray", ray_workers=1))  # on the Ray already started: quicker to start
    ws = _copy(local, tmp_path / "ray", "corpus", "vocab")
    corpus = open_corpus(ws)
    vocab = Vocabulary.load(ws.vocab_dir)
    job = embedding._pass_job(ws, corpus, EMBED, {"test": "interrupted"}, vocab)
    arrived, calls = ray_jobs._arrived, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return arrived(*args)

    monkeypatch.setattr(ray_jobs, "_arrived", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ray_jobs.ray_teacher_pass(engine, ws, job, False)
    monkeypatch.setattr(ray_jobs, "_arrived", arrived)
    assert not (ws.teacher_dir / "manifest.json").exists()
    with np.load(ws.teacher_dir / "progress.npz") as z:
        durable = int(z["done"].sum())
    assert durable == 2

    job = embedding._pass_job(ws, corpus, EMBED, {"test": "interrupted"}, vocab)
    passed, stats = ray_jobs.ray_teacher_pass(engine, ws, job, False)
    assert stats["computed_batches"] == stats["batches"] - 2 and stats["resumed_texts"] == 2 * EMBED.batch_size
    _assert_same_pass(passed, TeacherPass.open(local.teacher_dir))
    found_sums, expected_sums = (np.load(w.teacher_dir / "entry_sums.npz") for w in (ws, local))
    np.testing.assert_array_equal(found_sums["counts"], expected_sums["counts"])


@needs_ray
def test_a_batch_that_keeps_failing_stops_the_pass_with_one_line(local, engine, tmp_path, monkeypatch):
    ws = _copy(local, tmp_path / "ray", "corpus", "vocab")
    monkeypatch.setattr(ray_jobs, "TeacherWorker", _dying_worker(tmp_path / "killed", 1, 0, always=True))
    with pytest.raises(VocabertError, match="rerun to resume") as e:
        run_embedding(ws, EMBED, engine=engine)
    assert "\n" not in str(e.value)
    assert (ws.teacher_dir / "progress.npz").is_file() and not (ws.teacher_dir / "manifest.json").exists()


def test_results_count_once(tmp_path):
    """The driver's side of the Ray pass, without Ray: results in any order, one twice, a stop and a
    restart; every batch's entry sums count once."""
    entries, dim = 5, 2
    progress = PassProgress(tmp_path / "progress.npz", {"k": 1}, batches=4, entries=entries, dim=dim)

    def result(batch: int) -> bytes:
        sums = {"entries": np.array([batch]), "sums": np.full((1, dim), batch + 1.0), "counts": np.array([1])}
        return ray_jobs._to_bytes(sums)

    assert ray_jobs._arrived(progress, np.array([2]), result(2))
    assert ray_jobs._arrived(progress, np.array([0]), result(0))
    assert not ray_jobs._arrived(progress, np.array([2]), result(2))  # Ray ran it twice
    progress.save()
    progress = PassProgress(tmp_path / "progress.npz", {"k": 1}, batches=4, entries=entries, dim=dim)  # restart
    assert progress.done.tolist() == [True, False, True, False]
    assert not ray_jobs._arrived(progress, np.array([0]), result(0))
    assert ray_jobs._arrived(
        progress,
        np.array([1, 3]),
        ray_jobs._to_bytes(
            {"entries": np.array([1, 3]), "sums": np.array([[2.0, 2.0], [4.0, 4.0]]), "counts": np.array([1, 1])}
        ),
    )
    assert progress.done.all()
    np.testing.assert_array_equal(progress.counts, [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(progress.sums[:, 0], [1, 2, 3, 4, 0])
    other = PassProgress(tmp_path / "progress.npz", {"k": 2}, batches=4, entries=entries, dim=dim)
    assert not other.done.any()  # another pass's progress is not resumed


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
