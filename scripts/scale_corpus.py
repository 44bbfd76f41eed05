"""Larger training corpora made of the bundled real text: a deterministic generator for the cost curves.

    python scripts/scale_corpus.py --factor 16 --out runs/cost_curves/data/x16
    vocabert corpus --data-dir runs/cost_curves/data/x16 --workdir runs/cost_curves/work/x16

**What it writes.** A data folder laid out like ``../shared/data`` (what ``vocabert corpus`` reads by default,
see ``default_sources`` in ``src/vocabert/distill/corpus.py``), so ``vocabert corpus --data-dir OUT`` reads it
with every default unchanged: the same four sources under the same names, in the same formats::

    OUT/msmarco_passage/collection_subset.tsv.gz     passages, pid<TAB>text
    OUT/msmarco_passage/runs.dl19.top100.tsv.gz      the DL19 pools: which passages are unseen topics
    OUT/msmarco_queries_extra/queries.extra.tsv.gz   queries, qid<TAB>text
    OUT/msmarco_queries_dev/queries.dev.txt.gz       dev queries, one per line (the id is the line number)
    OUT/general_text/wordnet_glosses.txt.gz          WordNet glosses, one per line
    OUT/scale_corpus.json                            settings, inputs, counts (written last: the folder is complete)
    OUT/SOURCE.md                                    how it was made

Every file is streamed (one text in memory at a time on the output side; only the bundled inputs, about 30 MB
of text, and their word index are held) and gzip'd at level 1 with no name and no time in its header, so the
same command writes the same bytes. The folder is written under a temporary name and renamed when complete.

**How the texts are made.** A corpus at ``--factor N`` holds every bundled text once, verbatim and under its
own id (copy 0: factor 1 is the bundled corpus itself, token for token), then N - 1 *variants* of each:

- a text is cut into units: a passage into its sentences (the corpus stage's own sentence rule,
  ``_SENTENCE_END``), a query or gloss is one unit;
- each unit of a variant is *spliced*: a word ``w`` of the unit is picked at random (not its first); a
  partner unit that also holds ``w`` (not as its first word) is drawn from the same pool; the variant unit is
  the unit's words before ``w`` followed by the partner's words from ``w`` on (``what is the capital of
  france`` + ``population of the city of lyon`` -> ``what is the capital of the city of lyon``). A word
  picked at random is often a content word whose other units are about the same thing, so the splices mostly
  stay on topic; a function word gives a new topic mid-sentence, as recombination does;
- of up to 8 tries, the first whose length is within 20% (at least one word) of the length aimed at is kept,
  else the closest. The length aimed at is the unit's, moved by up to that tolerance against the words the
  source's variants have written beyond their templates so far: a variant keeps about its template's length,
  a passage variant its template's number of sentences, and each source's words are N times the originals'
  within a fraction of a percent (``size_ratio`` in ``scale_corpus.json``: all words / the originals' words);
- every text and every passage sentence written is distinct, up to case and spacing (the corpus stage's
  ``dedup_key`` identity), from every other one and from the originals: a Bloom filter (no false negatives;
  a false positive only costs another try) holds what was written. A unit with no distinct splice (a one-word
  query, say) takes the unit closest to its length of 8 drawn from its pool as its template; only if that
  fails three times is the unit written unchanged (the corpus stage then skips it as a duplicate;
  ``scale_corpus.json`` counts them). A passage's sentence of under 4 words with no splice is kept as it is
  (the corpus stage never makes it a text of its own).

**Held-out and unseen-topic splits.** ``vocabert corpus`` holds out a passage whose id is in the DL19 pools
(``runs.dl19.top100``) as an *unseen topic*, and 10% of every source at random by a hash of ``source:id``.
Generated text must not carry held-out words into training, so a variant, its template and all its splice
partners share one split:

- pools are per source and per split (train, held out at random, unseen topic); partners come from the
  template's pool only;
- a passage variant of an unseen-topic passage gets the id ``PID~C`` (C the copy) and is added to the
  written ``runs.dl19.top100`` under every DL19 query of its template (system ``scale_corpus``), so the corpus
  stage holds it out with the topics: no text about the 43 DL19 queries reaches training at any factor;
- any other TSV variant gets the id ``ID~C`` if its hash falls in its template's split, else ``ID~C.1``,
  ``ID~C.2``, ... until it does (the hash is the corpus stage's own ``hash_fraction``, so ids hash into the
  splits exactly as the bundled ones do);
- in a one-text-per-line file the id is the line number, which the generator cannot choose: line L's split
  is the hash of ``source:L`` and its template is the next original of that split (each split's originals in
  turn). Held-out shares therefore stay at the ``--heldout`` fraction (default 0.1, the corpus stage's
  default: pass the same ``--heldout`` to both).

**What a generated corpus is not.** Recombining sentences makes no new words and few new n-grams (only across
the splice points), where a real corpus N times larger keeps meeting new ones (Heaps' law). Mining counts
therefore grow more like a repeated corpus's (every phrase about N times as frequent) than a real one's, and
more phrases pass ``--min-count``. Costs that follow the number of texts or tokens (tokenizing, the teacher
pass, training) are measured faithfully; those that follow the number of distinct phrases are not.
"""

