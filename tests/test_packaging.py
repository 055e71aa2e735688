"""Packaging: dependency lists agree, the package imports fast, the CLI entry points answer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = {_name(r) for r in pip_section if not r.startswith("-e")}
    assert declared == conda


def test_import_does_no_heavy_work():
    # "imports in < 2 s" holds because importing adlearn loads neither torch nor timm nor matplotlib:
    # they load on first use. (Checked structurally; timing is reported by benchmarks/bench_import.py.)
    code = (
        "import sys; import adlearn, adlearn.data, adlearn.components, adlearn.cli, adlearn.metrics; "
        "print(sorted(m for m in ('torch', 'timm', 'matplotlib', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_and_module_entry_point():
    for command in (
        [sys.executable, "-m", "adlearn", "--help"],
        [str(Path(sys.executable).parent / "adlearn"), "--help"],
    ):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "evaluate" in result.stdout and "models" in result.stdout


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [
        line.split("#")[0].strip() for line in first_block.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert len(commands) == 2
    assert commands[1] in (REPO / ".ci" / "run").read_text()
