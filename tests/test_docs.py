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


def test_an_install_step_prints_one_line_and_a_failure_in_full(tmp_path):
    """``make install``/``demo`` run apt and pip through scripts/quietly.sh: a step that works is one
    line on the terminal (its hundreds of lines go to the log); one that fails shows all it printed."""
    import subprocess

    log = tmp_path / "logs" / "install.log"
    noisy = "for i in $(seq 300); do echo collecting package $i; done"
    ok = subprocess.run(
        ["bash", str(ROOT / "scripts" / "quietly.sh"), str(log), "pip: noisy", "sh", "-c", noisy],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and ok.stdout.splitlines() == [ok.stdout.strip()], ok.stdout
    assert ok.stdout.startswith("pip: noisy ... done")
    assert "collecting package 300" in log.read_text()
    failing = "echo first line; for i in $(seq 200); do echo resolving $i; done; echo 'E: no such package' >&2; exit 3"
    bad = subprocess.run(
        ["bash", str(ROOT / "scripts" / "quietly.sh"), str(log), "apt: missing", "sh", "-c", failing],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 3
    assert "FAILED (exit 3)" in bad.stdout
    assert "first line" in bad.stdout and "resolving 200" in bad.stdout and "E: no such package" in bad.stdout
    assert "E: no such package" in log.read_text()


def test_make_install_prints_one_line_per_step(tmp_path):
    """``make install`` with a stand-in for Python whose pip prints 300 lines: the terminal gets one line
    per install step, the log gets the rest."""
    import subprocess

    noisy = tmp_path / "python"
    noisy.write_text('#!/bin/sh\nfor i in $(seq 300); do echo "$* line $i"; done\n')
    noisy.chmod(0o755)
    log = tmp_path / "install.log"
    run = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "install", f"PYTHON={noisy}", f"INSTALL_LOG={log}"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [x for x in run.stdout.splitlines() if x.strip()]
    steps = 2 + ("apt: ffmpeg" in run.stdout)  # the lock, dfpipe itself; ffmpeg where it was missing
    assert len(lines) == steps and all(" ... done" in x for x in lines), run.stdout
    assert log.read_text().count(" line ") == 600