from __future__ import annotations

import argparse
import array
import gzip
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vocabert.distill.corpus import (  # noqa: E402
    _SENTENCE_END,
    MIN_SENTENCE_WORDS,
    CorpusSettings,
    default_data_dir,
    hash_fraction,
)
from vocabert.readers import read_texts  # noqa: E402

GENERATOR_VERSION = 2
# name (as the corpus stage calls the source), path under the data folder, format
SOURCES = [
    ("passages", "msmarco_passage/collection_subset.tsv.gz", "tsv"),
    ("queries", "msmarco_queries_extra/queries.extra.tsv.gz", "tsv"),
    ("dev_queries", "msmarco_queries_dev/queries.dev.txt.gz", "lines"),
    ("glosses", "general_text/wordnet_glosses.txt.gz", "lines"),
]
RUNS = "msmarco_passage/runs.dl19.top100.tsv.gz"
TRAIN, HELDOUT, UNSEEN = "train", "heldout", "unseen"
TRIES = 8  # splices tried per unit
LENGTH_TOLERANCE = 0.2  # a splice within 20% of its unit's length (at least one word) is kept at once
SENTENCE_ENDS = (".", "!", "?", '."', ".'", ".)", '?"', '!"')
GZIP_LEVEL = 1


# ------------------------------------------------------------------------------------------- identity


