"""The teacher's outputs at reduced precision against float32: what ``--teacher-precision`` costs.

Runs the teacher on the given device at float32, float16 and bfloat16 over MS MARCO passages and dev queries,
and writes the cosines of the sentence embeddings (the targets) and of the token vectors to the float32 ones
as a docs table (``docs/results/teacher_precision.json``)::

    python scripts/teacher_precision.py [--device cpu|cuda] [--texts 256]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

from vocabert.distill.corpus import default_data_dir
from vocabert.distill.teacher import Teacher


def first_texts(path: Path, n: int) -> list[str]:
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if len(out) >= n:
                break
            out.append(line.rstrip("\n").split("\t")[-1])
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--texts", type=int, default=256, help="of each source")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=Path("docs/results/teacher_precision.json"))
    args = parser.parse_args()
    texts = first_texts(args.data_dir / "msmarco_passage" / "collection_subset.tsv.gz", args.texts)
    texts += first_texts(args.data_dir / "msmarco_queries_dev" / "queries.dev.txt.gz", args.texts)
    reference = Teacher(None, args.device, "float32").forward(texts)
    rows = []
    for precision in ("float16", "bfloat16"):
        found = Teacher(None, args.device, precision).forward(texts)
        targets = cosines(reference[0], found[0])
        tokens = cosines(np.concatenate(reference[2]), np.concatenate(found[2]))
        rows.append(
            {
                "precision": precision,
                "targets_mean": float(targets.mean()),
                "targets_min": float(targets.min()),
                "tokens_mean": float(tokens.mean()),
                "tokens_min": float(tokens.min()),
            }
        )
        print(rows[-1], flush=True)
    table = {
        "title": f"The teacher at reduced precision against float32 ({args.device})",
        "command": f"python scripts/teacher_precision.py --device {args.device} --texts {args.texts}",
        "provenance": f"measured {time.strftime('%Y-%m-%d')} on {args.device}: {len(texts)} texts "
        f"({args.texts} MS MARCO passages, {args.texts} dev queries)",
        "labels": {
            "precision": "teacher precision",
            "targets_mean": "targets: mean cosine to float32",
            "targets_min": "targets: lowest",
            "tokens_mean": "token vectors: mean",
            "tokens_min": "token vectors: lowest",
        },
        "formats": {k: ".7f" for k in ("targets_mean", "targets_min", "tokens_mean", "tokens_min")},
        "rows": rows,
    }
    args.out.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
