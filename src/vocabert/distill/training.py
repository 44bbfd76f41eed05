"""Stage 4 (``vocabert train``): distil the student from the teacher pass (PyTorch, CPU).

The entry vectors stay fixed (they are the teacher's); the student learns one weight per entry
and a linear map. Loss: cosine distance to the teacher's sentence embedding, optionally plus the
squared Euclidean distance between the normalized vectors. A small validation share of the
training texts picks the best epoch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError
from vocabert.distill.embedding import TeacherPass, open_store, open_teacher_pass
from vocabert.distill.workspace import Workspace, digest, finish, is_current, log, read_manifest
from vocabert.matching import EntryIndex
from vocabert.model import StudentModel, WeightedMean
from vocabert.store import VocabularyStore


@dataclass
class TrainingData:
    """Matched entries of every training text (CSR: ``entries[ptr[i]:ptr[i+1]]``), its target, and
    whether it is a validation text."""

    ptr: np.ndarray
    entries: np.ndarray
    targets: np.ndarray
    validation: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def training_data(passed: TeacherPass, store: VocabularyStore, vocab_size: int) -> TrainingData:
    """Match every text of the teacher pass; targets stay memory-mapped in the work directory."""
    index = EntryIndex(np.asarray(store.patterns), vocab_size)
    lengths, entries = [], []
    for rows, ids, offsets in passed.chunks():
        matches = index.match(ids, offsets)
        lengths.append(np.bincount(matches.text, minlength=rows.stop - rows.start))
        entries.append(matches.entry)
    if not lengths:
        raise VocabertError("the teacher pass holds no texts to train on")
    ptr = np.zeros(len(passed) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=ptr[1:])
    return TrainingData(ptr, np.concatenate(entries), passed.targets, passed.validation)


@dataclass(frozen=True)
class TrainSettings:
    """Settings of the ``train`` stage (every default lives here): :func:`train_student`'s arguments."""

    epochs: int = 10
    lr: float = 3e-3  # Adam
    batch_size: int = 256
    loss: str = "cosine"  # cosine, mse or cosine+mse
    weight_decay: float = 1e-5  # on the log entry weights
    seed: int = 0


