"""The cost-curve tooling: the corpus generator, the stand-in teacher, and the measuring and fitting code."""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import pytest
from fixtures import load_script

from vocabert.distill.corpus import read_id_list
from vocabert.readers import read_texts

ROOT = Path(__file__).resolve().parents[1]


scale_corpus = load_script("scale_corpus")
stand_in_teacher = load_script("stand_in_teacher")
cost_curves = load_script("cost_curves")

SLICE = 200


def _texts(folder: Path) -> dict[str, list[tuple[str, str]]]:
    return {name: list(read_texts(folder / rel, fmt=fmt)) for name, rel, fmt in scale_corpus.SOURCES}


@pytest.fixture(scope="module")
def generated(data_dir, tmp_path_factory):
    """A 3x corpus of a 200-text slice of every source, with every variant's template recorded."""
    out = tmp_path_factory.mktemp("scaled") / "x3"
    traced: list[tuple[str, str, str, int]] = []
    info = scale_corpus.generate(data_dir, out, 3, seed=0, limit=SLICE, trace=lambda *t: traced.append(t), log=str)
    return out, info, traced


def test_generator_writes_the_same_bytes_twice(data_dir, generated, tmp_path):
    out, _, _ = generated
    again = tmp_path / "again"
    scale_corpus.generate(data_dir, again, 3, seed=0, limit=SLICE, log=str)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) == 7  # four sources, the runs file, scale_corpus.json, SOURCE.md
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = tmp_path / "seed1"
    scale_corpus.generate(data_dir, other, 3, seed=1, limit=SLICE, log=str)
    assert (other / scale_corpus.SOURCES[0][1]).read_bytes() != (out / scale_corpus.SOURCES[0][1]).read_bytes()
    assert scale_corpus.is_complete(out, 3, 0, SLICE, 0.1) and not scale_corpus.is_complete(out, 4, 0, SLICE, 0.1)


def test_generated_texts_are_the_originals_then_distinct_variants_of_the_same_size(data_dir, generated):
    out, info, _ = generated
    texts, originals = _texts(out), _texts(data_dir)
    for name, records in texts.items():
        assert len(records) == 3 * SLICE
        assert [t for _, t in records[:SLICE]] == [t for _, t in originals[name][:SLICE]]  # copy 0: verbatim
        counts = info["counts"][name]
        identities = {scale_corpus.identity(t) for _, t in records}
        # every text distinct up to case and spacing, but for the units no splice could vary (counted)
        assert len(identities) >= len(records) - counts["unchanged"]
        assert counts["unchanged"] <= 0.15 * counts["units"]
        # 3x the originals' words (within 0.02% on the whole bundled data; a 200-text slice offers fewer splices
        # of the right length)
        assert counts["size_ratio"] == pytest.approx(3.0, abs=0.1)
        assert len({i for i, _ in records}) == len(records)  # ids (line numbers for the one-per-line files) unique
    passages = [t for _, t in texts["passages"]]
    assert len({scale_corpus.identity(t) for t in passages}) == len(passages)

    def sentences(texts: list[str]) -> list[bytes]:  # what the corpus stage makes texts of its own (4 words or more)
        return [scale_corpus.identity(s) for t in texts for s in scale_corpus.passage_units(t) if len(s.split()) >= 4]

    # the variants' sentences are new: none repeats another or an original's (the originals repeat some)
    new, old = sentences(passages[SLICE:]), set(sentences(passages[:SLICE]))
    assert len(set(new)) == len(new) - info["counts"]["passages"]["unchanged"] and not old & set(new)


def test_variants_fall_in_their_templates_split(data_dir, generated):
    out, _, traced = generated
    originals = _texts(data_dir)
    unseen_written = read_id_list(out / scale_corpus.RUNS)  # what `vocabert corpus` will hold out with its topics
    unseen_bundled = read_id_list(data_dir / scale_corpus.RUNS)
    kinds = set()
    for source, new_id, _, index in traced:
        template_id = originals[source][index][0]
        expected = scale_corpus.split_of(source, template_id, 0.1, unseen_bundled)
        assert scale_corpus.split_of(source, new_id, 0.1, unseen_written) == expected, (source, new_id, template_id)
        kinds.add(expected)
    assert kinds == {"train", "heldout", "unseen"}
    assert unseen_bundled <= unseen_written


