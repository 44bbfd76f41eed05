"""The bench's two figures: quality against speed (``pareto.png``) and the fidelity histogram.

Both take bench results as :func:`vocabert.bench.results.prepare` documents them, and draw with
matplotlib's object API on the Agg canvas (no pyplot, no global backend switch in the caller).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vocabert.artifacts import atomic_write
from vocabert.bench.results import lookup, ordered_models, prepare

_KIND_STYLE = {  # colour, marker, legend label
    "teacher": ("black", "*", "teacher"),
    "student": ("tab:red", "o", "vocabert student"),
    "model2vec": ("tab:blue", "s", "Model2Vec"),
    "bm25": ("tab:gray", "^", "BM25"),
}


# --- plots ----------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    # The object API with the Agg canvas: no pyplot, no global backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))


# Beyond this many models the names no longer fit beside their points: numbers, the legend their key.
_MAX_NAMED_POINTS = 5


def _fidelity_set(results: dict) -> tuple[str, str] | None:
    """The held-out set the fidelity panel shows: unseen-topic passages where measured, else passages."""
    for part, label in (("passages-unseen", "unseen-topic passages"), ("passages", "held-out passages")):
        if any(isinstance(lookup(m, "fidelity", part, "cosine_mean"), float) for _, m in ordered_models(results)):
            return part, label
    return None


def _label_speed_axis(ax, speeds: list[float]) -> None:
    """Labels at 2 and 5 of each decade where the points span less than two (matplotlib's own minor labels
    crowd into each other there), only the decades otherwise."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if speeds and max(speeds) / min(speeds) < 100:
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


def plot_pareto(results: dict, path: Path) -> None:
    """Quality against passages/s at batch 64, one point per model: fidelity to the teacher (where
    measured), DL19 nDCG@10 and STS Spearman, one panel each."""
    results = prepare(results)
    panels = [(("retrieval", "dl19", "ndcg@10"), "DL19 nDCG@10"), (("sts", "spearman"), "STS Spearman ρ")]
    fidelity = _fidelity_set(results)
    if fidelity:
        panels.insert(0, (("fidelity", fidelity[0], "cosine_mean"), f"mean cos to the teacher, {fidelity[1]}"))
    models = [(name, m) for name, m in ordered_models(results) if not m.get("error")]
    numbered = sum(m.get("kind") != "bm25" for _, m in models) > _MAX_NAMED_POINTS
    pointed = [name for name, m in models if m.get("kind") not in ("teacher", "bm25")]  # BM25 is a line
    number = {name: i for i, name in enumerate(pointed, 1)}
    fig = _figure(5.5 * len(panels), 6.0 if numbered else 5.0)
    axes = fig.subplots(1, len(panels))
    handles: dict[str, Any] = {}
    left_out: set[str] = set()
    for ax, (keys, label) in zip(axes, panels, strict=True):
        points = []
        for name, m in models:
            x, y = lookup(m, "speed", "passages_b64", "texts_per_s"), lookup(m, *keys)
            if keys[0] == "fidelity" and m.get("kind") == "teacher":
                continue  # the teacher is the reference (cosine 1), not a point
            if isinstance(x, int | float) and x > 0 and isinstance(y, int | float):
                points.append((x, y, name, m.get("kind")))
            elif isinstance(y, int | float) and m.get("kind") == "bm25":
                # BM25 has no encoding speed: its quality is a reference line, not a point.
                handles["BM25"] = ax.axhline(y, color="tab:gray", linestyle="--", linewidth=1)
                ax.annotate(
                    f"{name} {y:.3f}",
                    (0.01, y),
                    xycoords=("axes fraction", "data"),
                    xytext=(0, 3),
                    textcoords="offset points",
                    fontsize=9,
                    color="tab:gray",
                )
            elif m.get("kind") != "bm25":
                left_out.add(name)
        # Alternate labels above and below the point, in order of height, so close points stay legible.
        for i, (x, y, name, kind) in enumerate(sorted(points, key=lambda p: p[1])):
            colour, marker, legend = _KIND_STYLE.get(kind, ("tab:green", "D", kind or "other"))
            handles[legend] = ax.scatter([x], [y], c=colour, marker=marker, s=180 if marker == "*" else 70, zorder=3)
            offset = (7, 4) if i % 2 else (7, -11)
            text = str(number[name]) if numbered and name in number else name
            ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=9)
        ax.set_xscale("log")
        _label_speed_axis(ax, [p[0] for p in points])
        if points:
            xs = [p[0] for p in points]
            ax.set_xlim(min(xs) / 2, max(xs) * (2 if numbered else 4))  # room for the labels right of the points
            ax.margins(y=0.15)
        else:
            ax.text(0.5, 0.5, "no model has both figures", transform=ax.transAxes, ha="center", color="gray")
        ax.set_xlabel("passages encoded per second (batch 64, log scale)")
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(',')[0]} vs speed")
        ax.grid(True, which="both", alpha=0.3)
    if handles:
        known = [style[2] for style in _KIND_STYLE.values()]
        order = [k for k in known if k in handles] + [k for k in handles if k not in known]
        entries = [(handles[k], k) for k in order]
        if numbered:  # the legend becomes the key: one entry per number, in its kind's marker
            from matplotlib.lines import Line2D

            kinds = dict(models)
            entries = [(h, k) for h, k in entries if k in ("teacher", "BM25")]
            for name, i in number.items():
                colour, marker, _ = _KIND_STYLE.get(kinds[name].get("kind"), ("tab:green", "D", ""))
                entries.append((Line2D([], [], color=colour, marker=marker, linestyle="none"), f"{i} {name}"))
        ncol = min(len(entries), 4 if numbered else len(entries))
        fig.legend(*zip(*entries, strict=True), loc="outside lower center", ncol=ncol, fontsize=9)
    machine = lookup(results, "meta", "machine") or {}
    cpus = machine.get("cpu_affinity") or machine.get("cpu_count")
    title = f"Quality vs CPU speed{f' ({cpus} cores)' if cpus else ''}: up and right is better"
    if left_out:
        title += f"\nnot shown where a figure is missing: {', '.join(sorted(left_out))}"
    fig.suptitle(title)
    _save(fig, path)


