"""Stage 3: one teacher pass that gives both the entry store and the training targets.

For each training text the teacher returns its sentence embedding (the target, cached on disk)
and its contextual token vectors. Every vocabulary entry found in the text adds the mean of the
token vectors it covers to that entry's running sum, so an entry's vector is the mean of what the
teacher made of it across its real occurrences (*contextual*). Entries that never occur in the
pass are run through the teacher alone, wildcards as [MASK] (*isolated*, as Model2Vec does).

The sums are checkpointed, so an interrupted pass resumes after the last checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError, load_npy, write_json, write_manifest, write_npy
from vocabert.distill.cache import EmbeddingCache
from vocabert.distill.corpus import Corpus, Shard, hash_fraction
from vocabert.distill.mining import Vocabulary
from vocabert.distill.teacher import Teacher
from vocabert.matching import PAD, EntryIndex, Matches
from vocabert.store import VocabularyStore

VALIDATION_SHARE = 0.05


def teacher_texts(corpus: Corpus, share: float) -> Iterator[tuple[Shard, np.ndarray]]:
    """The training texts that the teacher sees, shard by shard in a fixed order, with a mask of
    the validation texts among them (their vectors stay out of the store, so that validation
    measures the student on texts it has not seen through the entries either)."""
    for shard in corpus.shards("train"):
        keys = corpus.keys(shard)
        chosen = np.array([share >= 1.0 or hash_fraction(k, "teacher:") < share for k in keys], dtype=bool)
        shard = shard.select(chosen)
        keys = [k for k, c in zip(keys, chosen, strict=True) if c]
        yield shard, np.array([hash_fraction(k, "validation:") < VALIDATION_SHARE for k in keys], dtype=bool)


def occurrence_sums(
    matches: Matches, patterns: np.ndarray, vectors: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per entry found: the sum over its occurrences of the mean vector of the tokens it covers."""
    fixed = patterns[matches.entry] >= 0  # (matches, width): positions that are tokens, not wildcards
    base = offsets[matches.text] + matches.start
    acc = np.zeros((len(matches), vectors.shape[1]), dtype=np.float32)
    for j in range(patterns.shape[1]):
        rows = np.flatnonzero(fixed[:, j])
        acc[rows] += vectors[base[rows] + j]
    acc /= fixed.sum(axis=1, keepdims=True)
    order = np.argsort(matches.entry, kind="stable")
    entries, first = np.unique(matches.entry[order], return_index=True)
    sums = np.add.reduceat(acc[order], first, axis=0)
    counts = np.diff(np.append(first, len(order)))
    return entries, sums, counts


def isolated_vectors(teacher: Teacher, patterns: np.ndarray, cls_id: int, sep_id: int, mask_id: int) -> np.ndarray:
    """Each pattern alone through the teacher (wildcards as [MASK]); mean of its tokens' vectors."""
    patterns = [p[p != PAD] for p in patterns]
    rows = [[cls_id, *np.where(p >= 0, p, mask_id).tolist(), sep_id] for p in patterns]
    out = np.zeros((len(patterns), teacher.dim), dtype=np.float32)
    for i, (p, vecs) in enumerate(zip(patterns, teacher.token_vectors(rows), strict=True)):
        out[i] = vecs[np.flatnonzero(p >= 0) + 1].mean(axis=0)  # +1 skips [CLS]
    return out


