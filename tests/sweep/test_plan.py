"""Runs, names and states of a sweep, and the dry run (softmaxlab.sweep.plan)."""

import json
import os
import re

import pytest
import yaml
from typer.testing import CliRunner

from softmaxlab import sweep
from softmaxlab.cli import app
from softmaxlab.config import apply_overrides
from softmaxlab.errors import UserError

from .conftest import SWEEP_BASE, write_sweep


def test_grid_expansion_names_and_exclusion(tmp_path):
    grid = {"head.name": ["softmax", "gumbel"], "head.tau": [0.5, 1, 3], "train.seed": [0, 1]}
    path = write_sweep(tmp_path / "s.yaml", grid, exclude=[{"head.name": "softmax", "head.tau": [0.5, 3]}])
    base, spec = sweep.load_sweep(path)
    plan = sweep.expand_grid(base, spec)
    # 2 x 3 x 2 = 12 combinations, minus softmax with tau 0.5 or 3 (2 x 2 seeds).
    assert len(plan) == 8
    assert plan[0].name == "head-softmax_tau-1_seed-0"
    assert "head-gumbel_tau-0.5_seed-1" in [r.name for r in plan]
    assert len({r.name for r in plan}) == len(plan)
    assert all(r.config is not None and r.config.name == r.name for r in plan)
    gumbel = next(r for r in plan if r.name == "head-gumbel_tau-3_seed-1")
    assert (gumbel.config.head.tau, gumbel.config.train.seed) == (3.0, 1)
    assert sweep.run_name({"data.seed": 1, "train.seed": 2, "model.widths": [8, 16]}) == (
        "data.seed-1_train.seed-2_widths-8-16"
    )


def test_variants_are_crossed_with_the_grid(tmp_path):
    variants = [
        {"head.name": "softmax"},
        {"head.name": "temperature", "head.learn_temperature": True},
        {"head.name": "gumbel", "head.tau": 3},
    ]
    path = write_sweep(
        tmp_path / "s.yaml", {"train.seed": [0, 1]}, exclude=[{"head.tau": 3, "train.seed": 1}], variants=variants
    )
    base, spec = sweep.load_sweep(path)
    plan = sweep.expand_grid(base, spec)
    assert [r.name for r in plan] == [
        "head-softmax_seed-0",
        "head-softmax_seed-1",
        "head-temperature_learn_temperature-true_seed-0",
        "head-temperature_learn_temperature-true_seed-1",
        "head-gumbel_tau-3_seed-0",  # seed 1 excluded; the exclude key tau is unset in the others
    ]
    assert all(r.config is not None for r in plan)
    assert plan[2].config.head.learn_temperature and plan[4].config.head.tau == 3.0
    assert plan[2].config.head.temperature == 1.0  # a key a variant leaves unset keeps the base value
    assert "tau" not in plan[0].config.to_dict()["head"]  # and a head has only its own options
    # The dry run has a column per variant or grid key, blank where a variant does not set it.
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "head.learn_temp" in result.output and "5 runs" in result.output