def identity(text: str) -> bytes:
    """A 16-byte digest of a text up to case and spacing: what the corpus stage's ``dedup_key`` compares."""
    normal = " ".join(text.lower().split())
    return hashlib.blake2b(normal.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class SeenFilter:
    """A Bloom filter of text identities: ``add`` and ``in`` with no false negatives, and false positives at
    about ``error`` when it holds ``capacity`` texts (``capacity`` x 2.4 bytes at 1e-4)."""

    def __init__(self, capacity: int, error: float = 1e-4):
        capacity = max(int(capacity), 1000)
        self.bits = max(64, math.ceil(-capacity * math.log(error) / math.log(2) ** 2))
        self.hashes = max(1, round(self.bits / capacity * math.log(2)))
        self.table = bytearray((self.bits + 7) // 8)
        self.count = 0

    def _positions(self, key: bytes) -> list[int]:
        h1, h2 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little") | 1
        bits = self.bits
        return [(h1 + i * h2) % bits for i in range(self.hashes)]

    def __contains__(self, key: bytes) -> bool:
        table = self.table
        for p in self._positions(key):
            if not table[p >> 3] & (1 << (p & 7)):
                return False
        return True

    def add(self, key: bytes) -> None:
        table = self.table
        for p in self._positions(key):
            table[p >> 3] |= 1 << (p & 7)
        self.count += 1


# ------------------------------------------------------------------------------------- units and pools


def passage_units(text: str) -> list[str]:
    """A passage's sentences, cut by the corpus stage's rule (every part kept, however short)."""
    return [p for p in (part.strip() for part in _SENTENCE_END.split(text)) if p] or [text]


class Pool:
    """The units (sentences or short texts) of one source and split, and which units hold each word."""

    def __init__(self, units: list[str]):
        self.units = units
        self.vocab: dict[str, int] = {}
        word_ids, unit_ids = array.array("i"), array.array("i")
        for u, unit in enumerate(units):
            for word in set(unit.split()[1:]):  # a partner's pivot is never its first word
                word_ids.append(self.vocab.setdefault(word, len(self.vocab)))
                unit_ids.append(u)
        words = np.frombuffer(word_ids, dtype=np.int32)
        order = np.argsort(words, kind="stable")
        starts = np.zeros(len(self.vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(words, minlength=len(self.vocab)), out=starts[1:])
        # (array.array: compact, and indexing gives Python ints quickly)
        self.postings = array.array("i", np.frombuffer(unit_ids, dtype=np.int32)[order].tobytes())
        self.starts = array.array("q", starts.tobytes())

    def __len__(self) -> int:
        return len(self.units)

    def partner(self, word: str, rng: random.Random) -> str | None:
        """A random unit holding ``word`` (not as its first word), or None."""
        w = self.vocab.get(word)
        if w is None:
            return None
        lo, hi = self.starts[w], self.starts[w + 1]
        return self.units[self.postings[lo + int(rng.random() * (hi - lo))]]


@dataclass
class Tally:
    """What the generator did for one source."""

    originals: int = 0
    variants: int = 0
    original_words: int = 0
    variant_words: int = 0
    units: int = 0  # units of the variants
    spliced: int = 0
    retemplated: int = 0  # no distinct splice of the unit: another unit of its pool was spliced instead
    short_kept: int = 0  # passage units under 4 words with no splice, kept as they were
    unchanged: int = 0  # no distinct splice at all: written as it was (the corpus stage skips a duplicate)
    surplus: int = 0  # words of the spliced units beyond their templates' (steers the lengths aimed at)
    ids_rehashed: int = 0  # variants whose id took a suffix to hash into their template's split
    splits: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        total = self.original_words + self.variant_words  # (the factor, ideally)
        out["size_ratio"] = round(total / self.original_words, 4) if self.original_words else None
        return out


def splice(unit: str, pool: Pool, rng: random.Random, seen: SeenFilter, surplus: int = 0) -> tuple[str, bytes] | None:
    """A distinct variant of ``unit`` (see the module docstring), with its identity; None if no try gives one.

    ``surplus`` (words written beyond the templates' so far) moves the length aimed at by up to the tolerance,
    so that a source's variants keep its size however the splices fall."""
    words = unit.split()
    n = len(words)
    if n < 2 or not len(pool):
        return None
    needs_end = unit.endswith(SENTENCE_ENDS)
    tolerance = max(1, round(LENGTH_TOLERANCE * n))
    target = n - max(-tolerance, min(tolerance, surplus))
    best: tuple[int, str, bytes] | None = None
    for _ in range(TRIES):
        i = 1 + int(rng.random() * (n - 1))
        pivot = words[i]
        other = pool.partner(pivot, rng)
        if other is None or (needs_end and not other.endswith(SENTENCE_ENDS)):
            continue  # (a sentence inside a passage keeps ending as one: the passage keeps its sentence count)
        theirs = other.split()
        # of the pivot's places in the partner, the one that keeps the unit's length best
        gap, j = min((abs(i + len(theirs) - j - target), j) for j in range(1, len(theirs)) if theirs[j] == pivot)
        if (best is not None and gap >= best[0]) or words[i:] == theirs[j:]:
            continue
        text = " ".join(words[:i] + theirs[j:])
        key = identity(text)
        if key in seen:
            continue
        best = (gap, text, key)
        if gap <= tolerance:
            break
    return None if best is None else (best[1], best[2])


def variant_unit(unit: str, pool: Pool, rng: random.Random, seen: SeenFilter, tally: Tally, in_passage: bool) -> str:
    """``unit`` spliced; failing that, a unit of the pool of about its length spliced; failing that, ``unit``."""
    tally.units += 1
    found = splice(unit, pool, rng, seen, tally.surplus)
    if found is None and in_passage and len(unit.split()) < MIN_SENTENCE_WORDS:
        tally.short_kept += 1  # (never a text of its own: the corpus stage crops sentences of 4 words or more)
        return unit
    if found is None:
        n, ends = len(unit.split()), unit.endswith(SENTENCE_ENDS)
        for _ in range(3):
            drawn = (pool.units[int(rng.random() * len(pool))] for _ in range(8))
            like = [u for u in drawn if u.endswith(SENTENCE_ENDS) == ends] or [unit]
            found = splice(min(like, key=lambda u: abs(len(u.split()) - n)), pool, rng, seen, tally.surplus)
            if found is not None:
                tally.retemplated += 1
                break
    if found is None:
        tally.unchanged += 1
        return unit
    tally.spliced += 1
    tally.surplus += len(found[0].split()) - len(unit.split())
    seen.add(found[1])
    return found[0]


def make_variant(text: str, is_passage: bool, pool: Pool, rng: random.Random, seen: SeenFilter, tally: Tally) -> str:
    """One variant of a text: each of its units spliced within ``pool``."""
    units = passage_units(text) if is_passage else [text]
    out = " ".join(variant_unit(u, pool, rng, seen, tally, is_passage) for u in units)
    if len(units) > 1:
        key = identity(out)
        if key not in seen:
            seen.add(key)
    return out


def copy_rng(seed: int, source: str, copy: int) -> random.Random:
    """The random stream of one copy of one source: any copy can be made alone, always the same."""
    digest = hashlib.blake2b(f"{seed}:{source}:{copy}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


# ------------------------------------------------------------------------------------------ generation


def split_of(source: str, text_id: str, heldout: float, unseen: set[str]) -> str:
    """The split ``vocabert corpus`` gives a text (see ``build_corpus.split_of``)."""
    if source == "passages" and text_id in unseen:
        return UNSEEN
    return HELDOUT if hash_fraction(f"{source}:{text_id}") < heldout else TRAIN


def build_pools(source: str, records: list[tuple[str, str]], splits: list[str], seen: SeenFilter) -> dict[str, Pool]:
    """One pool per split of a source's originals; every original text and unit goes into ``seen``."""
    units: dict[str, list[str]] = {TRAIN: [], HELDOUT: [], UNSEEN: []}
    for (_, text), split in zip(records, splits, strict=True):
        parts = passage_units(text) if source == "passages" else [text]
        units[split].extend(parts)
        seen.add(identity(text))
        for part in parts if len(parts) > 1 else []:
            seen.add(identity(part))
    return {split: Pool(u) for split, u in units.items()}


def tsv_variants(
    source: str,
    records: list[tuple[str, str]],
    splits: list[str],
    pools: dict[str, Pool],
    factor: int,
    seed: int,
    heldout: float,
    seen: SeenFilter,
    tally: Tally,
) -> Iterator[tuple[str, str, int]]:
    """``(new id, text, template index)`` of every variant of a TSV source, copy after copy."""
    for copy in range(1, factor):
        rng = copy_rng(seed, source, copy)
        for index, ((text_id, text), split) in enumerate(zip(records, splits, strict=True)):
            new_id = f"{text_id}~{copy}"
            if split != UNSEEN:
                suffix = 0
                while split_of(source, new_id, heldout, set()) != split:
                    suffix += 1
                    new_id = f"{text_id}~{copy}.{suffix}"
                tally.ids_rehashed += suffix > 0
            yield new_id, make_variant(text, source == "passages", pools[split], rng, seen, tally), index


def line_variants(
    source: str,
    records: list[tuple[str, str]],
    splits: list[str],
    pools: dict[str, Pool],
    factor: int,
    seed: int,
    heldout: float,
    seen: SeenFilter,
    tally: Tally,
) -> Iterator[tuple[str, str, int]]:
    """``(line number, text, template index)`` of every variant of a one-text-per-line source: line L's split
    is the hash of ``source:L``, its template the next original of that split."""
    by_split: dict[str, list[int]] = {}
    for index, split in enumerate(splits):
        by_split.setdefault(split, []).append(index)
    cursor = dict.fromkeys(by_split, 0)
    n = len(records)
    rng = None
    for line in range(n + 1, factor * n + 1):
        if (line - 1) % n == 0:
            rng = copy_rng(seed, source, (line - 1) // n)
        split = split_of(source, str(line), heldout, set())
        if split not in by_split:  # (a tiny slice with no original of that split)
            split = TRAIN if TRAIN in by_split else next(iter(by_split))
        index = by_split[split][cursor[split] % len(by_split[split])]
        cursor[split] += 1
        yield str(line), make_variant(records[index][1], False, pools[split], rng, seen, tally), index


def _open_gz(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = open(path, "wb")  # noqa: SIM115 (closed with the gzip stream below)
    return raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0)


class GzText:
    """A gzip'd UTF-8 text file with deterministic bytes, written a line at a time."""

    def __init__(self, path: Path):
        self.raw, self.gz = _open_gz(path)

    def write(self, line: str) -> None:
        self.gz.write(line.encode("utf-8", "surrogatepass") + b"\n")

    def close(self) -> None:
        self.gz.close()
        self.raw.close()


def read_runs(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The lines of a DL19 runs file and, per passage id, the query ids whose pools hold it."""
    lines, qids = [], {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = None
        for number, raw in enumerate(f):
            line = raw.rstrip("\n")
            lines.append(line)
            fields = line.split()
            if number == 0 and "pid" in fields:
                header = fields
                continue
            if header is None:  # a TREC run: qid Q0 pid rank score tag
                qid, pid = fields[0], fields[2]
            else:
                qid, pid = fields[header.index("qid")], fields[header.index("pid")]
            qids.setdefault(pid, [])
            if qid not in qids[pid]:
                qids[pid].append(qid)
    return lines, qids


def read_source(path: Path, fmt: str, limit: int | None) -> list[tuple[str, str]]:
    records = []
    for text_id, text in read_texts(path, fmt=fmt, warn=False):
        if limit is not None and len(records) >= limit:
            break
        records.append((text_id, text))
    return records


def generate(
    data_dir: Path,
    out: Path,
    factor: int,
    seed: int = 0,
    limit: int | None = None,
    heldout: float = CorpusSettings.heldout_fraction,
    trace: Callable[[str, str, str, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the data folder of ``factor`` x the bundled texts of ``data_dir`` (the first ``limit`` of each
    source if given) to ``out`` (see the module docstring); returns what ``scale_corpus.json`` holds.
    ``trace(source, new id, text, template index)`` sees every variant (for tests)."""
    if factor < 1:
        raise ValueError("factor must be at least 1")
    started = time.perf_counter()
    inputs = {name: data_dir / rel for name, rel, _ in SOURCES}
    for path in inputs.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: --data-dir must be laid out like ../shared/data")
    records = {name: read_source(inputs[name], fmt, limit) for name, _, fmt in SOURCES}
    runs_path = data_dir / RUNS
    run_lines, run_qids = read_runs(runs_path) if runs_path.is_file() else ([], {})
    unseen = set(run_qids)
    units = sum(len(passage_units(t)) for _, t in records["passages"]) + sum(
        len(r) for name, r in records.items() if name != "passages"
    )
    texts = sum(len(r) for r in records.values())
    seen = SeenFilter(factor * (units + texts) * 1.1)
    tallies: dict[str, Tally] = {}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    runs_out = GzText(tmp / RUNS) if run_lines else None
    for line in run_lines:
        runs_out.write(line)
    for name, rel, fmt in SOURCES:
        tally = tallies[name] = Tally()
        recs = records[name]
        splits = [split_of(name, text_id, heldout, unseen) for text_id, _ in recs]
        for split in splits:
            tally.splits[split] = tally.splits.get(split, 0) + 1
        pools = build_pools(name, recs, splits, seen)
        writer = GzText(tmp / rel)
        for text_id, text in recs:
            writer.write(f"{text_id}\t{text}" if fmt == "tsv" else text)
            tally.originals += 1
            tally.original_words += len(text.split())
        make = tsv_variants if fmt == "tsv" else line_variants
        for new_id, text, index in make(name, recs, splits, pools, factor, seed, heldout, seen, tally):
            writer.write(f"{new_id}\t{text}" if fmt == "tsv" else text)
            tally.variants += 1
            tally.variant_words += len(text.split())
            if name == "passages" and splits[index] == UNSEEN and runs_out is not None:
                for qid in run_qids[recs[index][0]]:
                    runs_out.write(f"scale_corpus\tdl19\t{qid}\t{new_id}\t0\t0")
            if trace is not None:
                trace(name, new_id, text, index)
        writer.close()
        log(
            f"scale_corpus: {name}: {tally.originals:,} originals + {tally.variants:,} variants "
            f"(size ratio {tally.as_dict()['size_ratio']}, {tally.unchanged} units unchanged)"
        )
    if runs_out is not None:
        runs_out.close()
    info = {
        "generator": "scripts/scale_corpus.py",
        "generator_version": GENERATOR_VERSION,
        "settings": {"factor": factor, "seed": seed, "limit": limit, "heldout": heldout},
        "inputs": {name: {"path": str(p), "bytes": p.stat().st_size} for name, p in inputs.items()},
        "counts": {name: t.as_dict() for name, t in tallies.items()},
        "bloom_filter": {"texts": seen.count, "bytes": len(seen.table), "hashes": seen.hashes},
    }
    (tmp / "SOURCE.md").write_text(_source_md(info), encoding="utf-8")
    (tmp / "scale_corpus.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return info | {"seconds": round(time.perf_counter() - started, 1)}  # (not in the file: same bytes each time)


def _source_md(info: dict) -> str:
    s = info["settings"]
    lines = [
        f"# Generated corpus: {s['factor']}x the bundled texts (scripts/scale_corpus.py, seed {s['seed']})",
        "",
        "Not real data: every bundled text once, verbatim, then variants made by splicing its sentences with",
        "other bundled sentences of the same source and split (see the docstring of scripts/scale_corpus.py).",
        "For measuring the pipeline's costs, not its quality. The texts are MS MARCO's and WordNet's: their",
        "terms apply (../shared/data/*/SOURCE.md).",
        "",
        "| source | originals | variants | words, all / originals' |",
        "|---|---:|---:|---:|",
    ]
    for name, c in info["counts"].items():
        lines.append(f"| {name} | {c['originals']:,} | {c['variants']:,} | {c['size_ratio']} |")
    return "\n".join(lines) + "\n"


def is_complete(out: Path, factor: int, seed: int, limit: int | None, heldout: float) -> bool:
    """Whether ``out`` is a finished folder of these settings (the cache test of scripts/cost_curves.py)."""
    marker = out / "scale_corpus.json"
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text(encoding="utf-8"))
    wanted = {"factor": factor, "seed": seed, "limit": limit, "heldout": heldout}
    return info.get("generator_version") == GENERATOR_VERSION and info.get("settings") == wanted


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--factor", type=int, required=True, help="size as a multiple of the bundled texts (1 = them)")
    parser.add_argument("--out", type=Path, required=True, help="data folder to write (laid out like ../shared/data)")
    parser.add_argument("--data-dir", type=Path, default=None, help="the bundled data (default: ../shared/data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N texts of each source (a slice)")
    parser.add_argument(
        "--heldout",
        type=float,
        default=CorpusSettings.heldout_fraction,
        help="the held-out share `vocabert corpus --heldout` will use (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="write it again even if a finished one is there")
    args = parser.parse_args(None if argv is None else list(argv))
    data_dir = args.data_dir or default_data_dir()
    if data_dir is None:
        parser.error("no data folder found: give --data-dir")
    if not args.force and is_complete(args.out, args.factor, args.seed, args.limit, args.heldout):
        print(f"scale_corpus: {args.out} is already complete (--force to write it again)")
        return 0
    info = generate(Path(data_dir), args.out, args.factor, args.seed, args.limit, args.heldout)
    print(f"scale_corpus: wrote {args.out} in {info['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
