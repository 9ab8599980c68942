"""The docs site: it builds with --strict (no broken link, anchor or generated reference), its
reference pages name what the code has, and its examples run.

The site is built once for the module (about 10 s); dev installs the docs toolchain, so
nothing here is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([*command, "--site-dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")


@pytest.mark.parametrize("what", ["heads", "activations", "models", "datasets"])
def test_every_registered_component_has_a_section_with_its_options(site, what):
    from softmaxlab.cli import LISTS, list_entries

    html = page(site, f"reference/{what}")
    for row in list_entries(what):
        assert f'id="{anchor(row.name)}"' in html, f"{row.name} is missing from reference/{what}"
        for key in row.keys:
            assert f"{LISTS[what]}.{key}" in html, f"{row.name}'s option {key} is missing"


def test_every_cli_command_has_a_section_with_every_option(site):
    import typer

    from softmaxlab.cli import app

    html = page(site, "reference/cli")
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="softmaxlab")

    def check(group, parent, path):
        for name in group.list_commands(parent):
            command = group.get_command(parent, name)
            sub = command.context_class(command, info_name=name, parent=parent)
            assert f'id="{anchor(f"{path} {name}")}"' in html, f"{path} {name} has no section"
            for param in command.get_params(sub):
                for opt in (o for o in param.opts if o.startswith("-")):
                    assert opt in html, f"{path} {name} {opt} is missing"
            if hasattr(command, "list_commands"):
                check(command, sub, f"{path} {name}")

    check(root, ctx, "softmaxlab")


def test_every_exit_code_and_config_key_and_run_file_is_listed(site):
    from softmaxlab import cli, runs
    from softmaxlab.config import TrainConfig

    codes = page(site, "reference/exit-codes")
    for name, value in vars(cli).items():
        if name.startswith("EXIT_"):
            assert f"<td>{value}</td>" in codes and name in codes
    config = page(site, "reference/config")
    assert all(f"train.{key}" in config for key in TrainConfig.model_fields)
    files = page(site, "reference/run-directory")
    assert all(name in files for name in (*runs.RUN_FILES, *runs.DERIVED_FILES))


def test_the_api_and_the_included_pages(site):
    api = page(site, "api")
    assert 'id="softmaxlab.run_experiment"' in api and 'id="softmaxlab.fit"' in api
    stats = page(site, "api/stats")  # doctest examples are highlighted code, not nested quotes
    assert 'class="gp">&gt;&gt;&gt;' in stats and "<blockquote>" not in stats
    assert "Quickstart" in (site / "index.html").read_text(encoding="utf-8")  # the README
    benchmarks = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    heading = re.search(r"^## (.+)$", benchmarks, re.M).group(1)
    assert heading.split("`")[0].strip() in page(site, "performance")


def test_links_to_repository_files_are_copies_in_the_site(site):
    copy = site / "repo" / "configs" / "sweep-heads.yaml"  # linked from the sweeps guide
    assert copy.read_bytes() == (ROOT / "configs" / "sweep-heads.yaml").read_bytes()
    assert 'href="../../repo/configs/sweep-heads.yaml"' in page(site, "guide/sweeps")


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_link_rewriting_outside_docs_and_in_code(tmp_path):
    hooks = load_hook("repo_files")
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.yaml").write_text("x: 1\n")
    (tmp_path / "NOTES.md").write_text("# Notes\n")
    site = hooks.Site(root=tmp_path, docs=tmp_path / "docs", included={tmp_path / "NOTES.md": "notes.md"})
    text = (
        "[a](../../configs/a.yaml) [dir](../../configs/) [n](../../NOTES.md#x) [gone](../../nope.yaml)\n"
        "`[a](../../configs/a.yaml)` [web](https://example.org) [here](#top)\n"
    )
    found: list = []
    out = hooks.rewrite_links(site, text, tmp_path / "docs" / "guide", "guide", found)
    assert "[a](../repo/configs/a.yaml)" in out and "[dir](../repo/configs/index.md)" in out
    assert "[n](../notes.md#x)" in out and "[gone](../../nope.yaml)" in out  # left for --strict to report
    assert "`[a](../../configs/a.yaml)`" in out and "(https://example.org)" in out and "(#top)" in out
    assert {t.src_uri for t in found} == {"repo/configs/a.yaml", "repo/configs/index.md", "notes.md"}


def component_examples() -> list[str]:
    text = (ROOT / "docs" / "contributing.md").read_text(encoding="utf-8")
    section = text.split("## Add a component", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_contributing_examples_add_a_head_a_model_a_dataset_and_an_activation(tmp_path):
    from softmaxlab import ACTIVATIONS, DATASETS, HEADS, MODELS, load_config, run_experiment

    examples = component_examples()
    assert len(examples) == 3
    added = {"focal": HEADS, "tiny": MODELS, "noise": DATASETS, "mish": ACTIVATIONS}
    try:
        namespace: dict = {}
        for code in examples:
            exec(compile(code, "docs/contributing.md", "exec"), namespace)
        assert all(name in registry for name, registry in added.items())
        overrides = ["data.name=noise", "data.images=128", "model.name=tiny", "model.activation=mish"]
        overrides += ["head.name=focal", "head.gamma=1", "train.epochs=2", "train.batch_size=32", "train.device=cpu"]
        cfg = load_config(None, [*overrides, "report.figures=false"])
        result = run_experiment(cfg, tmp_path / "run")
        assert result.summary["status"] == "finished" and result.summary["test"]["accuracy"] > 0.6  # brightness
        assert result.model.backbone.out_features == 16 and result.report.is_file()
    finally:
        for name, registry in added.items():
            if name in registry:
                registry.unregister(name)
