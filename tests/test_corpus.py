"""Stage 1 (readers, splits, shards) and the artifact helpers it builds on."""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from vocabert.artifacts import VocabertError, atomic_write
from vocabert.distill import teacher
from vocabert.distill.corpus import (
    PASSAGE_SENTENCES,
    Corpus,
    build_corpus,
    hash_fraction,
    is_heldout,
    load_shard,
    parent_key,
    split_sentences,
)
from vocabert.distill.workspace import MANIFEST, digest, read_manifest
from vocabert.readers import read_texts


@pytest.fixture(scope="module")
def tok():
    path = teacher.resolve_teacher_path(None)
    return {"text": teacher.tokenizer_json(path), "prov": teacher.provenance(None)}


def write_lines(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# ------------------------------------------------------------------------------------------- readers


@pytest.mark.parametrize("name", ["p.tsv", "p.tsv.gz"])
def test_read_tsv(tmp_path, name):
    path = write_lines(tmp_path / name, ["1\tfirst text", "", "   ", "2\tsecond\r", "x y\tthird, with spaces", "4\t"])
    assert list(read_texts(path)) == [("1", "first text"), ("2", "second"), ("x y", "third, with spaces"), ("4", "")]


def test_read_tsv_crlf_file(tmp_path):
    path = tmp_path / "w.tsv"
    path.write_bytes(b"1\tone\r\n\r\n2\ttwo\r\n")
    assert list(read_texts(path)) == [("1", "one"), ("2", "two")]


@pytest.mark.parametrize("name", ["q.jsonl", "q.json", "q.jsonl.gz"])
def test_read_jsonl(tmp_path, name):
    lines = [
        json.dumps({"_id": "a1", "id": "ignored", "text": "with _id"}),
        "",
        json.dumps({"id": 7, "text": "with id"}),
        json.dumps({"text": "no id", "title": "t"}),
        json.dumps({"_id": 3, "text": "ünïcödé ✓"}, ensure_ascii=False),
    ]
    path = write_lines(tmp_path / name, lines)
    # Without an id the line number names the text.
    assert list(read_texts(path)) == [("a1", "with _id"), ("7", "with id"), ("4", "no id"), ("3", "ünïcödé ✓")]


def test_read_plain_lines(tmp_path):
    path = write_lines(tmp_path / "t.txt", ["alpha beta", "", "gamma\tdelta", "  "])
    assert list(read_texts(path)) == [("1", "alpha beta"), ("3", "gamma\tdelta")]


def test_tsv_line_without_tab(tmp_path):
    path = write_lines(tmp_path / "p.tsv", ["1\tok", "", "no tab here"])
    with pytest.raises(VocabertError, match=r"p\.tsv:3: expected 'id<TAB>text'"):
        list(read_texts(path))


def test_invalid_json_line(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [json.dumps({"text": "ok"}), "{broken"])
    with pytest.raises(VocabertError, match=r"q\.jsonl:2: not valid JSON"):
        list(read_texts(path))


@pytest.mark.parametrize("record", ['{"title": "x"}', '{"text": 5}', '{"text": null}', "[1, 2]", '"just a string"'])
def test_jsonl_without_text_string(tmp_path, record):
    path = write_lines(tmp_path / "q.jsonl", [record])
    with pytest.raises(VocabertError, match=r"q\.jsonl:1: expected a JSON object with a 'text' string"):
        list(read_texts(path))


@pytest.mark.parametrize(
    "name, content", [("e.tsv", b""), ("w.tsv", b"\n  \n\t\n\r\n"), ("e.jsonl", b"\n"), ("e.txt", b"   \n\n")]
)
def test_file_without_texts(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VocabertError, match="holds no texts"):
        list(read_texts(path))


def test_empty_gz_file_holds_no_texts(tmp_path):
    path = tmp_path / "e.tsv.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(VocabertError, match="holds no texts"):
        list(read_texts(path))


def test_missing_file(tmp_path):
    with pytest.raises(VocabertError, match="does not exist"):
        list(read_texts(tmp_path / "nope.tsv"))
    with pytest.raises(VocabertError, match="is a directory, not a file"):
        list(read_texts(tmp_path))  # a directory is not an input file


def test_invalid_utf8_becomes_replacement_character(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"1\tcaf\xe9 au lait\n2\t\xff\xfe ok\n3\tfine \xe2\x9c\x93\n")
    assert list(read_texts(path)) == [("1", "caf\ufffd au lait"), ("2", "\ufffd\ufffd ok"), ("3", "fine ✓")]


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.9, 0.999])
def test_truncated_gz(tmp_path, fraction):
    data = gzip.compress("".join(f"{i}\tpassage number {i} with some words\n" for i in range(3000)).encode())
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(VocabertError, match="truncated"):
        list(read_texts(path))


