"""results.csv and aggregate.csv (softmaxlab.sweep.results)."""

import math

import pytest

from softmaxlab import sweep

from .conftest import read_csv, write_sweep


def test_failed_runs_are_recorded_and_do_not_stop_the_others(tmp_path, monkeypatch):
    from softmaxlab import train

    real_fit = train.fit

    def flaky_fit(cfg, out_dir, **kwargs):
        if cfg.train.seed == 1:
            raise RuntimeError("boom\nsecond line")
        return real_fit(cfg, out_dir, **kwargs)

    monkeypatch.setattr(train, "fit", flaky_fit)
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0, 1, 2]})
    result = sweep.run_sweep(path, tmp_path / "out")
    assert [r["status"] for r in result.rows] == ["finished", "failed", "finished"]
    assert result.rows[1]["error"] == "RuntimeError: boom second line"
    assert read_csv(tmp_path / "out" / sweep.RESULTS_FILE)[1]["status"] == "failed"


def test_aggregate_csv_means_and_stds_over_seeds(tmp_path):
    grid = {"head.name": ["softmax", "log_softmax"], "train.seed": [0, 1, 2]}
    path, out = write_sweep(tmp_path / "s.yaml", grid), tmp_path / "out"
    sweep.run_sweep(path, out)
    rows = read_csv(out / sweep.RESULTS_FILE)
    table = {r["head.name"]: r for r in read_csv(out / sweep.AGGREGATE_FILE)}
    assert set(table) == {"softmax", "log_softmax"}
    for head, agg in table.items():
        accs = [float(r["test.accuracy"]) for r in rows if r["head.name"] == head]
        mean = sum(accs) / 3
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / 2)
        assert float(agg["test.accuracy_mean"]) == pytest.approx(mean, abs=1e-9)
        assert float(agg["test.accuracy_std"]) == pytest.approx(std, abs=1e-9)
        assert agg["test.accuracy_n"] == "3" and agg["runs"] == "3"


def test_aggregate_csv_of_variants_groups_by_every_variant_key(tmp_path):
    variants = [{"head.name": "softmax"}, {"head.name": "gumbel", "head.tau": 2}, {"model.widths": [8, 8]}]
    path, out = write_sweep(tmp_path / "s.yaml", {"train.seed": [0, 1]}, variants=variants), tmp_path / "out"
    sweep.run_sweep(path, out)
    rows = read_csv(out / sweep.RESULTS_FILE)
    assert [(r["head.name"], r["head.tau"], r["model.widths"]) for r in rows] == (
        [("softmax", "", "")] * 2 + [("gumbel", "2", "")] * 2 + [("", "", "[8, 8]")] * 2
    )
    assert {r["status"] for r in rows} == {"finished"}
    table = read_csv(out / sweep.AGGREGATE_FILE)
    assert [(r["head.name"], r["head.tau"], r["model.widths"], r["runs"]) for r in table] == [
        ("softmax", "", "", "2"),
        ("gumbel", "2", "", "2"),
        ("", "", "[8, 8]", "2"),
    ]
    accs = [float(r["test.accuracy"]) for r in rows[2:4]]
    assert float(table[1]["test.accuracy_mean"]) == pytest.approx(sum(accs) / 2, abs=1e-9)
