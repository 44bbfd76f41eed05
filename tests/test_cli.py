"""The command line: every option is declared once, on the settings it sets (vocabert.options)."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from vocabert import cli
from vocabert.bench.settings import BenchSettings, SpeedPlan
from vocabert.distill.corpus import CorpusInputs, CorpusSettings
from vocabert.distill.embedding import EmbedSettings
from vocabert.distill.engine import EngineSettings
from vocabert.distill.mining import MineSettings
from vocabert.distill.training import TrainSettings
from vocabert.distill.workspace import Workspace
from vocabert.options import add_options, default_of, dest_of, flag_of, option, option_fields, settings_from_args
from vocabert.serve import ServerLimits, ServeSettings
from vocabert.streaming import EncodeSettings

BUILDING = [CorpusInputs, CorpusSettings, MineSettings, EmbedSettings, EngineSettings, TrainSettings]
EVALUATION = [BenchSettings, SpeedPlan]
# The settings each subcommand sets, and its arguments that are no setting (beside --help).
SETTINGS = {
    "corpus": ([Workspace, CorpusInputs, CorpusSettings], {"--force"}),
    "mine": ([Workspace, MineSettings, EngineSettings], {"--force", "--preset"}),
    "embed": ([Workspace, EmbedSettings, EngineSettings], {"--force", "--pass-only"}),
    "train": ([Workspace, TrainSettings], {"--force", "--preset", "--model-out"}),
    "evaluate": ([Workspace, *EVALUATION], {"--model", "--out", "--data-dir"}),
    "bench": ([Workspace, *EVALUATION], {"--model", "--out", "--data-dir", "--no-peers"}),
    "run": ([Workspace, *BUILDING, *EVALUATION], {"--force", "--preset"}),
    "encode": ([EncodeSettings], set()),
    "serve": ([ServeSettings, ServerLimits], set()),
}
REQUIRED = {"encode": ["--model", "m", "--input", "i", "--output", "o.npy"], "serve": ["--model", "m"]}
NO_TEACHER_CACHE = {"corpus", "mine", "train"}  # stages that neither read nor fill the embedding cache


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each option of a parser by its (first long) flag, --help left out."""
    found = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    flags = [next(s for s in a.option_strings if s.startswith("--")) for a in found]
    assert len(flags) == len(set(flags)), flags
    return dict(zip(flags, found, strict=True))


