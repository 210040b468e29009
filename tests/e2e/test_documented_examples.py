"""docs/authentication.md quotes the client examples that tests/e2e runs, byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "authentication.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize(
    ("example", "language"), [("create_secret.mjs", "js"), ("create_secret.py", "python")]
)
def test_the_doc_quotes_the_example_file_exactly(example: str, language: str) -> None:
    """The doc has a code block equal to the example file, and links to the file."""
    text = DOC.read_text()
    source = (ROOT / "docs" / "examples" / example).read_text()
    blocks = [body for lang, body in BLOCK.findall(text) if lang == language]
    assert source in blocks, f"docs/authentication.md no longer quotes docs/examples/{example}"
    assert f"(examples/{example})" in text


def test_no_other_client_snippet_is_left_unexecuted() -> None:
    """Every js/ts/python block of the doc is one of the executed examples."""
    text = DOC.read_text()
    examples = {path.read_text() for path in (ROOT / "docs" / "examples").iterdir()}
    snippets = [body for lang, body in BLOCK.findall(text) if lang in ("js", "ts", "python")]
    assert snippets
    assert [body for body in snippets if body not in examples] == []
