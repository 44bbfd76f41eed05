"""Mining throughput and peak memory, on a corpus and on a larger one made of its texts repeated.

    python scripts/mining_scale.py build --corpus runs/minilm-msmarco/corpus --times 20 --out /tmp/big
    python scripts/mining_scale.py measure --workdir /tmp/big [-- MINE OPTIONS...]

``build`` writes a work directory whose corpus is every shard of ``--corpus`` repeated ``--times``
times, each copy with its texts shuffled, the copies in a shuffled order (a memory test, not a
quality one: every phrase is ``--times`` times as frequent). ``measure`` runs ``vocabert mine
--force`` there and prints its wall time, the training tokens it counted, tokens/s, and the peak
resident memory of the command (the largest child's, from getrusage).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vocabert.artifacts import write_json
from vocabert.distill.corpus import Corpus, Shard, _save_shard, load_shard

REPO = Path(__file__).resolve().parents[1]


def build(args: argparse.Namespace) -> None:
    source = Corpus(args.corpus)
    out = Path(args.out) / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    names = []
    order = [(copy, n) for copy in range(args.times) for n in range(len(source.shard_paths))]
    order = [order[i] for i in rng.permutation(len(order))]
    for number, (copy, n) in enumerate(order):
        shard = load_shard(source.shard_paths[n], "all")  # one shard in memory at a time
        perm = rng.permutation(len(shard))
        lengths = np.diff(shard.offsets)[perm]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ids = np.concatenate([shard.ids[shard.offsets[i] : shard.offsets[i + 1]] for i in perm])
        copied = Shard(
            ids,
            offsets,
            [shard.texts[i] for i in perm],
            [f"{shard.text_ids[i]}~{copy}" for i in perm],
            shard.source[perm],
            shard.split[perm],
        )
        name = f"shard-{number:05d}.npz"
        _save_shard(out / name, copied, np.uint16)
        names.append(name)
    manifest = {**source.manifest, "shards": names, "repeated": {"from": str(source.dir), "times": args.times}}
    write_json(out / "manifest.json", manifest)
    print(f"{len(names)} shards -> {out}")


def measure(args: argparse.Namespace) -> None:
    corpus = Corpus(Path(args.workdir) / "corpus")
    tokens = sum(int(s.offsets[-1]) for s in corpus.shards("train"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "vocabert.cli", "mine", "--workdir", args.workdir, "--no-progress", "--force"]
    started = time.perf_counter()
    subprocess.run([*command, *args.options], env=env, check=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    row = {"training tokens": tokens, "seconds": round(seconds, 1), "tokens/s": round(tokens / seconds)}
    print(json.dumps({**row, "peak RSS MiB": round(peak), "options": args.options}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build")
    p.add_argument("--corpus", required=True)
    p.add_argument("--times", type=int, default=20)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=build)
    p = sub.add_parser("measure")
    p.add_argument("--workdir", required=True)
    p.add_argument("options", nargs="*", help="more `vocabert mine` options (after --)")
    p.set_defaults(func=measure)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
