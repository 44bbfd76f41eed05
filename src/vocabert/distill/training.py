"""Stage 4 (``vocabert train``): distil the student from the teacher pass (PyTorch, CPU).

The student learns one weight per entry and a linear map (``weighted_mean``), or context-aware pooling
weights over several heads and a term for the teacher's [CLS] and [SEP] vectors (``context_pool``); see
:mod:`vocabert.model`. By default the entry vectors are fine-tuned too, with an L2 pull toward the
teacher's. Loss: cosine distance to the teacher's sentence embedding, optionally plus the squared Euclidean
distance between the normalized vectors; Adam, the learning rate decayed by a cosine over the epochs. A small
validation share of the training texts picks the best epoch."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vocabert._version import __version__
from vocabert.artifacts import VocabertError, temporary_dir
from vocabert.distill.teacher import output_activation, teacher_prompts
from vocabert.distill.teacher_pass import FileArray, TeacherPass, occurrence_means, open_teacher_pass
from vocabert.distill.vocabulary import open_store
from vocabert.distill.workspace import Workspace, digest, finish, is_current, log, read_manifest
from vocabert.matching import EntryIndex, Matches
from vocabert.model import StudentModel
from vocabert.networks import ContextPool, WeightedMean, mlp_keys
from vocabert.options import option
from vocabert.store import VocabularyStore
from vocabert.tokenizer import tokenizer_layout


@dataclass
class TrainingData:
    """Matched entries of every training text (CSR: ``entries[ptr[i]:ptr[i+1]]``), its token count, its
    target, and whether it is a validation text; for the token-level loss, also where each match starts
    (``starts``, aligned with ``entries``) and the teacher's token vectors of the sampled texts."""

    ptr: np.ndarray
    entries: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    validation: np.ndarray
    starts: np.ndarray | None = None  # (matches,) int32: each match's first position (0 is [CLS])
    token_vectors: np.ndarray | None = None  # (sampled tokens, dim) float16, see TeacherPass
    vector_offsets: np.ndarray | None = None  # (texts,) text i's first row in token_vectors, -1: not sampled

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def has_token_vectors(self) -> bool:
        return self.starts is not None and self.token_vectors is not None and bool((self.vector_offsets >= 0).any())

    def occurrence_targets(self, idx: np.ndarray, flat: np.ndarray, patterns: np.ndarray):
        """For the matches ``flat`` of texts ``idx`` (one text per row of ``segment``, see :func:`train_student`):
        which of them lie in a sampled text, and for those the mean of the teacher's vectors of the tokens
        the entry covers (its contextual vector at that occurrence, wildcards left out), float32."""
        counts = self.ptr[idx + 1] - self.ptr[idx]
        first = np.repeat(self.vector_offsets[idx], counts)
        sampled = np.flatnonzero(first >= 0)
        # One "text" per match, whose rows start at the match's text's first row in token_vectors.
        each = Matches(
            text=np.arange(len(sampled)),
            entry=np.asarray(self.entries[flat[sampled]], dtype=np.int64),
            start=np.asarray(self.starts[flat[sampled]], dtype=np.int64),
            n_texts=len(sampled),
        )
        return sampled, occurrence_means(each, patterns, self.token_vectors, first[sampled])


