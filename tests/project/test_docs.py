"""The project's documents link only to files in the repository, and every such link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        ROOT / "deploy" / "README.md",
        *list((ROOT / "docs").glob("*.md")),
    ]
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(document: Path) -> list[str]:
    """Every link target in ``document`` that is not a web address or a bare anchor."""
    return [
        target
        for target in LINK.findall(document.read_text())
        if not target.startswith(("http://", "https://", "#", "mailto:"))
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(document: Path) -> None:
    """Each relative link names a file or folder that exists, and none leaves the repository."""
    for target in relative_links(document):
        resolved = (document.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), target
        assert resolved.exists(), target


def test_nothing_in_the_repository_points_at_the_workspace_design_notes() -> None:
    """No document, code comment or manifest refers to files outside the repository."""
    tracked = [
        path
        for pattern in ("*.md", "*.py", "*.toml", "*.yaml", "Makefile", "Dockerfile")
        for path in ROOT.rglob(pattern)
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
        and path != Path(__file__)
    ]
    offenders = [
        str(path.relative_to(ROOT))
        for path in tracked
        if "DESIGN.md" in path.read_text(errors="replace")
        or "../shared" in path.read_text(errors="replace")
    ]
    assert offenders == []
