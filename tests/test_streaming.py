"""``vocabert encode``'s guarantees on its input and output (issue 23): rows line up with the input's
lines, the input is never overwritten, binary files are refused, and an interrupted run leaves nothing."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from fixtures import DIM, WORDS, tiny_model

from vocabert.artifacts import VocabertError
from vocabert.cli import main
from vocabert.model import StudentModel
from vocabert.readers import read_texts


@pytest.fixture(scope="module")
def model() -> StudentModel:
    return tiny_model()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    return model.save(tmp_path_factory.mktemp("streaming") / "model")


def encode(saved: Path, input: Path, output: Path, *options: str) -> int:
    args = ["encode", "--model", str(saved), "--input", str(input), "--output", str(output), "--no-progress"]
    return main([*args, *options])


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def one_error_line(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and err.startswith("vocabert: error: "), err
    for word in words:
        assert word in err, err


# ------------------------------------------------------------------- 7: the output is never the input


@pytest.mark.parametrize("link", ["same path", "other spelling", "symlink", "hardlink"])
def test_output_that_is_the_input_is_refused(saved, tmp_path, capsys, link):
    src = tmp_path / "texts.txt"
    src.write_text("the cat\na dog\n")
    (tmp_path / "sub").mkdir()
    output = {
        "same path": src,
        "other spelling": tmp_path / "sub" / ".." / "texts.txt",
        "symlink": tmp_path / "link.npy",
        "hardlink": tmp_path / "hard.npy",
    }[link]
    if link == "symlink":
        output.symlink_to(src)
    elif link == "hardlink":
        os.link(src, output)
    assert encode(saved, src, output) == 1
    one_error_line(capsys.readouterr().err, "is the input file", str(src))
    assert src.read_text() == "the cat\na dog\n"
    assert temporaries(tmp_path) == []


def test_ranges_file_that_is_the_input_is_refused(saved, tmp_path, capsys):
    src = tmp_path / "q.ranges.npy"  # a text file, whatever its name: int8 would save q.npy's ranges over it
    src.write_text("the cat\na dog\n")
    assert encode(saved, src, tmp_path / "q.npy", "--precision", "int8") == 1
    one_error_line(capsys.readouterr().err, "is the input file")
    assert src.read_text() == "the cat\na dog\n" and not (tmp_path / "q.npy").exists()


# ------------------------------------------------------------ 8: row i is the vector of line i + 1


def test_blank_lines_get_the_empty_text_and_keep_their_rows(model, saved, tmp_path, capsys):
    lines = ["", "the cat", "   ", "a dog", ""]
    src = tmp_path / "texts.txt"
    src.write_text("".join(line + "\n" for line in lines))
    assert encode(saved, src, tmp_path / "out.npy") == 0
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (5, DIM)
    np.testing.assert_array_equal(out, model.encode(["", "the cat", "", "a dog", ""]))
    err = capsys.readouterr().err
    assert "3 blank line(s) read as empty texts: lines 1, 3, 5" in err


def test_blank_lines_warn_once_over_two_passes(saved, tmp_path, capsys):
    src = tmp_path / "texts.txt"
    src.write_text("".join(f"{w} {v}\n" for w in WORDS[:10] for v in WORDS[:10]) + "\n")
    assert encode(saved, src, tmp_path / "q.npy", "--precision", "int8") == 0
    assert np.load(tmp_path / "q.npy").shape == (101, DIM)
    assert capsys.readouterr().err.count("1 blank line(s)") == 1


def test_tsv_text_is_everything_after_the_first_tab(model, saved, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "texts.tsv"
    src.write_text("d1\tthe cat\tsat on the mat\n\nd3\ta dog\nd4\t\n")
    assert encode(saved, src, tmp_path / "out.parquet") == 0
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == ["d1", "", "d3", "d4"]  # a blank line has no id: its first field
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(4, DIM)
    np.testing.assert_array_equal(vectors, model.encode(["the cat\tsat on the mat", "", "a dog", ""]))
    assert not np.allclose(vectors[0], model.encode("the cat"))  # the third field is not dropped
    err = capsys.readouterr().err
    assert "1 line(s) with more than one tab: the text is everything after the first tab: line 1" in err
    assert "1 blank line(s) read as empty texts: line 2" in err


def test_jsonl_blank_line_is_an_empty_text_named_by_its_line(tmp_path):
    src = tmp_path / "q.jsonl"
    src.write_text(json.dumps({"_id": "a", "text": "the cat"}) + "\n\n" + json.dumps({"text": "a dog"}) + "\n")
    assert list(read_texts(src, every_line=True)) == [("a", "the cat"), ("2", ""), ("3", "a dog")]


def test_the_corpus_reading_is_unchanged(tmp_path, capsys):
    """The corpus stage's reading (the default) skips blank lines and takes a TSV text's second field."""
    src = tmp_path / "p.tsv"
    src.write_text("1\tfirst\tdropped\n\n2\tsecond\n")
    assert list(read_texts(src)) == [("1", "first"), ("2", "second")]
    assert capsys.readouterr().err == ""
    assert list(read_texts(src, every_line=True)) == [("1", "first\tdropped"), ("", ""), ("2", "second")]


# ------------------------------------------------------------------------------- 10: binary input


def png_bytes() -> bytes:
    """A real 8x8 black PNG: its first line (up to \\n) holds no NUL byte."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = b"".join(b"\x00" + bytes(3 * 8) for _ in range(8))
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