def test_not_gzip_despite_name(tmp_path):
    path = tmp_path / "plain.tsv.gz"
    path.write_bytes(b"1\tnot compressed\n")
    with pytest.raises(VocabertError, match="cannot be read"):
        list(read_texts(path))


def test_jsonl_with_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"_id": "1", "text": "hi"}).encode() + b"\n")
    assert list(read_texts(path)) == [("1", "hi")]


# -------------------------------------------------------------------------------------------- splits


def test_hash_fraction_is_deterministic_and_in_range():
    values = [hash_fraction(f"passages:{i}") for i in range(1000)]
    assert values == [hash_fraction(f"passages:{i}") for i in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert len(set(values)) == 1000
    assert hash_fraction("k", salt="a") != hash_fraction("k", salt="b")
    assert hash_fraction("\ud800odd") == hash_fraction("\ud800odd")  # lone surrogates hash too


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_is_heldout_matches_fraction(fraction):
    keys = [f"queries:{i}" for i in range(10_000)]
    held = [is_heldout(k, fraction) for k in keys]
    assert held == [is_heldout(k, fraction) for k in keys]
    share = sum(held) / len(keys)
    sigma = (fraction * (1 - fraction) / len(keys)) ** 0.5
    assert abs(share - fraction) < 5 * sigma
    # A larger fraction holds out a superset: growing the held-out share never moves texts into training.
    assert all(is_heldout(k, fraction + 0.1) for k, h in zip(keys, held, strict=True) if h)


def test_is_heldout_extremes():
    keys = [f"s:{i}" for i in range(500)]
    assert not any(is_heldout(k, 0.0) for k in keys)
    assert all(is_heldout(k, 1.0) for k in keys)


# ------------------------------------------------------------------------------------------- corpus


PASSAGES = [
    "The quick brown fox jumps over the lazy dog.",
    "New York City is the most populous city in the United States.",
    "",  # skipped: a blank line
    "How much does a gallon of milk cost?",
    "Ünïcödé téxt with accents and emoji ✓ works too.",
    " ".join(["token"] * 400),  # longer than max_length
    "short",
    "Paris is the capital of France.",
    "Water boils at 100 degrees Celsius at sea level.",
    "A [MASK] token in plain text.",
    "Photosynthesis converts light energy into chemical energy.",
    "The mitochondria is the powerhouse of the cell.",
]
QUERIES = ["what is the capital of france", "how much does milk cost", "new york city population", "x"]


@pytest.fixture
def sources(tmp_path) -> dict[str, Path]:
    passages = tmp_path / "in" / "passages.tsv"
    passages.parent.mkdir()
    lines = [f"p{i}\t{t}" if t else "" for i, t in enumerate(PASSAGES)]
    write_lines(passages, lines)
    queries = tmp_path / "in" / "queries.jsonl.gz"
    write_lines(queries, [json.dumps({"_id": f"q{i}", "text": t}) for i, t in enumerate(QUERIES)])
    return {"passages": passages, "queries": queries}


def expected_texts(sources) -> list[tuple[str, str, str]]:
    return [(name, i, t) for name, p in sources.items() for i, t in read_texts(p)]


def reference_ids(tokenizer_text: str, text: str, max_length: int) -> list[int]:
    ref = Tokenizer.from_str(tokenizer_text)
    ref.no_padding()
    ref.enable_truncation(max_length=max_length)
    return ref.encode(text).ids


def shard_mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.glob("shard-*.npz"))}


