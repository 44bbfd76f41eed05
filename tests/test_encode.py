"""encode with sentence-transformers' arguments, long texts in windows, and the streaming ``vocabert encode``."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures import DIM, WORDS, config, patterns, tiny_model, tokenizer_text
from tokenizers import Tokenizer

from vocabert.cli import main
from vocabert.encoding import (
    PRECISIONS,
    RangeTracker,
    long_text_windows,
    quantization_ranges,
    quantize_embeddings,
)
from vocabert.model import StudentModel, normalize
from vocabert.networks import WeightedMean
from vocabert.store import VocabularyStore
from vocabert.streaming import NpyWriter, encode_records, ranges_path

TEXTS = ["the cat sat on the mat", "New York City is big", "how long do cats live", "a zebra", "the big red car"]
# 16 tokens at most (the tiny model's max_length): this one has 3 windows of 14 tokens or fewer.
LONG = " ".join(["the big red car sat in the park on a good day"] * 3)
MANY = [f"{w} {v} runs fast in the park" for w in WORDS[:20] for v in WORDS[:10]]  # 200 texts


@pytest.fixture
def model() -> StudentModel:
    return tiny_model()


@pytest.fixture
def saved(model, tmp_path) -> Path:
    return model.save(tmp_path / "model")


# ----------------------------------------------------------------------------------- quantization


def test_quantize_embeddings_by_hand():
    x = np.array([[0.5, -1.0, 0.0, 2.0, 1.0, -0.1, 0.3, 0.2, 1.0], [-0.5, 1.0, 0.0, 0.0, 1.0, 0.1, -0.3, 0.2, 1.0]])
    ubinary = quantize_embeddings(x, "ubinary")
    assert ubinary.dtype == np.uint8 and ubinary.shape == (2, 2)  # 9 bits -> 2 bytes, the last padded
    assert ubinary.tolist() == [[0b10011011, 0b10000000], [0b01001101, 0b10000000]]
    binary = quantize_embeddings(x, "binary")
    assert binary.dtype == np.int8 and binary.tolist() == [[0b10011011 - 128, 0], [0b01001101 - 128, 0]]
    uint8 = quantize_embeddings(x, "uint8")
    # Each dimension's min maps to 0 and its max to the top bucket (254 or 255: floor() of a float32 division,
    # as in sentence-transformers); a constant dimension stays at 0.
    assert uint8.dtype == np.uint8 and uint8[0, 0] >= 254 and uint8[1, 0] == 0 and uint8[:, 2].tolist() == [0, 0]
    np.testing.assert_array_equal(quantize_embeddings(x, "int8"), (uint8.astype(int) - 128).astype(np.int8))
    ranges = quantization_ranges(x)
    np.testing.assert_array_equal(quantize_embeddings(x[:1], "uint8", ranges=ranges), uint8[:1])
    with pytest.raises(ValueError, match="single embedding"):
        quantize_embeddings(x[:1], "int8")
    with pytest.raises(ValueError, match="must be float"):
        quantize_embeddings(uint8, "binary")
    assert quantize_embeddings(np.zeros((0, 9)), "binary").shape == (0, 2)


def test_quantize_embeddings_is_sentence_transformers():
    st = pytest.importorskip("sentence_transformers.quantization")
    x = normalize(np.random.default_rng(0).normal(size=(300, 20)))
    calibration = normalize(np.random.default_rng(1).normal(size=(50, 20)))
    for precision in PRECISIONS:
        ours, theirs = quantize_embeddings(x, precision), st.quantize_embeddings(x, precision)
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
    for precision in ("int8", "uint8"):
        np.testing.assert_array_equal(
            quantize_embeddings(x, precision, calibration_embeddings=calibration),
            st.quantize_embeddings(x, precision, calibration_embeddings=calibration),
        )


def test_range_tracker_is_the_ranges_of_the_whole():
    x = np.random.default_rng(0).normal(size=(250, 6)).astype(np.float32)
    tracker = RangeTracker()
    for start in range(0, 250, 64):
        tracker.update(x[start : start + 64])
    np.testing.assert_array_equal(tracker.ranges(), quantization_ranges(x))


# ------------------------------------------------------------------------- encode: ST's arguments


def test_encode_precision_is_quantize_of_the_whole_call(model):
    floats = model.encode(MANY, batch_size=7)  # the same batches: the vectors depend on them at float rounding
    for precision in PRECISIONS:
        out = model.encode(MANY, batch_size=7, precision=precision)
        np.testing.assert_array_equal(out, quantize_embeddings(floats, precision))
    assert model.encode(MANY, precision="binary").shape == (len(MANY), (DIM + 7) // 8)
    assert model.encode("the cat", precision="ubinary").shape == ((DIM + 7) // 8,)
    assert model.encode([], precision="int8").dtype == np.int8
    with pytest.raises(ValueError, match="single embedding"):  # as sentence-transformers
        model.encode("the cat", precision="int8")
    with pytest.raises(ValueError, match="not supported"):
        model.encode(TEXTS, precision="float16")


def test_encode_to_tensors(model, monkeypatch):
    torch = pytest.importorskip("torch")
    expected = model.encode(TEXTS)
    tensor = model.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.numpy(), expected)
    rows = model.encode(TEXTS, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == len(TEXTS) and rows[0].shape == (DIM,)
    assert model.encode(TEXTS, convert_to_tensor=True, precision="int8").dtype == torch.int8
    assert model.encode(TEXTS[0], convert_to_tensor=True).shape == (DIM,)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ImportError, match="needs torch"):
        model.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(model.encode(TEXTS), np.ndarray)


def test_encode_normalize_and_truncate_dim(model):
    out = model.encode(TEXTS)
    np.testing.assert_array_equal(model.encode(TEXTS, normalize_embeddings=True), out)  # unit rows already
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    cut = model.encode(TEXTS, truncate_dim=3)
    np.testing.assert_array_equal(cut, out[:, :3])  # as sentence-transformers: cut, not renormalized...
    np.testing.assert_allclose(model.encode(TEXTS, truncate_dim=3, normalize_embeddings=True), normalize(out[:, :3]))
    for bad in (0, DIM + 1, 2.5):
        with pytest.raises(ValueError, match="truncate_dim"):
            model.encode(TEXTS, truncate_dim=bad)


def test_encode_arguments_it_honours_or_refuses(model):
    expected = model.encode(TEXTS)
    np.testing.assert_array_equal(model.encode(sentences=TEXTS), expected)
    np.testing.assert_array_equal(model.encode(inputs=TEXTS), expected)
    np.testing.assert_array_equal(model.encode(np.array(TEXTS)), expected)
    np.testing.assert_array_equal(model.encode(TEXTS, device="cpu", chunk_size=2), expected)
    np.testing.assert_array_equal(model.encode(TEXTS, output_value="sentence_embedding"), expected)
    prompted = model.encode(TEXTS, prompt="what is ")
    np.testing.assert_array_equal(prompted, model.encode(["what is " + t for t in TEXTS]))
    with pytest.raises(TypeError, match="needs the texts"):
        model.encode()
    with pytest.raises(TypeError, match="'colour'"):
        model.encode(TEXTS, colour="red")
    for kwargs, message in (
        ({"device": "cuda"}, "CPU"),
        ({"device": ["cpu", "cpu"]}, "several processes"),
        ({"pool": {"processes": []}}, "several processes"),
        ({"output_value": "token_embeddings"}, "sentence embeddings only"),
        ({"output_value": None}, "sentence embeddings only"),
        ({"prompt_name": "query"}, "not found"),
        ({"task": "query"}, "no tasks"),
        ({"processing_kwargs": {"text": {"max_length": 512}}}, "tokenizer settings"),
        ({"long_texts": "drop"}, "long_texts"),
    ):
        with pytest.raises(ValueError, match=message):
            model.encode(TEXTS, **kwargs)


def test_progress_bar_follows_the_log_level_by_default(model, capsys):
    model.encode(TEXTS)
    assert "encoding" not in capsys.readouterr().err
    log = logging.getLogger("vocabert")
    level = log.level
    log.setLevel(logging.INFO)
    try:
        model.encode(TEXTS)
        assert "encoding" in capsys.readouterr().err
        model.encode(TEXTS, show_progress_bar=False)
        assert "encoding" not in capsys.readouterr().err
    finally:
        log.setLevel(level)


def test_sentence_transformers_with_the_same_arguments(model, saved):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(saved), trust_remote_code=True)
    texts = MANY[:150]
    for kwargs in (
        {},
        {"normalize_embeddings": True},
        {"truncate_dim": 5},
        {"truncate_dim": 5, "normalize_embeddings": True},
        {"prompt": "what is "},
    ):
        np.testing.assert_allclose(model.encode(texts, **kwargs), st.encode(texts, **kwargs), atol=1e-6)
    for precision in ("binary", "ubinary", "uint8"):
        ours, theirs = model.encode(texts, precision=precision), st.encode(texts, precision=precision)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        # Both quantize the same floats up to float rounding: a bucket apart at most.
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= (1 if precision == "uint8" else 0)
    assert tuple(model.encode(texts[:3], convert_to_tensor=True).shape) == tuple(
        st.encode(texts[:3], convert_to_tensor=True).shape
    )


# ------------------------------------------------------------------------------------ long texts


def test_each_window_is_wrapped_as_the_teacher_wraps_a_text(model):
    cls, sep = model.tokenizer.encode("").ids
    max_length = model.config["max_length"]
    [windows, short] = long_text_windows(model, [LONG, "the cat"])
    assert len(windows) == 3 and len(short) == 1
    for w in windows:
        assert w[0] == cls and w[-1] == sep and len(w) <= max_length
    assert len(windows[0]) == max_length
    ids, offsets = model.tokenize([LONG])
    np.testing.assert_array_equal(windows[0], ids)  # the first window is the truncated text
    whole = Tokenizer.from_str(model.tokenizer_text)
    whole.no_truncation()
    untruncated = whole.encode(LONG, add_special_tokens=False).ids
    assert [i for w in windows for i in w[1:-1]] == untruncated  # every token once, in order


def test_chunk_is_the_token_weighted_mean_of_the_windows(model):
    windows = long_text_windows(model, [LONG])[0]
    vectors = np.stack([model.embed_ids(w, np.array([0, len(w)]))[0] for w in windows])
    weights = np.array([len(w) - 2 for w in windows], dtype=np.float64)
    expected = normalize((weights[:, None] * vectors).sum(axis=0, keepdims=True))[0]
    chunked = model.encode(LONG, long_texts="chunk")
    np.testing.assert_allclose(chunked, expected, atol=1e-6)
    assert float(chunked @ model.encode(LONG)) < 0.999  # not the truncated text's vector
    # The windows of one text are embedded in groups of batch_size: the same vector whatever the size.
    np.testing.assert_allclose(
        model.encode([LONG * 5], batch_size=2, long_texts="chunk")[0],
        model.encode([LONG * 5], long_texts="chunk")[0],
        atol=1e-6,
    )


def test_short_texts_get_the_same_vector_either_way(model):
    texts = [*TEXTS, LONG, "", "caf\udce9 cat", LONG + " caf\udce9", *MANY]
    truncated, chunked = model.encode(texts, batch_size=100), model.encode(texts, batch_size=100, long_texts="chunk")
    short = [i for i, t in enumerate(texts) if len(long_text_windows(model, [t])[0]) == 1]
    assert len(short) == len(texts) - 2
    np.testing.assert_array_equal(chunked[short], truncated[short])  # exactly: the same code path
    np.testing.assert_allclose(np.linalg.norm(chunked, axis=1), 1.0, atol=1e-6)


def test_a_text_of_exactly_max_length_has_one_window(model):
    text = " ".join(["cat"] * (model.config["max_length"] - 2))
    assert len(long_text_windows(model, [text])[0]) == 1
    np.testing.assert_array_equal(model.encode(text, long_texts="chunk"), model.encode(text))


# --------------------------------------------------------------------------- vocabert encode (CLI)


def _encode(saved: Path, input: Path, output: Path, *options: str) -> int:
    args = ["encode", "--model", str(saved), "--input", str(input), "--output", str(output), "--no-progress"]
    return main([*args, *options])


def _lines(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def test_cli_npy_is_encode_of_the_whole_file(model, saved, tmp_path, capsys):
    texts = [*MANY, LONG]
    src = _lines(tmp_path / "texts.txt", texts)
    assert _encode(saved, src, tmp_path / "out.npy", "--batch-size", "7") == 0
    assert "201 texts" in capsys.readouterr().out
    # Exactly the vectors of encode with the same batches (other batches differ at float rounding).
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy", mmap_mode="r"), model.encode(texts, batch_size=7))
    assert _encode(saved, src, tmp_path / "chunk.npy", "--long-texts", "chunk") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "chunk.npy"), model.encode(texts, long_texts="chunk"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_cli_precision_is_that_of_one_encode_call(model, saved, tmp_path, precision):
    src = _lines(tmp_path / "texts.txt", MANY)
    out = tmp_path / "q.npy"
    assert _encode(saved, src, out, "--precision", precision, "--batch-size", "16") == 0
    np.testing.assert_array_equal(np.load(out), model.encode(MANY, batch_size=16, precision=precision))
    assert ranges_path(out).exists() == (precision in ("int8", "uint8"))


def test_cli_queries_quantized_with_the_corpus_ranges(model, saved, tmp_path):
    corpus = _lines(tmp_path / "corpus.txt", MANY)
    assert _encode(saved, corpus, tmp_path / "corpus.npy", "--precision", "int8") == 0
    ranges = np.load(tmp_path / "corpus.ranges.npy")
    np.testing.assert_array_equal(ranges, quantization_ranges(model.encode(MANY)))
    queries = _lines(tmp_path / "queries.txt", ["the cat"])  # one text: no ranges of its own
    assert _encode(saved, queries, tmp_path / "q.npy", "--precision", "int8") == 1
    args = ("--precision", "int8", "--ranges", str(tmp_path / "corpus.ranges.npy"))
    assert _encode(saved, queries, tmp_path / "q.npy", *args) == 0
    expected = quantize_embeddings(model.encode(["the cat"]), "int8", ranges=ranges)
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), expected)


def test_cli_parquet_with_the_input_ids(model, saved, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    tsv = tmp_path / "texts.tsv"
    tsv.write_text("".join(f"doc{i}\t{t}\n" for i, t in enumerate(MANY)))
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("".join(json.dumps({"_id": f"j{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    lines = _lines(tmp_path / "texts.txt", ["the cat", "", "a dog"])  # ids: line numbers; a blank line is a row
    for src, ids, texts in (
        (tsv, [f"doc{i}" for i in range(len(MANY))], MANY),
        (jsonl, [f"j{i}" for i in range(len(TEXTS))], TEXTS),
        (lines, ["1", "2", "3"], ["the cat", "", "a dog"]),
    ):
        out = tmp_path / f"{src.suffix[1:]}.parquet"
        assert _encode(saved, src, out, "--batch-size", "8") == 0
        table = pq.read_table(out)
        assert table.column_names == ["id", "embedding"] and table.column("id").to_pylist() == ids
        vectors = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(len(ids), DIM)
        np.testing.assert_array_equal(vectors, model.encode(texts, batch_size=8))
    assert _encode(saved, tsv, tmp_path / "b.parquet", "--precision", "ubinary") == 0
    table = pq.read_table(tmp_path / "b.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.uint8(), 1)
    assert table.schema.metadata[b"vocabert.precision"] == b"ubinary"


def test_cli_parquet_without_pyarrow_is_one_line(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    src = _lines(tmp_path / "texts.txt", TEXTS)
    assert _encode(saved, src, tmp_path / "out.parquet") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'vocabert[parquet]'" in err
    assert not (tmp_path / "out.parquet").exists()


def test_cli_bad_inputs_are_one_line(saved, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    src = _lines(tmp_path / "texts.txt", TEXTS)
    for input, output, extra, message in (
        (tmp_path / "empty.txt", tmp_path / "e.npy", (), "is empty"),
        (tmp_path / "empty.txt", tmp_path / "e.parquet", (), "is empty"),
        (tmp_path / "empty.txt", tmp_path / "e.npy", ("--precision", "int8"), "is empty"),
        (tmp_path, tmp_path / "d.npy", (), "is a directory"),
        (tmp_path / "missing.txt", tmp_path / "m.npy", (), "does not exist"),
        (src, tmp_path / "blocker" / "out.npy", (), "cannot create"),
        (src, tmp_path / "b.npy", ("--batch-size", "0"), "batch size"),
        (src, tmp_path / "r.npy", ("--ranges", str(src)), "int8 and uint8 only"),
    ):
        assert _encode(saved, input, output, *extra) == 1, message
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not output.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_crash_midway_leaves_no_output(model, saved, tmp_path, monkeypatch):
    src = _lines(tmp_path / "texts.txt", MANY)
    out = tmp_path / "out.npy"
    np.save(out, np.zeros((1, DIM), dtype=np.float32))  # a previous result
    calls = []

    def failing(self, texts, *args, **kwargs):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros((len(texts), DIM), dtype=np.float32)

    monkeypatch.setattr(StudentModel, "encode", failing)
    with pytest.raises(SystemExit) as e:
        _encode(saved, src, out, "--batch-size", "10")
    assert e.value.code == 130
    assert np.load(out).shape == (1, DIM)  # untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------------- streaming


def test_npy_header_leaves_room_for_any_row_count(tmp_path):
    with open(tmp_path / "x.npy", "wb") as f:
        writer = NpyWriter(f, 384, np.dtype(np.float32))
        assert len(writer._header(10**15)) == writer.header_size
        writer.write(["a", "b"], np.ones((2, 384)))
        writer.close()
    assert np.load(tmp_path / "x.npy").shape == (2, 384)


def test_encode_records_holds_one_batch_at_a_time(model):
    """Constant memory, deterministically: a record is read only when the batch it is in is encoded, and
    every batch is written before the next is read."""
    read = 0
    written = 0

    def records():
        nonlocal read
        for i in range(1000):
            read += 1
            assert read - written <= 32  # never more than one batch read ahead of what was written
            yield str(i), MANY[i % len(MANY)]

    def write(ids, rows):
        nonlocal written
        assert len(ids) == len(rows) <= 32 and read - written == len(ids)
        written += len(ids)

    assert encode_records(model, records(), write, batch_size=32) == 1000
    assert written == 1000


def _wide_model(tmp_path: Path, dim: int = 384) -> Path:
    """A tiny vocabulary with vectors as wide as the teacher's, so that holding every vector would show."""
    rng = np.random.default_rng(0)
    text, p = tokenizer_text(), patterns()
    store = VocabularyStore.from_float(p, rng.normal(size=(len(p), dim)).astype(np.float32), "float16", {"dim": dim})
    network = WeightedMean(np.ones(len(p)), np.eye(dim), np.zeros(dim))
    return StudentModel(config(text, 64), text, store, network).save(tmp_path / "wide")


