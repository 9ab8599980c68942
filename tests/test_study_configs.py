"""The study configs of docs/studies parse, and expand to the documented number of runs,
none of them invalid (the studies themselves are not run here)."""

from pathlib import Path

import pytest

from softmaxlab import sweep

STUDIES = Path(__file__).resolve().parents[1] / "configs" / "studies"

#: config -> runs, as the docs state them (3 seeds each).
RUNS = {
    "output-heads-intel.yaml": 36,
    "output-heads-cifar10.yaml": 36,
    "gumbel-tau-intel.yaml": 36,
    "double-softmax-100-classes.yaml": 12,
    "intermediate-softmax.yaml": 27,
    "intermediate-softmax-adam.yaml": 27,
    "full/output-heads-cifar100-resnet12.yaml": 39,
    "full/output-heads-intel150.yaml": 33,
    "full/intermediate-softmax-intel150.yaml": 27,
}


def test_every_study_config_is_listed():
    found = {str(p.relative_to(STUDIES)) for p in STUDIES.rglob("*.yaml")}
    assert found == set(RUNS)


@pytest.mark.parametrize(("name", "count"), sorted(RUNS.items()))
def test_study_config_expands_to_its_runs(name, count):
    base, spec = sweep.load_sweep(STUDIES / name)
    plan = sweep.expand_grid(base, spec)
    assert len(plan) == count
    assert [r.name for r in plan if r.config is None] == []
    assert {r.config.train.seed for r in plan} == {0, 1, 2}


def test_defaults_ablation_starts_from_the_defaults():
    # configs/defaults/ablation.yaml backs docs/guide/defaults.md: its first variant must be
    # the defaults themselves, each other variant one choice away from them.
    from softmaxlab.config import load_config

    base, spec = sweep.load_sweep(STUDIES.parent / "defaults" / "ablation.yaml")
    plan = sweep.expand_grid(base, spec)
    assert len(plan) == 24 and all(r.config is not None for r in plan)
    defaults = load_config(None, ["data.name=npz", "data.root=x.npz"])
    first = spec.variants[0]
    for key, value in first.items():
        section, leaf = key.split(".")
        assert getattr(getattr(defaults, section), leaf) == value, key
    for variant in spec.variants[1:]:
        assert len(variant) == 1 and all(
            getattr(getattr(defaults, k.split(".")[0]), k.split(".")[1]) != v for k, v in variant.items()
        )


def test_defaults_heads_sweep_covers_every_head():
    # configs/defaults/heads.yaml backs the docs' claim that every head trains with the defaults.
    from softmaxlab.heads import HEADS

    base, spec = sweep.load_sweep(STUDIES.parent / "defaults" / "heads.yaml")
    assert {v["head.name"] for v in spec.variants if "head.name" in v} == set(HEADS)
    plan = sweep.expand_grid(base, spec)
    assert all(r.config is not None for r in plan)
    resnet = [r.config for r in plan if r.config.model.name == "resnet12"]
    assert resnet and all(c.model.widths == [64, 160, 320, 640] and c.train.lr == base.train.lr for c in resnet)


def test_the_studies_build_script_reads_a_sweep_through_the_package(tmp_path):
    # docs/studies/build.py turns sweeps into the docs' tables; here it reads a small sweep
    # directory (a fixture) with the package's run reader and statistics.
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("studies_build", STUDIES.parents[1] / "docs" / "studies" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out = tmp_path / "sweep"
    shutil.copytree(Path(__file__).parent / "fixtures" / "legacy-runs" / "sweep" / "out", out)
    rows = build.read_rows(out)
    assert [(r["run"], r["status"], r["num_classes"]) for r in rows] == [("seed-0", "finished", 4)]
    assert len(rows[0]["history"]) == 1 and rows[0]["reliability"]["bins"] == 15
    assert "1 runs (1 finished)" in build.provenance(out, rows) and "device cpu" in build.provenance(out, rows)
    assert build.spread([0.5, None, 0.7], 100, 1) == "60.0 ± 14.1" and build.spread([None]) == "-"
    floor = build.band_p95(rows[0])  # an older summary: the band from its reliability bins
    assert 0 < floor < 0.3  # 64 test images: a perfectly calibrated model still shows several points of ECE
    assert build.band_p95({"band": {"mean": 0.01, "p95": 0.02}}) == 0.02


def load_build():
    import importlib.util

    spec = importlib.util.spec_from_file_location("studies_build", STUDIES.parents[1] / "docs" / "studies" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_the_studies_comparison_table_says_what_is_significant():
    build = load_build()
    row = {"variant": "head.name=gumbel, head.tau=1", "reference": "head.name=softmax", "n_pairs": "3"}
    rows = [
        {**row, "metric": "accuracy", "mean_diff": "-0.015", "ci95_low": "-0.03", "ci95_high": "-0.001"}
        | {"p_value": "0.04", "p_holm": "0.04", "mcnemar_p": "0.012", "identical_predictions": "false"},
        {**row, "metric": "ece", "mean_diff": "0.01", "ci95_low": "-0.02", "ci95_high": "0.04", "p_holm": "0.6"},
    ]
    table = build.comparisons_table(rows, build.short_variant)
    assert "minus `softmax`" in table and "`gumbel, tau=1`" in table
    assert "-1.5 [-3.0, -0.1], p_holm 0.04, **significant**" in table
    assert "+1.0 [-2.0, +4.0], p_holm 0.6, not significant" in table and "0.012" in table
    assert build.comparisons_table([]) == "(not run yet)"


def test_log_of_softmax_fails_where_the_dtype_underflows_and_log_softmax_never():
    import importlib.util

    spec = importlib.util.spec_from_file_location("numerics", STUDIES.parents[1] / "docs" / "studies" / "numerics.py")
    numerics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(numerics)
    f32, f16 = (numerics.failure_points(numerics.DTYPES[d]) for d in ("float32", "float16"))
    for r in (f32, f16):
        assert r["log_softmax_inf"] is None and r["log_softmax_grad"] is None and r["log_softmax_off"] is None
        assert r["log_softmax_of_grad"] <= r["log_softmax_of_inf"]
    # e^-s leaves float32 below its smallest subnormal (e^-103.3) and float16 below e^-16.6
    assert 103 < f32["log_softmax_of_inf"] < 105 and 16 < f16["log_softmax_of_inf"] < 18
    assert 88 < f32["naive_nan"] < 89 and 11 < f16["naive_nan"] < 11.2  # exp overflows