def test_every_subcommand_builds_and_has_help(capsys):
    commands = _subcommands(cli.build_parser())
    assert set(commands) == {*SETTINGS, "vocab", "neighbors"}
    for name in commands:
        with pytest.raises(SystemExit) as exit_:
            cli.parse_args([name, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: vocabert {name}")


@pytest.mark.parametrize("command", sorted(SETTINGS))
def test_each_setting_has_exactly_one_option(command):
    """Every option field of the command's settings is one option, stored where settings_from_args reads it,
    and every other option is one of the command's own arguments."""
    classes, own = SETTINGS[command]
    options = _options(_subcommands(cli.build_parser())[command])
    expected = {flag_of(f): f for cls in classes for f in option_fields(cls)}
    if command in NO_TEACHER_CACHE:
        del expected["--cache-dir"]
    assert set(options) == set(expected) | own
    for flag, f in expected.items():
        assert options[flag].dest == dest_of(f), flag
    dests = [a.dest for a in options.values()]
    assert len(dests) == len(set(dests)), dests  # two batch sizes never share a dest


def test_every_stage_setting_is_an_option():
    for cls in [Workspace, *BUILDING, BenchSettings, EncodeSettings, ServeSettings, ServerLimits]:
        assert option_fields(cls) == list(fields(cls)), cls.__name__
    assert [f.name for f in option_fields(SpeedPlan)] == ["repeats"]  # the plan's other sizes are for tests


@pytest.mark.parametrize("command", sorted(SETTINGS))
def test_defaults_come_from_the_dataclass(command):
    args = cli.parse_args([command, *REQUIRED.get(command, [])])
    for cls in SETTINGS[command][0]:
        for f in option_fields(cls):
            if hasattr(args, dest_of(f)) and flag_of(f) not in REQUIRED.get(command, []):
                assert getattr(args, dest_of(f)) == default_of(f), (cls.__name__, f.name)
    for cls in [*BUILDING, *EVALUATION, ServerLimits]:  # (a Workspace resolves its teacher)
        if cls in SETTINGS[command][0]:
            assert settings_from_args(cls, args) == cls()


def test_a_changed_default_reaches_the_command_line(monkeypatch):
    """One place: the dataclass's default is what the option shows and what a command gets."""
    budget = next(f for f in fields(MineSettings) if f.name == "budget")
    monkeypatch.setattr(budget, "default", 1234)
    assert settings_from_args(MineSettings, cli.parse_args(["mine"])).budget == 1234
    assert "(default: 1234)" in _subcommands(cli.build_parser())["mine"].format_help()


def test_options_land_in_their_settings():
    args = cli.parse_args(
        ["run", "--teacher-batch-size", "7", "--train-batch-size", "9", "--no-dedup", "--heldout", "0.2"]
        + ["--teacher-sources", "queries,passages", "--engine", "ray", "--ray-workers", "3", "--no-progress"]
        + ["--sts", "a.tsv", "--sts", "b=b.tsv", "--no-dl19", "--repeats", "2", "--workdir", "w"]
    )
    assert settings_from_args(EmbedSettings, args).batch_size == 7
    assert settings_from_args(EmbedSettings, args).teacher_sources == ("passages", "queries")
    assert settings_from_args(TrainSettings, args).batch_size == 9
    assert settings_from_args(CorpusSettings, args) == CorpusSettings(dedup=False, heldout_fraction=0.2)
    assert settings_from_args(EngineSettings, args) == EngineSettings(engine="ray", ray_workers=3)
    assert settings_from_args(BenchSettings, args) == BenchSettings(sts_files=["a.tsv", "b=b.tsv"], dl19=False)
    assert settings_from_args(SpeedPlan, args) == SpeedPlan(repeats=2)
    assert (args.workdir, args.progress) == (Path("w"), False)


def test_presets_apply_and_flags_win(capsys):
    fast = cli.PRESETS["fast"]
    args = cli.parse_args(["run", "--preset", "fast"])
    assert settings_from_args(MineSettings, args) == MineSettings(budget=fast["budget"])
    train = settings_from_args(TrainSettings, args)
    assert (train.attention_heads, train.attention_rank, train.tune_entries) == (1, 32, fast["tune_entries"])
    assert settings_from_args(TrainSettings, cli.parse_args(["run"])) == TrainSettings()
    args = cli.parse_args(["run", "--attention-heads", "2", "--preset", "fast", "--budget", "5000"])
    assert (args.attention_heads, args.budget, args.attention_rank) == (2, 5000, 32)
    args = cli.parse_args(["train", "--preset", "fast"])  # train reads the preset's training settings too
    assert (args.attention_heads, args.attention_rank) == (1, 32)
    quality = settings_from_args(TrainSettings, cli.parse_args(["run", "--preset", "quality"]))
    assert quality == TrainSettings(context=128, special_hidden=256)
    with pytest.raises(SystemExit):  # the help shows the preset's defaults
        cli.parse_args(["mine", "--preset", "fast", "--help"])
    assert f"(default: {fast['budget']})" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["mine", "--preset", "slow"])
    assert exit_.value.code == 2 and "invalid choice: 'slow'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["encode", "--model", "m", "--input", "i", "--output", "o.npy", *extra]
        for extra in (["--force"], ["--workdir", "w"], ["--teacher", "t"], ["--cache-dir", "c"])
    ]
    + [["evaluate", "--force"], ["bench", "--force"]]
    + [[command, "--cache-dir", "c"] for command in sorted(NO_TEACHER_CACHE)],
)
def test_no_command_takes_options_it_ignores(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    assert exit_.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_encode_and_serve_hand_every_option_to_their_function(monkeypatch):
    import vocabert.serve
    import vocabert.streaming

    real = {"encode": vocabert.streaming.encode_command, "serve": vocabert.serve.serve}
    calls = {}
    monkeypatch.setattr(vocabert.streaming, "encode_command", lambda **kw: calls.update(encode=kw))
    monkeypatch.setattr(vocabert.serve, "serve", lambda **kw: calls.update(serve=kw))
    assert cli.main(["encode", *REQUIRED["encode"], "--precision", "int8", "--no-progress"]) == 0
    assert calls["encode"] == EncodeSettings("m", "i", "o.npy", precision="int8", progress=False).__dict__
    assert cli.main(["serve", "--model", "m", "--port", "9", "--max-connections", "3", "--strict-model"]) == 0
    assert calls["serve"] == dict(
        ServeSettings("m", port=9, strict_model=True).__dict__, limits=ServerLimits(max_connections=3)
    )
    for name, function in real.items():
        inspect.signature(function).bind(**calls[name])  # the real functions take these names


def test_required_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["encode", "--input", "i", "--output", "o.npy"])
    assert exit_.value.code == 2 and "the following arguments are required: --model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- vocabert.options


@dataclass(frozen=True)
class _Toy:
    count: int = option(3, "how many")
    share: float | None = option(None, "a share (default: none)", type=float, metavar="S")
    dedup: bool = option(True, "keep repeats", flag="--no-dedup")
    verbose: bool = option(False, "say more")
    kind: str = option("a", "which", choices=("a", "b"))
    files: list[str] = option(help="extra files", default_factory=list, action="append")
    internal: int = 0  # no option


def test_options_round_trip():
    parser = argparse.ArgumentParser()
    add_options(parser, _Toy)
    assert settings_from_args(_Toy, parser.parse_args([])) == _Toy()
    args = parser.parse_args(["--count", "5", "--share", "0.5", "--no-dedup", "--verbose", "--kind", "b"])
    assert settings_from_args(_Toy, args) == _Toy(count=5, share=0.5, dedup=False, verbose=True, kind="b")
    assert settings_from_args(_Toy, parser.parse_args(["--files", "x", "--files", "y"])).files == ["x", "y"]
    text = parser.format_help()
    assert "how many (default: 3)" in text and "a share (default: none)" in text and "--internal" not in text
    assert "keep repeats\n" in text and "extra files\n" in text  # flags and lists show no default
    parser = argparse.ArgumentParser()
    add_options(parser, _Toy, defaults={"count": 7}, skip=("files",))
    assert settings_from_args(_Toy, parser.parse_args([])) == _Toy(count=7)
    assert "--files" not in parser.format_help()
