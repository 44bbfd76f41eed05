"""The documentation: every table matches its JSON, every marker and results file is used, every link lands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

TABLE_MARKER = re.compile(r"<!-- table: ([^\s>]+)")
FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) and ![alt](target), with an optional "title"; [name]: target (reference definitions); src="..."
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_SRC = re.compile(r"""\b(?:src|href)=["']([^"']+)["']""")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)  # http:, mailto:, //host, #anchor


def _prose(text: str) -> str:
    """The page without code blocks and code spans, where brackets are code, not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _links(text: str) -> list[str]:
    prose = _prose(text)
    return [m[1] for pattern in (INLINE_LINK, REFERENCE, HTML_SRC) for m in pattern.finditer(prose)]


def _results() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(RESULTS.glob("*.json"))}


def test_tables_match_their_json():
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_docs.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_marker_names_a_results_file_and_every_results_file_is_used():
    used: dict[str, list[str]] = {}
    unclosed = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for name in TABLE_MARKER.findall(text):
            used.setdefault(name, []).append(str(page.relative_to(ROOT)))
        if text.count("<!-- table: ") != text.count("<!-- /table -->"):  # make_docs skips an unclosed table
            unclosed.append(str(page.relative_to(ROOT)))
    names = set(_results())
    missing = {name: pages for name, pages in used.items() if name not in names}
    unused = sorted(names - set(used))
    assert (missing, unused, unclosed) == ({}, [], []), (
        f"markers naming no docs/results/NAME.json: {missing}; docs/results files no page shows: {unused}; "
        f"pages with a table marker not closed by <!-- /table -->: {unclosed}"
    )


def test_relative_links_and_images_point_to_existing_files():
    broken = []
    for page in PAGES:
        for target in _links(page.read_text(encoding="utf-8")):
            if EXTERNAL.match(target):
                continue
            path = target.split("#", 1)[0].split("?", 1)[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_link_finder_sees_links_and_images_but_not_code():
    page = (
        'See [usage](docs/usage.md#api) and ![plot](docs/a.png "title").\n'
        "```python\nx = f([1])(2)\n[not](a-link.md)\n```\n"
        "`[code](span.md)` [site](https://example.org) [top](#top)\n"
        "[ref]: docs/ref.md\n"
        '<img src="docs/b.png">\n'
    )
    assert _links(page) == ["docs/usage.md#api", "docs/a.png", "https://example.org", "#top", "docs/ref.md",
                            "docs/b.png"]  # fmt: skip


def test_every_results_file_says_where_its_rows_come_from():
    for name, doc in _results().items():
        assert isinstance(doc.get("provenance"), str) and doc["provenance"].strip(), f"{name}: no provenance"
        assert isinstance(doc.get("command"), str) and doc["command"].strip(), f"{name}: no command"
        assert isinstance(doc.get("rows"), list) and doc["rows"], f"{name}: no rows"
        if doc.get("transcribed"):  # rows copied from an earlier run's report, not from a bench.json
            assert "copied" in doc["provenance"], f"{name}: transcribed, but its provenance does not say so"
