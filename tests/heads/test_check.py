"""check_logits: the double-softmax pitfall is recognised from the model's outputs."""

import pytest
import torch

import softmaxlab
from softmaxlab.heads import check_logits


def test_fires_on_probabilities():
    p = torch.softmax(torch.randn(32, 10), -1)
    message = check_logits(p)
    assert message is not None and "double-softmax" in message and "logits" in message
    assert "\n" not in message and message.count(". ") == 0  # one sentence
    assert check_logits(p.half()) is not None
    assert check_logits(torch.eye(4)) is not None  # one-hot outputs are probabilities too


@pytest.mark.parametrize(
    "outputs",
    [
        torch.randn(32, 10),  # logits
        torch.log_softmax(torch.randn(32, 10), -1),  # log-probabilities
        torch.rand(32, 10),  # in [0, 1] but rows do not sum to 1
        torch.sigmoid(torch.randn(32, 10)),  # one-vs-rest probabilities
        torch.ones(32, 1),  # a single column is no distribution over classes
    ],
)
def test_quiet_on_logits(outputs):
    assert check_logits(outputs) is None


def test_strict_raises():
    p = torch.softmax(torch.randn(8, 3), -1)
    with pytest.raises(ValueError, match="double-softmax"):
        check_logits(p, strict=True)
    assert check_logits(torch.randn(8, 3), strict=True) is None  # logits: nothing to raise


def test_exported_from_the_package():
    assert softmaxlab.check_logits is check_logits


def test_softmax_into_nll_is_recognised_and_log_probabilities_are_not():
    p = torch.softmax(torch.randn(16, 10), -1)
    message = check_logits(p, loss="nll")
    assert message is not None and "softmax-into-NLL" in message and "log_softmax" in message
    assert check_logits(p.log(), loss="nll") is None  # what NLLLoss expects
    with pytest.raises(ValueError, match="loss must be"):
        check_logits(p, loss="mse")
