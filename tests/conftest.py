"""Shared fixtures: the real teacher, real data slices, and one small pipeline run per session."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from vocabert.distill.corpus import default_data_dir
from vocabert.distill.mining import MineSettings
from vocabert.distill.training import TrainSettings

# The settings of the small pipeline run every integration test shares.
SMALL_MINE = MineSettings(budget=8000, min_count=3)
SMALL_TRAIN = TrainSettings(epochs=3, batch_size=128)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = default_data_dir()
    if found is None or not (found / "msmarco_passage").is_dir():
        pytest.skip("MS MARCO data not found: set VOCABERT_DATA or place shared/data beside the repository")
    return found


def data_slice(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` lines of a gzipped data file, written to ``dst`` (also used by scripts/any_teacher.py)."""
    with gzip.open(src, "rt", encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i >= n:
                break
            out.write(line)
    return dst


@pytest.fixture(scope="session")
def small_data(data_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Real slices: 400 passages and 300 queries."""
    root = tmp_path_factory.mktemp("data")
    return {
        "passages": data_slice(data_dir / "msmarco_passage" / "collection_subset.tsv.gz", root / "passages.tsv", 400),
        "queries": data_slice(data_dir / "msmarco_queries_extra" / "queries.extra.tsv.gz", root / "queries.tsv", 300),
    }


@pytest.fixture(scope="session")
def workspace(small_data, tmp_path_factory):
    """Every stage once on the small slices, with a private teacher cache."""
    from vocabert.distill.pipeline import build_model
    from vocabert.distill.workspace import Workspace

    root = tmp_path_factory.mktemp("run")
    ws = Workspace(root / "work", None, cache_dir=root / "cache", show_progress_bar=False)
    build_model(ws, small_data, mine=SMALL_MINE, train=SMALL_TRAIN)
    return ws


@pytest.fixture(scope="session")
def model(workspace):
    import vocabert

    return vocabert.load(workspace.model_dir)


@pytest.fixture(scope="session")
def teacher_tokenizer_text() -> str:
    """The default teacher's tokenizer.json (no torch needed)."""
    from vocabert.distill.teacher import resolve_teacher_path, tokenizer_json

    return tokenizer_json(resolve_teacher_path(None))


@pytest.fixture(autouse=True, scope="session")
def _offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