def _hist_models(results: dict) -> list[tuple[str, dict]]:
    def has_cosines(m: dict) -> bool:
        return any(lookup(m, "fidelity", part, "cosines") for part in ("passages", "queries"))

    models = [(n, m) for n, m in ordered_models(results) if not m.get("error") and has_cosines(m)]
    students = [(n, m) for n, m in models if m.get("kind") == "student"]
    return students or [(n, m) for n, m in models if m.get("kind") != "teacher"]


def plot_fidelity_hist(results: dict, path: Path) -> bool:
    """Histogram of per-text cosine to the teacher for the student(s); False when no model has cosines."""
    results = prepare(results)
    models = _hist_models(results)[:4]
    if not models:
        return False
    fig = _figure(6.5 * len(models), 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(models), squeeze=False)[0])
    for ax, (name, m) in zip(axes, models, strict=True):
        parts = {p: np.asarray(lookup(m, "fidelity", p, "cosines") or [], float) for p in ("passages", "queries")}
        low = min(float(np.percentile(c, 0.5)) for c in parts.values() if len(c))
        bins = np.linspace(max(-1.0, low - 0.02), 1.0, 41)
        for (part, cos), colour in zip(parts.items(), ("tab:blue", "tab:orange"), strict=True):
            if not len(cos):
                continue
            ax.hist(np.clip(cos, bins[0], 1.0), bins=bins, weights=np.full(len(cos), 100 / len(cos)),
                    alpha=0.5, color=colour, label=f"{part} (n={len(cos):,})")  # fmt: skip
            mean = float(cos.mean())
            ax.axvline(mean, color=colour, linestyle="--", linewidth=1.5, label=f"{part} mean {mean:.3f}")
        ax.set_xlabel("cosine(model vector, teacher vector) per text")
        ax.set_ylabel("% of texts")
        ax.set_title(f"{name}: fidelity to the teacher")
        ax.legend(loc="upper left", fontsize=9)
        ax.grid(True, alpha=0.3)
    _save(fig, path)
    return True
