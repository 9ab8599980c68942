from softmaxlab.demo import DEMO_HEADS, demo_config, run_demo

from .conftest import TINY


def test_demo_config_is_the_documented_budget():
    cfg = demo_config("softmax", 1)
    assert cfg.data.name == "shapes" and cfg.head.name == "softmax" and cfg.train.seed == 1
    assert cfg.name == "softmax-seed1"
    assert set(DEMO_HEADS) == {"softmax", "log_softmax"}


def test_demo_writes_table_and_runs(tmp_path):
    result = run_demo(tmp_path, seeds=(0, 1), overrides=[*TINY, "train.epochs=1"])
    text = (tmp_path / "demo.md").read_text()
    assert result.table in text
    lines = result.table.splitlines()
    assert lines[0].startswith("| head | test accuracy (%)") and len(lines) == 2 + len(DEMO_HEADS)
    for head in DEMO_HEADS:
        row = next(line for line in lines if line.startswith(f"| {head} |"))
        assert "±" in row and row.rstrip(" |").endswith("2")  # two seeds
        for seed in (0, 1):
            assert (tmp_path / f"{head}-seed{seed}" / "summary.json").is_file()
    accs = [s["test"]["accuracy"] for s in result.summaries]
    assert len(accs) == 4 and all(a > 0.25 for a in accs)
