"""Where more teacher text would take the student: the learning curve's fidelity projected to 10x and 100x.

    python scripts/project_learning_curve.py     # docs/results/learning_curve_projection.json + its plot

Reads the measured points of ``docs/results/learning_curve.json`` (the default student at teacher shares 0.1
to 1.0: texts through the teacher N, mean cosine to the teacher per held-out set) and fits, per fidelity set,
two forms of the curve, with N in units of the 1.0 share's texts (x = N / N1):

- a power law in the error: ``1 - cos = b * x^-c``, a straight line in log-log (least squares), heading to a
  cosine of 1;
- a saturating form: ``cos = a - b * x^-c`` with a ceiling ``a <= 1``. For each exponent c on a grid, a and b
  are linear least squares; the c with the smallest squared error wins. The power law is this form with
  ``a = 1``.

Projections are at 10x and 100x the 1.0 share's texts and at the full MS MARCO collection. Uncertainty, with
only four points: the power law's 95% t interval from the log-log regression (two degrees of freedom); for
both forms the range over the four fits that leave one point out; and a back-test (fitted to the three
smaller shares, the 1.0 share predicted). Nothing is trained; the script runs in a second.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "results" / "learning_curve.json"
OUT = ROOT / "docs" / "results" / "learning_curve_projection.json"
PLOT = ROOT / "docs" / "learning_curve_projection.png"
COMMAND = "python scripts/project_learning_curve.py"

# The held-out sets projected: key in learning_curve.json -> name in the table.
SETS = {"unseen": "unseen-topic passages", "passages": "random passages", "queries": "queries"}
# docs/scaling.md: "the full collection's 8.8M passages and their sentences are about 21M, at the bundled
# corpus's 2.4 texts a passage".
FULL_COLLECTION_TEXTS = 21_000_000
HORIZONS = {"x10": 10.0, "full": None, "x100": 100.0}  # multiples of the 1.0 share's texts (None: the full one)
EXPONENTS = np.arange(1, 3001) / 1000  # the saturating form's grid of c: 0.001 to 3
LEVEL = 0.95


@dataclass(frozen=True)
class PowerLaw:
    """``1 - cos = b * x^-c``, with what its interval needs: the log-log regression's residual standard
    deviation ``s``, the mean and spread of log x over the points, and their number."""

    b: float
    c: float
    s: float
    mean_log_x: float
    sxx: float
    n: int

    def at(self, x: np.ndarray | float) -> np.ndarray | float:
        return 1 - self.b * np.power(x, -self.c)

    @property
    def se_c(self) -> float:
        return self.s / math.sqrt(self.sxx)

    def interval(self, x: np.ndarray | float, level: float = LEVEL) -> tuple:
        """The cosine's t interval at ``x``: the fitted line's confidence interval in log-log (the
        intercept's and the slope's uncertainty), mapped back; a low error is a high cosine."""
        from scipy.stats import t

        se_line = self.s * np.sqrt(1 / self.n + (np.log(x) - self.mean_log_x) ** 2 / self.sxx)
        half = t.ppf((1 + level) / 2, self.n - 2) * se_line
        log_err = math.log(self.b) - self.c * np.log(x)
        return 1 - np.exp(log_err + half), 1 - np.exp(log_err - half)


@dataclass(frozen=True)
class Saturating:
    """``cos = a - b * x^-c``: the cosine rises toward the ceiling ``a``."""

    a: float
    b: float
    c: float

    def at(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.a - self.b * np.power(x, -self.c)


def fit_power_law(x: np.ndarray, cos: np.ndarray) -> PowerLaw:
    """Least squares of log(1 - cos) on log x."""
    log_x, log_err = np.log(x), np.log(1 - cos)
    slope, intercept = np.polyfit(log_x, log_err, 1)
    residuals = log_err - (intercept + slope * log_x)
    dof = len(x) - 2
    s = math.sqrt(float(residuals @ residuals) / dof) if dof > 0 else math.nan
    sxx = float(((log_x - log_x.mean()) ** 2).sum())
    return PowerLaw(math.exp(intercept), -slope, s, float(log_x.mean()), sxx, len(x))


def fit_saturating(x: np.ndarray, cos: np.ndarray) -> Saturating:
    """For every c of the grid, a and b by least squares (with a held at 1 where it would pass it: no
    cosine does), then the c of the smallest squared error. A grid rather than a nonlinear solver: with
    three points (leaving one out) the fit is exact or lies on the bound a = 1, and a grid finds either
    without a starting guess."""
    z = -np.power(x[None, :], -EXPONENTS[:, None])  # one row per c: cos = a + b * z
    zc = z - z.mean(axis=1, keepdims=True)
    b = (zc @ (cos - cos.mean())) / (zc**2).sum(axis=1)
    a = cos.mean() - b * z.mean(axis=1)
    above = a > 1
    b[above] = (z[above] @ (cos - 1)) / (z[above] ** 2).sum(axis=1)
    a[above] = 1.0
    sse = ((a[:, None] + b[:, None] * z - cos) ** 2).sum(axis=1)
    best = int(np.argmin(sse))
    return Saturating(float(a[best]), float(b[best]), float(EXPONENTS[best]))


FITS = {"power law": fit_power_law, "saturating": fit_saturating}


def load_points(path: Path = SOURCE) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict]]:
    """Texts through the teacher, the mean cosine of each set in SETS (in the same order), and the rows."""
    rows = sorted(json.loads(path.read_text(encoding="utf-8"))["rows"], key=lambda r: r["texts"])
    texts = np.array([r["texts"] for r in rows], dtype=float)
    return texts, {key: np.array([r[key] for r in rows], dtype=float) for key in SETS}, rows


def horizon_texts(reference: float) -> dict[str, float]:
    return {name: FULL_COLLECTION_TEXTS if m is None else m * reference for name, m in HORIZONS.items()}


def leave_one_out(x: np.ndarray, cos: np.ndarray, form: str) -> list:
    """The fits to every subset that leaves one point out."""
    keep = ~np.eye(len(x), dtype=bool)
    return [FITS[form](x[k], cos[k]) for k in keep]


def projection_row(name: str, form: str, x: np.ndarray, cos: np.ndarray, at: dict[str, float]) -> dict:
    """One fit: its parameters, its largest miss of a measured point, the back-test at the largest point
    (fitted to the others), and the projection at each horizon with the leave-one-out range (and, for the
    power law, the t interval)."""
    fit = FITS[form](x, cos)
    backtest = FITS[form](x[:-1], cos[:-1]).at(x[-1])
    row = {"set": name, "form": form, "c": fit.c, "a": getattr(fit, "a", 1.0), "b": fit.b,
           "measured": cos[-1], "max_residual": float(np.abs(fit.at(x) - cos).max()), "backtest": backtest}  # fmt: skip
    loo = leave_one_out(x, cos, form)
    for key, h in at.items():
        row[key] = fit.at(h)
        spread = [f.at(h) for f in loo]
        row[f"{key}_loo_lo"], row[f"{key}_loo_hi"] = min(spread), max(spread)
        if isinstance(fit, PowerLaw):
            row[f"{key}_t_lo"], row[f"{key}_t_hi"] = fit.interval(h)
    if isinstance(fit, PowerLaw):
        row["se_c"] = fit.se_c
    return {k: _rounded(v) for k, v in row.items()}


def _rounded(value):
    """Four decimals below 1 (cosines; the table shows three), four significant digits above."""
    if isinstance(value, str):
        return value
    value = float(value)
    return round(value, 4) if abs(value) < 1 else float(f"{value:.4g}")


def table_rows(rows: list[dict]) -> list[dict]:
    """The rows the docs table shows: per set, the power law with its t interval, the power law with its
    leave-one-out range, the saturating form with its leave-one-out range."""
    shown = []
    for row in rows:
        kinds = [("t", f"{LEVEL:.0%} t interval")] if row["form"] == "power law" else []
        for kind, label in [*kinds, ("loo", "leave-one-out range")]:
            out = {k: row[k] for k in ("set", "form", "c", "a", "measured", "backtest")} | {"interval": label}
            for key in HORIZONS:
                out |= {key: row[key], f"{key}_lo": row[f"{key}_{kind}_lo"], f"{key}_hi": row[f"{key}_{kind}_hi"]}
            shown.append(out)
    return shown


def spread_between_forms(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per set and horizon, the power law's projection minus the saturating form's."""
    by = {(r["set"], r["form"]): r for r in rows}
    return {name: {key: round(by[name, "power law"][key] - by[name, "saturating"][key], 4) for key in HORIZONS}
            for name in SETS.values()}  # fmt: skip


