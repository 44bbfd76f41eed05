"""Stage 4: distil the student from cached teacher embeddings (PyTorch, CPU).

The entry vectors stay fixed (they are the teacher's); the student learns one weight per entry
and a linear map. Loss: cosine distance to the teacher's sentence embedding, optionally plus the
squared Euclidean distance between the normalized vectors. A small validation share of the
training texts picks the best epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError
from vocabert.distill.cache import EmbeddingCache
from vocabert.distill.corpus import Corpus
from vocabert.distill.embedding import teacher_texts
from vocabert.matching import EntryIndex
from vocabert.model import WeightedMean
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


def training_data(
    corpus: Corpus, store: VocabularyStore, cache: EmbeddingCache, teacher_share: float, show_progress_bar: bool = True
) -> TrainingData:
    """Match every text of the teacher pass and fetch its cached target."""
    index = EntryIndex(np.asarray(store.patterns), int(corpus.manifest["vocab_size"]))
    lengths, entries, targets, validation = [], [], [], []
    shards = tqdm(
        teacher_texts(corpus, teacher_share),
        desc="train: matching",
        unit="shard",
        total=len(corpus.shard_paths),
        disable=not show_progress_bar,
    )
    for shard, is_val in shards:
        if not len(shard):
            continue
        vectors, found = cache.lookup(shard.texts)
        if not found.all():
            raise VocabertError(
                f"{int((~found).sum())} training texts have no cached teacher embedding; run the embed stage first"
            )
        matches = index.match(shard.ids, shard.offsets)
        lengths.append(np.bincount(matches.text, minlength=len(shard)))
        entries.append(matches.entry)
        targets.append(vectors)
        validation.append(is_val)
    if not targets:
        raise VocabertError("no training texts")
    ptr = np.zeros(sum(len(x) for x in lengths) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=ptr[1:])
    return TrainingData(ptr, np.concatenate(entries), np.concatenate(targets), np.concatenate(validation))


def train_student(
    data: TrainingData,
    store: VocabularyStore,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 3e-3,
    loss: str = "cosine",
    weight_decay: float = 1e-5,
    seed: int = 0,
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
    targets = torch.nn.functional.normalize(torch.from_numpy(data.targets), dim=1)

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
        return out, targets[torch.from_numpy(idx)]

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