# VmHWM: the peak RSS of this process image. (getrusage's ru_maxrss is no good here: Linux carries it over
# exec from the forked parent, so a child of a big pytest process reports the parent's size.)
PEAK_RSS = (
    "import sys\n"
    "from vocabert.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print('PEAK_KB', status.split('VmHWM:')[1].split()[0])\n"
    "sys.exit(code)\n"
)


def _peak_rss_mb(model_dir: Path, input: Path, output: Path, *options: str) -> float:
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from /proc (Linux)")
    args = ["encode", "--model", str(model_dir), "--input", str(input), "--output", str(output), "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *args, *options],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("PEAK_KB")[1]) / 1024


def _repeat_lines(source: list[str], n: int, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(source[i % len(source)] + "\n")
    return path


def test_cli_memory_does_not_grow_with_the_file(tmp_path):
    """20x more texts, the same peak memory: holding the texts and vectors would add 60 MB here."""
    wide = _wide_model(tmp_path)
    small = _repeat_lines(MANY, 2_000, tmp_path / "small.txt")
    large = _repeat_lines(MANY, 40_000, tmp_path / "large.txt")
    base = _peak_rss_mb(wide, small, tmp_path / "small.npy")
    peak = _peak_rss_mb(wide, large, tmp_path / "large.npy")
    assert np.load(tmp_path / "large.npy", mmap_mode="r").shape == (40_000, 384)
    held = 40_000 * 384 * 4 / 2**20  # MB the vectors alone would take
    assert peak - base < held / 3, (base, peak)


@pytest.mark.slow
def test_cli_memory_on_300k_msmarco_queries(workspace, data_dir, tmp_path):
    """The real model on 300k lines of real MS MARCO queries (repeated): peak RSS as for a few thousand lines.

    Holding every vector would take 440 MB more (300k x 384 float32), the texts ~30 MB."""
    with gzip.open(data_dir / "msmarco_queries_extra" / "queries.extra.tsv.gz", "rt", encoding="utf-8") as f:
        queries = [line.split("\t")[1] for line in f]
    small = _repeat_lines(queries, 10_000, tmp_path / "small.txt")
    large = _repeat_lines(queries, 300_000, tmp_path / "large.txt")
    peaks = {}
    for suffix in ("npy", "parquet"):
        base = _peak_rss_mb(workspace.model_dir, small, tmp_path / f"small.{suffix}")
        peak = _peak_rss_mb(workspace.model_dir, large, tmp_path / f"large.{suffix}")
        peaks[suffix] = (round(base), round(peak))
        assert peak - base < 64, (suffix, base, peak)
    print(f"peak RSS (MB) for 10k and 300k lines: {peaks}")
    assert np.load(tmp_path / "large.npy", mmap_mode="r").shape == (300_000, 384)