def training_data(
    passed: TeacherPass,
    store: VocabularyStore,
    vocab_size: int,
    directory: Path | None = None,
    added_per_text: int = 2,
    with_starts: bool = False,
) -> TrainingData:
    """Match every text of the teacher pass; a text's length counts its tokens but the ``added_per_text``
    its tokenizer adds ([CLS] and [SEP]: 2), as :class:`~vocabert.networks.Batch` counts them. With
    ``directory`` the matches go to disk chunk by chunk (``entries.bin``, ``ptr.npy``) and are read from there
    a batch at a time, as the targets are (:class:`~vocabert.distill.teacher_pass.FileArray`), so that
    training streams its batches and its memory does not grow with the corpus; without, they are kept in
    memory. ``with_starts`` keeps each match's start too, and the pass's token vectors (for the token-level
    loss)."""
    index = EntryIndex(np.asarray(store.patterns), vocab_size)
    counts, columns = [], {"entries": [], "starts": []} if with_starts else {"entries": []}
    files = {name: None if directory is None else open(directory / f"{name}.bin", "wb") for name in columns}  # noqa: SIM115
    try:
        for rows, ids, offsets in passed.chunks():
            matches = index.match(ids, offsets)
            counts.append(np.bincount(matches.text, minlength=rows.stop - rows.start))
            for name, values in (("entries", matches.entry), ("starts", matches.start)):
                if name not in columns:
                    continue
                if directory is None:
                    columns[name].append(values.astype(np.int32))
                else:
                    files[name].write(np.ascontiguousarray(values, dtype="<i4").tobytes())
    finally:
        for f in files.values():
            if f is not None:
                f.close()
    if not counts:
        raise VocabertError("the teacher pass holds no texts to train on")
    ptr = np.zeros(len(passed) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts), out=ptr[1:])
    if directory is None:
        mapped = {name: np.concatenate(parts) for name, parts in columns.items()}
    else:
        np.save(directory / "ptr.npy", ptr)
        mapped = {name: FileArray(directory / f"{name}.bin", "<i4", (int(ptr[-1]),)) for name in columns}
    lengths = np.diff(passed.token_offsets) - added_per_text
    data = TrainingData(ptr, mapped["entries"], lengths, passed.targets, passed.validation)
    if with_starts:
        data.starts, data.token_vectors = mapped["starts"], passed.token_vectors
        data.vector_offsets = passed.vector_offsets
    return data


# Pages read through a memory map stay in the process's resident memory until it is unmapped (and the kernel
# maps up to 64 KB around each page read): the token sample, the one file training reads through a map (a few
# rows per match), is mapped afresh every so many steps. The targets and matches are read with pread
# (teacher_pass.FileArray) and cost only the rows of the batch.
REMAP_STEPS = 50


def remapped(array: np.ndarray) -> np.ndarray:
    """The same memory-mapped file, mapped afresh (the old mapping goes with its last reference)."""
    if isinstance(array, np.memmap) and array.filename is not None:
        return np.memmap(array.filename, dtype=array.dtype, mode="r", offset=array.offset, shape=array.shape)
    return array


ARCHS = (WeightedMean.name, ContextPool.name)


@dataclass(frozen=True)
class TrainSettings:
    """Settings of the ``train`` stage, each a command-line option (every default lives here):
    :func:`train_student`'s arguments."""

    arch: str = option(  # see vocabert.model
        ContextPool.name,
        "the student: weighted_mean (one weight per entry, linear map) or context_pool (weights that depend on "
        "the text, a [CLS]/[SEP] term, optional MLP)",
        choices=(WeightedMean.name, ContextPool.name),
    )
    # Heads, not rank, buy fidelity: 8 of rank 8 beat 4 of rank 16 by +0.003-0.004 on every held-out fidelity set
    # (same 64 numbers per entry, twice the pooling).
    attention_rank: int = option(
        8, "context_pool: rank of the per-entry attention keys and queries of each head, 0 for none"
    )
    attention_heads: int = option(
        8,
        "context_pool: attention heads, each pooling the text with its own weights; the linear maps read the "
        "heads' pooled vectors side by side; one without attention (rank 0, weighted_mean)",
    )
    mlp_hidden: int = option(0, "context_pool: units of the residual MLP on the pooled vector, 0 for none")
    window: int = option(
        0,
        "context_pool: matches on each side that each match attends to (windowed attention over the text's "
        "matches in order), 0 for none",
    )
    window_rank: int = option(32, "context_pool: rank of the windowed attention's per-entry projections")
    context: int = option(
        0,
        "context_pool: rank of the context features (each match's entry read in the light of the whole text, "
        "gelu(x_e + C m), pooled and mapped to the teacher's space), 0 for none",
    )
    # 0.001 beat 0.01 on every held-out fidelity set, unseen topics included (+0.005-0.007); 0.0003 gained at most
    # 0.001 more.
    tune_entries: float = option(
        0.001, "fine-tune the entry vectors with this L2 pull toward the teacher's; 0 keeps them frozen"
    )
    # On the bundled data 8 tie with 6 (validation cosine).
    epochs: int = option(6, "passes over the teacher pass's texts; the best epoch on a validation share is kept")
    lr: float = option(3e-3, "Adam learning rate")
    # Cosine beat constant on every held-out fidelity set (+0.002-0.004, 5th percentiles +0.005-0.008) at the
    # same cost.
    lr_schedule: str = option(
        "cosine", "constant, or cosine: decays to 0 over the epochs", choices=("constant", "cosine")
    )
    batch_size: int = option(256, "texts per training step", flag="--train-batch-size")
    loss: str = option(
        "cosine",
        "cosine distance to the teacher's embedding, mse (squared distance between the normalized vectors), or "
        "their sum",
        choices=("cosine", "mse", "cosine+mse"),
    )
    special_hidden: int = option(
        0,
        "context_pool: units of a nonlinear part of the [CLS]/[SEP] term (an MLP on the pooled vectors, divided "
        "by the text's tokens as the linear term is), 0 for none",
    )
    token_loss: float = option(
        0.0,
        "weight of the token-level loss beside the sentence loss: each match's vector as read in its text "
        "(its entry's, plus the context features' share) against the mean of the teacher's contextual vectors "
        "of the tokens it covers, on the texts whose token vectors the teacher pass kept; 0 for none",
    )
    weight_decay: float = option(1e-5, "on the log entry weights")
    seed: int = option(0, "seed of the initialization and of the order of the texts")


