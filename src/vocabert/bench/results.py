"""The bench results document (see :mod:`vocabert.bench.report` for its fields): made JSON-safe with its
derived figures (:func:`prepare`), and read (:func:`lookup`, :func:`ordered_models`) by the report and the
plots alike.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

SPEED_KEYS = ("passages_b1", "passages_b64", "queries_b1", "queries_b64")
_KIND_ORDER = {"teacher": 0, "student": 1, "model2vec": 2, "bm25": 3}


def _jsonable(obj: Any) -> Any:
    """A deep copy with numpy values, paths and tuples turned into JSON types (NaN/inf become None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def lookup(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, or None where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def teacher_name(results: dict) -> str | None:
    """The teacher of this run: the first available model of kind "teacher"."""
    for name, m in results.get("models", {}).items():
        if m.get("kind") == "teacher" and not m.get("error"):
            return name
    return None


def prepare(results: dict) -> dict:
    """A JSON-safe copy of ``results`` with the derived figures filled in (see the module docstring)."""
    results = _jsonable(results)
    results.setdefault("meta", {})
    results.setdefault("models", {})
    teacher = teacher_name(results)
    for m in results["models"].values():
        for part in (lookup(m, "fidelity") or {}).values():
            cos = part.get("cosines") if isinstance(part, dict) else None
            if cos:
                # NaN became None above; a broken vector is counted, not averaged in.
                arr = np.array([np.nan if c is None else c for c in cos], dtype=np.float64)
                cos = part["cosines"] = arr[np.isfinite(arr)].tolist()
                part.setdefault("n_invalid", int((~np.isfinite(arr)).sum()))
            if cos:
                part.setdefault("cosine_mean", part.get("mean", float(np.mean(cos))))
                part.setdefault("cosine_p5", part.get("p5", float(np.percentile(cos, 5))))
                part.setdefault("n", len(cos))
        for key in SPEED_KEYS:
            mine = lookup(m, "speed", key, "texts_per_s")
            ref = lookup(results["models"], teacher, "speed", key, "texts_per_s") if teacher else None
            if mine and ref:
                m["speed"][key]["x_teacher"] = mine / ref
    return results


def ordered_models(results: dict) -> list[tuple[str, dict]]:
    """``(name, entry)`` of every model: teacher, students, Model2Vec, BM25, then anything else."""
    models = list(results["models"].items())
    return sorted(models, key=lambda item: _KIND_ORDER.get(item[1].get("kind"), len(_KIND_ORDER)))