def test_png_is_refused_before_anything_is_written(saved, tmp_path, capsys):
    src = tmp_path / "image.png"
    src.write_bytes(png_bytes())
    output = tmp_path / "new" / "out.npy"
    assert encode(saved, src, output) == 1
    one_error_line(capsys.readouterr().err, str(src), "looks binary (a PNG image)")
    assert not output.parent.exists()  # the output folder is made only once the input is checked


@pytest.mark.parametrize(
    "name, content, kind",
    [
        ("noise.txt", bytes(np.random.default_rng(0).integers(1, 256, 8192, dtype=np.uint8)), "not UTF-8 text"),
        ("texts.txt", gzip.compress(b"the cat\na dog\n"), "gzip data: name it .gz"),
        ("texts.tsv", "1\tthe cat\n".encode("utf-16"), "UTF-16"),
        ("doc.txt", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "a PDF document"),
        ("late.txt", b"first line\n" + b"x" * 100 + b"\x00\x01\n", "NUL bytes"),
    ],
    ids=["noise", "gzip", "utf-16", "pdf", "nul-after-line-1"],
)
def test_binary_files_are_refused(tmp_path, name, content, kind):
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(VocabertError, match=f"{name} looks binary \\(.*{kind}"):
        list(read_texts(src))


def test_text_in_another_encoding_is_read_with_a_warning(tmp_path, capsys):
    src = tmp_path / "latin1.txt"
    src.write_bytes("café au lait\nthé\nfine\n".encode("latin-1"))
    assert [t for _, t in read_texts(src)] == ["caf\ufffd au lait", "th\ufffd", "fine"]
    assert "2 line(s) were not valid UTF-8 (bad bytes replaced by U+FFFD): lines 1, 2" in capsys.readouterr().err


# ------------------------------------------------------------------- 9: outputs and interrupted runs


def test_output_that_is_a_directory_is_refused_before_encoding(saved, tmp_path, capsys, monkeypatch):
    src = tmp_path / "texts.txt"
    src.write_text("the cat\n")
    (tmp_path / "out.npy").mkdir()
    monkeypatch.setattr(StudentModel, "encode", lambda *a, **k: pytest.fail("encoded before checking the output"))
    assert encode(saved, src, tmp_path / "out.npy") == 1
    err = capsys.readouterr().err
    one_error_line(err, "out.npy: it is a directory")
    assert ".tmp" not in err
    (tmp_path / "q.ranges.npy").mkdir()  # where int8 would save its ranges
    assert encode(saved, src, tmp_path / "q.npy", "--precision", "int8") == 1
    one_error_line(capsys.readouterr().err, "q.ranges.npy: it is a directory")


def test_missing_input_creates_no_output_folder(saved, tmp_path, capsys):
    assert encode(saved, tmp_path / "missing.txt", tmp_path / "new" / "out.npy") == 1
    one_error_line(capsys.readouterr().err, "does not exist")
    assert not (tmp_path / "new").exists()


