"""Training on synthetic data: the torch student and the numpy network it exports compute the same thing."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import tiny_model

from vocabert.artifacts import VocabertError
from vocabert.distill.training import TrainingData, train_student

torch = pytest.importorskip("torch")

TEXTS = ["the cat sat on the mat", "New York City is big", "how long do cats live", "a zebra", "the big red car"]


def synthetic_data(model, seed: int = 0) -> TrainingData:
    """The fixture texts matched against the tiny model's entries, with random teacher targets."""
    rng = np.random.default_rng(seed)
    texts = TEXTS * 8
    ids, offsets = model.tokenize(texts)
    matches = model.index.match(ids, offsets)
    ptr = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.bincount(matches.text, minlength=len(texts)), out=ptr[1:])
    targets = rng.normal(size=(len(texts), model.dim)).astype(np.float32)
    validation = np.zeros(len(texts), dtype=bool)
    validation[::5] = True
    return TrainingData(ptr, matches.entry, np.diff(offsets) - model.added_per_text, targets, validation)


@pytest.mark.parametrize(
    "arch, rank, hidden, heads, window, context, special",
    [
        ("weighted_mean", 0, 0, 1, 0, 0, 0),
        ("context_pool", 0, 0, 1, 0, 0, 0),
        ("context_pool", 3, 0, 1, 0, 0, 0),
        ("context_pool", 3, 6, 1, 0, 0, 0),
        ("context_pool", 2, 5, 3, 0, 0, 0),
        ("context_pool", 2, 0, 2, 2, 0, 0),
        ("context_pool", 2, 0, 2, 0, 5, 4),
    ],
)
def test_exported_network_computes_what_was_trained(arch, rank, hidden, heads, window, context, special):
    model = tiny_model()
    data = synthetic_data(model)
    network, _, history = train_student(
        data,
        model.store,
        arch=arch,
        attention_rank=rank,
        attention_heads=heads,
        mlp_hidden=hidden,
        window=window,
        window_rank=3,
        context=context,
        special_hidden=special,
        tune_entries=0.0,
        epochs=3,
        batch_size=8,
        lr=0.05,
        show_progress_bar=False,
    )
    assert network.name == arch and len(history["epochs"]) == 3
    network.check(len(model.store), model.dim)
    model.network = network
    out = model.encode(TEXTS)
    # The best epoch's validation cosine is what the exported network gives on the validation texts.
    val = np.flatnonzero(data.validation)
    target = data.targets[val] / np.linalg.norm(data.targets[val], axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", model.encode([(TEXTS * 8)[i] for i in val]), target).mean()
    assert cos == pytest.approx(history["best_val_cosine"], abs=1e-4)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_training_learns_on_synthetic_targets(schedule):
    """Targets made by a known network: training must get closer to them than the plain mean, with either
    learning-rate schedule. (One head: on 40 texts of a few dimensions, four heads'
    (d, 4d) maps overfit.)"""
    model = tiny_model()
    data = synthetic_data(model)
    data.targets[:] = model.encode(TEXTS * 8) @ np.diag(np.linspace(0.5, 2.0, model.dim)).astype(np.float32)
    _, _, history = train_student(
        data,
        model.store,
        arch="context_pool",
        attention_rank=2,
        attention_heads=1,
        epochs=30,
        batch_size=8,
        lr=0.01,
        lr_schedule=schedule,
        show_progress_bar=False,
    )
    assert history["best_val_cosine"] > history["val_cosine_before"] + 0.01
    last_lr = [e["last_lr"] for e in history["epochs"]]
    if schedule == "constant":
        assert last_lr == [0.01] * 30
    else:  # decays every epoch, to 0 after the last step
        assert (np.diff(last_lr) < 0).all() and last_lr[-1] == pytest.approx(0, abs=1e-12)


def test_unknown_architecture_is_refused():
    model = tiny_model()
    with pytest.raises(VocabertError, match="unknown architecture"):
        train_student(synthetic_data(model), model.store, arch="transformer", show_progress_bar=False)
    with pytest.raises(VocabertError, match="at least one head"):
        train_student(synthetic_data(model), model.store, attention_heads=0, show_progress_bar=False)
    with pytest.raises(VocabertError, match="window"):
        train_student(synthetic_data(model), model.store, window=-1, show_progress_bar=False)
    with pytest.raises(VocabertError, match="learning-rate schedule"):
        train_student(synthetic_data(model), model.store, lr_schedule="step", show_progress_bar=False)
    with pytest.raises(VocabertError, match="part of context_pool"):
        train_student(synthetic_data(model), model.store, arch="weighted_mean", window=2, show_progress_bar=False)


@pytest.mark.parametrize("arch, rank", [("weighted_mean", 16), ("context_pool", 0)])
def test_heads_apply_to_attention_only(arch, rank):
    """The default's four heads need attention: a student without it has one (they would all pool alike)."""
    model = tiny_model()
    network, _, _ = train_student(
        synthetic_data(model), model.store, arch=arch, attention_rank=rank, epochs=1, show_progress_bar=False
    )
    assert network.name == arch and getattr(network, "heads", 1) == 1


def test_tuned_entry_vectors_move_toward_the_targets_and_are_exported():
    model = tiny_model()
    data = synthetic_data(model)
    frozen = train_student(
        data, model.store, epochs=5, batch_size=8, lr=0.01, tune_entries=0.0, show_progress_bar=False
    )
    tuned = train_student(
        data, model.store, epochs=5, batch_size=8, lr=0.01, tune_entries=1e-3, show_progress_bar=False
    )
    assert frozen[1] is None
    vectors = tuned[1]
    original = model.store.vectors(np.arange(len(model.store)))
    assert vectors.shape == original.shape and not np.allclose(vectors, original)
    # The exported model, with the tuned vectors in its store, gives the validation cosine training reported.
    model.store = type(model.store).from_float(np.asarray(model.store.patterns), vectors, "float16")
    model.network = tuned[0]
    val = np.flatnonzero(data.validation)
    target = data.targets[val] / np.linalg.norm(data.targets[val], axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", model.encode([(TEXTS * 8)[i] for i in val]), target).mean()
    assert cos == pytest.approx(tuned[2]["best_val_cosine"], abs=2e-3)  # fp16 store


def test_abandoned_matches_folders_are_removed(tmp_path):
    """A training killed by SIGKILL leaves its memory-mapped matches behind; the next one removes them,
    but never the folder of a training still running."""
    import os
    import subprocess

    from vocabert.distill.training import remove_abandoned_matches

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".matches-{dead.pid}-abc").mkdir()
    (tmp_path / ".matches-old_random").mkdir()  # the name older versions gave
    (tmp_path / f".matches-{os.getpid()}-xyz").mkdir()
    (tmp_path / "store").mkdir()
    remove_abandoned_matches(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".matches-{os.getpid()}-xyz", "store"])
