"""``vocabert bench``: quality, speed and cost of the student next to the teacher and its peers.

Every model is measured on the same texts in one run:

- fidelity to the teacher on held-out passages and queries (models in the teacher's space only);
- STS-B dev Spearman (and any ``--sts`` file: STS-B, SICK, plain or CSV/TSV with a header);
- retrieval: TREC DL 2019 over the bundled passages (and any ``--beir`` folder or TREC-style set);
- texts/s at batch 1 and 64 for passages and queries (median of 3 after a warm-up), peak RSS and cold
  load time in a fresh process, size on disk, and the student's time per step.

Quality goes through the embedding cache (teacher and peer outputs are computed once per text);
speed is always measured on the raw encoders. ``vocabert evaluate`` is this same run without peers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError
from vocabert.bench.datasets import RetrievalTask, StsData, dl19_task, make_task, read_beir, read_sts, trec_task
from vocabert.bench.metrics import evaluate_ranking, evaluate_retrieval, evaluate_sts, fidelity
from vocabert.bench.peers import BM25Retriever, Encoder, PeerUnavailable, build_peers, cached, try_peer
from vocabert.bench.report import UNSEEN_PASSAGES, markdown_table, update_model_card, write_report
from vocabert.bench.settings import SpeedPlan
from vocabert.bench.speed import measure_latency, measure_memory, measure_throughput
from vocabert.distill.corpus import open_corpus
from vocabert.distill.teacher import source_prompts
from vocabert.distill.workspace import Workspace, check_same_teacher, log


def split_name(arg: str | Path) -> tuple[str | None, Path]:
    """``NAME=PATH`` -> ``(NAME, PATH)``; a plain path -> ``(None, PATH)``.

    The ``=`` belongs to the path when the whole argument exists or the part before it holds a ``/``.
    """
    text = str(arg)
    name, sep, rest = text.partition("=")
    if not sep or not name or "/" in name or Path(text).exists():
        return None, Path(text)
    return name, Path(rest)


def _file_stem(path: Path) -> str:
    """``queries.dl20.tsv.gz`` -> ``queries.dl20``: the default name of a set read from a file."""
    return Path(path.name.removesuffix(".gz")).stem or path.name


class _Names:
    """Set names in use, so that two sets never overwrite each other's results."""

    def __init__(self, option: str):
        self.option = option
        self.sources: dict[str, str] = {}

    def claim(self, name: str, source: str) -> str:
        if name in self.sources:
            raise VocabertError(
                f"two sets are named {name!r} ({self.sources[name]} and {source}): "
                f"give one another name with {self.option} NAME=..."
            )
        self.sources[name] = source
        return name


def load_sets(
    data_dir: Path,
    dl19: bool = True,
    sts_files: Sequence[str | Path] = (),
    beir_dirs: Sequence[str | Path] = (),
    trec_sets: Sequence[tuple[str | Path, str | Path, str | Path]] = (),
) -> tuple[list[RetrievalTask], dict[str, StsData]]:
    """Every evaluation set, read before any model is loaded so that a bad file fails in seconds.

    STS-B dev is always first. ``sts_files`` and ``beir_dirs`` entries, and the queries file of each
    ``(queries, qrels, corpus)`` in ``trec_sets``, may carry a ``NAME=`` prefix; otherwise a set is
    named after its file (a TREC set after its queries file) or folder. Two sets of a kind with one
    name are an error.
    """
    sts_names, task_names = _Names("--sts"), _Names("--trec/--beir")
    sts_dev = data_dir / "sts" / "stsbenchmark" / "sts-dev.csv.gz"
    sts_sets = {sts_names.claim("sts-b dev", str(sts_dev)): read_sts(sts_dev)}
    for arg in sts_files:
        name, path = split_name(arg)
        sts_sets[sts_names.claim(name or path.name, str(path))] = read_sts(path)
    tasks = []
    if dl19:
        tasks.append(dl19_task(data_dir))
        task_names.claim("dl19", str(data_dir / "msmarco_passage"))
    for arg in beir_dirs:
        name, path = split_name(arg)
        tasks.append(make_task(task_names.claim(name or path.name, str(path)), *read_beir(path)))
    for queries, qrels, corpus in trec_sets:
        name, path = split_name(queries)
        tasks.append(trec_task(task_names.claim(name or _file_stem(path), str(path)), path, qrels, corpus))
    for name, data in sts_sets.items():
        log(f"sts: {name}: {data.layout}, {len(data.scores):,} pairs")
    for task in tasks:
        log(
            f"retrieval: {task.name}: {len(task.queries):,} queries ({task.n_dropped_queries:,} without a relevant "
            f"document dropped), {len(task.corpus):,} documents, relevant at grade >= {task.min_grade}"
        )
    return tasks, sts_sets


