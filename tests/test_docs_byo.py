"""docs/bring-your-own-model.md: its lint examples, run on the page's own files, print what the page shows."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from softmaxlab.cli import app

PAGE = Path(__file__).resolve().parents[1] / "docs" / "bring-your-own-model.md"
runner = CliRunner()


def blocks(kind: str) -> list[str]:
    """The page's fenced blocks of ``kind`` (python, console), in order."""
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def console_lint_examples() -> list[tuple[str, str]]:
    """(arguments after ``softmaxlab lint``, the output the page shows) of each lint command."""
    found = []
    for block in blocks("console"):
        for command, output in re.findall(r"^\$ softmaxlab lint (.*)\n((?:(?!\$ ).*\n)*)", block, re.M):
            found.append((command, output))
    return found


@pytest.fixture
def my_net(tmp_path, monkeypatch):
    """The page's my_net.py, written where the examples run."""
    (tmp_path / "my_net.py").write_text(blocks("python")[0], encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("index", range(4))
def test_each_lint_example_prints_what_the_page_shows(my_net, index):
    examples = console_lint_examples()
    assert len(examples) == 4, "the page's lint examples changed: update this test's count"
    command, shown = examples[index]
    result = runner.invoke(app, ["lint", *command.split()])
    assert result.output.strip() == shown.strip()
    assert result.exit_code == (4 if '"severity": "error"' in shown or "1 error" in shown else 0)


def test_the_python_example_prints_what_the_page_shows(my_net):
    example = blocks("python")[1]
    shown = next(b for b in blocks("console") if not b.startswith("$"))  # the one output without a command
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "example", "exec"), {})
    assert out.getvalue().strip() == shown.strip()


def test_the_factory_example_is_the_one_the_page_runs(my_net):
    # `make` is the backbone the page trains: features of width `width`, which it declares
    code = "import my_net; m = my_net.make(32); import torch; print(m(torch.zeros(1, 3, 8, 8)).shape, m.out_features)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=my_net).stdout
    assert out.split() == ["torch.Size([1,", "32])", "32"]
