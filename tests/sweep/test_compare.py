"""comparisons.csv: every variant against the reference, paired by seed, with scipy's tests."""

import math
import shutil

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from softmaxlab import runs, sweep
from softmaxlab.errors import UserError
from softmaxlab.sweep import compare as sweep_compare

from .conftest import read_csv, write_sweep

# The double softmax variant warns about itself on its first batch, as it should.
pytestmark = pytest.mark.filterwarnings("ignore::softmaxlab.heads.DoubleSoftmaxWarning")

HEADS = [{"head.name": "softmax"}, {"head.name": "log_softmax"}, {"head.name": "double_softmax"}]


@pytest.fixture(scope="module")
def three_heads(tmp_path_factory):
    """softmax, log_softmax (the same model: identical predictions) and double_softmax, 3 seeds."""
    tmp = tmp_path_factory.mktemp("compare")
    path = write_sweep(tmp / "s.yaml", {"train.seed": [0, 1, 2]}, variants=HEADS, extra=["diagnostics.enabled=false"])
    result = sweep.run_sweep(path, tmp / "out")
    return result, tmp / "out"


def per_seed(rows, head, metric):
    return [
        float(r[f"test.{metric}"]) for r in sorted(rows, key=lambda r: int(r["train.seed"])) if r["head.name"] == head
    ]


def test_p_values_and_intervals_are_scipys_on_the_per_seed_numbers(three_heads):
    _, out = three_heads
    results = read_csv(out / sweep.RESULTS_FILE)
    rows = read_csv(out / sweep.COMPARISONS_FILE)
    assert list(rows[0]) == ["variant", "reference", "metric", "n_pairs", "mean_diff", "ci95_low", "ci95_high",
                             "p_value", "p_holm", "mcnemar_p", "identical_predictions"]  # fmt: skip
    assert {(r["variant"], r["metric"]) for r in rows} == {
        (f"head.name={h}", m) for h in ("log_softmax", "double_softmax") for m in sweep.DEFAULT_METRICS
    }
    assert all(r["reference"] == "head.name=softmax" and r["n_pairs"] == "3" for r in rows)
    for metric in sweep.DEFAULT_METRICS:
        ref = per_seed(results, "softmax", metric)
        family = [r for r in rows if r["metric"] == metric]
        for row in family:
            mine = per_seed(results, row["variant"].split("=")[1], metric)
            d = np.subtract(mine, ref)
            assert float(row["mean_diff"]) == pytest.approx(d.mean(), abs=1e-12)
            if np.ptp(d) > 1e-9:  # scipy's t-test and t interval on the same numbers
                assert float(row["p_value"]) == pytest.approx(sps.ttest_rel(mine, ref).pvalue, rel=1e-9)
                half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
                assert float(row["ci95_low"]) == pytest.approx(d.mean() - half, abs=1e-12)
                assert float(row["ci95_high"]) == pytest.approx(d.mean() + half, abs=1e-12)
        p = sorted(float(r["p_value"]) for r in family)
        holm = sorted(float(r["p_holm"]) for r in family)
        assert holm == pytest.approx([min(1, 2 * p[0]), max(min(1, 2 * p[0]), p[1])])