def train_student(
    data: TrainingData,
    store: VocabularyStore,
    epochs: int = TrainSettings.epochs,
    batch_size: int = TrainSettings.batch_size,
    lr: float = TrainSettings.lr,
    loss: str = TrainSettings.loss,
    weight_decay: float = TrainSettings.weight_decay,
    seed: int = TrainSettings.seed,
    show_progress_bar: bool = True,
) -> tuple[WeightedMean, dict]:
    """Fit a :class:`WeightedMean` student; returns it and the training history."""
    import torch

    if loss not in ("cosine", "cosine+mse", "mse"):
        raise VocabertError(f"unknown loss {loss!r}: use cosine, mse or cosine+mse")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    val_idx, train_idx = np.flatnonzero(data.validation), np.flatnonzero(~data.validation)
    n_val = len(val_idx)
    if len(train_idx) == 0:
        raise VocabertError("no training texts outside the validation share")

    table = torch.from_numpy(store.vectors(np.arange(len(store))))
    dim = table.shape[1]
    log_weight = torch.zeros(len(store), requires_grad=True)
    linear = torch.nn.Linear(dim, dim)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(dim))
        linear.bias.zero_()
    params = [log_weight, *linear.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)

    def forward(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        starts, ends = data.ptr[idx], data.ptr[idx + 1]
        counts = ends - starts
        flat = np.arange(counts.sum()) + np.repeat(starts - np.cumsum(counts) + counts, counts)
        entry = torch.from_numpy(data.entries[flat])
        segment = torch.from_numpy(np.repeat(np.arange(len(idx)), counts))
        w = log_weight[entry].exp()
        pooled = torch.zeros(len(idx), dim).index_add_(0, segment, table[entry] * w[:, None])
        total = torch.zeros(len(idx)).index_add_(0, segment, w).clamp_min(1e-12)
        out = torch.nn.functional.normalize(linear(pooled / total[:, None]), dim=1)
        # Targets are read from the memory-mapped teacher pass a batch at a time, never all at once.
        return out, torch.nn.functional.normalize(torch.from_numpy(np.asarray(data.targets[idx])), dim=1)

    def loss_of(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cos = (out * target).sum(dim=1)
        if loss == "cosine":
            return (1 - cos).mean()
        mse = ((out - target) ** 2).sum(dim=1).mean()
        return mse if loss == "mse" else (1 - cos).mean() + mse

    def evaluate(idx: np.ndarray) -> float:
        with torch.no_grad():
            cos = [(lambda o, t: (o * t).sum(dim=1))(*forward(idx[i : i + 2048])) for i in range(0, len(idx), 2048)]
        return float(torch.cat(cos).mean()) if cos else float("nan")

    history = {"epochs": [], "n_train": int(len(train_idx)), "n_val": int(n_val)}
    best = (evaluate(val_idx) if n_val else -1.0, None)
    history["val_cosine_before"] = best[0]
    steps = epochs * ((len(train_idx) + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc="train", unit="step", disable=not show_progress_bar)
    for epoch in range(epochs):
        rng.shuffle(train_idx)
        losses = []
        for start in range(0, len(train_idx), batch_size):
            out, target = forward(train_idx[start : start + batch_size])
            value = loss_of(out, target) + weight_decay * (log_weight**2).sum()
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            losses.append(value.item())
            bar.update(1)
        val = evaluate(val_idx) if n_val else float("nan")
        history["epochs"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_cosine": val})
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", val_cos=f"{val:.4f}")
        if not n_val or val > best[0]:
            best = (val, [p.detach().clone() for p in params])
    bar.close()
    if best[1] is None:  # no epoch beat the untrained mean: keep it
        best = (best[0], [p.detach().clone() for p in params])
        with torch.no_grad():
            best[1][0].zero_()
            best[1][1].copy_(torch.eye(dim))
            best[1][2].zero_()
    history["best_val_cosine"] = best[0]
    log_w, weight, bias = (p.numpy() for p in best[1])
    return WeightedMean(np.exp(log_w), weight, bias), history


def run_training(ws: Workspace, settings: TrainSettings, force: bool = False) -> StudentModel:
    """The ``train`` stage: skipped when current; else distil the student and write the model folder."""
    from vocabert import __version__

    store, store_manifest = open_store(ws)
    key = {
        "provenance": ws.provenance,
        "settings": asdict(settings),
        "inputs": {"store": digest(ws.store_dir), "teacher pass": digest(ws.teacher_dir)},
    }
    if not force and is_current(ws.model_dir, "model", key):
        log(f"train: {ws.model_dir} is up to date")
        return StudentModel.load(ws.model_dir)
    passed = open_teacher_pass(ws)
    vocab_manifest = read_manifest(ws.vocab_dir, "vocabulary")
    vocab_size = int(read_manifest(ws.corpus_dir, "corpus")["vocab_size"])
    started = time.perf_counter()
    data = training_data(passed, store, vocab_size)
    log(f"train: {len(data)} texts ({int(data.validation.sum())} for validation), {len(data.entries)} matches")
    network, history = train_student(data, store, show_progress_bar=ws.show_progress_bar, **asdict(settings))
    log(f"train: validation cosine {history['val_cosine_before']:.4f} (plain mean) -> {history['best_val_cosine']:.4f}")
    config = {
        "architecture": network.name,
        "dim": store.dim,
        "entries": len(store),
        "max_length": ws.max_length,
        "vocab_size": vocab_size,
        "provenance": ws.provenance,
        "vocabert_version": __version__,
        "training": {
            "settings": asdict(settings),
            "history": history,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "vocabulary": vocab_manifest["key"]["settings"],
        "store": store_manifest["key"]["settings"],
    }
    model = StudentModel(config, ws.tokenizer_text, store, network)
    listing = (ws.vocab_dir / "vocabulary.tsv").read_text(encoding="utf-8")
    model.save(ws.model_dir, vocabulary_listing=listing)
    finish(ws.model_dir, "model", key)
    log(f"train: model written to {ws.model_dir}")
    return StudentModel.load(ws.model_dir)
