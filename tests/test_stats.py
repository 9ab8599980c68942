"""Mean and spread over seeds, grouping, paired tests (softmaxlab.stats)."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from softmaxlab.stats import (
    COMPARISON_COLUMNS,
    RunOutcome,
    aggregate,
    compare_variants,
    ece_noise_floor,
    holm,
    mcnemar_exact,
    mean_std,
    paired_comparison,
)


def test_mean_std_sample_std():
    m, s, n = mean_std([1.0, 2.0, 3.0, 4.0])
    assert (m, n) == (2.5, 4) and s == pytest.approx(math.sqrt(5 / 3))
    assert mean_std([2.0]) == (2.0, 0.0, 1)
    m, s, n = mean_std([])
    assert math.isnan(m) and n == 0
    assert mean_std([1.0, float("nan"), 3.0])[2] == 2  # non-finite values are not averaged


def test_aggregate_groups_in_first_seen_order():
    rows = [
        {"head": "b", "seed": 0, "acc": 0.5},
        {"head": "a", "seed": 0, "acc": 0.8},
        {"head": "b", "seed": 1, "acc": 0.7},
    ]
    out = aggregate(rows, ["head"], {"acc": lambda r: r["acc"]})
    assert [r["head"] for r in out] == ["b", "a"]
    assert out[0]["acc_mean"] == pytest.approx(0.6) and out[0]["acc_n"] == 2
    assert out[1]["acc_std"] == 0.0


def test_aggregate_groups_list_values():
    # Override values can be lists (model.softmax_blocks: [2]); they group by value.
    rows = [{"blocks": [2], "acc": 0.5}, {"blocks": [0, 1], "acc": 0.8}, {"blocks": [2], "acc": 0.7}]
    out = aggregate(rows, ["blocks"], {"acc": lambda r: r["acc"]})
    assert [(r["blocks"], r["acc_n"]) for r in out] == [([2], 2), ([0, 1], 1)]
    assert out[0]["acc_mean"] == pytest.approx(0.6)


def test_ece_noise_floor_is_the_ece_of_a_perfectly_calibrated_model():
    # Bins of 500 images at confidence 0.6 and 0.9: a calibrated model's accuracy per bin is
    # Binomial(n, c) / n, whose mean absolute error is about sqrt(c (1 - c) / n) * sqrt(2 / pi).
    expected = sum(0.5 * math.sqrt(c * (1 - c) / 500) * math.sqrt(2 / math.pi) for c in (0.6, 0.9))
    assert ece_noise_floor([500, 0, 500], [0.6, None, 0.9]) == pytest.approx(expected, rel=0.05)
    assert ece_noise_floor([5000, 5000], [0.6, 0.9]) < ece_noise_floor([50, 50], [0.6, 0.9]) / 5
    assert ece_noise_floor([0, 0], [None, None]) is None
    assert ece_noise_floor([100], [1.0]) == 0.0  # always right when always sure


# --------------------------------------------------------------------------- paired comparisons


def test_paired_comparison_is_scipys_paired_t_test_and_t_interval():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5):
        a, b = rng.normal(0.8, 0.02, n), rng.normal(0.79, 0.02, n)
        c = paired_comparison(list(a), list(b))
        d = a - b
        half = sps.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
        assert c["n_pairs"] == n and c["p_value"] == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)
        assert (c["ci95_low"], c["ci95_high"]) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-12)
        # the interval excludes 0 exactly when the test rejects at 5 %
        assert (c["ci95_low"] > 0 or c["ci95_high"] < 0) == (c["p_value"] < 0.05)


def test_paired_comparison_edge_cases():
    assert paired_comparison([0.5], [0.4]) == {
        "n_pairs": 1, "mean_diff": pytest.approx(0.1), "ci95_low": None, "ci95_high": None, "p_value": None
    }  # fmt: skip
    same = paired_comparison([0.5, 0.6], [0.5, 0.6])
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0 and same["ci95_low"] == same["ci95_high"] == 0
    # the same non-zero difference each time: no spread, so no test (it is not "p = 0": one image
    # more or less on one seed would give p = 0.2)
    shifted = paired_comparison([0.8015, 0.7015], [0.801, 0.701])
    assert shifted["p_value"] is None and shifted["ci95_low"] is None and shifted["mean_diff"] == pytest.approx(5e-4)
    assert paired_comparison([0.5, None, float("nan")], [0.4, 0.3, 0.2])["n_pairs"] == 1  # unfinished pairs dropped


def literal_holm(p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_holm_matches_the_step_down_definition_and_skips_missing_values():
    rng = np.random.default_rng(1)
    for m in (1, 2, 5, 12):
        p = list(rng.uniform(0, 0.2, m))
        assert holm(p) == pytest.approx(literal_holm(p))
        assert all(h >= q for h, q in zip(holm(p), p, strict=True))
    assert holm([None, 0.02, None, 0.01]) == [None, 0.02, None, 0.02]


def test_mcnemar_is_scipys_exact_binomial_test_on_the_discordant_images():
    rng = np.random.default_rng(2)
    a, b = rng.random(500) < 0.8, rng.random(500) < 0.75
    r = mcnemar_exact(a, b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert (r["only_variant"], r["only_reference"]) == (only_a, only_b)
    assert r["p_value"] == pytest.approx(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-12)
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same images"):
        mcnemar_exact(a, b[:10])


def test_compare_variants_pairs_by_seed_and_explains_what_it_cannot_do():
    y = np.array([0, 1, 1, 0])

    def run(acc, predicted=None):
        return RunOutcome({"accuracy": acc, "ece": 0.1}, None if predicted is None else np.array(predicted), y)

    variants = {
        "ref": {0: run(0.5, [0, 0, 1, 1]), 1: run(0.6, [0, 1, 0, 0]), 2: run(0.7, [0, 1, 1, 1])},
        "other": {1: run(0.8, [0, 1, 1, 0]), 2: run(0.9, [0, 1, 1, 0]), 3: run(0.1, [1, 0, 0, 1])},
        "old": {0: run(0.5), 1: run(0.6)},
    }
    rows, notes = compare_variants(variants, "ref", ["accuracy", "ece"])
    assert all(list(r) == list(COMPARISON_COLUMNS) for r in rows)
    other = next(r for r in rows if r["variant"] == "other" and r["metric"] == "accuracy")
    assert other["n_pairs"] == 2 and other["mean_diff"] == pytest.approx(0.2)  # seeds 1 and 2 only
    assert other["identical_predictions"] is False and other["mcnemar_p"] == 0.5  # 2 images only it gets right
    old = next(r for r in rows if r["variant"] == "old" and r["metric"] == "accuracy")
    assert old["mcnemar_p"] is None and any("old" in n and "predictions.npz" in n for n in notes)
    assert next(r for r in rows if r["variant"] == "old" and r["metric"] == "ece")["p_value"] == 1.0
    with pytest.raises(ValueError, match="no variant 'nope'"):
        compare_variants(variants, "nope", ["accuracy"])
    _, single = compare_variants({"a": {0: run(0.5)}, "b": {0: run(0.6)}}, "a", ["accuracy"])
    assert "at least 2 seeds" in single[0]
