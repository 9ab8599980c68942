import math

import pytest

from softmaxlab.sweep import aggregate, mean_std


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
