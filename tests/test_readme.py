"""The README's promises: two quickstart commands, the second one exactly what CI runs.

The README is the door (at most 10,000 characters); the rest is the docs site, whose
examples and generated reference pages tests/test_docs_site.py checks."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quickstart_has_two_commands_demo_then_tests():
    commands = quickstart_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert commands[0].endswith("softmaxlab demo")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_and_the_strict_docs_build():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quickstart_commands()[1] in lines
    build = [line for line in lines if "mkdocs build" in line]
    assert build and all("--strict" in line for line in build)
    assert lines.index(build[0]) > lines.index(quickstart_commands()[1])  # after installing


def test_readme_is_short_and_keeps_the_headline_markers():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 10_000
    assert text.count("<!-- build:headline -->") == 1 and text.count("<!-- /build:headline -->") == 1
    assert "pip install -e '.[docs]'" in text and "mkdocs serve" in text


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(), reason="ruff not installed"
)
def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
