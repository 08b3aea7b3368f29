"""Tier 1: the documents: the README is a front page whose links, and every document's, resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def documents() -> list[Path]:
    def ours(path: Path) -> bool:
        parts = path.relative_to(ROOT).parts
        return not any(
            p.startswith(".") or p in {"out", "node_modules"} or p.endswith(".egg-info") for p in parts
        )

    return sorted(p for p in ROOT.rglob("*.md") if ours(p))


def relative_links(doc: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # links inside code blocks are code
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]


def test_every_relative_link_resolves():
    broken = [
        f"{doc.relative_to(ROOT)}: {target}"
        for doc in documents()
        for target in relative_links(doc)
        if not (doc.parent / target.split("#", 1)[0]).exists()
    ]
    assert documents() and broken == []


def test_the_readme_is_a_front_page_that_leads_to_every_page():
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move detail to docs/"
    # Its first lines are the two commands: the main job on the embedded default, and the tests.
    assert lines[0] == "# dfpipe" and lines[3].startswith("make demo") and lines[4].startswith("make test")
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in relative_links(ROOT / "README.md")}
    pages = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md", ROOT / "CONTRIBUTING.md"]
    assert [p.relative_to(ROOT) for p in pages if p.resolve() not in linked] == []
