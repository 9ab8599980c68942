"""The README's promises: two quickstart commands, the second one exactly what CI runs."""

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


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert quickstart_commands()[1] in ci.splitlines()


def test_exit_codes_documented():
    text = (ROOT / "README.md").read_text()
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |"):
        assert code in text


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(), reason="ruff not installed"
)
def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def development_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Development", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_development_examples_add_a_head_a_model_a_dataset_and_an_activation(tmp_path):
    from softmaxlab import ACTIVATIONS, DATASETS, HEADS, MODELS, load_config, run_experiment

    examples = development_examples()
    assert len(examples) == 3
    added = {"focal": HEADS, "tiny": MODELS, "noise": DATASETS, "mish": ACTIVATIONS}
    try:
        namespace: dict = {}
        for code in examples:
            exec(compile(code, "README.md", "exec"), namespace)
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
