"""What ``--targets-dtype float16`` costs a trained student: the same student trained on fp32 and fp16 targets.

Both are trained from one work directory's teacher pass and an entry store of the same corpus (the
``--preset fast`` student by default: minutes, not the default's hour), with the same seed; each is then
scored on the pass's validation texts against the **fp32** targets, and the two students are compared with
each other. Writes ``docs/results/fp16_targets.json``::

    python scripts/fp16_targets.py WORKDIR STORE_DIR [--preset fast]

WORKDIR holds the teacher pass (``teacher/``) and the corpus; STORE_DIR an entry store built from the same
corpus and teacher (``store/embeddings.safetensors``), e.g. the fast preset's.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from vocabert.cli import PRESETS
from vocabert.distill.teacher_pass import open_teacher_pass
from vocabert.distill.training import TrainSettings, train_student, training_data
from vocabert.distill.workspace import Workspace, read_manifest
from vocabert.model import StudentModel
from vocabert.store import VocabularyStore
from vocabert.tokenizer import tokenizer_layout


def validation_cosines(model: StudentModel, passed, targets: np.ndarray) -> np.ndarray:
    """The student's cosine to ``targets`` on every validation text of the pass."""
    out = []
    for rows, ids, offsets in passed.chunks():
        keep = np.flatnonzero(passed.validation[rows])
        if not len(keep):
            continue
        vectors = model.embed_ids(ids, offsets)[keep]
        target = np.asarray(targets[rows][keep], dtype=np.float32)
        target /= np.linalg.norm(target, axis=1, keepdims=True)
        out.append(np.einsum("ij,ij->i", vectors, target))
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("store_dir", type=Path)
    parser.add_argument("--preset", default="fast", choices=["fast", "default"])
    parser.add_argument("--out", type=Path, default=Path("docs/results/fp16_targets.json"))
    args = parser.parse_args()
    ws = Workspace(args.workdir, None, show_progress_bar=False)
    passed = open_teacher_pass(ws)
    store = VocabularyStore.load(args.store_dir / "embeddings.safetensors")
    vocab_size = int(read_manifest(ws.corpus_dir, "corpus")["vocab_size"])
    data = training_data(passed, store, vocab_size, added_per_text=tokenizer_layout(ws.tokenizer_text).per_text)
    preset = {k: v for k, v in PRESETS.get(args.preset, {}).items() if k in TrainSettings.__dataclass_fields__}
    settings = TrainSettings(**preset)
    fp32 = np.asarray(passed.targets, dtype=np.float32)
    rows, students = [], {}
    for dtype in ("float32", "float16"):
        targets = fp32 if dtype == "float32" else fp32.astype(np.float16)
        started = time.perf_counter()
        network, tuned, history = train_student(replace(data, targets=targets), store, show_progress_bar=False,
                                                **asdict(settings))  # fmt: skip
        vectors = store if tuned is None else VocabularyStore.from_float(
            np.asarray(store.patterns), tuned, store.dtype, store.metadata
        )  # fmt: skip
        config = {"architecture": network.name, "dim": store.dim, "entries": len(store), "vocab_size": vocab_size,
                  "max_length": ws.max_length, "provenance": ws.provenance}  # fmt: skip
        model = StudentModel(config, ws.tokenizer_text, vectors, network)
        cos = validation_cosines(model, passed, fp32)
        students[dtype] = model
        rows.append(
            {
                "targets": dtype,
                "target_cos_to_fp32": float(
                    np.mean(
                        np.einsum("ij,ij->i", fp32, targets.astype(np.float32))
                        / np.linalg.norm(fp32, axis=1)
                        / np.linalg.norm(targets.astype(np.float32), axis=1)
                    )
                ),  # fmt: skip
                "val_cos": float(cos.mean()),
                "training_best_val_cos": history["best_val_cosine"],  # against the targets it trained on
                "val_cos_p5": float(np.percentile(cos, 5)),
                "train_seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    a, b = [], []  # the two students against each other, on the validation texts
    for rows_, ids, offsets in passed.chunks():
        if passed.validation[rows_].any():
            keep = np.flatnonzero(passed.validation[rows_])
            a.append(students["float32"].embed_ids(ids, offsets)[keep])
            b.append(students["float16"].embed_ids(ids, offsets)[keep])
    between = np.einsum("ij,ij->i", np.concatenate(a), np.concatenate(b))
    rows[1]["students_cos"] = float(between.mean())
    table = {
        "title": "Training on fp16 targets against fp32 targets",
        "command": f"python scripts/fp16_targets.py {args.workdir} {args.store_dir} --preset {args.preset}",
        "provenance": f"measured {time.strftime('%Y-%m-%d')} on this machine's CPU: the {args.preset} student "
        f"(seed {settings.seed}) on the default run's teacher pass ({len(passed):,} texts, "
        f"{int(passed.validation.sum()):,} for validation); both scored against the fp32 targets",
        "labels": {
            "targets": "targets trained on",
            "target_cos_to_fp32": "targets: mean cos to fp32",
            "val_cos": "validation cos (to fp32 targets)",
            "val_cos_p5": "p5",
            "students_cos": "cos between the two students",
            "train_seconds": "training s",
        },
        "formats": {"target_cos_to_fp32": ".7f", "val_cos_p5": ".4f", "train_seconds": ".0f"}
        | dict.fromkeys(("val_cos", "students_cos"), ".5f"),
        "rows": rows,
    }
    args.out.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
