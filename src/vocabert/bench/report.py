"""What a reviewer reads: ``bench.json``, ``bench.md``, the plots (drawn by :mod:`vocabert.bench.plots`), and
the model card's eval section.

The bench hands :func:`write_report` one ``results`` dict. Every field but ``models`` is optional
and anything missing prints as "—"::

    {
      "meta": {
        "seed": 0,
        "samples": {"passages": 2000, "queries": 2000, "sts_pairs": 1379, "dl19_queries": 43, ...},
        "teacher": "...", "notes": "...",            # free text, shown as is
        "created": "...", "machine": {...},           # filled in by write_report when absent
      },
      "models": {
        "<name>": {
          "kind": "teacher" | "student" | "model2vec" | "bm25",
          "description": "library, version, settings",
          "error": None,                              # or the reason the peer is unavailable
          "fidelity": {       # cosine of each text's vector to the teacher's: vocabert.bench.metrics.fidelity
            "passages": {"cosine_mean": .., "cosine_p5": .., "n": .., "cosines": [per-text cosines]},
            "queries": {...},  # "mean"/"p5" are read too
          },
          "sts": {"spearman": .., "n": .., "sets": {"<set>": {"spearman": .., "n": ..}}},  # first set on top
          "retrieval": {"dl19": {"ndcg@10": .., "mrr@10": .., "recall@100": .., "n_queries": ..,
                                 "relevance_threshold": 2}},  # grade from which MRR/recall count a passage
          "speed": {                                  # vocabert.bench.speed.measure_throughput dicts
            "passages_b64": {"texts_per_s": .., ...}, "passages_b1": .., "queries_b64": .., "queries_b1": ..,
          },
          "memory": {...},                            # vocabert.bench.speed.measure_memory dict
          "size_bytes": .., "load_seconds": ..,
          "breakdown": None or {"<row>": {"<column>": value}},   # e.g. the student's ablations
        },
      },
    }

Derived figures are added before writing: fidelity ``cosine_mean``/``cosine_p5``/``n`` from
``cosines`` when absent (non-finite cosines are dropped and counted in ``n_invalid``), and
``x_teacher`` in each speed entry (speed over the teacher's, measured in the same run). For bm25, the
bench may give indexing throughput under ``speed.passages_b64``; it is shown like the encoders'.

Raw per-text ``cosines`` feed the histogram but stay out of the markdown and of ``bench.json``,
which keeps ``cosines_summary`` instead (quantiles and a 40-bin histogram) so the file stays small.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vocabert.artifacts import VocabertError, write_text
from vocabert.bench.plots import plot_fidelity_hist, plot_pareto
from vocabert.bench.results import SPEED_KEYS, lookup, ordered_models, prepare

DASH = "—"
EVAL_START = "<!-- vocabert-eval-start -->"
EVAL_END = "<!-- vocabert-eval-end -->"
UNSEEN_PASSAGES = "passages-unseen"  # fidelity set of the passages held out with their topics (DL19 pools)
LIBRARIES = (
    "vocabert", "numpy", "scipy", "tokenizers", "torch", "transformers", "sentence-transformers",
    "model2vec", "bm25s", "matplotlib", "ir-measures", "pytrec-eval-terrier",
)  # fmt: skip


# --- preparing the results ------------------------------------------------------------------------


def machine_info() -> dict:
    """CPU, OS, Python and library versions: speeds mean little without them."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        info["memory_gib"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        info["memory_gib"] = None
    if "torch" in sys.modules:  # only report, never import torch for this
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    info["libraries"] = {name: package_version(name) for name in LIBRARIES}
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """The installed version of a distribution, None if it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cosines_summary(cos: list[float]) -> dict:
    c = np.asarray(cos, dtype=np.float64)
    counts, edges = np.histogram(c, bins=40, range=(min(float(c.min()), 0.0), 1.0))
    quantiles = {f"p{q}": float(np.percentile(c, q)) for q in (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)}
    return {
        "n": len(c),
        "quantiles": quantiles,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def bench_json(results: dict) -> dict:
    """What goes into bench.json: :func:`prepare` d results, raw cosine lists replaced by summaries."""
    out = prepare(results)
    for m in out["models"].values():
        for part in (lookup(m, "fidelity") or {}).values():
            if isinstance(part, dict) and part.get("cosines"):
                part["cosines_summary"] = _cosines_summary(part.pop("cosines"))
            elif isinstance(part, dict):
                part.pop("cosines", None)
    return out


# --- markdown ---------------------------------------------------------------------------------------


def _num(x: Any, digits: int = 3) -> str:
    if x is None or isinstance(x, bool):
        return DASH
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}" if math.isfinite(x) else DASH
    return str(x)


def _flops(x: Any) -> str:
    """1.2M, 340k: counts of multiply-adds or parameters."""
    if not isinstance(x, int | float):
        return DASH
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e3 else f"{x:.0f}"


def _rate(x: Any) -> str:
    if not isinstance(x, int | float):
        return DASH
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _ratio(x: Any) -> str:
    if not isinstance(x, int | float):
        return ""
    return f" (×{x:.0f})" if x >= 10 else f" (×{x:.1f})" if x >= 1 else f" (×{x:.2f})"


def _auto(x: Any) -> str:
    if isinstance(x, float) and math.isfinite(x) and abs(x) >= 10:
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"
    return _num(x)


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A markdown table; the first ``text_columns`` are left-aligned, numbers right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _stat(part: dict, stat: str) -> Any:
    return part.get(f"cosine_{stat}", part.get(stat))


def markdown_table(results: dict) -> str:
    """Quality and speed/cost tables (plus breakdowns and unavailable peers) as markdown."""
    results = prepare(results)
    available = [(n, m) for n, m in ordered_models(results) if not m.get("error")]
    unavailable = [(n, m) for n, m in ordered_models(results) if m.get("error")]

    quality = []
    for name, m in available:
        fp, fq = lookup(m, "fidelity", "passages") or {}, lookup(m, "fidelity", "queries") or {}
        fu = lookup(m, "fidelity", UNSEEN_PASSAGES) or {}
        dl19 = lookup(m, "retrieval", "dl19") or {}
        quality.append([
            name, m.get("kind") or DASH,
            _num(_stat(fp, "mean")), _num(_stat(fp, "p5")), _num(_stat(fu, "mean")), _num(_stat(fu, "p5")),
            _num(_stat(fq, "mean")), _num(_stat(fq, "p5")),
            _num(lookup(m, "sts", "spearman")),
            _num(dl19.get("ndcg@10")), _num(dl19.get("mrr@10")), _num(dl19.get("recall@100")),
            _num(lookup(dl19, "asymmetric", "ndcg@10")),
        ])  # fmt: skip
    quality_header = [
        "Model", "kind", "passages cos mean", "passages cos p5", "unseen-topic passages cos mean",
        "unseen-topic passages cos p5", "queries cos mean", "queries cos p5",
        "STS Spearman", "DL19 nDCG@10", "DL19 MRR@10", "DL19 R@100", "DL19 nDCG@10, teacher's corpus",
    ]  # fmt: skip

    cost = []
    for name, m in available:
        speeds = [
            _rate(lookup(m, "speed", k, "texts_per_s")) + _ratio(lookup(m, "speed", k, "x_teacher")) for k in SPEED_KEYS
        ]
        size = m.get("size_bytes")
        cost.append([
            name, *speeds,
            _num(lookup(m, "latency", "queries", "p50_ms"), 2),
            _num(lookup(m, "latency", "queries", "p99_ms"), 2),
            _num(lookup(m, "memory", "peak_rss_mib"), 0),
            _num(lookup(m, "memory", "import_seconds"), 2),
            _num(m.get("load_seconds"), 2),
            _num(size / 1e6 if isinstance(size, int | float) else None, 1),
            _flops(lookup(m, "network", "flops_per_text")),
            _flops(lookup(m, "network", "parameters")),
        ])  # fmt: skip
    cost_header = [
        "Model", "passages/s b1", "passages/s b64", "queries/s b1", "queries/s b64",
        "query latency p50 ms", "query latency p99 ms",
        "peak RSS MiB", "import s", "load s", "size MB", "network FLOPs/text", "network params",
    ]  # fmt: skip

    parts = ["### Quality", "", _table(quality_header, quality, text_columns=2)]
    fidelity_rows = [
        [name, source, str(part.get("n", DASH)), _num(_stat(part, "mean")), _num(_stat(part, "median")),
         _num(_stat(part, "p5")), _num(_stat(part, "min")), _num(part.get("euclidean_mean"))]
        for name, m in available for source, part in (lookup(m, "fidelity") or {}).items() if isinstance(part, dict)
    ]  # fmt: skip
    if fidelity_rows:
        header = ["Model", "held-out set", "texts", "cos mean", "cos median", "cos p5", "cos min", "Euclidean mean"]
        parts += ["", "### Fidelity to the teacher", "", _table(header, fidelity_rows, text_columns=2)]
    parts += ["", "### Speed and cost", ""]
    parts += [_table(cost_header, cost), ""]
    parts.append(
        "cos: cosine between a text's vector and the teacher's (mean and 5th percentile over texts). "
        "Speeds: median texts/s of timed runs on CPU at batch size 1 or 64, (×N) relative to the teacher "
        "in the same run. Query latency: milliseconds to encode one query, call by call (batch 1). "
        "Peak RSS, import s: a fresh process that imports the library, loads the model "
        "and encodes. load s: loading the model, imports excluded. size: files loaded (MB = 10^6 bytes). "
        "DL19 nDCG@10, teacher's corpus: the model encodes the queries only, against the corpus the teacher "
        "encoded (keep the teacher's index, replace the query encoder). "
        "Network FLOPs/text: multiply-adds of the student's network per passage (tokenizing, matching and "
        "lookup not counted); params: the network's, entry vectors not counted. Unseen-topic passages: held "
        "out with their whole topic (the DL19 pools), never seen by mining, the teacher pass or training."
    )
    extra = _extra_sets(available)
    if extra:
        parts += ["", "### Other evaluation sets", "", extra]
    for name, m in available:
        breakdown = m.get("breakdown")
        if isinstance(breakdown, dict) and breakdown:
            columns = list(dict.fromkeys(c for row in breakdown.values() if isinstance(row, dict) for c in row))
            rows = [[str(r)] + [_auto(lookup(v, c)) for c in columns] for r, v in breakdown.items()]
            parts += ["", f"### Breakdown: {name}", "", _table(["", *columns], rows)]
    if unavailable:
        parts += ["", "### Unavailable", ""]
        parts += [f"- **{n}** ({m.get('kind') or '?'}): {m['error']}" for n, m in unavailable]
    return "\n".join(parts) + "\n"


def _retrieval_row(model: str, label: str, r: dict) -> list[str]:
    return [model, label, _num(r.get("ndcg@10")), _num(r.get("mrr@10")), _num(r.get("recall@100")),
            str(r.get("n_queries", DASH))]  # fmt: skip


def _extra_sets(available: list[tuple[str, dict]]) -> str:
    """User-supplied retrieval and STS sets (beyond DL19 and STS-B dev), one row per model and set."""
    rows = []
    for name, m in available:
        for task, r in (m.get("retrieval") or {}).items():
            if task != "dl19" and isinstance(r, dict):
                # The relevance threshold is shown: binary and graded qrels count different grades.
                grade = f", relevant at grade ≥ {r['relevance_threshold']}" if r.get("relevance_threshold") else ""
                rows.append(_retrieval_row(name, f"{task} (retrieval{grade})", r))
                if isinstance(r.get("asymmetric"), dict):
                    rows.append(_retrieval_row(name, f"{task} (queries only, teacher's corpus)", r["asymmetric"]))
        sets = lookup(m, "sts", "sets") or {}
        for task, r in list(sets.items())[1:]:  # the first is STS-B dev, already in the quality table
            rows.append([name, f"{task} (STS Spearman)", _num(r.get("spearman")), DASH, DASH, str(r.get("n", DASH))])
    if not rows:
        return ""
    return _table(["Model", "set", "nDCG@10 / Spearman", "MRR@10", "R@100", "n"], rows, text_columns=2)


def _meta_markdown(results: dict) -> str:
    meta = results.get("meta", {})
    machine = meta.get("machine") or {}
    libs = ", ".join(f"{k} {v}" for k, v in (machine.get("libraries") or {}).items() if v)
    lines = [
        "# vocabert bench",
        "",
        f"- created: {meta.get('created', DASH)}; seed: {meta.get('seed', DASH)}",
        "- samples: " + (", ".join(f"{k} {_num(v)}" for k, v in (meta.get("samples") or {}).items()) or DASH),
        f"- machine: {machine.get('cpu_model', DASH)}, {machine.get('cpu_count', DASH)} CPUs "
        f"({machine.get('cpu_affinity', DASH)} usable), {machine.get('platform', DASH)}, "
        f"Python {machine.get('python', DASH)}",
        f"- libraries: {libs or DASH}",
    ]
    for key in ("teacher", "notes"):
        if meta.get(key):
            lines.append(f"- {key}: {meta[key]}")
    descriptions = [(n, m.get("description")) for n, m in ordered_models(results) if m.get("description")]
    if descriptions:
        lines += ["", "Models:", ""] + [f"- **{n}**: {d}" for n, d in descriptions]
    return "\n".join(lines) + "\n"


# --- writing -------------------------------------------------------------------------------------------


def write_report(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write bench.json, bench.md, pareto.png and fidelity_hist.png into ``out_dir``, each atomically.

    Returns the paths written by name ("json", "markdown", "pareto", "fidelity_hist"); the histogram
    is left out when no model carries per-text cosines.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = prepare(results)
    results["meta"].setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    results["meta"].setdefault("machine", machine_info())
    paths = {
        "json": out_dir / "bench.json",
        "markdown": out_dir / "bench.md",
        "pareto": out_dir / "pareto.png",
    }
    # Model order is kept (no sort_keys): the markdown rebuilt from bench.json is the same.
    write_text(paths["json"], json.dumps(bench_json(results), indent=2, allow_nan=False) + "\n")
    plot_pareto(results, paths["pareto"])
    if plot_fidelity_hist(results, out_dir / "fidelity_hist.png"):
        paths["fidelity_hist"] = out_dir / "fidelity_hist.png"
    images = "\n".join(f"![{name}]({p.name})" for name, p in paths.items() if p.suffix == ".png")
    write_text(paths["markdown"], _meta_markdown(results) + "\n" + markdown_table(results) + "\n" + images + "\n")
    return paths


def update_model_card(model_dir: Path, markdown: str) -> Path:
    """Put ``markdown`` between the eval markers of ``model_dir/README.md``, leaving the rest as is.

    The section is appended (under an "Evaluation" heading) when the markers are absent, and the
    card is created when missing. Running it twice with the same table changes nothing.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise VocabertError(f"model folder {model_dir} does not exist")
    card = model_dir / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {model_dir.name}\n"
    section = f"{EVAL_START}\n{markdown.strip()}\n{EVAL_END}"
    starts, ends = text.count(EVAL_START), text.count(EVAL_END)
    if starts == 0 and ends == 0:
        text = text.rstrip("\n") + "\n\n## Evaluation\n\n" + section + "\n"
    elif starts == 1 and ends == 1 and text.index(EVAL_START) < text.index(EVAL_END):
        pattern = re.compile(re.escape(EVAL_START) + ".*?" + re.escape(EVAL_END), re.DOTALL)
        text = pattern.sub(lambda _: section, text)
    else:
        raise VocabertError(
            f"{card}: expected one {EVAL_START} followed by one {EVAL_END}, "
            f"found {starts} and {ends}; fix the card by hand"
        )
    write_text(card, text)
    return card
