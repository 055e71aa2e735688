"""One version: ``pyproject.toml``, ``adlearn.__version__`` and the changelog's newest entry agree."""

import re
from pathlib import Path

import adlearn

REPO = Path(__file__).resolve().parents[1]


def test_the_version_is_the_same_everywhere():
    project = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"), flags=re.M)[1]
    newest = re.search(r"^## (\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(encoding="utf-8"), flags=re.M)
    assert newest is not None, "CHANGELOG.md has no '## X.Y.Z' entry"
    assert project == adlearn.__version__ == newest.group(1)