def test_factor_one_is_the_bundled_slice(data_dir, tmp_path):
    info = scale_corpus.generate(data_dir, tmp_path / "x1", 1, limit=50, log=str)
    assert all(c["variants"] == 0 for c in info["counts"].values())
    with gzip.open(tmp_path / "x1" / scale_corpus.SOURCES[0][1], "rt", encoding="utf-8") as f:
        assert sum(1 for _ in f) == 50


def test_bloom_filter_has_no_false_negatives():
    seen = scale_corpus.SeenFilter(1000)
    keys = [scale_corpus.identity(f"text {i}") for i in range(1000)]
    for key in keys:
        seen.add(key)
    assert all(key in seen for key in keys)
    assert scale_corpus.identity("Text  0 ") in seen  # same text up to case and spacing
    assert sum(scale_corpus.identity(f"other {i}") in seen for i in range(1000)) <= 5


def test_stand_in_teacher_loads_offline_with_the_real_tokenizer(tmp_path, teacher_tokenizer_text):
    from sentence_transformers import SentenceTransformer

    from vocabert.distill.teacher import max_seq_length, provenance, resolve_teacher_path
    from vocabert.tokenizer import TextTokenizer

    path = stand_in_teacher.write_stand_in_teacher(tmp_path / "stand-in-teacher-L1-seed0")
    model = SentenceTransformer(str(path), device="cpu")
    texts = ["how long do cats live", "The Manhattan Project was a research and development undertaking."]
    vectors = model.encode(texts)
    assert vectors.shape == (2, 384)
    assert [math.fsum(v * v) for v in vectors] == pytest.approx([1.0, 1.0], abs=1e-5)  # normalized, as the real one
    ids, offsets = TextTokenizer(teacher_tokenizer_text, max_seq_length(resolve_teacher_path(None))).encode_ids(texts)
    theirs = model.tokenize(texts)
    for i in range(len(texts)):
        row = theirs["input_ids"][i][theirs["attention_mask"][i].bool()].tolist()
        assert row == ids[offsets[i] : offsets[i + 1]].tolist()
    assert len(model[0].auto_model.encoder.layer) == 1
    assert stand_in_teacher.is_stand_in(path)["label"].startswith("stand-in teacher")
    assert "stand-in-teacher" in provenance(path)["teacher_name"]  # what every manifest will name it
    again = stand_in_teacher.write_stand_in_teacher(tmp_path / "stand-in-teacher-again")
    assert (again / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()  # seeded
    with pytest.raises(ValueError, match="stand-in-teacher"):
        stand_in_teacher.write_stand_in_teacher(tmp_path / "teacher")


def test_fit_recovers_exponents_and_says_how_things_grow():
    xs = [4e6, 16e6, 64e6]
    fit = cost_curves.fit_slope(xs, [3e-5 * x for x in xs])
    assert fit["slope"] == pytest.approx(1.0) and fit["r2"] == pytest.approx(1.0)
    assert cost_curves.fit_slope(xs, [x**1.5 for x in xs])["slope"] == pytest.approx(1.5)
    assert cost_curves.fit_slope([4e6], [1.0]) is None and cost_curves.fit_slope(xs, [1, 0, 2]) is None
    noisy = cost_curves.fit_slope(xs, [10, 42, 155])
    assert 0.9 < noisy["slope"] < 1.1 and noisy["r2"] < 1
    assert [cost_curves.growth_word(s) for s in (None, 0.05, 0.6, 1.04, 1.5)] == [
        "one size only", "flat", "sublinear", "linear", "superlinear",
    ]  # fmt: skip
    assert cost_curves.extrapolate(None, 4e6, 10.0, 16e6) == pytest.approx(40.0)
    assert cost_curves.extrapolate(fit, 4e6, 0, 256e6) == pytest.approx(3e-5 * 256e6)


def _synthetic_runs() -> dict:
    runs = []
    for stage, seconds, mib in (("corpus", 20.0, 900.0), ("mine", 15.0, 250.0), ("embed", 60.0, 1500.0)):
        for factor in (1, 4, 16):
            runs.append({
                "factor": factor, "teacher": "stand-in", "teacher_label": cost_curves.STAND_IN_LABEL,
                "stage": stage, "stage_args": [], "returncode": 0, "wall_s": seconds * factor,
                "peak_rss_mib": mib * factor**0.5, "measured": "2026-12-05T04:00:00Z",
                "disk": {"total": {"allocated_bytes": 50 * factor * 2**20},
                         "folders": {"corpus": {"allocated_bytes": 49 * factor * 2**20}}},
                "corpus": {"training_tokens": 4_000_000 * factor, "teacher_tokens": 5_000_000 * factor,
                           "texts": 270_000 * factor},
            })  # fmt: skip
    runs.append({**runs[0], "stage": "train", "returncode": 1})  # a failed run is not reported
    return {"runs": runs, "generated": {}}


def test_report_tables_render_with_make_docs(tmp_path, monkeypatch):
    speed = {"real_tokens_per_s": 5000, "stand_in_tokens_per_s": 40000}
    table, growth = cost_curves.build_report(_synthetic_runs(), speed, "python scripts/cost_curves.py run", [64])
    assert len(table["rows"]) == 9 and {r["stage"] for r in table["rows"]} == {"corpus", "mine", "embed"}
    assert "stand-in teacher" in table["provenance"]
    embed = [r for r in table["rows"] if r["stage"] == "embed"]
    assert all(r["teacher"].startswith("stand-in teacher") for r in embed)
    assert embed[0]["real_pass_s"] == pytest.approx(5_000_000 / 5000)
    by_stage = {g["stage"]: g for g in growth["rows"]}
    assert by_stage["corpus"]["time_slope"] == pytest.approx(1.0) and by_stage["corpus"]["time_growth"] == "linear"
    assert by_stage["mine"]["rss_slope"] == pytest.approx(0.5) and by_stage["mine"]["rss_growth"] == "sublinear"
    projected = {p["stage"]: p for p in growth["projections"]["rows"]}
    assert projected["corpus"]["wall_s"] == pytest.approx(20.0 * 64) and projected["corpus"]["size"] == "64x"
    make_docs = load_script("make_docs")
    monkeypatch.setattr(make_docs, "RESULTS", tmp_path)
    for name, doc in (("cost", table), ("cost_growth", growth)):
        cost_curves.write_json(tmp_path / f"{name}.json", doc)
        for key in ("title", "command", "provenance", "rows", "labels", "formats"):
            assert doc[key]
        rendered = make_docs.render(name)
        assert rendered.count("\n") == len(doc["rows"]) + 2
    assert "| embed | 16x | stand-in teacher (1 random layer, seed 0) | defaults | 64.00M |" in make_docs.render("cost")
    cost_curves.plot_curves(table["rows"], tmp_path / "plot.png", "test")
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_measuring_a_command_sees_its_children_and_its_disk(tmp_path):
    child = (
        "import subprocess, sys, time\n"
        "block = bytearray(120 * 2**20)\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; b = bytearray(120 * 2**20); time.sleep(1.2)'])\n"
        "time.sleep(1.2); p.wait()\n"
    )
    measured = cost_curves.run_measured([sys.executable, "-c", child], {}, tmp_path / "log.txt")
    assert measured["returncode"] == 0 and measured["wall_s"] >= 1.0
    assert measured["rss"]["wait4_maxrss_mib"] >= 120  # the largest single process
    assert measured["rss"]["sampled_tree_peak_mib"] >= 230  # both at once
    assert measured["peak_rss_mib"] == max(
        measured["rss"]["wait4_maxrss_mib"], measured["rss"]["sampled_tree_peak_mib"]
    )
    (tmp_path / "work" / "corpus").mkdir(parents=True)
    (tmp_path / "work" / "corpus" / "a.bin").write_bytes(b"x" * 10_000)
    (tmp_path / "work" / "top.json").write_text("{}")
    disk = cost_curves.workdir_disk(tmp_path / "work")
    assert disk["folders"]["corpus"]["apparent_bytes"] == 10_000 and disk["total"]["apparent_bytes"] == 10_002
    assert disk["folders"]["corpus"]["allocated_bytes"] >= 8192


def test_dry_run_prints_every_stage_command_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "cc"
    code = cost_curves.main(["run", "--out", str(out), "--teacher", "stand-in", "--max-factor", "4", "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert printed.count("scale_corpus.py --factor") == 2  # 1x and 4x (64x is above --max-factor)
    for stage in cost_curves.STAGES:
        assert printed.count(f"vocabert.cli {stage} ") == 2
    assert "stand-in-teacher-L1-seed0" in printed and "--cache-dir" in printed
    code = cost_curves.main(["run", "--out", str(out), "--teacher", "stand-in", "--factors", "1",
                             "--corpus-mine-factors", "64", "--stages", "corpus,mine,embed", "--dry-run"])  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.count("vocabert.cli embed ") == 1 and printed.count("vocabert.cli mine ") == 2


def test_a_stage_measured_again_replaces_its_row_and_options_keep_theirs():
    runs = _synthetic_runs()
    mine4 = next(r for r in runs["runs"] if (r["stage"], r["factor"]) == ("mine", 4))
    # mine reads only the tokenizer: measured again later with another stand-in, it replaces the row.
    runs["runs"].append({**mine4, "teacher": "stand-in-L0", "wall_s": 7.0, "measured": "2026-12-06T00:00:00Z"})
    embed1 = next(r for r in runs["runs"] if (r["stage"], r["factor"]) == ("embed", 1))
    runs["runs"].append({**embed1, "stage_args": ["--batch-size", "128"], "wall_s": 5.0})  # its own row and fit
    table, growth = cost_curves.build_report(runs, None, "cmd", [])
    mine = [r for r in table["rows"] if r["stage"] == "mine"]
    assert [(r["size"], r["wall_s"]) for r in mine] == [("1x", 15.0), ("4x", 7.0), ("16x", 240.0)]
    embed = [(r["size"], r["options"]) for r in table["rows"] if r["stage"] == "embed"]
    assert embed.count(("1x", "defaults")) == 1 and ("1x", "--batch-size 128") in embed
    assert sorted((g["stage"], g["options"]) for g in growth["rows"] if g["stage"] == "embed") == [
        ("embed", "--batch-size 128"),
        ("embed", "defaults"),
    ]


def test_resume_skips_what_was_measured():
    runs = _synthetic_runs()
    assert cost_curves.find_run(runs, 4, "stand-in", "mine", []) is not None
    assert cost_curves.find_run(runs, 4, "stand-in", "mine", ["--max-keys", "10"]) is None
    assert cost_curves.find_run(runs, 1, "stand-in", "train", []) is None  # it failed: measured again
    assert json.loads(json.dumps(runs)) == runs


def test_a_stand_in_of_no_layer_is_its_own_teacher_and_two_runs_keep_each_others_records(tmp_path, capsys):
    code = cost_curves.main(["run", "--out", str(tmp_path / "cc"), "--teacher", "stand-in", "--stand-in-layers", "0",
                             "--factors", "1", "--corpus-mine-factors", "", "--dry-run"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "stand-in-teacher-L0-seed0" in printed and "work/x1-stand-in-L0" in printed
    assert cost_curves.teacher_label("stand-in-L0") == "stand-in teacher (embeddings only, no layer, seed 0)"
    assert cost_curves.teacher_label("stand-in") == cost_curves.STAND_IN_LABEL
    assert cost_curves.teacher_label("real") == cost_curves.REAL_LABEL
    # Two `run` commands over one --out (16x beside 1x) each add their measurements to the file as it is then.
    path = tmp_path / "runs.json"
    first, second = _synthetic_runs()["runs"][:2]
    cost_curves.save_measurement(path, first)
    cost_curves.save_measurement(path, second)
    cost_curves.save_measurement(path, generated=("x4", {"wall_s": 1.0}))
    again = {**first, "wall_s": 99.0}
    runs = cost_curves.save_measurement(path, again)  # measured again: replaces the first
    assert [r["wall_s"] for r in runs["runs"]] == [second["wall_s"], 99.0]
    assert cost_curves.load_runs(path) == runs and runs["generated"] == {"x4": {"wall_s": 1.0}}
