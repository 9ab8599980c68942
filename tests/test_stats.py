"""Mean and spread over seeds, grouping (softmaxlab.stats)."""

import math

import pytest

from softmaxlab.stats import aggregate, ece_noise_floor, mean_std


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