def _pooled_mlp(pooled_dim: int, hidden: int, dim: int):
    """A two-layer GELU MLP on the pooled vectors (exported as :func:`vocabert.networks.mlp_keys`); its output
    map starts at zero, so that it adds nothing until trained."""
    from torch import nn

    mlp = nn.Sequential(nn.Linear(pooled_dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp


def _student_module(
    table,
    arch: str,
    rank: int,
    hidden: int,
    tune: float,
    heads: int = 1,
    window: int = 0,
    window_rank: int = 32,
    context: int = 0,
    special_hidden: int = 0,
    token_head: bool = False,
):
    """The student in torch, mirroring the numpy network of :mod:`vocabert.model` it exports to."""
    import torch
    from torch import nn

    dim = table.shape[1]
    pooled_dim = heads * dim  # the heads' pooled vectors side by side

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_weight = nn.Parameter(torch.zeros(len(table)))
            self.linear = nn.Linear(pooled_dim, dim)
            with torch.no_grad():  # starts as the mean of the heads' pooled vectors
                self.linear.weight.copy_(torch.eye(dim).repeat(1, heads) / heads)
                self.linear.bias.zero_()
            self.context = arch == ContextPool.name
            self.rank = rank if self.context else 0
            if self.context:
                self.special = nn.Linear(pooled_dim, dim)
                nn.init.zeros_(self.special.weight)
                nn.init.zeros_(self.special.bias)
                if self.rank:
                    self.key = nn.Linear(dim, heads * self.rank, bias=False)
                    self.query = nn.Linear(dim, heads * self.rank, bias=False)
                if hidden:
                    self.mlp = _pooled_mlp(pooled_dim, hidden, dim)
                if window:
                    # a, b, c, g of every entry (see ContextPool); the output map starts at zero: no change.
                    self.window_in = nn.Linear(dim, 4 * window_rank, bias=False)
                    nn.init.normal_(self.window_in.weight, std=dim**-0.5)
                    self.window_offset_bias = nn.Parameter(torch.zeros(2 * window))
                    self.window_out = nn.Linear(window_rank, dim)
                    nn.init.zeros_(self.window_out.weight)
                    nn.init.zeros_(self.window_out.bias)
                if context:
                    # x_e, C m + c and U of the context features (see ContextPool); U starts at zero: no change.
                    self.context_entry = nn.Linear(dim, context, bias=False)
                    nn.init.normal_(self.context_entry.weight, std=dim**-0.5)
                    self.context_text = nn.Linear(pooled_dim, context)
                    self.context_out = nn.Linear(context, dim)
                    nn.init.zeros_(self.context_out.weight)
                    nn.init.zeros_(self.context_out.bias)
                    # The token-level loss reads the features through a map of its own, used only in training:
                    # through context_out itself it pulled the sentence map toward per-occurrence corrections
                    # (validation -0.003 at every epoch, docs/architectures.md).
                    if token_head:
                        self.token_read = nn.Linear(context, dim)
                        nn.init.zeros_(self.token_read.weight)
                        nn.init.zeros_(self.token_read.bias)
                if special_hidden:
                    self.special_mlp = _pooled_mlp(pooled_dim, special_hidden, dim)  # the [CLS]/[SEP] term's
            self.special_hidden = special_hidden if self.context else 0
            self.context_rank = context if self.context else 0
            self.hidden = hidden if self.context else 0
            self.window = window if self.context else 0
            self.tune = tune
            if tune:
                # The change to each entry's vector; sparse, so a step touches only the batch's entries.
                self.delta = nn.Embedding(len(table), dim, sparse=True)
                nn.init.zeros_(self.delta.weight)

        def vectors(self, rows):
            return table[rows] + self.delta(rows) if self.tune else table[rows]

        def penalty(self, entry):
            """The pull of the tuned vectors toward the teacher's: mean squared change of the batch's entries."""
            return self.tune * (self.delta(torch.unique(entry)) ** 2).sum(dim=1).mean() if self.tune else 0.0

        def forward(self, entry, segment, n: int, lengths, predict=None):
            """(n, dim) sentence vectors; with ``predict`` (indices of matches), also those matches' vectors
            as read in their text: the entry's vector plus its context features' share (what the token-level
            loss compares with the teacher's contextual vectors)."""
            distinct, inverse = torch.unique(entry, return_inverse=True)
            vectors = self.vectors(distinct)
            base = self.log_weight[entry].exp()
            w = base[:, None].expand(-1, heads)  # (matches, heads)
            total = torch.zeros(n).index_add_(0, segment, base).clamp_min(1e-12)
            if self.rank:
                p = self.query(vectors)[inverse].view(-1, heads, self.rank)
                q = torch.zeros(n, heads, self.rank).index_add_(0, segment, p * w[:, :, None]) / total[:, None, None]
                score = (q[segment] * self.key(vectors)[inverse].view(-1, heads, self.rank)).sum(dim=2)
                top = torch.full((n, heads), -torch.inf).scatter_reduce(
                    0, segment[:, None].expand(-1, heads), score.detach(), "amax"
                )
                w = w * (score - top[segment]).exp()
            w = w / torch.zeros(n, heads).index_add_(0, segment, w).clamp_min(1e-12)[segment]
            per_match = vectors[inverse]
            # One head at a time: a (matches, heads, dim) product would be hundreds of MB per batch, each
            # allocation fresh pages from the OS; per head the buffers are reused (2x faster with 8 heads).
            m = torch.cat(
                [torch.zeros(n, dim).index_add_(0, segment, per_match * w[:, h, None]) for h in range(heads)], 1
            )
            out = self.linear(m)
            if self.context:
                special = self.special(m) + (self.special_mlp(m) if self.special_hidden else 0)
                out = out + special / lengths.clamp_min(1)[:, None]
            if self.hidden:
                out = out + self.mlp(m)
            if self.window:
                z = self.window_features(self.window_in(vectors)[inverse], segment) * base[:, None]
                out = out + self.window_out(torch.zeros(n, z.shape[1]).index_add_(0, segment, z) / total[:, None])
            if self.context_rank:
                f = self.context_entry(vectors)[inverse] + self.context_text(m)[segment]
                f = torch.nn.functional.gelu(f, approximate="tanh")
                pooled = torch.zeros(n, f.shape[1]).index_add_(0, segment, f * base[:, None]) / total[:, None]
                out = out + self.context_out(pooled)
            if predict is None:
                return out
            read = per_match[predict]
            if self.context_rank:
                read = read + self.token_read(f[predict])
            return out, read

        def window_features(self, projected, segment):
            """z_i of every match (matches in order of position, then entry, as matching returns them)."""
            a, b, c, g = projected.split(window_rank, dim=1)
            offsets = torch.cat([torch.arange(-self.window, 0), torch.arange(1, self.window + 1)])
            near = torch.arange(len(a))[:, None] + offsets
            ok = (near >= 0) & (near < len(a))
            near = near.clamp(0, max(len(a) - 1, 0))
            ok &= segment[near] == segment[:, None]
            score = (a[:, None] * b[near]).sum(dim=2) / window_rank**0.5 + self.window_offset_bias
            alpha = torch.softmax(score.masked_fill(~ok, -1e9), dim=1) * ok  # a match without neighbours mixes 0
            return torch.nn.functional.gelu(g + (alpha[:, :, None] * c[near]).sum(dim=1), approximate="tanh")

        def entry_vectors(self) -> np.ndarray | None:
            """The tuned entry vectors (None when they were frozen)."""
            return (table + self.delta.weight).detach().numpy() if self.tune else None

        def export(self) -> WeightedMean | ContextPool:
            def np_(x):
                return x.detach().numpy().astype(np.float32)

            weight = np.exp(np_(self.log_weight))
            if not self.context:
                return WeightedMean(weight, np_(self.linear.weight), np_(self.linear.bias))
            t = {
                "entry_weight": weight,
                "weight": np_(self.linear.weight),
                "bias": np_(self.linear.bias),
                "special_weight": np_(self.special.weight),
                "special_bias": np_(self.special.bias),
            }

            def every_entry(proj) -> np.ndarray:
                """``proj`` of every entry's (tuned) vector, a slice of entries at a time."""
                with torch.no_grad():
                    return np.concatenate(
                        [
                            np_(proj(self.vectors(torch.arange(i, min(i + 65536, len(table))))))
                            for i in range(0, len(table), 65536)
                        ]
                    )

            for name in ("key", "query"):
                proj = getattr(self, name, None)
                t[f"entry_{name}"] = (
                    every_entry(proj).reshape(len(table), heads, -1)
                    if proj is not None
                    else np.zeros((len(table), heads, 0), np.float32)
                )
            if self.window:
                t["entry_window"] = every_entry(self.window_in).reshape(len(table), 4, window_rank)
                t |= {
                    "window_offset_bias": np_(self.window_offset_bias),
                    "window_weight": np_(self.window_out.weight),
                    "window_bias": np_(self.window_out.bias),
                }
            for name, mlp in (("special", getattr(self, "special_mlp", None)), ("mlp", getattr(self, "mlp", None))):
                if mlp is not None:
                    layers = (mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias)
                    t |= {key: np_(x) for key, x in zip(mlp_keys(name), layers, strict=True)}
            if self.context_rank:
                t |= {
                    "entry_context": every_entry(self.context_entry),
                    "context_in": np_(self.context_text.weight),
                    "context_in_bias": np_(self.context_text.bias),
                    "context_out": np_(self.context_out.weight),
                    "context_out_bias": np_(self.context_out.bias),
                }
            return ContextPool(t)

    return Student()


def train_student(
    data: TrainingData,
    store: VocabularyStore,
    arch: str = TrainSettings.arch,
    attention_rank: int = TrainSettings.attention_rank,
    attention_heads: int = TrainSettings.attention_heads,
    mlp_hidden: int = TrainSettings.mlp_hidden,
    window: int = TrainSettings.window,
    window_rank: int = TrainSettings.window_rank,
    context: int = TrainSettings.context,
    special_hidden: int = TrainSettings.special_hidden,
    tune_entries: float = TrainSettings.tune_entries,
    epochs: int = TrainSettings.epochs,
    batch_size: int = TrainSettings.batch_size,
    lr: float = TrainSettings.lr,
    lr_schedule: str = TrainSettings.lr_schedule,
    loss: str = TrainSettings.loss,
    token_loss: float = TrainSettings.token_loss,
    weight_decay: float = TrainSettings.weight_decay,
    seed: int = TrainSettings.seed,
    show_progress_bar: bool = True,
    output_activation: str = "identity",
) -> tuple[WeightedMean | ContextPool, np.ndarray | None, dict]:
    """Fit a student of architecture ``arch``; returns its numpy network, the tuned entry vectors (None
    when frozen) and the training history. ``output_activation``: the teacher's last Dense layer's, applied
    to the network's output (see :func:`vocabert.distill.teacher.output_activation`)."""
    import torch

    if loss not in ("cosine", "cosine+mse", "mse"):
        raise VocabertError(f"unknown loss {loss!r}: use cosine, mse or cosine+mse")
    if lr_schedule not in ("constant", "cosine"):
        raise VocabertError(f"unknown learning-rate schedule {lr_schedule!r}: use constant or cosine")
    if arch not in ARCHS:
        raise VocabertError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")
    if attention_heads < 1:
        raise VocabertError(f"attention_heads={attention_heads}: a student has at least one head")
    if window < 0 or (window and window_rank < 1):
        raise VocabertError(f"window={window}, window_rank={window_rank}: the window needs >= 0 and a rank >= 1")
    if window and arch != ContextPool.name:
        raise VocabertError(f"the windowed attention is part of {ContextPool.name}, not {arch}")
    if special_hidden < 0 or (special_hidden and arch != ContextPool.name):
        raise VocabertError(f"special_hidden={special_hidden}: part of {ContextPool.name}, units >= 0")
    if context < 0 or (context and arch != ContextPool.name):
        raise VocabertError(f"context={context}: the context features are part of {ContextPool.name}, rank >= 0")
    if token_loss < 0 or (token_loss and not data.has_token_vectors):
        raise VocabertError(
            f"token_loss={token_loss}: needs a weight >= 0 and a teacher pass that kept token vectors (--token-sample)"
        )
    if arch != ContextPool.name or attention_rank == 0:
        attention_heads = 1  # without attention every head would pool alike
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    val_idx, train_idx = np.flatnonzero(data.validation), np.flatnonzero(~data.validation)
    n_val = len(val_idx)
    if len(train_idx) == 0:
        raise VocabertError("no training texts outside the validation share")

    table = torch.from_numpy(store.vectors(np.arange(len(store))))
    student = _student_module(
        table,
        arch,
        attention_rank,
        mlp_hidden,
        tune_entries,
        attention_heads,
        window,
        window_rank,
        context,
        special_hidden,
        token_head=token_loss > 0,
    )
    dense = [p for name, p in student.named_parameters() if not name.startswith("delta.")]
    optimizers = [torch.optim.Adam(dense, lr=lr)]
    if tune_entries:
        optimizers.append(torch.optim.SparseAdam(list(student.delta.parameters()), lr=lr))
    lengths = torch.from_numpy(np.asarray(data.lengths, dtype=np.float32))
    activation = {"identity": lambda x: x, "tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}[
        output_activation
    ]

    patterns = np.asarray(store.patterns)

    def forward(idx: np.ndarray, tokens: bool = False):
        """Student and teacher vectors of texts ``idx``, and the entries matched in them; with ``tokens``,
        also the token-level loss over the batch's matches in sampled texts (a 0-d tensor)."""
        starts, ends = data.ptr[idx], data.ptr[idx + 1]
        counts = ends - starts
        flat = np.arange(counts.sum()) + np.repeat(starts - np.cumsum(counts) + counts, counts)
        entry = torch.from_numpy(np.asarray(data.entries[flat], dtype=np.int64))
        segment = torch.from_numpy(np.repeat(np.arange(len(idx)), counts))
        # Targets are read from the teacher pass's file a batch at a time, never all at once.
        target = torch.nn.functional.normalize(torch.from_numpy(np.asarray(data.targets[idx], dtype=np.float32)), dim=1)
        if not tokens:
            out = student(entry, segment, len(idx), lengths[idx])
            return torch.nn.functional.normalize(activation(out), dim=1), target, entry
        sampled, occurrence = data.occurrence_targets(idx, flat, patterns)
        out, read = student(entry, segment, len(idx), lengths[idx], predict=torch.from_numpy(sampled))
        out = torch.nn.functional.normalize(activation(out), dim=1)
        if not len(sampled):
            return out, target, entry, torch.zeros(())
        per_match = 1 - torch.nn.functional.cosine_similarity(read, torch.from_numpy(occurrence), dim=1)
        return out, target, entry, per_match.mean()

    def loss_of(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cos = (out * target).sum(dim=1)
        if loss == "cosine":
            return (1 - cos).mean()
        mse = ((out - target) ** 2).sum(dim=1).mean()
        return mse if loss == "mse" else (1 - cos).mean() + mse

    def evaluate(idx: np.ndarray) -> float:
        with torch.no_grad():
            cos = [(lambda o, t, _: (o * t).sum(dim=1))(*forward(idx[i : i + 2048])) for i in range(0, len(idx), 2048)]
        return float(torch.cat(cos).mean()) if cos else float("nan")

    history = {"epochs": [], "n_train": int(len(train_idx)), "n_val": int(n_val)}
    best_val, best_state = (evaluate(val_idx) if n_val else -1.0), None
    history["val_cosine_before"] = best_val
    initial = {k: v.detach().clone() for k, v in student.state_dict().items()}
    steps = epochs * ((len(train_idx) + batch_size - 1) // batch_size)
    schedulers = [
        torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1.0 if lr_schedule == "constant" else 0.5 * (1 + np.cos(np.pi * step / steps))
        )
        for optimizer in optimizers
    ]
    bar = tqdm(total=steps, desc="train", unit="step", disable=not show_progress_bar)
    step = 0
    for epoch in range(epochs):
        rng.shuffle(train_idx)
        losses, token_losses = [], []
        for start in range(0, len(train_idx), batch_size):
            batch = forward(train_idx[start : start + batch_size], tokens=bool(token_loss))
            out, target, entry = batch[:3]
            value = loss_of(out, target) + weight_decay * (student.log_weight**2).sum() + student.penalty(entry)
            if token_loss:
                value = value + token_loss * batch[3]
                token_losses.append(batch[3].item())
            for optimizer in optimizers:
                optimizer.zero_grad()
            value.backward()
            for optimizer, scheduler in zip(optimizers, schedulers, strict=True):
                optimizer.step()
                scheduler.step()
            losses.append(value.item())
            bar.update(1)
            step += 1
            if step % REMAP_STEPS == 0 and data.token_vectors is not None:
                data.token_vectors = remapped(data.token_vectors)
        val = evaluate(val_idx) if n_val else float("nan")
        history["epochs"].append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val_cosine": val,
                "last_lr": schedulers[0].get_last_lr()[0],
            }
            | ({"train_token_loss": float(np.mean(token_losses))} if token_losses else {})
        )
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", val_cos=f"{val:.4f}")
        if not show_progress_bar:  # the bar's figures, one line an epoch
            log(f"train: epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}, validation cosine {val:.4f}")
        if not n_val or val > best_val:
            best_val, best_state = val, {k: v.detach().clone() for k, v in student.state_dict().items()}
    bar.close()
    student.load_state_dict(best_state or initial)  # no epoch beat the untrained mean: keep it
    history["best_val_cosine"] = best_val
    return student.export(), student.entry_vectors(), history


def remove_abandoned_matches(root: Path) -> None:
    """Remove the matches folders of trainings that were killed (SIGKILL skips their cleanup): the pid in
    the name is no longer running. A folder of a training still running elsewhere is left alone."""
    for folder in Path(root).glob(".matches-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and _running(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def run_training(
    ws: Workspace, settings: TrainSettings, force: bool = False, model_dir: str | Path | None = None
) -> StudentModel:
    """The ``train`` stage: skipped when current; else distil the student and write the model folder
    (``<workdir>/model``, or ``model_dir``)."""
    model_dir = Path(model_dir) if model_dir else ws.model_dir
    store, store_manifest = open_store(ws)
    key = {
        "provenance": ws.provenance,
        "settings": asdict(settings),
        "inputs": {"store": digest(ws.store_dir), "teacher pass": digest(ws.teacher_dir)},
    }
    if not force and is_current(model_dir, "model", key):
        log(f"train: {model_dir} is up to date")
        return StudentModel.load(model_dir)
    passed = open_teacher_pass(ws)
    vocab_manifest = read_manifest(ws.vocab_dir, "vocabulary")
    vocab_size = int(read_manifest(ws.corpus_dir, "corpus")["vocab_size"])
    started = time.perf_counter()
    remove_abandoned_matches(ws.root)
    matches_dir = temporary_dir(ws.root, f".matches-{os.getpid()}-")  # read while training, then removed
    try:
        data = training_data(
            passed,
            store,
            vocab_size,
            matches_dir,
            tokenizer_layout(ws.tokenizer_text).per_text,
            with_starts=settings.token_loss > 0,
        )
        log(f"train: {len(data)} texts ({int(data.validation.sum())} for validation), {len(data.entries)} matches")
        activation = output_activation(ws.teacher_path)
        network, tuned, history = train_student(
            data, store, show_progress_bar=ws.show_progress_bar, output_activation=activation, **asdict(settings)
        )
        del data
    finally:
        shutil.rmtree(matches_dir, ignore_errors=True)
    if tuned is not None:  # the model carries its own copy of the vectors: the tuned ones, same precision
        store = VocabularyStore.from_float(
            np.asarray(store.patterns), tuned, store_manifest["key"]["settings"]["dtype"], store.metadata
        )
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
    if activation != "identity":  # (absent for teachers without a Dense layer, whose folders stay as they were)
        config["output_activation"] = activation
    prompts, default_prompt = teacher_prompts(ws.teacher_path)
    if prompts:  # encode(prompt_name=...) as with the teacher; the corpus put them before the texts it trained on
        config |= {"prompts": prompts, "default_prompt_name": default_prompt}
    model = StudentModel(config, ws.tokenizer_text, store, network)
    listing = (ws.vocab_dir / "vocabulary.tsv").read_text(encoding="utf-8")
    model.save(model_dir, vocabulary_listing=listing)
    finish(model_dir, "model", key)
    log(f"train: model written to {model_dir}")
    return StudentModel.load(model_dir)
