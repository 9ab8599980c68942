import math

from softmaxlab.demo import DEMO_HEADS, DEMO_VARIANTS, demo_config, run_demo
from softmaxlab.heads import HEADS

from .conftest import TINY


def test_demo_config_is_the_documented_budget():
    cfg = demo_config("softmax", 1)
    assert cfg.data.name == "shapes" and cfg.head.name == "softmax" and cfg.train.seed == 1
    assert cfg.name == "softmax-seed1" and cfg.train.epochs == 3
    assert not cfg.report.figures  # each run's report is tables only; the demo's report draws for all


def test_demo_compares_the_six_heads_each_with_its_own_config():
    assert set(DEMO_HEADS) >= {"softmax", "log_softmax", "double_softmax", "gumbel", "temperature", "sparsemax"}
    for variant in DEMO_VARIANTS:
        cfg = demo_config(variant, 0)
        assert cfg.head.name in HEADS.names() and cfg.name == f"{variant.name}-seed0"
    learned = next(v for v in DEMO_VARIANTS if v.name == "temperature")
    assert demo_config(learned, 0).head.learn_temperature


def test_demo_writes_table_notes_and_runs(tmp_path):
    variants = tuple(v for v in DEMO_VARIANTS if v.name in {"softmax", "temperature", "sparsemax"})
    result = run_demo(
        tmp_path, variants=variants, seeds=(0, 1), overrides=[*TINY, "train.epochs=1"], report_figures=False
    )
    text = (tmp_path / "demo.md").read_text()
    assert result.table in text
    lines = result.table.splitlines()
    assert lines[0].startswith("| head | test accuracy (%) | test NLL | test Brier") and len(lines) == 2 + 3
    for v in variants:
        row = next(line for line in lines if line.startswith(f"| {v.name} |"))
        assert "±" in row and row.rstrip(" |").endswith("2")  # two seeds
        for seed in (0, 1):
            assert (tmp_path / f"{v.name}-seed{seed}" / "summary.json").is_file()
        assert f"- **{v.name}**: " in text
    assert "{" not in text  # every note's placeholders were filled with measured numbers
    assert "T after training: " in text and "% of the test images got p = 0" in text
    # the report of all the runs: one row per variant, the figures left to `softmaxlab report`
    assert result.report == tmp_path / "report.html"
    html = result.report.read_text()
    for v in variants:
        assert f'<td data-sort="head={v.name}" class="wrap">head={v.name}</td>' in html
    assert "report.figures: false" in html
    accs = [s["test"]["accuracy"] for s in result.summaries]
    assert len(accs) == 6 and all(a > 0.25 and math.isfinite(a) for a in accs)