def build(path: Path = SOURCE) -> dict:
    """The projection document, in the format scripts/make_docs.py renders."""
    texts, cosines, source_rows = load_points(path)
    reference = texts[-1]
    at_texts = horizon_texts(reference)
    x, at = texts / reference, {k: v / reference for k, v in at_texts.items()}
    rows = [projection_row(SETS[key], form, x, cos, at) for key, cos in cosines.items() for form in FITS]
    shares = ", ".join(str(r["model"]).split()[0] for r in source_rows)
    return {
        "title": "Where more data would take it: fidelity projected from the learning curve",
        "command": COMMAND,
        "provenance": f"fitted to the {len(texts)} points of {path.relative_to(ROOT)} (whose rows were copied "
        "from an earlier run's report; see its provenance); nothing trained",
        "source": str(path.relative_to(ROOT)),
        "measured_points": f"{len(texts)} teacher shares ({shares}) of the bundled corpus, "
        f"{int(texts[0]):,} to {int(reference):,} texts through the teacher (one decade), each the default "
        "eight-head student with cosine decay, one training run each, cosines given to three decimals",
        "reference_texts": int(reference),
        "horizon_texts": {k: int(round(v)) for k, v in at_texts.items()},
        "forms": {
            "power law": "1 - cos = b * (N / reference_texts)^-c, least squares in log-log; ceiling 1",
            "saturating": "cos = a - b * (N / reference_texts)^-c, a <= 1; least squares, c on a grid of 0.001",
        },
        "intervals": {
            "t": f"{LEVEL:.0%} t interval of the power law's log-log regression ({len(texts) - 2} degrees of "
            "freedom: the intercept's and the slope's standard errors)",
            "loo": "range of the projections of the fits that leave one point out",
        },
        "fits": rows,
        "power_law_minus_saturating": spread_between_forms(rows),
        "rows": table_rows(rows),
        "columns": ["set", "form", "interval", "c", "a", "measured", "backtest", *HORIZONS],
        "labels": {
            "set": "set",
            "form": "form",
            "interval": "interval",
            "c": "exponent c",
            "a": "ceiling a",
            "measured": f"measured, 1× ({reference / 1e3:.0f}k)",
            "backtest": "1× predicted from shares 0.1-0.5",
            "x10": f"10× ({at_texts['x10'] / 1e6:.2f}M)",
            "full": f"full collection ({at_texts['full'] / 1e6:.0f}M)",
            "x100": f"100× ({at_texts['x100'] / 1e6:.1f}M)",
        },
        "formats": {"c": ".3f", "a": ".3f", "measured": ".3f", "backtest": ".3f"} | dict.fromkeys(HORIZONS, "interval"),
    }