def test_a_variant_of_another_model_gets_that_models_default_widths(tmp_path):
    from softmaxlab.models import MODELS

    def default_widths(name):
        return MODELS.options(name)().widths  # the widths the model declares with its options

    variants = [{"model.name": "simple_cnn"}, {"model.name": "resnet12"}]
    raw = apply_overrides({}, [s for s in SWEEP_BASE if not s.startswith("model.widths")])
    raw["sweep"] = {"grid": {"train.seed": [0]}, "variants": variants}
    (tmp_path / "unset.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    plan = sweep.expand_grid(*sweep.load_sweep(tmp_path / "unset.yaml"))
    assert [r.config.model.widths for r in plan] == [default_widths("simple_cnn"), default_widths("resnet12")]
    # Widths the base sets are the base's for every variant.
    path = write_sweep(tmp_path / "set.yaml", {"train.seed": [0]}, variants=variants)
    plan = sweep.expand_grid(*sweep.load_sweep(path))
    assert [r.config.model.widths for r in plan] == [[8, 16], [8, 16]]


def test_names_stay_unique_and_invalid_combinations_are_recorded(tmp_path):
    # "a/b" and "a-b" would both read "a-b": a hash keeps them apart.
    assert sweep.run_name({"model.activation": "a/b"}) == "activation-a-b"
    path = write_sweep(tmp_path / "s.yaml", {"head.name": ["softmax", "gumbel"], "head.tau": [1, 2]})
    plan = sweep.expand_grid(*sweep.load_sweep(path))
    bad = [r for r in plan if r.config is None]
    assert [r.name for r in bad] == ["head-softmax_tau-2"]
    assert "head.tau" in bad[0].error and "gumbel" in bad[0].error


def test_dry_run_lists_runs_and_writes_nothing(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", {"head.name": ["softmax", "log_softmax"], "train.seed": [0, 1]})
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "head-log_softmax_seed-1" in result.output and "pending" in result.output
    assert "4 runs" in result.output
    assert not (tmp_path / "out").exists()


def test_dry_run_with_overwrite_shows_the_runs_it_would_replace(tmp_path):
    out = tmp_path / "out"
    first = write_sweep(tmp_path / "a.yaml", {"train.seed": [0]})
    assert CliRunner().invoke(app, ["sweep", str(first), "--out", str(out)]).exit_code == 0
    listed = CliRunner().invoke(app, ["sweep", str(first), "--out", str(out), "--dry-run"])
    assert "finished" in listed.output and "replacing" not in listed.output
    other = write_sweep(tmp_path / "b.yaml", {"train.seed": [0]}, extra=["train.lr=0.2"])
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = CliRunner().invoke(app, ["sweep", str(other), "--out", str(out), "--dry-run", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "pending" in result.output and "finished" not in result.output and "replacing the sweep" in result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing removed


def test_dry_run_shows_runs_still_in_an_earlier_job_and_refuses_bad_options(tmp_path):
    path, out = write_sweep(tmp_path / "s.yaml", {"train.seed": [0, 1]}), tmp_path / "out"
    base, spec = sweep.load_sweep(path)
    sweep.prepare_sweep_dir(out, base, spec)
    (out / sweep.JOBS_FILE).write_text(json.dumps({"cluster": "local", "jobs": {"seed-0": str(os.getpid())}}))
    before = sorted(p.name for p in out.rglob("*"))
    listed = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out), "--dry-run"])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip().startswith("seed-")}
    assert f"in job {os.getpid()} (its process is alive)" in rows["seed-0"] and "pending" in rows["seed-1"]
    assert "1 in an earlier command's jobs" in listed.stdout.replace("\n", "")
    refused = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out), "--dry-run", "--launcher", "slurm"])
    assert refused.exit_code == 2 and refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "unknown launcher" in refused.stderr
    assert sorted(p.name for p in out.rglob("*")) == before


def test_values_that_are_one_value_are_refused_as_repeats(tmp_path):
    # 1, 1.0 and true differ as YAML but are one number (True == 1 == 1.0 in Python, and for a
    # lax int key in the config): three identical runs, counted as n = 3 in aggregate.csv.
    path = write_sweep(tmp_path / "s.yaml", {"head.name": ["softmax"], "train.seed": [1, 1.0, True]})
    with pytest.raises(UserError) as caught:
        sweep.load_sweep(path)
    assert (
        str(caught.value)
        == f"sweep.grid.train.seed in {path} lists the value 1 twice (as 1 and 1.0); list each value once"
    )
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 2 and "lists the value 1 twice" in result.stderr
    assert not (tmp_path / "out").exists()
    cases = [
        ("train.seed", [0, 2, False], "0 twice (as 0 and false)"),
        ("model.widths", [[8, 16], [8.0, 16.0]], "[8, 16] twice"),
    ]
    for key, values, repeat in cases:
        with pytest.raises(UserError, match=re.escape(f"sweep.grid.{key} in {path} lists the value {repeat}")):
            sweep.load_sweep(write_sweep(path, {key: values}))
    with pytest.raises(UserError, match="repeats an earlier variant"):
        sweep.load_sweep(
            write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}, variants=[{"train.lr": 1}, {"train.lr": 1.0}])
        )
    # Variants that differ as written but not once validated (each sets what the base has): one config twice.
    variants = [{"head.name": "softmax"}, {"model.widths": [8, 16]}]
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}, variants=variants)
    with pytest.raises(UserError) as caught:
        sweep.expand_grid(*sweep.load_sweep(path))
    assert str(caught.value) == (
        "sweep.variants give runs 'head-softmax_seed-0' and 'widths-8-16_seed-0' the same config "
        """('head.name' "softmax" and (unset) both validate to "softmax"); drop one of the variants"""
    )
    # Values that differ are kept.
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0, 1, 2]})
    assert [r.config.train.seed for r in sweep.expand_grid(*sweep.load_sweep(path))] == [0, 1, 2]
