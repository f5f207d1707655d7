"""Every document a tracked file cites is in the repository (docs/conventions.md §13).

A clone is all a reader has: a reference to a team document outside the repository (a sibling ``shared/``
folder, or a ``PAPER``/``DESIGN``/``STYLE`` page that only exists there) dangles. So: no tracked file names
such a page unless a tracked file of that name exists, none points outside the clone, and every
``docs/<page>.md §N`` citation names a page and a section that exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
TEAM_PAGE = re.compile(r"\b(PAPER|DESIGN|STYLE)\.md\b|\bSTYLE habits?\b")
OUTSIDE = re.compile(r"\.\./shared\b|/work/shared\b")
DOC_CITE = re.compile(r"\bdocs/([A-Za-z0-9_-]+\.md)(?: §(\d+(?:\.\d+)?))?")


def tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [p for p in out.stdout.decode().split("\0") if p]


def text_files() -> dict[str, str]:
    """path -> text of every tracked text file (this test excluded: it names the patterns it looks for)."""
    out = {}
    for path in tracked():
        f = ROOT / path
        if path == SELF or not f.is_file():
            continue
        data = f.read_bytes()
        if b"\0" not in data[:8192]:  # not binary
            out[path] = data.decode("utf-8", errors="replace")
    return out


def hits(pattern: re.Pattern, files: dict[str, str]) -> list[tuple[str, int, re.Match]]:
    return [(path, text.count("\n", 0, m.start()) + 1, m) for path, text in files.items()
            for m in pattern.finditer(text)]


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    found = text_files()
    assert "README.md" in found and any(p.startswith("rl_core/") for p in found)  # the scan saw the repo
    return found


def test_no_tracked_file_cites_a_team_page_that_is_not_in_the_repository(files):
    names = {Path(p).name for p in tracked()}
    bad = [f"{p}:{line}: {m.group(0)}" for p, line, m in hits(TEAM_PAGE, files)
           if f"{m.group(1) or 'STYLE'}.md" not in names]
    assert not bad, "references to documents outside the repository:\n" + "\n".join(bad)


def test_no_tracked_file_points_outside_the_clone(files):
    bad = [f"{p}:{line}: {m.group(0)}" for p, line, m in hits(OUTSIDE, files)]
    assert not bad, "paths outside the repository:\n" + "\n".join(bad)


def test_every_docs_citation_names_a_page_and_section_that_exist(files):
    cites = hits(DOC_CITE, files)
    assert cites, "no docs/ citation found: the pattern no longer matches how code cites the documents"
    bad = []
    for path, line, m in cites:
        page, section = m.group(1), m.group(2)
        target = files.get(f"docs/{page}")
        if target is None:
            bad.append(f"{path}:{line}: docs/{page} is not a tracked file")
        elif section and not re.search(rf"^#+ §{re.escape(section)}(?!\.?\d)", target, re.M):
            bad.append(f"{path}:{line}: docs/{page} has no heading §{section}")
    assert not bad, "\n".join(bad)
