"""scripts/project_learning_curve.py: the two fits recover the laws they assume, and its docs file is current."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fixtures import load_script

ROOT = Path(__file__).resolve().parents[1]


project = load_script("project_learning_curve")
X = np.array([0.1, 0.25, 0.5, 1.0])


def test_an_exact_power_law_is_recovered_with_a_collapsed_interval():
    cos = 1 - 0.11 * X**-0.24
    fit = project.fit_power_law(X, cos)
    assert fit.b == pytest.approx(0.11) and fit.c == pytest.approx(0.24)
    assert fit.se_c == pytest.approx(0, abs=1e-9)
    lo, hi = fit.interval(100.0)
    assert lo == pytest.approx(hi) == pytest.approx(1 - 0.11 * 100**-0.24)


def test_an_exact_saturating_law_is_recovered():
    cos = 0.93 - 0.045 * X**-0.45
    fit = project.fit_saturating(X, cos)
    assert (fit.a, fit.b, fit.c) == pytest.approx((0.93, 0.045, 0.45), abs=1e-6)
    assert fit.at(100.0) == pytest.approx(0.93 - 0.045 * 100**-0.45)


def test_the_saturating_ceiling_stays_at_or_below_one():
    cos = 1 - 0.11 * X**-0.24 + np.array([0, 0.002, -0.002, 0.003])  # unconstrained, the best a is 1.05
    fit = project.fit_saturating(X, cos)
    assert fit.a == 1.0 and fit.b > 0


def test_the_saturating_fit_agrees_with_a_nonlinear_solver():
    optimize = pytest.importorskip("scipy.optimize")
    cos = 0.9 - 0.05 * X**-0.4 + np.array([0.0005, -0.0005, 0.0003, 0.0])
    fit = project.fit_saturating(X, cos)
    (a, b, c), _ = optimize.curve_fit(lambda x, a, b, c: a - b * x**-c, X, cos, p0=(0.9, 0.05, 0.4))
    assert fit.at(100.0) == pytest.approx(a - b * 100**-c, abs=2e-4)


def test_the_docs_file_is_what_the_script_writes_and_renders():
    pytest.importorskip("scipy.stats")
    doc = json.loads(json.dumps(project.build()))
    on_disk = json.loads(project.OUT.read_text(encoding="utf-8"))
    assert doc == on_disk, "docs/results/learning_curve_projection.json is stale: run " + project.COMMAND
    make_docs = load_script("make_docs")
    table = make_docs.render("learning_curve_projection")
    assert table.count("\n") == len(doc["rows"]) + 2 == 3 * len(project.SETS) + 2
    assert re.search(r"\| 0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] \|", table)  # a projection and its interval
