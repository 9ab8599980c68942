import math

import pytest
import torch

from softmaxlab.metrics import HIGHER_IS_BETTER, classification_metrics, validate_probs


def test_hand_worked_example():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 2])
    m = classification_metrics(p, y)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["top5"] == pytest.approx(1.0)  # k capped at 3 classes
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    # precision: class 0 1/2, class 1 1/1, class 2 1/1; recall: 1, 1/2, 1
    assert m["precision_macro"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((1 + 0.5 + 1) / 3)
    f1 = [2 * 0.5 * 1 / 1.5, 2 * 1 * 0.5 / 1.5, 1.0]
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert m["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(1.0)) / 4)
    assert m["nll_clamped"] == 0.0
    brier = [(0.3**2 + 0.2**2 + 0.1**2), (0.1**2 + 0.2**2 + 0.1**2), (0.6**2 + 0.7**2 + 0.1**2), 0.0]
    assert m["brier"] == pytest.approx(sum(brier) / 4)


def test_exact_zero_probability_gives_finite_nll():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    m = classification_metrics(p, torch.tensor([1, 0]))
    assert math.isfinite(m["nll"]) and m["nll"] > 10
    assert m["nll_clamped"] == pytest.approx(0.5)  # says how much of the NLL is the clamp


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (torch.randn(4, 3), "in \\[0, 1\\]"),  # logits are refused, never re-softmaxed
        (torch.full((4, 3), 0.2), "rows must sum to 1"),
        (torch.full((4,), 0.2), "expected \\(N, K\\)"),
    ],
)
def test_bad_input_is_rejected_naming_the_source(probs, match):
    with pytest.raises(ValueError, match=match) as info:
        validate_probs(probs, torch.zeros(probs.shape[0], dtype=torch.long), source="head 'x'")
    assert "head 'x'" in str(info.value)


def test_direction_metadata_covers_every_scalar_metric():
    m = classification_metrics(torch.softmax(torch.randn(20, 4), 1), torch.randint(0, 4, (20,)))
    scalars = {k for k, v in m.items() if isinstance(v, float)}
    assert scalars == set(HIGHER_IS_BETTER)
