"""The package's three areas: inference (top level) imports nothing from ``distill`` or ``bench``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vocabert"
INFERENCE = sorted(p for p in PACKAGE.glob("*.py") if p.name != "cli.py")  # the CLI is the one place that joins them
# The sentence-transformers module is inference too, but exists to plug into torch: it alone may import it.
TORCH_FREE = [p for p in INFERENCE if p.name != "st_module.py"]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_inference_modules_import_nothing_from_distill_or_bench():
    assert INFERENCE, "no inference modules found"
    offenders = {
        p.name: sorted(m for m in _imported_modules(p) if m.startswith(("vocabert.distill", "vocabert.bench")))
        for p in INFERENCE
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_inference_area_has_no_heavy_dependencies():
    """Importing the inference modules pulls in neither torch, sentence-transformers, the server's packages
    (the ``serve`` extra: ``vocabert.serve`` imports them when it builds a server), nor the other areas."""
    assert len(TORCH_FREE) == len(INFERENCE) - 1
    modules = ", ".join(f"vocabert.{p.stem}" for p in TORCH_FREE if p.stem != "__init__")
    code = (
        f"import sys, vocabert, {modules}\n"
        "heavy = ('torch', 'sentence_transformers', 'transformers', 'fastapi', 'starlette', 'uvicorn', 'orjson',"
        " 'httpx')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith(('vocabert.distill', 'vocabert.bench')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_area_is_a_folder():
    assert (PACKAGE / "distill" / "__init__.py").is_file()
    assert (PACKAGE / "bench" / "__init__.py").is_file()
    for stage in ("corpus", "mining", "embedding", "training", "pipeline", "teacher"):
        assert (PACKAGE / "distill" / f"{stage}.py").is_file(), stage


def test_sentence_transformers_module_imports_nothing_from_distill_or_bench():
    code = (
        "import sys, vocabert.st_module\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith(('vocabert.distill', 'vocabert.bench')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
