"""The ``vocabert`` command: one subcommand per stage, and ``run`` for all of them in order.

Dispatch only. A stage's options are declared on its settings dataclass (see :mod:`vocabert.options`); a
subcommand is a ``cmd_<name>`` function, whose docstring is its help, that hands them to the stage.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from vocabert import __version__
from vocabert.artifacts import VocabertError
from vocabert.options import add_options, option, settings_from_args

# Named sets of stage settings (MineSettings and TrainSettings fields); a flag given on the command line still
# wins. `fast`: a vocabulary of the 25,000 most frequent tokens and no phrases, and the one-head student of
# rank 32 (with the entry pull it was measured with). `quality`: the default student plus context features of
# rank 128 (each match read in the light of the whole text) and a nonlinear [CLS]/[SEP] term of 256 units, the
# most faithful student measured that encodes passages at least 30x faster than the teacher
# (docs/architectures.md). The presets are measured side by side in docs/results.md.
PRESETS: dict[str, dict] = {
    "default": {},
    "fast": {"budget": 25_000, "attention_heads": 1, "attention_rank": 32, "tune_entries": 0.01},
    "quality": {"context": 128, "special_hidden": 256},
}


@dataclass(frozen=True)
class Preset:
    """The option that picks one of :data:`PRESETS` (its defaults come under the flags given)."""

    preset: str = option(
        "default",
        "named settings: fast = a 25k tokens-only vocabulary and a one-head student, ~2.5x the default's speed "
        "for less fidelity; quality = the default plus context features and a nonlinear [CLS]/[SEP] term "
        "(--context 128 --special-hidden 256), more faithful and slower (see docs/results.md); flags given "
        "beside it win",
        choices=tuple(PRESETS),
    )


def _workspace(args: argparse.Namespace):
    from vocabert.distill.workspace import Workspace

    return settings_from_args(Workspace, args)


# ---------------------------------------------------------------------------------------- commands


def cmd_corpus(args: argparse.Namespace) -> None:
    """Tokenize passages and queries with the teacher's tokenizer into shards."""
    from vocabert.distill.corpus import CorpusInputs, CorpusSettings, run_corpus

    inputs = settings_from_args(CorpusInputs, args)
    run_corpus(_workspace(args), inputs.sources(), settings_from_args(CorpusSettings, args), args.force, args.data_dir)


def cmd_mine(args: argparse.Namespace) -> None:
    """Mine tokens, n-grams, whole words and skip-grams by counts and association (NPMI, LLR), or by the
    teacher's error they remove, under a budget."""
    from vocabert.distill.engine import EngineSettings
    from vocabert.distill.mining import MineSettings, run_mining
    from vocabert.distill.pipeline import open_engine

    with open_engine(settings_from_args(EngineSettings, args)) as engine:
        run_mining(_workspace(args), settings_from_args(MineSettings, args), force=args.force, engine=engine)


def cmd_embed(args: argparse.Namespace) -> None:
    """Run the teacher over the training texts: cache sentence embeddings (targets) and store each entry's mean
    contextual vector."""
    from vocabert.distill.embedding import EmbedSettings, run_embedding
    from vocabert.distill.engine import EngineSettings
    from vocabert.distill.pipeline import open_engine

    settings = settings_from_args(EmbedSettings, args)
    with open_engine(settings_from_args(EngineSettings, args)) as engine:
        run_embedding(_workspace(args), settings, force=args.force, engine=engine, pass_only=args.pass_only)


def cmd_train(args: argparse.Namespace) -> None:
    """Distil the student (--arch: weighted mean of entry vectors + linear map, or context-aware pooling) from
    the teacher pass in the work directory."""
    from vocabert.distill.training import TrainSettings, run_training

    run_training(_workspace(args), settings_from_args(TrainSettings, args), force=args.force, model_dir=args.model_out)


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Measure the model next to its teacher (no other peers): fidelity to the teacher on held-out passages
    and queries, STS-B dev Spearman, TREC DL 2019 retrieval (nDCG@10, MRR@10, Recall@100), speed, memory and
    size. Writes bench.json, bench.md and plots to <workdir>/eval and the table into the model card; `vocabert
    bench` is the same with BM25 and Model2Vec."""
    cmd_bench(args, peers=False)


def cmd_bench(args: argparse.Namespace, peers: bool | None = None) -> None:
    """Quality (fidelity, STS, retrieval), speed and memory of the student next to the teacher, BM25 and
    Model2Vec, in one run: bench.json, bench.md, plots, and the table in the model card."""
    from vocabert.bench.benchmark import run_bench
    from vocabert.bench.settings import BenchSettings, SpeedPlan

    ws = _workspace(args)
    # `vocabert run` has no --model or --out: it evaluates the model it trained.
    models, out = getattr(args, "model", None), getattr(args, "out", None)
    models = [models] if isinstance(models, str) else models
    peers = not args.no_peers if peers is None else peers  # evaluate: none, into <workdir>/eval
    run_bench(
        ws,
        [Path(m) for m in models] if models else [ws.model_dir],
        Path(out) if out else ws.root / ("bench" if peers else "eval"),
        data_dir=args.data_dir,
        peers=peers,
        speed=settings_from_args(SpeedPlan, args),
        **asdict(settings_from_args(BenchSettings, args)),
    )


def cmd_encode(args: argparse.Namespace) -> None:
    """Encode a file of texts (TSV, JSONL or lines, gz or plain) into a .npy matrix or a Parquet table,
    streaming: memory stays bounded by the batch, whatever the file's size."""
    from vocabert.streaming import EncodeSettings, encode_command

    encode_command(**asdict(settings_from_args(EncodeSettings, args)))


