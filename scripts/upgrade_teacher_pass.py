"""Upgrade a teacher pass written by an older vocabert to today's format, without the teacher.

Two older layouts are read:

- vocabert <= 0.1 kept every token's contextual vector (768 bytes per token). Today's pass keeps the
  vectors of a bounded token sample and the entry sums of the vocabulary (see
  :mod:`vocabert.distill.teacher_pass`): the sampled texts' vectors are copied, the entry sums added up from
  every old vector.
- a pass of today's layout with int32 token ids and float32 targets (the defaults before the ids became
  uint16 and the targets float16): the sample and the entry sums are copied as they are.

In both, the targets are written in ``--targets-dtype`` (today's default: float16) and the ids in the
dtype the tokenizer allows. Both lay the texts out in the same order (a shard's teacher texts sorted by
length, batch after batch), so the new files are the old ones rearranged and cast: what ``vocabert embed``
would have computed, minus the hours of the teacher::

    python scripts/upgrade_teacher_pass.py OLD_TEACHER_DIR WORKDIR [--token-sample N] [--targets-dtype D]

``WORKDIR`` holds the corpus and the vocabulary the pass belongs to; its ``teacher/`` is written (atomically
per file, the manifest last). The old directory is only read, and may be ``WORKDIR/teacher`` moved aside.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from vocabert.artifacts import VocabertError, read_json
from vocabert.distill.corpus import open_corpus
from vocabert.distill.embedding import (
    EmbedSettings,
    finish_pass,
    pass_key,
    plan_pass,
    sample_occurrence_sums,
    save_entry_sums,
    token_count,
)
from vocabert.distill.teacher_pass import ENTRY_SUMS, ROW_FIELDS, TARGET_DTYPES, TeacherPass, token_ids_dtype
from vocabert.distill.vocabulary import open_vocabulary
from vocabert.distill.workspace import Workspace, begin, digest


def open_old_pass(directory: Path) -> TeacherPass:
    """A pass of vocabert <= 0.1: rows (texts, 3), every token's vector."""
    m = read_json(directory / "manifest.json", "teacher pass")
    texts, tokens, dim = int(m["texts"]), int(m["tokens"]), int(m["dim"])
    rows = np.fromfile(directory / "rows.bin", dtype="<i8").reshape(texts, 3)
    offsets = np.concatenate([[0], np.cumsum(rows[:, 1])])
    return TeacherPass(
        targets=np.memmap(directory / "targets.bin", dtype="<f4", mode="r", shape=(texts, dim)),
        text_index=rows[:, 0].copy(),
        validation=rows[:, 2].astype(bool),
        token_offsets=offsets,
        token_ids=np.memmap(directory / "token_ids.bin", dtype="<i4", mode="r", shape=(tokens,)),
        token_vectors=np.memmap(directory / "token_vectors.bin", dtype="<f2", mode="r", shape=(tokens, dim)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the old teacher/ directory")
    parser.add_argument("workdir", type=Path, help="the work directory (corpus/ and vocab/ of that pass)")
    parser.add_argument(
        "--token-sample",
        type=token_count,
        default=None,
        help="(a pass of vocabert <= 0.1 only; today's keeps its sample) default: embed's",
    )
    parser.add_argument("--targets-dtype", choices=tuple(TARGET_DTYPES), default=EmbedSettings.targets_dtype)
    args = parser.parse_args()
    old_manifest = read_json(args.old / "manifest.json", "teacher pass")
    old_settings = old_manifest["key"]["settings"]
    layout_today = "sampled_tokens" in old_manifest
    if layout_today and args.token_sample not in (None, old_settings["token_sample"]):
        raise VocabertError("a pass of today's layout keeps its token sample: run `vocabert embed` for another")
    if layout_today:
        token_sample = old_settings["token_sample"]
    else:  # (0 keeps no vector: only an absent flag means embed's default)
        token_sample = EmbedSettings.token_sample if args.token_sample is None else args.token_sample
    settings = EmbedSettings(
        teacher_share=old_settings["teacher_share"],
        batch_size=old_settings["batch_size"],
        teacher_sources=tuple(old_settings.get("teacher_sources", ())),
        token_sample=token_sample,
        targets_dtype=args.targets_dtype,
        device="cpu",
        precision=old_settings.get("teacher_precision", "auto"),
    )
    ws = Workspace(args.workdir, Path(old_manifest["key"]["provenance"]["teacher_source"]), show_progress_bar=False)
    if old_manifest["key"]["inputs"]["corpus"] != digest(ws.corpus_dir):
        raise VocabertError(f"{args.old} was made from another corpus than {ws.corpus_dir}")
    corpus = open_corpus(ws)
    vocab_size = int(corpus.manifest["vocab_size"])
    plan = plan_pass(
        corpus, settings.teacher_share, settings.batch_size, settings.teacher_sources, settings.token_sample
    )
    old = TeacherPass.open(args.old) if layout_today else open_old_pass(args.old)
    if not np.array_equal(plan.lengths, np.diff(old.token_offsets)):
        raise VocabertError("the old pass's texts are not in the order this corpus plans them: run `vocabert embed`")
    out = begin(ws.teacher_dir)
    if out.resolve() == args.old.resolve():
        raise VocabertError("move the old teacher/ aside first: it is read while the new one is written")
    print(f"{plan.texts} texts, {plan.tokens} tokens; keeping {plan.sampled_tokens} token vectors")
    cast_copy(old.targets, out / "targets.bin", TARGET_DTYPES[settings.targets_dtype])
    cast_copy(old.token_ids, out / "token_ids.bin", token_ids_dtype(vocab_size))
    if layout_today:
        shutil.copyfile(args.old / "rows.bin", out / "rows.bin")
        shutil.copyfile(args.old / "token_vectors.bin", out / "token_vectors.bin")
        shutil.copyfile(args.old / ENTRY_SUMS, out / ENTRY_SUMS)
        note = "token sample and entry sums copied"
    else:
        rows = np.zeros((plan.texts, ROW_FIELDS), dtype="<i8")
        rows[:, 0], rows[:, 1], rows[:, 2] = old.text_index, plan.lengths, old.validation
        rows[:, 3] = plan.vector_offsets
        rows.tofile(out / "rows.bin")
        sampled = np.flatnonzero(plan.vector_offsets >= 0)
        with open(out / "token_vectors.bin", "wb") as f:
            for i in range(0, len(sampled), 4096):  # a run of texts at a time: bounded memory
                texts = sampled[i : i + 4096]
                lo, hi = old.token_offsets[texts], old.token_offsets[texts + 1]
                keep = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
                f.write(np.ascontiguousarray(old.token_vectors[keep]).tobytes())
        vocab, _ = open_vocabulary(ws)
        patterns = vocab.patterns.astype(np.int64)
        _, sums, counts = sample_occurrence_sums(old, patterns, vocab_size)
        save_entry_sums(out, digest(ws.vocab_dir), sums, counts)
        note = f"entry sums of {len(patterns)} entries ({int((counts > 0).sum())} seen)"
    key = pass_key(ws, settings, vocab_size)
    finish_pass(out, key, plan, old.dim, settings, vocab_size, upgraded_from=old_manifest.get("created"))
    print(f"teacher pass upgraded -> {out}; {note}")


def cast_copy(array, path: Path, dtype: str, rows_per_chunk: int = 1 << 16) -> None:
    """``array`` (a memory map or a FileArray) written to ``path`` in ``dtype``, a chunk at a time."""
    with open(path, "wb") as f:
        for lo in range(0, len(array), rows_per_chunk):
            f.write(np.ascontiguousarray(array[lo : lo + rows_per_chunk], dtype=dtype).tobytes())


if __name__ == "__main__":
    main()
