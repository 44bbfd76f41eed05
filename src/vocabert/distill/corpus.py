"""Stage 1: read texts and tokenize them with the teacher's tokenizer into shards on disk.

Readers stream ``id<TAB>text`` TSV (gz or plain), one-text-per-line files and JSONL with a ``text``
field. Each shard (a deflated .npz) holds the token ids of a run of texts (uint16 where the vocabulary
allows) with offsets, the texts themselves (later stages need them for the teacher), their ids, which
source they came from, and whether they are held out from training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError, atomic_write, sha256_file, write_json
from vocabert.distill.teacher import source_prompts
from vocabert.distill.workspace import (
    MANIFEST,
    Workspace,
    begin,
    check_same_tokenizer,
    finish,
    is_current,
    log,
    read_manifest,
)
from vocabert.options import option
from vocabert.readers import read_lines, read_texts, require_file
from vocabert.tokenizer import TextTokenizer

MSMARCO_HINT = (
    "MS MARCO passages are at https://microsoft.github.io/msmarco/ (collection.tsv: pid<TAB>passage); "
    "point vocabert at the data with --data-dir or VOCABERT_DATA, or give files with --passages/--queries"
)


# ---------------------------------------------------------------------------------------------- data


def default_data_dir() -> Path | None:
    """``$VOCABERT_DATA``, else the ``shared/data`` folder beside the repository (or the working dir)."""
    env = os.environ.get("VOCABERT_DATA")
    if env:
        return Path(env)
    candidates = [Path(__file__).resolve().parents[4] / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    candidates.append(Path.cwd() / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), None)


def _data_root(data_dir: str | Path | None) -> Path:
    root = Path(data_dir) if data_dir else default_data_dir()
    if root is None or not root.is_dir():
        raise VocabertError(f"no data folder found (looked for ../shared/data). {MSMARCO_HINT}")
    return root


def default_sources(data_dir: str | Path | None = None) -> dict[str, Path]:
    """The bundled texts: MS MARCO passages, two sets of MS MARCO queries (the 101k dev queries and
    12.7k others), and WordNet glosses, which cover every topic of the language in plain sentences."""
    root = _data_root(data_dir)
    sources = {
        "passages": root / "msmarco_passage" / "collection_subset.tsv.gz",
        "queries": root / "msmarco_queries_extra" / "queries.extra.tsv.gz",
        "dev_queries": root / "msmarco_queries_dev" / "queries.dev.txt.gz",
        "glosses": root / "general_text" / "wordnet_glosses.txt.gz",
    }
    for path in sources.values():
        if not path.is_file():
            raise VocabertError(f"{path} is missing. {MSMARCO_HINT}")
    return sources


def default_unseen_topics(data_dir: str | Path | None = None) -> Path:
    """The TREC DL 2019 candidate pools (their passages are held out as unseen topics by default)."""
    path = _data_root(data_dir) / "msmarco_passage" / "runs.dl19.top100.tsv.gz"
    if not path.is_file():
        raise VocabertError(f"{path} is missing: give --unseen-topics FILE or --unseen-topics none")
    return path


def read_id_list(path: str | Path) -> set[str]:
    """Passage ids from a file: a TREC run (``qid Q0 pid rank score tag``), a run with a header naming a
    ``pid`` column (the bundled ``runs.dl19.top100``), or one id per line."""
    ids: set[str] = set()
    column = None
    for number, line in read_lines(path, "id list"):
        fields = line.split()
        if number == 1 and "pid" in fields:
            column = fields.index("pid")
            continue
        if column is None:
            column = 2 if len(fields) == 6 else 0
        if len(fields) <= column:
            raise VocabertError(f"{path}:{number}: expected a passage id in column {column + 1}")
        ids.add(fields[column])
    return ids


def hash_fraction(key: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``key``: splits by it stay put when the corpus grows."""
    digest = hashlib.blake2b((salt + key).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


# What ``Shard.split`` holds for a text. Held-out texts never reach mining, the teacher pass or training.
# UNSEEN: held out with its whole topic (a DL19 pool, say). CROP: a sentence of a training passage, a
# training text for the teacher pass only (mining would count its passage's n-grams twice).
TRAIN, HELDOUT, UNSEEN, CROP = 0, 1, 2, 3
SPLITS = {"train": TRAIN, "heldout": HELDOUT, "unseen": UNSEEN, "crop": CROP}
SPLIT_GROUPS = {"teacher": (TRAIN, CROP)}  # what the teacher pass reads

PASSAGE_SENTENCES = "passage_sentences"  # the source of the crops
MIN_SENTENCE_WORDS = 4
# A sentence ends at . ! or ? followed by space and a capital, a digit or an opening quote or bracket.
# Not after initials (U.S.) or common titles.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\.[A-Z]\.)(?<!Mr\.)(?<!Dr\.)(?<!St\.)(?<!Ms\.)\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """The sentences of a passage of several sentences, those of at least ``MIN_SENTENCE_WORDS`` words.

    Each is a text of its own for the teacher: its sentence vector and its tokens' vectors in a shorter
    context are new targets for the same teacher compute per token. A wrong split (``U.S. Army``) costs
    nothing: the target is the teacher's vector of whatever text the crop is."""
    parts = [p.strip() for p in _SENTENCE_END.split(text)]
    return [p for p in parts if len(p.split()) >= MIN_SENTENCE_WORDS] if len(parts) > 1 else []


def parent_key(key: str) -> str:
    """The ``source:id`` that decides a text's teacher share and validation: a crop's passage, so that
    the sentences of a validation passage are validation texts too."""
    source, _, text_id = key.partition(":")
    return f"passages:{text_id.partition('#')[0]}" if source == PASSAGE_SENTENCES else key


def is_heldout(text_key: str, fraction: float) -> bool:
    """Held-out texts never reach training; ``text_key`` is ``source:id``."""
    return hash_fraction(text_key) < fraction


def dedup_key(text: str) -> int:
    """Identity of a text up to case and spacing: the same query in two files is one text."""
    normal = " ".join(text.lower().split())
    return int.from_bytes(hashlib.blake2b(normal.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class SeenKeys:
    """A set of 64-bit keys in one numpy array (open addressing, linear probing, at most half full).

    16 to 32 bytes a key (40 while it doubles) where a Python set of ints takes about 100 (an int object
    and a slot): 50M texts' keys fit in about 1.6 GB instead of 5.
    """

    def __init__(self, capacity: int = 1 << 16):
        self.table = np.zeros(1 << max(capacity - 1, 1).bit_length(), dtype=np.uint64)  # 0 marks a free slot
        self.size = 0
        self.has_zero = False  # the key 0 cannot live in the table

    def __len__(self) -> int:
        return self.size + self.has_zero

    def add(self, key: int) -> bool:
        """Add ``key`` (0 <= key < 2**64); False if it was there already."""
        if key == 0:
            new, self.has_zero = not self.has_zero, True
            return new
        table, mask = self.table, len(self.table) - 1
        i = key & mask
        while True:
            found = int(table[i])
            if found == key:
                return False
            if found == 0:
                break
            i = (i + 1) & mask
        table[i] = key
        self.size += 1
        if 2 * self.size > len(table):
            self._grow()
        return True

    def _grow(self, chunk: int = 1 << 20) -> None:
        # The keys are taken out and the old table freed before the new one exists, and they go in a chunk
        # at a time: the peak is the keys plus the new table, not two tables and a sort of every key.
        keys = self.table[self.table != 0]
        size = 2 * len(self.table)
        self.table = np.zeros(0, dtype=np.uint64)
        table = np.zeros(size, dtype=np.uint64)
        mask = np.uint64(size - 1)
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            slots = part & mask
            while len(part):  # each round places, per free slot, the first key that wants it
                free = table[slots] == 0
                _, first = np.unique(slots[free], return_index=True)
                placed = np.flatnonzero(free)[first]
                table[slots[placed]] = part[placed]
                left = np.ones(len(part), dtype=bool)
                left[placed] = False
                part, slots = part[left], (slots[left] + np.uint64(1)) & mask
        self.table = table


# --------------------------------------------------------------------------------------------- shards


@dataclass
class Shard:
    """A run of tokenized texts. ``ids[offsets[i]:offsets[i+1]]`` are the tokens of text ``i``."""

    ids: np.ndarray
    offsets: np.ndarray
    texts: list[str]
    text_ids: list[str]
    source: np.ndarray  # index into the corpus manifest's "sources"
    split: np.ndarray  # int8: TRAIN, HELDOUT or UNSEEN

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, mask: np.ndarray) -> Shard:
        """The texts where ``mask`` is true, as a new shard."""
        idx = np.flatnonzero(mask)
        lengths = np.diff(self.offsets)[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        pieces = [self.ids[self.offsets[i] : self.offsets[i + 1]] for i in idx]
        ids = np.concatenate(pieces) if pieces else self.ids[:0]
        return Shard(
            ids,
            offsets,
            [self.texts[i] for i in idx],
            [self.text_ids[i] for i in idx],
            self.source[idx],
            self.split[idx],
        )


def _pack_strings(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    # UTF-8 bytes plus offsets: numpy's fixed-width unicode arrays would cost 4 bytes x the longest text.
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unpack_strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = data.tobytes()
    return [raw[a:b].decode("utf-8", "surrogatepass") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _save_shard(path: Path, shard: Shard, id_dtype: np.dtype) -> None:
    texts, text_offsets = _pack_strings(shard.texts)
    text_ids, text_id_offsets = _pack_strings(shard.text_ids)
    arrays = {
        "ids": shard.ids.astype(id_dtype),
        "offsets": shard.offsets,
        "texts": texts,
        "text_offsets": text_offsets,
        "text_ids": text_ids,
        "text_id_offsets": text_id_offsets,
        "source": shard.source.astype(np.int8),
        "split": shard.split.astype(np.int8),
    }

    def _write(p: Path) -> None:
        # An .npz that np.load reads, deflated at level 1: half the bytes (the texts are two thirds of a shard)
        # for about 15 ms a MB; np.savez_compressed's level 6 takes three times as long for 9% less.
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for name, array in arrays.items():
                with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)

    atomic_write(path, _write)


def load_shard(path: str | Path, split: str = "all") -> Shard:
    """A shard file, restricted to ``split`` ("all", "train", "heldout", "unseen", "crop", or "teacher":
    train and crop)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            shard = Shard(
                z["ids"].astype(np.int64),
                z["offsets"],
                _unpack_strings(z["texts"], z["text_offsets"]),
                _unpack_strings(z["text_ids"], z["text_id_offsets"]),
                z["source"],
                z["split"],
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise VocabertError(f"corpus shard {path} is corrupt or truncated ({e}); rebuild the corpus") from None
    if split == "all":
        return shard
    return shard.select(np.isin(shard.split, SPLIT_GROUPS.get(split) or (SPLITS[split],)))


def shard_keys(shard: Shard, sources: list[str]) -> list[str]:
    """Stable ``source:id`` keys of a shard's texts (what splits are hashed on)."""
    return [f"{sources[s]}:{i}" for s, i in zip(shard.source, shard.text_ids, strict=True)]


class Corpus:
    """A finished corpus artifact: a manifest and its shards."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir, "corpus")
        self.sources: list[str] = self.manifest["sources"]
        self.shard_paths = [self.dir / name for name in self.manifest["shards"]]
        for p in self.shard_paths:
            if not p.is_file():
                raise VocabertError(f"corpus {self.dir} is missing its shard {p.name}; rebuild the corpus")

    def keys(self, shard: Shard) -> list[str]:
        """Stable ``source:id`` keys of a shard's texts (what splits are hashed on)."""
        return shard_keys(shard, self.sources)

    @property
    def provenance(self) -> dict:
        return self.manifest["key"]["provenance"]

    def shards(self, split: str = "all", progress: str | None = None) -> Iterator[Shard]:
        """Shards restricted to ``split``: "all", "train", "heldout" (a random share of every source),
        "unseen" (held out with their topic), "crop" (sentences of training passages) or "teacher" (train
        and crop: what the teacher pass reads)."""
        if split != "all" and split not in SPLITS and split not in SPLIT_GROUPS:
            raise VocabertError(f"unknown split {split!r}: use all, {', '.join([*SPLITS, *SPLIT_GROUPS])}")
        paths = tqdm(self.shard_paths, desc=progress, unit="shard", disable=progress is None)
        for path in paths:
            yield load_shard(path, split)

    def texts(self, split: str, source: str | None = None) -> list[str]:
        """All texts of a split (optionally of one source), in corpus order."""
        src = self.sources.index(source) if source is not None else None
        out: list[str] = []
        for shard in self.shards(split):
            out.extend(t for t, s in zip(shard.texts, shard.source, strict=True) if src is None or s == src)
        return out


@dataclass(frozen=True)
class CorpusInputs:
    """The texts the ``corpus`` stage reads: the bundled ones, or the user's files."""

    data_dir: str | None = option(
        None,
        "folder with msmarco_passage/ and msmarco_queries_extra/ (default: $VOCABERT_DATA, else ../shared/data "
        "beside the repository)",
    )
    passages: str | None = option(
        None,
        "passages file instead of the bundled ones: pid<TAB>text TSV (gz or plain, e.g. the full MS MARCO "
        "collection.tsv), JSONL with a 'text' field, or one text per line",
    )
    queries: str | None = option(None, "queries file (same formats) used for training too")

    def sources(self) -> dict[str, Path]:
        """Source name -> file: the passages (and queries) given, else the bundled texts."""
        sources = {"passages": Path(self.passages)} if self.passages else default_sources(self.data_dir)
        if self.queries:
            sources["queries"] = Path(self.queries)
        return sources


@dataclass(frozen=True)
class CorpusSettings:
    """Settings of the ``corpus`` stage, each a command-line option (every default lives here)."""

    heldout_fraction: float = option(
        0.1,
        "share of texts held out from training, chosen by a hash of the id",
        flag="--heldout",
        metavar="FRACTION",
    )
    shard_size: int = option(20_000, "texts per shard")  # the unit of streaming and of resuming
    unseen_topics: str | None = option(
        None,
        "passage ids to hold out with their topics, for a topic-disjoint check: a TREC run, a run with a 'pid' "
        "header, or one id per line; 'none' for no such split (default: the TREC DL 2019 pools of the bundled "
        "data, runs.dl19.top100)",
        metavar="FILE",
    )
    dedup: bool = option(
        True,
        "keep texts that repeat one already read (by default they are skipped: the query files overlap)",
        flag="--no-dedup",
    )  # a text already read (up to case and spacing)
    passage_sentences: bool = option(
        True,
        "add the sentences of training passages as teacher-pass texts of their own: more targets from the same "
        "passages for more teacher time; mining never counts them",
        action=argparse.BooleanOptionalAction,
    )


NO_UNSEEN_TOPICS = "none"  # --unseen-topics none: no topic-disjoint split


def run_corpus(
    ws: Workspace,
    sources: dict[str, Path],
    settings: CorpusSettings,
    force: bool = False,
    data_dir: str | Path | None = None,
) -> Corpus:
    """The ``corpus`` stage over a work directory. Unless ``settings.unseen_topics`` says otherwise, the
    passages of the DL19 pools (from ``data_dir``) are held out as unseen topics, when that file exists."""
    unseen: Path | None = None
    if settings.unseen_topics and settings.unseen_topics != NO_UNSEEN_TOPICS:
        unseen = require_file(settings.unseen_topics, "unseen-topics file")
    elif settings.unseen_topics is None and "passages" in sources:
        try:
            unseen = default_unseen_topics(data_dir)
        except VocabertError:
            unseen = None  # own data without the bundled runs: a random split only
    if force:  # without a manifest and the recorded state, every shard is rebuilt
        for name in (MANIFEST, "state.json"):
            (ws.corpus_dir / name).unlink(missing_ok=True)
    log(f"corpus: tokenizing {', '.join(f'{k}={v}' for k, v in sources.items())}")
    corpus = build_corpus(
        sources,
        ws.corpus_dir,
        ws.provenance,
        ws.tokenizer_text,
        ws.max_length,
        heldout_fraction=settings.heldout_fraction,
        shard_size=settings.shard_size,
        unseen_topics=unseen,
        dedup=settings.dedup,
        passage_sentences=settings.passage_sentences,
        show_progress_bar=ws.show_progress_bar,
        prompts=source_prompts(ws.teacher_path, [*sources, PASSAGE_SENTENCES]),
    )
    for name, c in corpus.manifest["counts"].items():
        if name == PASSAGE_SENTENCES:
            log(f"corpus: {name}: {c['texts']} sentences of training passages, {c['tokens']} tokens")
            continue
        log(
            f"corpus: {name}: {c['texts']} texts ({c['heldout']} held out at random, {c['unseen']} with unseen "
            f"topics, {c['duplicates']} duplicates skipped), {c['tokens']} tokens"
        )
    return corpus


def open_corpus(ws: Workspace) -> Corpus:
    """The finished corpus of a work directory, checked against the teacher's tokenizer."""
    corpus = Corpus(ws.corpus_dir)
    check_same_tokenizer(ws.provenance, corpus.provenance, f"corpus {ws.corpus_dir}")
    return corpus


def build_corpus(
    sources: dict[str, Path],
    out_dir: str | Path,
    provenance: dict,
    tokenizer_text: str,
    max_length: int,
    heldout_fraction: float = CorpusSettings.heldout_fraction,
    shard_size: int = CorpusSettings.shard_size,
    unseen_topics: Path | None = None,
    dedup: bool = CorpusSettings.dedup,
    passage_sentences: bool = CorpusSettings.passage_sentences,
    batch_size: int = 2_000,
    show_progress_bar: bool = True,
    prompts: dict[str, str] | None = None,
) -> Corpus:
    """Tokenize every source into shards in ``out_dir``; skipped when current, resumes after the last
    finished shard otherwise.

    Passages (source ``passages``) whose id is listed in ``unseen_topics`` are held out as UNSEEN; of
    the others, ``heldout_fraction`` of every source is held out at random. With ``dedup``, a text
    already read (up to case and spacing, in any source) is skipped: the query files overlap. With
    ``passage_sentences``, the sentences of every training passage (:func:`split_sentences`) follow the
    sources as texts of source ``passage_sentences`` and split CROP (deduplicated against every text).
    ``prompts`` (source name -> prompt) puts the teacher's prompt before the texts of a source, as
    sentence-transformers would: the corpus, the teacher and the student all see the prompted text."""
    out_dir = Path(out_dir)
    for p in sources.values():
        if not Path(p).exists():
            raise VocabertError(f"input file {p} does not exist. {MSMARCO_HINT}")
    sources = {name: require_file(p) for name, p in sources.items()}
    stamps = {name: [p.stat().st_size, p.stat().st_mtime_ns] for name, p in sources.items()}
    settings = {
        "sources": {name: str(p.resolve()) for name, p in sources.items()},
        "source_stamps": stamps,  # an input edited in place is tokenized again
        "heldout_fraction": heldout_fraction,
        "max_length": max_length,
        "shard_size": shard_size,
        "dedup": dedup,
        **({"passage_sentences": True} if passage_sentences else {}),  # (corpora without them keep their key)
        "unseen_topics": [str(unseen_topics), sha256_file(unseen_topics)] if unseen_topics else None,
        **({"prompts": prompts} if prompts else {}),  # (corpora without prompts keep their key)
    }
    key = {"provenance": provenance, "settings": settings}
    if is_current(out_dir, "corpus", key):
        return Corpus(out_dir)
    tokenizer = TextTokenizer(tokenizer_text, max_length)
    vocab_size = tokenizer.hf.get_vocab_size(with_added_tokens=True)
    id_dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    begin(out_dir)
    # Shard boundaries are deterministic, so a rerun with the same key keeps the finished shards.
    state_path = out_dir / "state.json"
    if not state_path.is_file() or json.loads(state_path.read_text()) != key:
        for old in out_dir.glob("shard-*.npz"):
            old.unlink()
    write_json(state_path, key)

    names = list(sources) + ([PASSAGE_SENTENCES] if passage_sentences and "passages" in sources else [])
    shard_names: list[str] = []
    counts = {name: {"texts": 0, "heldout": 0, "unseen": 0, "duplicates": 0, "tokens": 0} for name in names}
    unseen_ids = read_id_list(unseen_topics) if unseen_topics else set()
    seen = SeenKeys()
    # What the shards hold: the corpus's identity for the stages that read it (see workspace.digest).
    content = hashlib.sha256(json.dumps([names, vocab_size]).encode())
    buffer: list[tuple[str, str, int, int]] = []  # id, text, source, split
    bar = tqdm(desc="corpus: tokenizing", unit="text", disable=not show_progress_bar)

    def split_of(name: str, text_id: str) -> int:
        if name == "passages" and text_id in unseen_ids:
            return UNSEEN
        return HELDOUT if is_heldout(f"{name}:{text_id}", heldout_fraction) else TRAIN

    def flush() -> None:
        index = len(shard_names)
        path = out_dir / f"shard-{index:05d}.npz"
        texts = [t for _, t, _, _ in buffer]
        ids_, srcs = [i for i, _, _, _ in buffer], np.array([s for _, _, s, _ in buffer], dtype=np.int8)
        split = np.array([sp for _, _, _, sp in buffer], dtype=np.int8)
        if path.is_file():
            shard = load_shard(path)
            if shard.text_ids != ids_:
                raise VocabertError(f"{path} does not match its input; delete {out_dir} and rerun")
        else:
            parts = [tokenizer.encode_ids(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
            ids = np.concatenate([p[0] for p in parts])
            lengths = np.concatenate([np.diff(p[1]) for p in parts])
            offsets = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            shard = Shard(ids, offsets, texts, ids_, srcs, split)
            _save_shard(path, shard, id_dtype)
        for array in (shard.ids, shard.offsets, shard.source, shard.split):
            content.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        content.update("\0".join(shard.text_ids + shard.texts).encode())
        for s, name in enumerate(names):
            mine = shard.source == s
            counts[name]["texts"] += int(mine.sum())
            counts[name]["heldout"] += int((mine & (shard.split == HELDOUT)).sum())
            counts[name]["unseen"] += int((mine & (shard.split == UNSEEN)).sum())
            counts[name]["tokens"] += int(np.diff(shard.offsets)[mine].sum())
        shard_names.append(path.name)
        bar.update(len(buffer))
        buffer.clear()

    prompt_of = [(prompts or {}).get(name, "") for name in names]

    def add(text_id: str, text: str, s: int, split: int) -> None:
        if dedup:
            if not seen.add(dedup_key(text)):
                counts[names[s]]["duplicates"] += 1
                return
        buffer.append((text_id, prompt_of[s] + text, s, split))
        if len(buffer) >= shard_size:
            flush()

    for s, name in enumerate(sources):
        for text_id, text in read_texts(sources[name]):
            add(text_id, text, s, split_of(name, text_id))
    if PASSAGE_SENTENCES in names:
        # A second read of the passages, after every source: a crop never displaces a text of the corpus
        # (a later passage or query equal to it) and never repeats a held-out one.
        crops = names.index(PASSAGE_SENTENCES)
        for text_id, text in read_texts(sources["passages"]):
            if split_of("passages", text_id) == TRAIN:
                for k, sentence in enumerate(split_sentences(text)):
                    add(f"{text_id}#{k}", sentence, crops, CROP)
    if buffer:
        flush()
    bar.close()
    finish(
        out_dir,
        "corpus",
        key,
        sources=names,
        shards=shard_names,
        counts=counts,
        vocab_size=vocab_size,
        content=content.hexdigest()[:16],
    )
    return Corpus(out_dir)