def test_the_same_model_twice_is_identical_and_mcnemar_is_scipys(three_heads):
    _, out = three_heads
    rows = {r["variant"]: r for r in read_csv(out / sweep.COMPARISONS_FILE) if r["metric"] == "accuracy"}
    same = rows["head.name=log_softmax"]  # cross_entropy(z) = nll(log_softmax(z)): the same path, same seed
    assert same["identical_predictions"] == "true" and float(same["mean_diff"]) == 0
    assert float(same["p_value"]) == 1.0 and float(same["mcnemar_p"]) == 1.0
    bad = rows["head.name=double_softmax"]
    assert bad["identical_predictions"] == "false"
    b = c = 0
    for seed in (0, 1, 2):
        mine = runs.read_predictions(out / "runs" / f"head-double_softmax_seed-{seed}")
        ref = runs.read_predictions(out / "runs" / f"head-softmax_seed-{seed}")
        right, ref_right = mine["predicted"] == mine["targets"], ref["predicted"] == ref["targets"]
        b, c = b + int((right & ~ref_right).sum()), c + int((~right & ref_right).sum())
    assert float(bad["mcnemar_p"]) == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def test_compare_to_chooses_the_reference_and_must_name_one_variant(tmp_path, three_heads):
    _, out = three_heads
    path = write_sweep(
        tmp_path / "s.yaml", {"train.seed": [0, 1, 2]}, variants=HEADS, extra=["diagnostics.enabled=false"]
    )
    raw = yaml.safe_load(path.read_text())
    raw["sweep"]["compare_to"] = {"head.name": "double_softmax"}
    path.write_text(yaml.safe_dump(raw))
    base, spec = sweep.load_sweep(path)
    plan = sweep.expand_grid(base, spec)
    outcome = {r.name: ("finished", None) for r in plan}
    rows, _ = sweep.comparison_rows(out, plan, outcome, spec, base)
    assert {r["reference"] for r in rows} == {"head.name=double_softmax"}
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    weights = {f: f.stat().st_mtime_ns for f in copy.glob("runs/*/model.pt")}
    again = sweep.run_sweep(path, copy)  # another reference analyses the same runs: nothing retrains
    assert {f: f.stat().st_mtime_ns for f in copy.glob("runs/*/model.pt")} == weights
    assert again.count("finished") == 9
    assert {r["reference"] for r in read_csv(copy / sweep.COMPARISONS_FILE)} == {"head.name=double_softmax"}
    for bad, match in [({"head.name": "gumbel"}, "names no variant"), ({"train.lr": 0.1}, "not a key that tells")]:
        raw["sweep"]["compare_to"] = bad
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(UserError, match=match):
            sweep.run_sweep(path, tmp_path / "never")
        assert not (tmp_path / "never").exists()  # refused before anything was written
    raw["sweep"]["compare_to"], raw["sweep"]["compare_metrics"] = {}, ["accuracy", "sharpness"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="'sharpness' is not a test metric"):
        sweep.dry_run(path, tmp_path / "never")


def test_a_single_seed_says_so_and_still_writes_every_table(tmp_path):
    path = write_sweep(
        tmp_path / "s.yaml", {"train.seed": [0]}, variants=HEADS[:2], extra=["diagnostics.enabled=false"]
    )
    result = sweep.run_sweep(path, tmp_path / "out")
    assert any("at least 2 seeds" in note for note in result.notes)
    rows = read_csv(tmp_path / "out" / sweep.COMPARISONS_FILE)
    assert rows and all(r["p_value"] == "" and r["ci95_low"] == "" and r["n_pairs"] == "1" for r in rows)
    assert read_csv(tmp_path / "out" / sweep.AGGREGATE_FILE) and (tmp_path / "out" / "report.html").is_file()


def test_runs_without_predictions_skip_mcnemar_with_a_note(tmp_path, three_heads):
    _, out = three_heads
    path = write_sweep(
        tmp_path / "s.yaml", {"train.seed": [0, 1, 2]}, variants=HEADS, extra=["diagnostics.enabled=false"]
    )
    base, spec = sweep.load_sweep(path)
    plan = sweep.expand_grid(base, spec)
    old = tmp_path / "old"
    for run in plan:  # the same runs, one of them from before predictions.npz existed
        src, dst = out / "runs" / run.name, old / "runs" / run.name
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and not (run.name == "head-double_softmax_seed-1" and f.name == runs.PREDICTIONS):
                (dst / f.name).write_bytes(f.read_bytes())
    outcome = {r.name: ("finished", None) for r in plan}
    notes = sweep.write_comparisons(old, plan, outcome, spec, base)
    rows = {r["variant"]: r for r in read_csv(old / sweep.COMPARISONS_FILE) if r["metric"] == "accuracy"}
    assert rows["head.name=double_softmax"]["mcnemar_p"] == "" and rows["head.name=double_softmax"]["p_value"]
    assert rows["head.name=log_softmax"]["mcnemar_p"] == "1.0"
    assert any("double_softmax" in n and "no predictions.npz" in n for n in notes)


def test_compare_to_reads_keys_a_variant_does_not_override_as_the_base_configs(tmp_path):
    variants = [{"model.activation": "softmax_hw"}, {"model.activation": "softmax_hw", "model.softmax_blocks": [2]}]
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0, 1]}, variants=variants)
    raw = yaml.safe_load(path.read_text())
    for compare_to, expected in [
        ({"model.activation": "softmax_hw"}, "model.activation=softmax_hw"),  # exactly the first variant's overrides
        ({"model.softmax_blocks": None}, "model.activation=softmax_hw"),  # the base config's value
        ({"model.softmax_blocks": [2]}, "model.activation=softmax_hw, model.softmax_blocks=[2]"),
    ]:
        raw["sweep"]["compare_to"] = compare_to
        path.write_text(yaml.safe_dump(raw))
        base, spec = sweep.load_sweep(path)
        assert sweep_compare.reference_label(sweep.expand_grid(base, spec), spec, base) == expected
