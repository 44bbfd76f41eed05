"""How far can vocabulary entries go? Untrained estimates of the teacher's sentence vector from a work
directory's teacher pass and entry store, against the teacher's own, by how the entries are combined.

    python scripts/position_bounds.py [--workdir runs/minilm-msmarco] [--texts 4000]

The teacher's sentence vector is the mean of its contextual token vectors, [CLS] and [SEP] included. For a
sample of teacher-pass texts (validation ones included) this prints the mean cosine to it of:

- ``flat``: the plain mean of every matched entry's stored vector (what pooling starts from);
- ``position mean``: each position takes the mean of the entries covering it, positions weigh equally;
- ``most specific``: each position takes the covering entry with the most fixed tokens;
- ``tokens only``: each position takes its single token's entry;
- each of those ``+ true specials``: with the teacher's own [CLS] and [SEP] vectors added, which no student
  has, to show how much of the gap is theirs;
- ``oracle tokens``: the teacher's own token vectors without [CLS]/[SEP] (what perfect per-token estimates give).

Split by length (texts of at most 40 tokens are mostly queries and glosses, longer ones passages).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vocabert.distill.teacher_pass import TeacherPass
from vocabert.distill.workspace import read_manifest
from vocabert.matching import EntryIndex
from vocabert.model import normalize
from vocabert.store import VocabularyStore


def estimates(ids: np.ndarray, vectors: np.ndarray, index: EntryIndex, store: VocabularyStore) -> dict:
    """Unnormalized estimates of one text's sentence vector (see the module docstring)."""
    n = len(ids)
    m = index.match(ids, np.array([0, n]))
    patterns = np.asarray(store.patterns)[m.entry]
    entry_vectors = store.vectors(m.entry)
    fixed = (patterns >= 0).sum(axis=1)
    match, offset = np.nonzero(patterns >= 0)
    position = m.start[match] + offset  # every (match, covered position) pair
    total = np.zeros((n, vectors.shape[1]))
    np.add.at(total, position, entry_vectors[match])
    count = np.bincount(position, minlength=n)[:, None]
    mean = total / np.maximum(count, 1)
    specific = np.zeros_like(mean)
    order = np.argsort(fixed[match], kind="stable")  # later (more specific) assignments win
    specific[position[order]] = entry_vectors[match[order]]
    single = np.zeros_like(mean)
    token = (fixed == 1) & ((patterns != -1).sum(axis=1) == 1)
    single[m.start[token]] = entry_vectors[token]
    inner = slice(1, n - 1)
    specials = vectors[0] + vectors[-1]
    out = {"flat": entry_vectors.mean(axis=0)}
    for name, per_position in (("position mean", mean), ("most specific", specific), ("tokens only", single)):
        out[name] = per_position[inner].sum(axis=0)
        out[f"{name} + true specials"] = out[name] + specials
    out["oracle tokens"] = vectors[inner].sum(axis=0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/minilm-msmarco"))
    parser.add_argument("--texts", type=int, default=4000)
    args = parser.parse_args()
    passed = TeacherPass.open(args.workdir / "teacher")
    store = VocabularyStore.load(args.workdir / "store" / "embeddings.safetensors")
    vocab_size = int(read_manifest(args.workdir / "corpus", "corpus")["vocab_size"])  # as training reads it
    index = EntryIndex(np.asarray(store.patterns), vocab_size)
    sample = np.sort(np.random.default_rng(0).choice(len(passed), min(args.texts, len(passed)), replace=False))
    cosines: dict[str, list[float]] = {}
    lengths = []
    for i in sample:
        lo, hi = passed.token_offsets[i], passed.token_offsets[i + 1]
        ids = np.asarray(passed.token_ids[lo:hi], dtype=np.int64)
        vectors = np.asarray(passed.token_vectors[lo:hi], dtype=np.float32)
        target = normalize(np.asarray(passed.targets[i : i + 1]))[0]
        for name, estimate in estimates(ids, vectors, index, store).items():
            cosines.setdefault(name, []).append(float(normalize(estimate[None])[0] @ target))
        lengths.append(hi - lo)
    short = np.asarray(lengths) <= 40
    print(f"{len(sample)} teacher-pass texts of {args.workdir} ({short.sum()} of <= 40 tokens)")
    print(f"{'estimate':32s} {'all':>7s} {'<=40':>7s} {'>40':>7s}")
    for name, values in cosines.items():
        v = np.asarray(values)
        print(f"{name:32s} {v.mean():7.4f} {v[short].mean():7.4f} {v[~short].mean():7.4f}")


if __name__ == "__main__":
    main()