def test_ctrl_c_promises_no_resume(saved, tmp_path, capsys, monkeypatch):
    src = tmp_path / "texts.txt"
    src.write_text("the cat\n" * 50)
    monkeypatch.setattr(StudentModel, "encode", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit) as e:
        encode(saved, src, tmp_path / "out.npy")
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted (SIGINT)" in err and "does not resume" in err, err
    assert not (tmp_path / "out.npy").exists() and temporaries(tmp_path) == []


def test_an_encode_in_progress_is_not_disturbed(saved, tmp_path, capsys):
    """A temporary file another run holds locked is that run's: refused, not removed."""
    fcntl = pytest.importorskip("fcntl")
    src = tmp_path / "texts.txt"
    src.write_text("the cat\n")
    busy = tmp_path / ".out.npy.abcd1234.tmp"
    busy.write_bytes(b"")
    with open(busy, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        assert encode(saved, src, tmp_path / "out.npy") == 1
    one_error_line(capsys.readouterr().err, "another vocabert encode is writing")
    assert busy.exists()


# Every batch takes 20 ms: long enough to signal the run while it writes.
SLOW_ENCODE = (
    "import signal, sys, time\n"
    # A test run started in the background (`nohup pytest &`) hands its children SIGINT ignored; Ctrl-C's
    # handling is what is tested here, so the child restores Python's own.
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from vocabert.model import StudentModel\n"
    "fast = StudentModel.encode\n"
    "def slow(self, *args, **kwargs):\n"
    "    time.sleep(0.02)\n"
    "    return fast(self, *args, **kwargs)\n"
    "StudentModel.encode = slow\n"
    "from vocabert.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def start_slow_encode(saved: Path, src: Path, output: Path) -> subprocess.Popen:
    """``vocabert encode`` in a process of its own, returned once its temporary file exists."""
    args = ["encode", "--model", str(saved), "--input", str(src), "--output", str(output), "--no-progress"]
    run = subprocess.Popen(
        [sys.executable, "-c", SLOW_ENCODE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 60
    while not temporaries(output.parent):
        assert run.poll() is None and time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.02)
    return run


@pytest.fixture
def long_input(tmp_path) -> Path:
    src = tmp_path / "texts.txt"
    src.write_text("the cat sat on the mat\n" * 5000)  # 79 batches of 64: 1.6 s at least
    return src


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_leaves_no_temporary_file(saved, long_input, stop):
    output = long_input.parent / "out" / "out.npy"
    run = start_slow_encode(saved, long_input, output)
    run.send_signal(stop)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 128 + stop, err
    assert err.count("\n") == 1 and f"interrupted ({stop.name})" in err and "Traceback" not in err, err
    assert temporaries(output.parent) == [] and not output.exists()


SIGNAL_IN_MKSTEMP = (
    "import os, signal, sys, tempfile, time\n"
    "made = tempfile.mkstemp\n"
    "def mkstemp(*args, **kwargs):\n"  # the file exists, atomic_write does not know its name yet
    "    fd, name = made(*args, **kwargs)\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\n"
    "    time.sleep(5)\n"
    "    return fd, name\n"
    "tempfile.mkstemp = mkstemp\n"
    "from vocabert.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_a_signal_inside_mkstemp_leaves_no_temporary_file(saved, long_input):
    output = long_input.parent / "out" / "out.npy"
    args = ["encode", "--model", str(saved), "--input", str(long_input), "--output", str(output), "--no-progress"]
    run = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_MKSTEMP, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=60,
        check=False,
    )
    assert run.returncode == 128 + signal.SIGTERM and "interrupted (SIGTERM)" in run.stderr, run.stderr
    assert temporaries(output.parent) == [] and not output.exists()


def test_a_rerun_removes_what_kill_9_left(model, saved, long_input):
    output = long_input.parent / "out.npy"
    run = start_slow_encode(saved, long_input, output)
    run.kill()
    run.communicate(timeout=60)
    [left] = temporaries(long_input.parent)
    assert left.startswith(".out.npy.")
    assert encode(saved, long_input, output, "--batch-size", "1000") == 0
    assert temporaries(long_input.parent) == []
    np.testing.assert_array_equal(np.load(output)[:3], model.encode(["the cat sat on the mat"] * 3))