def plot(path: Path = SOURCE, out: Path = PLOT) -> None:
    """Measured points and both fits with their bands (power law: t interval; saturating: leave-one-out
    envelope), one panel per set, log x."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    texts, cosines, _ = load_points(path)
    reference = texts[-1]
    grid = np.geomspace(texts[0] * 0.8, 100 * reference * 1.25, 200)
    fig = Figure(figsize=(12, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(SETS), sharey=True)
    for ax, (key, cos) in zip(axes, cosines.items(), strict=True):
        x = texts / reference
        power, saturating = fit_power_law(x, cos), fit_saturating(x, cos)
        ax.fill_between(grid, *power.interval(grid / reference), color="C0", alpha=0.15)
        ax.plot(grid, power.at(grid / reference), color="C0", label="power law in the error (95% t band)")
        loo = np.array([f.at(grid / reference) for f in leave_one_out(x, cos, "saturating")])
        ax.fill_between(grid, loo.min(axis=0), loo.max(axis=0), color="C1", alpha=0.2)
        ax.plot(grid, saturating.at(grid / reference), color="C1", label="saturating (leave-one-out band)")
        ax.plot(texts, cos, "ko", label="measured")
        for h in horizon_texts(reference).values():
            ax.axvline(h, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", title=SETS[key], xlabel="texts through the teacher")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean cosine to the teacher")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Learning curve projected (dotted: 10×, the full collection, 100× the default's teacher text)")
    fig.savefig(out, format="png", dpi=110, metadata={"Software": None})


def write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def main() -> None:
    write_json(OUT, build())
    plot()
    print(f"{OUT.relative_to(ROOT)}, {PLOT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