def run_bench(
    ws: Workspace,
    model_dirs: Path | Sequence[Path],
    out_dir: Path,
    data_dir: Path | None = None,
    sts_files: Sequence[str | Path] = (),
    beir_dirs: Sequence[str | Path] = (),
    trec_sets: Sequence[tuple[str | Path, str | Path, str | Path]] = (),
    max_fidelity_texts: int | None = None,
    peers: bool = True,
    dl19: bool = True,
    speed: SpeedPlan | None = None,
    seed: int = 0,
) -> dict:
    """Measure everything, write bench.json / bench.md / plots into ``out_dir`` and the model cards.

    ``model_dirs``: one student, or several (e.g. one per architecture), measured side by side in the
    same run. With ``peers=False`` only the students and the teacher are measured (``vocabert evaluate``).
    Sets are named as :func:`load_sets` says.
    """
    from vocabert.distill.corpus import default_data_dir

    started = time.perf_counter()
    speed = speed or SpeedPlan()
    model_dirs = [Path(model_dirs)] if isinstance(model_dirs, str | Path) else [Path(d) for d in model_dirs]
    for model_dir in model_dirs:
        if not model_dir.is_dir():
            raise VocabertError(f"model folder {model_dir} does not exist")
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if data_dir is None or not data_dir.is_dir():
        raise VocabertError(
            "bench needs the bundled data folder (sts/, msmarco_passage/): use --data-dir or VOCABERT_DATA"
        )
    tasks, sts_sets = load_sets(data_dir, dl19, sts_files, beir_dirs, trec_sets)
    corpus = open_corpus(ws)
    # Fidelity sets: every source's random held-out texts, and the passages held out with their topics.
    heldout = {s: corpus.texts("heldout", s)[:max_fidelity_texts] for s in corpus.sources}
    heldout[UNSEEN_PASSAGES] = (
        corpus.texts("unseen", "passages")[:max_fidelity_texts] if "passages" in corpus.sources else []
    )
    heldout = {s: t for s, t in heldout.items() if t}

    log("bench: loading models")
    models: list[Encoder | PeerUnavailable] = build_peers(
        ws.teacher_path,
        ws.cache_dir,
        pca_dims=(256, None) if peers else (),
        students=model_dirs,
        show_progress_bar=ws.show_progress_bar,
    )
    teacher = next((m for m in models if m.kind == "teacher"), None)
    if teacher is None or not teacher.available:
        raise VocabertError(f"the teacher could not be loaded: {getattr(teacher, 'reason', '?')}")
    # The models under test are no optional peers: each must load, and be a student of this teacher.
    for student, model_dir in zip((m for m in models if m.kind == "student"), model_dirs, strict=True):
        if not student.available:
            raise VocabertError(f"model {model_dir} could not be loaded: {student.reason}")
        check_same_teacher(ws.provenance, student.model.config.get("provenance", {}), f"model {model_dir}")
    bm25 = try_peer("bm25", "bm25", BM25Retriever) if peers else None

    # A teacher with prompts is scored as its users would run it: queries (and STS sentences) with its query
    # prompt, passages with its passage prompt, for every model alike. (The fidelity sets come from the
    # corpus, which holds them prompted already.)
    prompts = source_prompts(ws.teacher_path, ["queries", "passages"])
    results: dict = {"meta": {}, "models": {}}
    quality = {m.name: cached(m, ws.cache_dir) for m in models if m.available}
    teacher_vectors = {s: quality[teacher.name].encode(t) for s, t in heldout.items()}
    for model in tqdm(models, desc="bench: models", unit="model", disable=not ws.show_progress_bar):
        if not model.available:
            results["models"][model.name] = {"kind": model.kind, "error": model.reason}
            continue
        log(f"bench: {model.name}")
        results["models"][model.name] = measure_model(
            model,
            quality[model.name],
            teacher,
            teacher_vectors,
            heldout,
            tasks,
            sts_sets,
            speed,
            quality[teacher.name],
            prompts,
        )
    if bm25 is not None:
        results["models"]["bm25"] = measure_bm25(bm25, tasks)

    results["meta"] = {
        "seed": seed,
        "teacher": str(ws.teacher_path),
        "models": [str(d.resolve()) for d in model_dirs],
        "samples": {
            **{f"fidelity_{s}": len(t) for s, t in heldout.items()},
            **{f"sts {name}": len(s.scores) for name, s in sts_sets.items()},
            **{f"{t.name} queries": len(t.queries) for t in tasks},
            **{f"{t.name} docs": len(t.corpus) for t in tasks},
        },
        "sts_layouts": {name: s.layout for name, s in sts_sets.items()},
        "speed_plan": vars(speed),
        "notes": (
            "Fidelity and speed use the held-out split (never seen by mining, the teacher pass or training). "
            "Retrieval ranks all bundled passages by exact cosine; those passages include the student's "
            "training passages (as distillation targets, never with relevance labels). Model2Vec with PCA "
            "lives in another space, so it has no fidelity figure. Speeds are medians of "
            f"{speed.repeats} runs after a warm-up; ×teacher is against the teacher timed in this same run."
        ),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    paths = write_report(results, out_dir)
    table = markdown_table(results)
    for model_dir in model_dirs:
        update_model_card(model_dir, table)
    print(table, flush=True)
    cards = ", ".join(str(d / "README.md") for d in model_dirs)
    log(f"bench: {', '.join(str(p) for p in paths.values())}; model card {cards}")
    log(f"bench: wall time {time.perf_counter() - started:.0f}s")
    return results


def measure_model(
    model: Encoder,
    quality: Encoder,
    teacher: Encoder,
    teacher_vectors: dict[str, np.ndarray],
    heldout: dict[str, list[str]],
    tasks: list[RetrievalTask],
    sts_sets: dict[str, StsData],
    plan: SpeedPlan,
    teacher_quality: Encoder | None = None,
    prompts: dict[str, str] | None = None,
) -> dict:
    """Every figure of one model; ``quality`` is its cached twin (quality only), ``model`` is timed.

    A model in the teacher's space is also scored as a query encoder over the corpus the teacher
    encoded (``asymmetric``): a user who keeps the teacher's index and replaces only the query encoder."""
    entry: dict = {
        "kind": model.kind,
        "description": model.description,
        "error": None,
        "size_bytes": model.size_bytes,
        "load_seconds": model.load_seconds,
    }
    # Fidelity only means something in the teacher's space (not after Model2Vec's PCA).
    if model.kind != "teacher" and model.dim == teacher.dim:
        entry["fidelity"] = {}
        for source, texts in heldout.items():
            vectors = quality.encode(texts)
            entry["fidelity"][source] = fidelity(vectors, teacher_vectors[source], per_text=True)
    prompts = prompts or {}
    query, passage = prompts.get("queries", ""), prompts.get("passages", "")
    entry["sts"] = {
        name: evaluate_sts(prompted(quality.encode, query), data.sentences1, data.sentences2, data.scores)
        for name, data in sts_sets.items()
    }
    entry["sts"] = next(iter(entry["sts"].values())) | {"sets": entry["sts"]}
    entry["retrieval"] = {}
    for task in tasks:
        r = evaluate_retrieval(task, prompted(quality.encode, passage), prompted(quality.encode, query))
        entry["retrieval"][task.name] = {k: v for k, v in r.items() if not k.startswith("per_query")}
        if teacher_quality is not None and model.kind != "teacher" and model.dim == teacher.dim:
            r = evaluate_retrieval(task, prompted(teacher_quality.encode, passage), prompted(quality.encode, query))
            entry["retrieval"][task.name]["asymmetric"] = {k: v for k, v in r.items() if not k.startswith("per_query")}

    fast = model.kind != "teacher"
    entry["speed"] = {}
    for source in ("passages", "queries"):
        texts = heldout.get(source)
        if not texts:
            continue
        for batch, n in (
            (64, plan.fast_b64 if fast else plan.teacher_b64),
            (1, plan.fast_b1 if fast else plan.teacher_b1),
        ):
            sample = texts[:n]
            entry["speed"][f"{source}_b{batch}"] = measure_throughput(model.encode, sample, batch, repeats=plan.repeats)
            if batch == 1:
                entry.setdefault("latency", {})[source] = measure_latency(model.encode, sample)
    sample = heldout.get("passages") or next(iter(heldout.values()))
    if model.kind == "student":
        entry["breakdown"] = student_breakdown(model, sample)
        entry["network"] = network_cost(model.model, sample)
    memory_texts = sample[: plan.memory_texts if fast else 64]
    entry["memory"] = measure_memory(model.spec(), memory_texts)
    return entry


def prompted(encode: Callable[[list[str]], np.ndarray], prompt: str) -> Callable[[list[str]], np.ndarray]:
    """``encode`` with ``prompt`` put before every text (itself when there is no prompt)."""
    if not prompt:
        return encode
    return lambda texts, *args, **kwargs: encode([prompt + t for t in texts], *args, **kwargs)


def network_cost(student, texts: list[str], batch_size: int = 64, n: int = 1024) -> dict:
    """Parameters of the student's network (entry vectors not counted) and its multiply-adds per text,
    from the matches per text on ``texts`` (tokenizing and matching are not counted)."""
    texts = texts[:n]
    matches = 0
    for start in range(0, len(texts), batch_size):
        ids, offsets = student.tokenize(texts[start : start + batch_size])
        matches += len(student.index.match(ids, offsets))
    network = student.network
    return {
        "architecture": network.name,
        "parameters": int(sum(np.asarray(t).size for t in network.tensors().values())),
        "flops_per_text": float(network.flops(matches / len(texts), student.dim)),
        "matches_per_text": matches / len(texts),
    }


def student_breakdown(model: Encoder, texts: list[str], batch_size: int = 64, n: int = 2048) -> dict:
    """Where the student's time goes, per step, at batch 64 (best of 3 passes over the texts)."""
    student = model.model
    texts = texts[:n]
    best: dict[str, float] | None = None
    for _ in range(3):
        timings: dict[str, float] = {}
        for start in range(0, len(texts), batch_size):
            student.encode_batch(texts[start : start + batch_size], timings)
        if best is None or sum(timings.values()) < sum(best.values()):
            best = timings
    total = sum(best.values())
    return {
        step: {"µs/text": 1e6 * seconds / len(texts), "share": seconds / total} for step, seconds in best.items()
    } | {"total": {"µs/text": 1e6 * total / len(texts), "share": 1.0}}


def measure_bm25(bm25, tasks: list[RetrievalTask]) -> dict:
    if not bm25.available:
        return {"kind": "bm25", "error": bm25.reason}
    entry: dict = {"kind": "bm25", "description": bm25.description, "error": None, "retrieval": {}}
    for task in tasks:
        ids = list(task.corpus)
        bm25.index([task.corpus[i] for i in ids])
        qids = list(task.queries)
        indices, _ = bm25.search([task.queries[q] for q in qids], k=100)
        run = {q: [ids[j] for j in row] for q, row in zip(qids, indices, strict=True)}
        r = evaluate_ranking(task, run)
        entry["retrieval"][task.name] = {k: v for k, v in r.items() if not k.startswith("per_query")}
        entry["retrieval"][task.name]["index_seconds"] = bm25.index_seconds
    return entry