def test_build_corpus(tmp_path, sources, tok):
    out = tmp_path / "corpus"
    max_length = 32
    corpus = build_corpus(
        sources,
        out,
        tok["prov"],
        tok["text"],
        max_length,
        heldout_fraction=0.3,
        shard_size=5,
        batch_size=2,
        show_progress_bar=False,
    )
    expected = expected_texts(sources)
    assert len(expected) == 15
    manifest = read_manifest(out, "corpus")
    assert manifest == corpus.manifest
    assert manifest["sources"] == ["passages", "queries", PASSAGE_SENTENCES]  # (no crops: one sentence each)
    assert manifest["vocab_size"] == 30522
    assert manifest["key"]["provenance"] == tok["prov"]
    assert len(manifest["shards"]) == 3  # 15 texts in shards of 5
    assert manifest["key"]["settings"]["max_length"] == max_length

    reopened = Corpus(out)
    shards = list(reopened.shards())
    assert [len(s) for s in shards] == [5, 5, 5]
    rows = []
    for s in shards:
        assert s.ids.dtype == np.int64 and s.offsets[0] == 0 and s.offsets[-1] == len(s.ids)
        for j in range(len(s)):
            rows.append(
                (
                    reopened.sources[s.source[j]],
                    s.text_ids[j],
                    s.texts[j],
                    s.ids[s.offsets[j] : s.offsets[j + 1]].tolist(),
                    bool(s.split[j]),
                )
            )
    assert [(src, i, t) for src, i, t, _, _ in rows] == expected

    for src, i, text, ids, held in rows:
        assert ids == reference_ids(tok["text"], text, max_length)
        assert ids[0] == 101 and ids[-1] == 102 and len(ids) <= max_length
        assert held == is_heldout(f"{src}:{i}", 0.3)
    long_row = next(r for r in rows if r[2].startswith("token token"))
    assert len(long_row[3]) == max_length
    mask_row = next(r for r in rows if "[MASK]" in r[2])
    assert 103 in mask_row[3]

    for name in ("passages", "queries"):
        mine = [r for r in rows if r[0] == name]
        counts = manifest["counts"][name]
        assert counts["texts"] == len(mine)
        assert counts["heldout"] == sum(r[4] for r in mine)
        assert counts["tokens"] == sum(len(r[3]) for r in mine)
    assert 0 < sum(r[4] for r in rows) < len(rows)

    # The splits partition the texts, in corpus order.
    train = [
        (reopened.sources[s], i) for sh in reopened.shards("train") for s, i in zip(sh.source, sh.text_ids, strict=True)
    ]
    held = [
        (reopened.sources[s], i)
        for sh in reopened.shards("heldout")
        for s, i in zip(sh.source, sh.text_ids, strict=True)
    ]
    assert sorted(train + held) == sorted((r[0], r[1]) for r in rows)
    assert not set(train) & set(held)
    assert train == [(r[0], r[1]) for r in rows if not r[4]]
    assert all(not sh.split.any() for sh in reopened.shards("train"))
    for sh in reopened.shards("heldout"):
        assert (sh.split == 1).all()
        for j in range(len(sh)):
            assert sh.ids[sh.offsets[j] : sh.offsets[j + 1]].tolist() == reference_ids(
                tok["text"], sh.texts[j], max_length
            )
    assert reopened.texts("all") == [r[2] for r in rows]
    assert reopened.texts("train", "queries") == [r[2] for r in rows if r[0] == "queries" and not r[4]]
    assert reopened.keys(shards[0]) == [f"{r[0]}:{r[1]}" for r in rows[:5]]


def test_max_length_counts_special_tokens(tmp_path, sources, tok):
    corpus = build_corpus(
        sources, tmp_path / "c", tok["prov"], tok["text"], 8, heldout_fraction=0.0, show_progress_bar=False
    )
    (shard,) = list(corpus.shards())
    lengths = np.diff(shard.offsets)
    assert lengths.max() == 8
    assert not shard.split.any()
    for j in range(len(shard)):
        ids = shard.ids[shard.offsets[j] : shard.offsets[j + 1]]
        assert ids[0] == 101 and ids[-1] == 102
        assert ids.tolist() == reference_ids(tok["text"], shard.texts[j], 8)
    assert shard.texts[-1] == "x" and lengths[-1] == 3


def test_rerun_same_settings_does_not_rewrite(tmp_path, sources, tok):
    out = tmp_path / "corpus"
    kwargs = dict(heldout_fraction=0.2, shard_size=4, show_progress_bar=False)
    build_corpus(sources, out, tok["prov"], tok["text"], 64, **kwargs)
    shards = shard_mtimes(out)
    manifest_time = (out / MANIFEST).stat().st_mtime_ns
    assert len(shards) == 4
    again = build_corpus(sources, out, tok["prov"], tok["text"], 64, **kwargs)
    assert shard_mtimes(out) == shards
    assert (out / MANIFEST).stat().st_mtime_ns == manifest_time
    assert again.manifest["shards"] == list(shards)