def cmd_vocab(args: argparse.Namespace) -> None:
    """Summary of a model's vocabulary: entries per kind (n-grams by length, skip-grams by gap), size of the
    entry store, and the top entries by each statistic of its vocabulary.tsv (count, NPMI, score)."""
    import vocabert
    from vocabert.inspect_vocabulary import check_kind, vocabulary_summary

    check_kind(args.kind)  # before loading the model
    if args.top < 1:
        raise VocabertError(f"--top must be at least 1, got {args.top}")
    summary = vocabulary_summary(vocabert.load(args.model))
    print(summary.format(top=args.top, by=args.by, kind=args.kind), end="", flush=True)


def cmd_neighbors(args: argparse.Namespace) -> None:
    """The vocabulary entries nearest to a word or phrase by cosine: to the entry's stored vector if TEXT is an
    entry (a '*' on its own is a wildcard: 'how * you'), else to the model's embedding of TEXT."""
    import vocabert
    from vocabert.inspect_vocabulary import check_kind, neighbors

    check_kind(args.kind)
    if not args.text.strip():
        raise VocabertError("TEXT is empty: give a word or phrase")
    if args.top < 1:
        raise VocabertError(f"--top must be at least 1, got {args.top}")
    found = neighbors(vocabert.load(args.model), args.text, top=args.top, kind=args.kind)
    print(found.format(), end="", flush=True)


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve a model over HTTP with OpenAI's embeddings API (POST /v1/embeddings, GET /v1/models, GET
    /health). With $VOCABERT_API_KEY set, requests must send 'Authorization: Bearer <key>'. Needs the serve
    extra: pip install 'vocabert[serve]'."""
    from vocabert.serve import ServerLimits, ServeSettings, serve

    serve(**asdict(settings_from_args(ServeSettings, args)), limits=settings_from_args(ServerLimits, args))


def cmd_run(args: argparse.Namespace) -> None:
    """Every stage in order (finished stages are skipped), ending with the evaluation report."""
    import time

    from vocabert.distill.corpus import CorpusInputs, CorpusSettings
    from vocabert.distill.embedding import EmbedSettings
    from vocabert.distill.engine import EngineSettings
    from vocabert.distill.mining import MineSettings
    from vocabert.distill.pipeline import build_model
    from vocabert.distill.training import TrainSettings
    from vocabert.distill.workspace import log

    ws = _workspace(args)
    times = build_model(
        ws,
        settings_from_args(CorpusInputs, args).sources(),
        settings_from_args(CorpusSettings, args),
        settings_from_args(MineSettings, args),
        settings_from_args(EmbedSettings, args),
        settings_from_args(TrainSettings, args),
        force=args.force,
        data_dir=args.data_dir,
        engine=settings_from_args(EngineSettings, args),
    )
    started = time.perf_counter()
    cmd_evaluate(args)
    times["evaluate"] = time.perf_counter() - started
    log("wall time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    log(f"model: {ws.model_dir.resolve()}")


# ------------------------------------------------------------------------------------------ parser


def build_parser(preset: str = "default") -> argparse.ArgumentParser:
    """The command line; ``preset`` (a key of :data:`PRESETS`) replaces the defaults it names."""
    from vocabert.bench.settings import BenchSettings, SpeedPlan
    from vocabert.distill.corpus import CorpusInputs, CorpusSettings
    from vocabert.distill.embedding import EmbedSettings
    from vocabert.distill.engine import EngineSettings
    from vocabert.distill.mining import MineSettings
    from vocabert.distill.training import TrainSettings
    from vocabert.distill.workspace import Workspace
    from vocabert.inspect_vocabulary import KINDS
    from vocabert.serve import ServerLimits, ServeSettings  # no FastAPI at import
    from vocabert.streaming import EncodeSettings

    parser = argparse.ArgumentParser(
        prog="vocabert",
        description="Cheap BERT sentence embeddings: mine a phrase vocabulary, store the teacher's vectors "
        "for it, and distil a tiny network that assembles sentence embeddings from them.",
    )
    parser.add_argument("--version", action="version", version=f"vocabert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def options(title: str | None, *classes: type, skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        """A parent parser with the options of ``classes`` under ``title`` (None: among the general options)."""
        parent = argparse.ArgumentParser(add_help=False)
        group = parent.add_argument_group(title) if title else parent
        for cls in classes:
            add_options(group, cls, {**PRESETS[preset], "preset": preset}, skip)
        return parent

    # The embedding cache is an option only where a stage reads or fills it.
    ws, ws_no_cache = options(None, Workspace), options(None, Workspace, skip=("cache_dir",))
    force = argparse.ArgumentParser(add_help=False)
    force.add_argument("--force", action="store_true", help="redo the stage even if its output is up to date")
    data = options("data", CorpusInputs, CorpusSettings)
    named = options(None, Preset)
    mine = options("mining", MineSettings)
    embed = options("teacher pass", EmbedSettings)
    engine = options("engine (where mining's counting and the teacher pass run)", EngineSettings)
    train = options("training", TrainSettings)
    evaluate = options("evaluation", BenchSettings, SpeedPlan)

    def add(func, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        doc = " ".join(func.__doc__.split())
        p = sub.add_parser(func.__name__.removeprefix("cmd_"), help=doc, description=doc, parents=parents)
        p.set_defaults(func=func)
        return p

    add(cmd_corpus, ws_no_cache, force, data)
    add(cmd_mine, ws_no_cache, force, named, mine, engine)
    add(cmd_embed, ws, force, embed, engine).add_argument(
        "--pass-only",
        action="store_true",
        help="only the teacher pass (no vocabulary needed): what `vocabert mine --select semantics` reads",
    )
    p = add(cmd_train, ws_no_cache, force, named, train)
    p.add_argument("--model-out", default=None, help="model folder to write (default: <workdir>/model)")
    data_dir_help = "folder with msmarco_passage/ and sts/ (default: as corpus)"
    p = add(cmd_evaluate, ws, evaluate)
    p.add_argument("--model", default=None, help="model directory (default: <workdir>/model)")
    p.add_argument("--out", default=None, help="report folder (default: <workdir>/eval)")
    p.add_argument("--data-dir", default=None, help=data_dir_help)
    add(cmd_encode, options(None, EncodeSettings))
    p = add(cmd_bench, ws, evaluate)
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="model directory; repeat it to measure several students side by side (default: <workdir>/model)",
    )
    p.add_argument("--out", default=None, help="report folder (default: <workdir>/bench)")
    p.add_argument("--data-dir", default=None, help=data_dir_help)
    p.add_argument("--no-peers", action="store_true", help="only the student and the teacher (no BM25, Model2Vec)")
    kind_help = f"list only entries of this kind: {', '.join(KINDS[:-1])} or {KINDS[-1]}"
    p = add(cmd_vocab)
    p.add_argument("model", metavar="MODEL", help="model directory")
    p.add_argument("--top", type=int, default=10, help="entries listed per statistic (default: %(default)s)")
    p.add_argument("--kind", default=None, help=kind_help)
    p.add_argument(
        "--by",
        action="append",
        default=None,
        metavar="COLUMN",
        help="rank by this column of vocabulary.tsv (count, npmi, score, ...); repeatable (default: every one)",
    )
    p = add(cmd_neighbors)
    p.add_argument("model", metavar="MODEL", help="model directory")
    p.add_argument("text", metavar="TEXT", help="a word or phrase")
    p.add_argument("--top", type=int, default=10, help="entries listed (default: %(default)s)")
    p.add_argument("--kind", default=None, help=kind_help)
    add(cmd_serve, options(None, ServeSettings, ServerLimits))
    add(cmd_run, ws, force, named, data, mine, embed, engine, train, evaluate)
    return parser


# A first look at the command line for the preset, whose defaults the parser then shows and uses.
_PRESET = argparse.ArgumentParser(add_help=False)
_PRESET.add_argument("--preset", default="default")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed, with ``--preset``'s defaults under the flags actually given."""
    preset = _PRESET.parse_known_args(argv)[0].preset
    return build_parser(preset if preset in PRESETS else "default").parse_args(argv)  # (a bad name: refused)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # (vocab, neighbors and serve show no progress bars, and have no --no-progress)
    if os.environ.get("CI") and getattr(args, "progress", False) and not sys.stderr.isatty():
        args.progress = False
    try:
        args.func(args)
    except VocabertError as e:
        print(f"vocabert: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a path that cannot be read or written: say which, no traceback
        where = f" {e.filename}" if e.filename else ""
        print(f"vocabert: error:{where}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vocabert: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