def embed_vocabulary(
    corpus: Corpus,
    vocab: Vocabulary,
    out_dir: str | Path,
    teacher: Teacher,
    cache: EmbeddingCache,
    special_ids: dict[str, int],
    teacher_share: float = 0.5,
    dtype: str = "float16",
    batch_size: int = 64,
    chunk_size: int = 512,
    checkpoint_every: int = 4096,
    inputs: dict | None = None,
    show_progress_bar: bool = True,
) -> VocabularyStore:
    """The ``embed`` stage: teacher pass over the training texts, then the store and its manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    patterns = vocab.patterns.astype(np.int64)
    n_entries, dim = len(patterns), teacher.dim
    index = EntryIndex(patterns, int(corpus.manifest["vocab_size"]))
    settings = {"teacher_share": teacher_share, "dtype": dtype, "entries": n_entries, "inputs": inputs or {}}

    # Resume from the last checkpoint made with the same vocabulary and settings.
    state_file, sums_file, counts_file = out_dir / "state.json", out_dir / "sums.npy", out_dir / "counts.npy"
    sums = np.zeros((n_entries, dim), dtype=np.float64)
    counts = np.zeros(n_entries, dtype=np.int64)
    done = 0
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("settings") == settings and state.get("teacher") == teacher.fingerprint:
            sums, counts = (
                load_npy(sums_file, "checkpoint", mmap=False),
                load_npy(counts_file, "checkpoint", mmap=False),
            )
            done = int(state["texts_done"])

    # The bar's total is an estimate from the manifest: counting exactly would read every shard twice.
    counts_by_source = corpus.manifest["counts"].values()
    total = round(teacher_share * sum(c["texts"] - c["heldout"] for c in counts_by_source))
    bar = tqdm(total=total, initial=done, desc="embed: teacher pass", unit="text", disable=not show_progress_bar)
    seen, since_checkpoint = 0, 0
    for shard, validation in teacher_texts(corpus, teacher_share):
        for start in range(0, len(shard), chunk_size):
            end = min(start + chunk_size, len(shard))
            if seen + (end - start) <= done:
                seen += end - start
                continue
            texts = shard.texts[start:end]
            sentences, ids, vectors = teacher.forward(texts, batch_size=batch_size)
            expected = shard.ids[shard.offsets[start] : shard.offsets[end]]
            got = np.concatenate(ids)
            if len(got) != len(expected) or not np.array_equal(got, expected):
                raise VocabertError(
                    "the teacher tokenizes differently from the corpus shards: the corpus was built with "
                    "another tokenizer; rebuild it with this teacher"
                )
            cache.put(texts, sentences)
            offsets = shard.offsets[start : end + 1] - shard.offsets[start]
            matches = index.match(got, offsets)
            matches = matches.subset(~validation[start:end][matches.text])
            entries, entry_sums, entry_counts = occurrence_sums(matches, patterns, np.concatenate(vectors), offsets)
            sums[entries] += entry_sums
            counts[entries] += entry_counts
            seen += end - start
            since_checkpoint += end - start
            bar.update(end - start)
            if since_checkpoint >= checkpoint_every:
                cache.flush()
                write_npy(sums_file, sums)
                write_npy(counts_file, counts)
                write_json(state_file, {"settings": settings, "teacher": teacher.fingerprint, "texts_done": seen})
                since_checkpoint = 0
    bar.close()
    cache.flush()
    if seen == 0:
        raise VocabertError("no training texts for the teacher pass (is the held-out fraction or share too high?)")

    vectors = np.zeros((n_entries, dim), dtype=np.float32)
    contextual = counts > 0
    vectors[contextual] = (sums[contextual] / counts[contextual, None]).astype(np.float32)
    alone = np.flatnonzero(~contextual)
    if len(alone):
        vectors[alone] = isolated_vectors(
            teacher, patterns[alone], special_ids["cls"], special_ids["sep"], special_ids["mask"]
        )
    store = VocabularyStore.from_float(
        vocab.patterns, vectors, dtype, {"teacher": teacher.fingerprint, "dim": dim, "dtype": dtype}
    )
    store.save(out_dir / "embeddings.safetensors")
    write_npy(out_dir / "occurrences.npy", counts)
    write_manifest(
        out_dir,
        "store",
        corpus.provenance,
        settings,
        texts=seen,
        contextual=int(contextual.sum()),
        isolated=int(len(alone)),
    )
    for f in (state_file, sums_file, counts_file):
        f.unlink(missing_ok=True)
    return store