def test_deleted_manifest_resumes_from_shards(tmp_path, sources, tok):
    out = tmp_path / "corpus"
    kwargs = dict(heldout_fraction=0.2, shard_size=4, show_progress_bar=False)
    first = build_corpus(sources, out, tok["prov"], tok["text"], 64, **kwargs)
    before = [(s.texts, s.ids.tolist(), s.split.tolist()) for s in first.shards()]
    shards = shard_mtimes(out)
    (out / MANIFEST).unlink()
    with pytest.raises(VocabertError, match="interrupted"):
        Corpus(out)
    # As after an interruption: the last shard was never written.
    last = sorted(out.glob("shard-*.npz"))[-1]
    last.unlink()
    resumed = build_corpus(sources, out, tok["prov"], tok["text"], 64, **kwargs)
    after = shard_mtimes(out)
    assert {k: v for k, v in after.items() if k != last.name} == {k: v for k, v in shards.items() if k != last.name}
    assert last.name in after
    assert [(s.texts, s.ids.tolist(), s.split.tolist()) for s in resumed.shards()] == before
    assert resumed.manifest["counts"] == first.manifest["counts"]


def test_changed_settings_rebuild(tmp_path, sources, tok):
    out = tmp_path / "corpus"
    build_corpus(sources, out, tok["prov"], tok["text"], 64, heldout_fraction=0.0, show_progress_bar=False)
    corpus = build_corpus(sources, out, tok["prov"], tok["text"], 16, heldout_fraction=0.0, show_progress_bar=False)
    assert corpus.manifest["key"]["settings"]["max_length"] == 16
    assert max(np.diff(s.offsets).max() for s in corpus.shards()) == 16


def test_edited_input_is_retokenized_after_force(tmp_path, sources, tok):
    out = tmp_path / "corpus"
    build_corpus(sources, out, tok["prov"], tok["text"], 64, heldout_fraction=0.0, show_progress_bar=False)
    write_lines(sources["passages"], [f"p{i}\tedited text {i}" for i, t in enumerate(PASSAGES) if t])
    (out / MANIFEST).unlink()  # what stage_corpus(force=True) does
    corpus = build_corpus(sources, out, tok["prov"], tok["text"], 64, heldout_fraction=0.0, show_progress_bar=False)
    assert corpus.texts("all", "passages")[0] == "edited text 0"


