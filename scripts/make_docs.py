"""Regenerate every table of README.md and docs/*.md, and the plots in docs/, from the runs' JSON in docs/results/.

    python scripts/make_docs.py                  # rewrite the tables (and plots) from docs/results/*.json
    python scripts/make_docs.py --check          # exit 1 naming every table that differs from its JSON
    python scripts/make_docs.py import-bench RUN/bench.json NAME [--label MODEL=LABEL ...] [--command CMD]
                                                 # a `vocabert bench` run -> docs/results/NAME.json (+ its plots)
    python scripts/make_docs.py import-training NAME LABEL=MODEL_DIR ... [--command CMD]
                                                 # model folders' training histories -> validation cos per epoch

A table lives in a markdown file between two markers::

    <!-- table: NAME columns=model,unseen,passages,sts,dl19,b64 -->
    ...generated...
    <!-- /table -->

NAME is ``docs/results/NAME.json``: ``{"title", "command", "provenance", "rows": [{key: value}], "labels":
{key: header}, "formats": {key: format}}``. ``columns`` picks and orders the row keys to show (default: the
file's ``columns``, else every key of the first row); ``rows=a,b`` keeps only rows whose ``model`` is listed.
A row with ``"bold": true`` is set in bold. Headers and number formats of the keys every study shares
(``passages``, ``unseen``, ``b64``, ...) are in :data:`KEYS` below; a file adds its own in ``labels`` and
``formats``. Rows of ``import-bench`` files come from a bench run's ``bench.json`` and nothing else; files
whose rows were copied from an earlier run's report say so in ``provenance``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from vocabert.bench.results import lookup

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DASH = "—"

# key: (header, format). Formats: "text", ".3f" and other format specs, "count" (1.2M, 340k), "rate" (a speed
# with its ratio to the teacher from the key + "_x": 7,465 (×128)), "interval" (a value with its interval from the
# keys key + "_lo" and key + "_hi": 0.936 [0.925, 0.945]).
KEYS: dict[str, tuple[str, str]] = {
    "model": ("model", "text"),
    "kind": ("kind", "text"),
    "texts": ("texts", ",d"),
    "entries": ("entries", ",d"),
    "val": ("validation cos", ".4f"),
    "passages": ("passages cos", ".3f"),
    "passages_p5": ("passages cos p5", ".3f"),
    "unseen": ("unseen-topic passages cos", ".3f"),
    "unseen_p5": ("unseen-topic passages cos p5", ".3f"),
    "queries": ("queries cos", ".3f"),
    "queries_p5": ("queries cos p5", ".3f"),
    "dev_queries": ("dev queries cos", ".3f"),
    "glosses": ("glosses cos", ".3f"),
    "sts": ("STS-B dev Spearman", ".3f"),
    "dl19": ("DL19 nDCG@10", ".3f"),
    "dl19_mrr": ("DL19 MRR@10", ".3f"),
    "dl19_r100": ("DL19 R@100", ".3f"),
    "dl19_teacher_index": ("DL19 nDCG@10, teacher's index", ".3f"),
    "b1": ("passages/s b1", "rate"),
    "b64": ("passages/s b64", "rate"),
    "qb1": ("queries/s b1", "rate"),
    "qb64": ("queries/s b64", "rate"),
    "p50_ms": ("query latency p50 ms", ".2f"),
    "p99_ms": ("query latency p99 ms", ".2f"),
    "rss_mib": ("peak RSS MiB", ",.0f"),
    "load_s": ("load s", ".2f"),
    "size_mb": ("size MB", ".1f"),
    "flops": ("network FLOPs/text", "count"),
    "params": ("network params", "count"),
    "train_s": ("training s", ",.0f"),
}
_FIDELITY = {"passages": "passages", "unseen": "passages-unseen", "queries": "queries",
             "dev_queries": "dev_queries", "glosses": "glosses"}  # fmt: skip
_SPEED = {"b1": "passages_b1", "b64": "passages_b64", "qb1": "queries_b1", "qb64": "queries_b64"}
MARKER = re.compile(r"<!-- table: (?P<spec>[^>]*?) -->\n(?P<body>.*?)<!-- /table -->", re.DOTALL)


# --- bench.json -> rows ---------------------------------------------------------------------------------


def _cos(part: Any, stat: str) -> Any:
    return lookup(part, f"cosine_{stat}") if lookup(part, f"cosine_{stat}") is not None else lookup(part, stat)


def bench_row(name: str, m: dict) -> dict:
    """The shared keys of one model of a bench.json (absent figures are left out)."""
    row: dict[str, Any] = {"model": name, "kind": m.get("kind")}
    for key, source in _FIDELITY.items():
        part = lookup(m, "fidelity", source)
        row[key] = _cos(part, "mean")
        if key in ("passages", "unseen", "queries"):
            row[f"{key}_p5"] = _cos(part, "p5")
    row["sts"] = lookup(m, "sts", "spearman")
    dl19 = lookup(m, "retrieval", "dl19") or {}
    row |= {"dl19": dl19.get("ndcg@10"), "dl19_mrr": dl19.get("mrr@10"), "dl19_r100": dl19.get("recall@100"),
            "dl19_teacher_index": lookup(dl19, "asymmetric", "ndcg@10")}  # fmt: skip
    for key, source in _SPEED.items():
        row[key] = lookup(m, "speed", source, "texts_per_s")
        row[f"{key}_x"] = lookup(m, "speed", source, "x_teacher")
    row["p50_ms"] = lookup(m, "latency", "queries", "p50_ms")
    row["p99_ms"] = lookup(m, "latency", "queries", "p99_ms")
    row["rss_mib"] = lookup(m, "memory", "peak_rss_mib")
    row["load_s"] = m.get("load_seconds")
    row["size_mb"] = m["size_bytes"] / 1e6 if isinstance(m.get("size_bytes"), int | float) else None
    row["flops"] = lookup(m, "network", "flops_per_text")
    row["params"] = lookup(m, "network", "parameters")
    return {k: v for k, v in row.items() if v is not None}


def import_bench(bench_path: Path, name: str, labels: dict[str, str], command: str) -> Path:
    """Write docs/results/NAME.json from a bench run: one row per model (in the bench's order), and the
    run's quality-vs-speed plot beside the docs (docs/NAME_pareto.png)."""
    from vocabert.bench.plots import plot_pareto
    from vocabert.bench.report import ordered_models, prepare

    bench = prepare(json.loads(bench_path.read_text(encoding="utf-8")))
    rows = []
    for model, m in ordered_models(bench):
        if m.get("error"):
            continue
        row = bench_row(labels.get(model, model), m)
        description = str(m.get("description") or "")
        row |= _training_summary(description)
        rows.append(row)
    meta = bench.get("meta", {})
    doc = {
        "title": name,
        "command": command,
        "provenance": f"`vocabert bench` run of {meta.get('created', '?')} ({bench_path})",
        "machine": lookup(meta, "machine", "cpu_model"),
        "samples": meta.get("samples"),
        "rows": rows,
    }
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(out, doc)
    breakdown = _breakdown_rows(bench, labels)
    if breakdown:
        _write_json(RESULTS / f"{name}_breakdown.json", doc | {"title": f"{name}: where the time goes", **breakdown})
    for model, label in labels.items():  # the plots show the labels too
        if model in bench["models"]:
            bench["models"][label] = bench["models"].pop(model)
    plot_pareto(bench, ROOT / "docs" / f"{name}_pareto.png")  # (bench.json keeps no per-text cosines to histogram)
    return out


def import_training(name: str, models: dict[str, Path], command: str) -> Path:
    """Write docs/results/NAME.json from model folders' config.json: one row per model, its validation cosine
    after each epoch (``epoch1``, ...), its best and its training time."""
    rows, epochs = [], 0
    for label, folder in models.items():
        training = json.loads((folder / "config.json").read_text(encoding="utf-8"))["training"]
        history = training["history"]
        row = {"model": label, "val": history["best_val_cosine"], "train_s": training["seconds"]}
        for e in history["epochs"]:
            row[f"epoch{e['epoch']}"] = e["val_cosine"]
        epochs = max(epochs, len(history["epochs"]))
        rows.append(row)
    keys = [f"epoch{i}" for i in range(1, epochs + 1)]
    doc = {
        "title": name,
        "command": command,
        "provenance": "the training histories in the config.json of " + ", ".join(str(f) for f in models.values()),
        "rows": rows,
        "columns": ["model", *keys, "val", "train_s"],
        "labels": {k: f"validation cos, epoch {k[5:]}" for k in keys},
        "formats": dict.fromkeys(keys, ".4f"),
    }
    out = RESULTS / f"{name}.json"
    _write_json(out, doc)
    return out


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _breakdown_rows(bench: dict, labels: dict[str, str]) -> dict:
    """Where each student's encode time goes (µs per passage and share, one column pair per student)."""
    from vocabert.bench.report import ordered_models

    steps: dict[str, dict] = {}
    columns, column_labels, formats = ["model"], {"model": ""}, {}
    for i, (model, m) in enumerate(ordered_models(bench)):
        if not isinstance(m.get("breakdown"), dict) or m.get("error"):
            continue
        label = labels.get(model, model)
        for step, figures in m["breakdown"].items():
            row = steps.setdefault(step, {"model": step})
            row[f"us{i}"], row[f"share{i}"] = figures.get("µs/text"), figures.get("share")
        columns += [f"us{i}", f"share{i}"]
        column_labels |= {f"us{i}": f"{label} µs/text", f"share{i}": f"{label} share"}
        formats |= {f"us{i}": ".1f", f"share{i}": ".3f"}
    if not steps:
        return {}
    return {"rows": list(steps.values()), "columns": columns, "labels": column_labels, "formats": formats}


def _training_summary(description: str) -> dict:
    """Validation cosine and training time from the config.json of the model folder a description names."""
    for word in description.replace(",", " ").split():
        config = Path(word) / "config.json"
        if config.is_file():
            training = json.loads(config.read_text(encoding="utf-8")).get("training") or {}
            out = {"val": lookup(training, "history", "best_val_cosine"), "train_s": training.get("seconds")}
            return {k: v for k, v in out.items() if isinstance(v, int | float)}
    return {}


# --- rows -> markdown -----------------------------------------------------------------------------------


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if fmt == "text" or isinstance(value, str):
        return str(value)
    if fmt == "count":
        return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k" if value >= 1e3 else f"{value:.0f}"
    if fmt == "rate":
        text = f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
        ratio = row.get(f"{key}_x")
        return text + (f" (×{ratio:.0f})" if isinstance(ratio, int | float) and ratio >= 10 else
                       f" (×{ratio:.1f})" if isinstance(ratio, int | float) else "")  # fmt: skip
    if fmt == "interval":
        lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
        bounds = isinstance(lo, int | float) and isinstance(hi, int | float)
        return f"{value:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if bounds else "")
    if fmt == ",d":
        return f"{int(value):,}"
    return format(value, fmt)


def render(spec: str) -> str:
    """The markdown table a marker's spec names (see the module docstring)."""
    name, *options = spec.split()
    doc = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    opts = dict(o.split("=", 1) for o in options)
    rows = doc["rows"]
    if "rows" in opts:
        wanted = opts["rows"].split(",")
        rows = sorted((r for r in rows if r.get("model") in wanted), key=lambda r: wanted.index(r["model"]))
    columns = (
        opts["columns"].split(",")
        if "columns" in opts
        else doc.get("columns") or [k for k in rows[0] if k != "bold" and not k.endswith("_x")]
    )
    labels, formats = doc.get("labels", {}), doc.get("formats", {})
    header = [labels.get(k, KEYS.get(k, (k, ""))[0]) for k in columns]
    fmts = [formats.get(k, KEYS.get(k, ("", "text"))[1]) for k in columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if f == "text" else "---:" for f in fmts) + "|"]  # fmt: skip
    for row in rows:
        cells = [_cell(row, k, f) for k, f in zip(columns, fmts, strict=True)]
        if row.get("bold"):
            cells = [c if c == DASH else f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    """The figure a results file asks for in ``"plot"``: ``{"x": key, "y": [keys], "kind": "scatter" | "lines",
    "logx": bool, "title": str}``; scatter points are labelled with their row's ``model``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spec, rows = doc["plot"], doc["rows"]
    labels = doc.get("labels", {})
    fig = Figure(figsize=(7, 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y in spec["y"]:
        points = [(r[spec["x"]], r[y], r.get("model", "")) for r in rows if isinstance(r.get(spec["x"]), int | float)
                  and isinstance(r.get(y), int | float)]  # fmt: skip
        if not points:
            continue
        xs, ys, names = zip(*points, strict=True)
        label = labels.get(y, KEYS.get(y, (y, ""))[0])
        if spec.get("kind") == "lines":
            ax.plot(xs, ys, marker="o", label=label)
        else:
            ax.scatter(xs, ys, label=label)
            for x, yv, name in points:
                ax.annotate(str(name), (x, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if spec.get("logx"):
        ax.set_xscale("log")
    ax.set_xlabel(labels.get(spec["x"], KEYS.get(spec["x"], (spec["x"], ""))[0]))
    ax.set_title(spec.get("title", doc.get("title", "")), fontsize=10)
    ax.grid(alpha=0.3)
    if len(spec["y"]) > 1:
        ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=110)


def regenerate(page: Path) -> tuple[str, str]:
    """(current text, text with every table rendered anew) of one markdown page."""
    text = page.read_text(encoding="utf-8")
    try:
        new = MARKER.sub(lambda m: f"<!-- table: {m['spec']} -->\n{render(m['spec'])}<!-- /table -->", text)
    except (OSError, KeyError, ValueError, IndexError) as e:
        raise SystemExit(f"make_docs: {page.relative_to(ROOT)}: {type(e).__name__}: {e}") from None
    return text, new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 where a table differs")
    sub = parser.add_subparsers(dest="action")
    imp = sub.add_parser("import-bench", help="a bench.json -> docs/results/NAME.json")
    imp.add_argument("bench", type=Path)
    imp.add_argument("name")
    imp.add_argument("--label", action="append", default=[], metavar="MODEL=LABEL")
    imp.add_argument("--command", default="", help="the command that reproduces the run")
    train = sub.add_parser("import-training", help="model folders' training histories -> docs/results/NAME.json")
    train.add_argument("name")
    train.add_argument("models", nargs="+", metavar="LABEL=MODEL_DIR")
    train.add_argument("--command", default="", help="the commands that trained the models")
    args = parser.parse_args(argv)
    if args.action == "import-training":
        models = {label: Path(folder) for label, folder in (x.rsplit("=", 1) for x in args.models)}
        print(import_training(args.name, models, args.command))
        return 0
    if args.action == "import-bench":
        labels = dict(x.split("=", 1) for x in args.label)
        print(import_bench(args.bench, args.name, labels, args.command))
        return 0
    stale = []
    if not args.check:  # plots are drawn anew (PNG bytes are not compared: matplotlib versions differ)
        for path in sorted(RESULTS.glob("*.json")):
            doc = json.loads(path.read_text(encoding="utf-8"))
            if "plot" in doc:
                plot(doc, ROOT / "docs" / f"{path.stem}.png")
    for page in PAGES:
        text, new = regenerate(page)
        if new != text:
            stale.append(str(page.relative_to(ROOT)))
            if not args.check:
                tmp = page.with_suffix(page.suffix + ".tmp")
                tmp.write_text(new, encoding="utf-8")
                tmp.replace(page)
    if args.check and stale:
        print("tables differ from docs/results: " + ", ".join(stale) + " (run python scripts/make_docs.py)")
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale else "every table matches docs/results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
