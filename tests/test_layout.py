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


# ------------------------------------------------------------------------------------ import graph

SRC = PACKAGE.parent
STAGES = ("corpus", "mining", "embedding", "training", "semantics")  # distill modules that compute an artifact
ENGINES = ("vocabert.distill.engine", "vocabert.distill.ray_jobs")


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


MODULES = {_module_of(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, type_checking: bool = False) -> dict[str, int]:
    """The vocabert modules that ``module`` imports, at any level (in functions too), with a line of each.
    Imports under ``if TYPE_CHECKING:`` count only with ``type_checking``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    found.setdefault(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                if target in MODULES:
                    found.setdefault(target, node.lineno)
        children = node.orelse if _is_type_checking(node) and not type_checking else ast.iter_child_nodes(node)
        for child in children:
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.pop(module, None)
    return found


def _reachable(graph: dict[str, dict[str, int]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles():
    """No two files import each other, directly or through others, function-level imports included
    (``if TYPE_CHECKING:`` imports aside): every module sits below the ones that import it."""
    graph = {m: _imports(m) for m in MODULES}
    reach = {m: _reachable(graph, m) for m in MODULES}
    cycles = {frozenset({m} | {o for o in reach[m] if m in reach[o]}) for m in MODULES if m in reach[m]}
    report = [
        " <-> ".join(sorted(c))
        + ":\n"
        + "\n".join(
            f"    {m} -> {o} ({MODULES[m].relative_to(SRC)}:{line})"
            for m in sorted(c)
            for o, line in sorted(graph[m].items())
            if o in c
        )
        for c in sorted(cycles, key=sorted)
    ]
    assert not cycles, "import cycles:\n" + "\n".join(report)


def test_stages_never_import_an_engine():
    """The engines run the stages' per-batch functions: a stage asks for its loops through
    ``engine_protocol`` and reaches neither engine, not even for a type."""
    graph = {m: _imports(m, type_checking=True) for m in MODULES}
    offenders = {
        stage: sorted(e for e in ENGINES if e in _reachable(graph, f"vocabert.distill.{stage}")) for stage in STAGES
    }
    assert {s: e for s, e in offenders.items() if e} == {}


def test_stages_read_other_artifacts_through_modules_below_them():
    """The teacher pass, the vocabulary and the store are read through ``teacher_pass`` and
    ``vocabulary``: a stage imports no other stage but the corpus (and mining its semantic selection)."""
    allowed = {("mining", "semantics")}
    found = {
        (stage, other)
        for stage in STAGES
        for other in STAGES
        if other not in (stage, "corpus") and f"vocabert.distill.{other}" in _imports(f"vocabert.distill.{stage}")
    }
    assert found - allowed == set()