def test_touched_input_is_retokenized_but_keeps_the_corpus_identity(tmp_path, sources, tok):
    """A file copied again (new time, same bytes) reruns the corpus stage, but not the teacher pass after it:
    the stages that read the corpus know it by its content."""
    out = tmp_path / "corpus"
    kwargs = dict(heldout_fraction=0.2, shard_size=4, show_progress_bar=False)
    first = build_corpus(sources, out, tok["prov"], tok["text"], 64, **kwargs)
    identity = digest(out)
    stat = sources["passages"].stat()
    os.utime(sources["passages"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = build_corpus(sources, out, tok["prov"], tok["text"], 64, **kwargs)
    assert again.manifest["key"] != first.manifest["key"]  # the new time was seen
    assert digest(out) == identity
    write_lines(sources["passages"], [f"p{i}\tedited text {i}" for i, t in enumerate(PASSAGES) if t])
    build_corpus(sources, out, tok["prov"], tok["text"], 64, **kwargs)
    assert digest(out) != identity


def test_corpus_missing_shard(tmp_path, sources, tok):
    out = tmp_path / "corpus"
    build_corpus(sources, out, tok["prov"], tok["text"], 64, shard_size=8, show_progress_bar=False)
    (out / "shard-00001.npz").unlink()
    with pytest.raises(VocabertError, match="missing its shard"):
        Corpus(out)


def test_empty_shard_file_is_reported(tmp_path, sources, tok):
    out = tmp_path / "corpus"
    build_corpus(sources, out, tok["prov"], tok["text"], 64, show_progress_bar=False)
    shard = out / "shard-00000.npz"
    shard.write_bytes(b"")
    with pytest.raises(VocabertError, match="corrupt or truncated"):
        load_shard(shard)


@pytest.mark.parametrize("damage", ["cut 100 bytes", "cut half", "cut last byte", "flip a byte"])
def test_damaged_shard_is_reported(tmp_path, sources, tok, damage):
    out = tmp_path / "corpus"
    build_corpus(sources, out, tok["prov"], tok["text"], 64, show_progress_bar=False)
    shard = out / "shard-00000.npz"
    data = bytearray(shard.read_bytes())
    if damage == "flip a byte":
        data[200] ^= 0xFF
    else:
        data = data[: {"cut 100 bytes": 100, "cut half": len(data) // 2, "cut last byte": len(data) - 1}[damage]]
    shard.write_bytes(bytes(data))
    with pytest.raises(VocabertError, match="corrupt or truncated"):
        load_shard(shard)


def test_build_corpus_bad_input(tmp_path, tok):
    bad = write_lines(tmp_path / "bad.tsv", ["1\tok", "oops"])
    with pytest.raises(VocabertError, match="bad.tsv:2"):
        build_corpus({"passages": bad}, tmp_path / "c", tok["prov"], tok["text"], 64, show_progress_bar=False)
    assert not (tmp_path / "c" / MANIFEST).exists()


# ------------------------------------------------------------------------------------------ artifacts


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "file.bin"

    def broken(p: Path) -> None:
        p.write_bytes(b"half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(target, broken)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []

    # An existing file survives a failed rewrite untouched.
    atomic_write(target, lambda p: p.write_bytes(b"good"))
    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"good"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_atomic_write_interrupt_leaves_nothing(tmp_path):
    target = tmp_path / "f.txt"

    def interrupted(p: Path) -> None:
        p.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_unseen_topics_and_duplicates(tmp_path, sources, tok):
    """Passages listed in a run are held out as unseen topics; a text repeated in another source is read once."""
    run = tmp_path / "run.tsv"
    run.write_text("system\ttopicset\tqid\tpid\trank\tscore\nBM25\tdl19\t1\tp1\t1\t9.0\nBM25\tdl19\t1\tp3\t2\t8.0\n")
    first_passage = expected_texts(sources)[0][2]
    dup = tmp_path / "dup.tsv"
    dup.write_text(f"d1\t  {first_passage.upper()}  \nd2\ta text of its own\n")
    corpus = build_corpus(
        {**sources, "more": dup},
        tmp_path / "c",
        tok["prov"],
        tok["text"],
        64,
        heldout_fraction=0.0,
        unseen_topics=run,
        show_progress_bar=False,
    )
    counts = corpus.manifest["counts"]
    assert counts["passages"]["unseen"] == 2 and counts["more"]["duplicates"] == 1 and counts["more"]["texts"] == 1
    unseen = [
        (corpus.sources[s], i) for sh in corpus.shards("unseen") for s, i in zip(sh.source, sh.text_ids, strict=True)
    ]
    assert sorted(unseen) == [("passages", "p1"), ("passages", "p3")]
    train_ids = {i for sh in corpus.shards("train") for i in sh.text_ids}
    assert not train_ids & {"p1", "p3"} and "d2" in train_ids
    assert corpus.texts("heldout") == []
    with pytest.raises(VocabertError, match="unknown split"):
        list(corpus.shards("test"))
    # Without dedup the repeated text is kept.
    again = build_corpus(
        {**sources, "more": dup}, tmp_path / "c2", tok["prov"], tok["text"], 64, dedup=False, show_progress_bar=False
    )
    assert again.manifest["counts"]["more"]["texts"] == 2


def test_read_id_list_formats(tmp_path):
    from vocabert.distill.corpus import read_id_list

    trec = tmp_path / "trec.run"
    trec.write_text("1 Q0 p7 1 3.2 bm25\n1 Q0 p9 2 3.1 bm25\n")
    plain = tmp_path / "ids.txt"
    plain.write_text("p1\np2\n")
    assert read_id_list(trec) == {"p7", "p9"} and read_id_list(plain) == {"p1", "p2"}


def test_passage_sentences_split():
    text = (
        "The U.S. Army was founded in 1775. It is big. Dr. Smith said so in 1990! Was it (really) true? "
        "42 is the answer."
    )
    assert split_sentences(text) == [
        "The U.S. Army was founded in 1775.",
        "Dr. Smith said so in 1990!",
        "Was it (really) true?",
        "42 is the answer.",
    ]  # "It is big." is under MIN_SENTENCE_WORDS
    assert split_sentences("One sentence only, so nothing to crop.") == []
    assert parent_key("passage_sentences:p7#2") == "passages:p7" and parent_key("queries:q1") == "queries:q1"


def test_sentences_of_training_passages_are_teacher_texts_only(tmp_path, tok):
    """Sentences of training passages become CROP texts: read by the teacher pass, never by mining's
    "train" split; held-out and unseen-topic passages give none; a crop follows its passage into validation."""
    lines = [f"p{i}\tParis{i} is the capital of France. It is big. Museum {i} draws many visitors." for i in range(40)]
    solo = ["solo\tJust one sentence in this passage here.", "same\tParis5 is the capital of France."]
    passages = write_lines(tmp_path / "passages.tsv", lines + solo)
    run = tmp_path / "run.txt"
    run.write_text("p0\n")
    corpus = build_corpus(
        {"passages": passages},
        tmp_path / "c",
        tok["prov"],
        tok["text"],
        64,
        heldout_fraction=0.25,
        unseen_topics=run,
        shard_size=16,
        show_progress_bar=False,
    )
    assert corpus.sources == ["passages", PASSAGE_SENTENCES]
    train = [i for sh in corpus.shards("train") for i in sh.text_ids]
    crops = [(i, t) for sh in corpus.shards("crop") for i, t in zip(sh.text_ids, sh.texts, strict=True)]
    assert all(not i.count("#") for i in train) and "solo" in train
    parents = {i.split("#")[0] for i, _ in crops}
    assert parents == {i for i in train if i not in ("solo", "same")} and "p0" not in parents
    # Two sentences of each training passage (the middle one is too short), in order, tokenized as texts;
    # a passage equal to a sentence of another stays a passage, and that sentence is no crop.
    held = {i for sh in corpus.shards("heldout") for i in sh.text_ids}
    assert len(crops) == 2 * len(parents) - ("p5" in parents) and "same" in set(train) | held
    assert corpus.manifest["counts"]["passages"]["duplicates"] == 0
    assert crops[0] == (
        f"{crops[0][0].split('#')[0]}#0",
        f"Paris{crops[0][0].split('#')[0][1:]} is the capital of France.",
    )
    counts = corpus.manifest["counts"]
    assert counts[PASSAGE_SENTENCES]["texts"] == len(crops)
    teacher = [
        (corpus.sources[s], i) for sh in corpus.shards("teacher") for s, i in zip(sh.source, sh.text_ids, strict=True)
    ]
    assert sorted(i for _, i in teacher) == sorted(train + [i for i, _ in crops])
    assert counts["passages"]["heldout"] > 0 and not parents & {
        i for sh in corpus.shards("heldout") for i in sh.text_ids
    }
    # A crop's teacher share and validation are its passage's.
    from vocabert.distill.embedding import select_teacher_texts

    for sh in corpus.shards("teacher"):
        keys = corpus.keys(sh)
        _, validation, _ = select_teacher_texts(sh, keys, 1.0)
        by_id = dict(zip(sh.text_ids, validation, strict=True))
        for i, v in by_id.items():
            if "#" in i and i.split("#")[0] in by_id:
                assert v == by_id[i.split("#")[0]]
        half, _, _ = select_teacher_texts(sh, keys, 0.5)
        kept = set(half.text_ids)
        assert all((i.split("#")[0] in kept) == (i in kept) for i in sh.text_ids if i.split("#")[0] in by_id)
    # Off: no crop source, the key of corpora built before crops existed.
    plain = build_corpus(
        {"passages": passages},
        tmp_path / "c2",
        tok["prov"],
        tok["text"],
        64,
        passage_sentences=False,
        show_progress_bar=False,
    )
    assert plain.sources == ["passages"] and "passage_sentences" not in plain.manifest["key"]["settings"]


def test_seen_keys_is_a_set_of_64_bit_keys():
    from vocabert.distill.corpus import SeenKeys

    rng = np.random.default_rng(0)
    keys = [int(k) for k in rng.integers(0, 2**64, 20_000, dtype=np.uint64)]
    # Keys that share their low bits collide in every table size; 0 and 2**64 - 1 are the edges.
    keys += keys[:5_000] + [0, 0, 5, 2**64 - 1, 2**64 - 1] + [k << 40 for k in range(300)] * 2
    seen, reference = SeenKeys(capacity=4), set()
    seen._grow = functools.partial(seen._grow, chunk=1000)  # several chunks per doubling
    for key in keys:
        assert seen.add(key) == (key not in reference)
        reference.add(key)
    assert len(seen) == len(reference)
    assert 2 * seen.size <= len(seen.table)  # grew, and stays at most half full
    assert seen.table.nbytes <= 32 * len(reference)  # 16-32 bytes a key
