"""Tests parametrised over the head registry: a new head gets them for free."""

import pytest
import torch
import torch.nn.functional as F

from softmaxlab.config import HeadConfig
from softmaxlab.heads import HEADS, build_head, check_probs

NAMES = HEADS.names()


def make(name, f=6, k=5, dtype=torch.float32):
    torch.manual_seed(0)
    return build_head(HeadConfig(name=name), f, k).to(dtype)


@pytest.mark.parametrize("name", NAMES)
def test_probs_are_distributions(name):
    head = make(name)
    feats = torch.randn(8, 6)
    p = head.probs(head(feats))
    assert p.shape == (8, 5) and check_probs(p)
    assert torch.equal(head.predict(head(feats)), p.argmax(1))


@pytest.mark.parametrize("name", NAMES)
def test_extreme_logits_stay_finite(name):
    head = make(name)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.copy_(torch.tensor([1e4, -1e4, 0.0, 5e3, -5e3]))
    scores = head(torch.zeros(2, 6))
    p = head.probs(scores)
    assert torch.isfinite(p).all() and check_probs(p)
    assert torch.isfinite(head.loss(scores, torch.tensor([0, 1])))


@pytest.mark.parametrize("name", NAMES)
def test_loss_has_finite_gradients(name):
    head = make(name)
    loss = head.loss(head(torch.randn(8, 6)), torch.randint(0, 5, (8,)))
    loss.backward()
    for p in head.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    head = make(name, 4, 3, torch.float64)
    target = torch.tensor([0, 2, 1])
    feats = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: head.loss(head(f), target), (feats,))


def test_softmax_loss_and_probs_match_torch():
    head = make("softmax")
    z = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    torch.testing.assert_close(head.loss(z, y), F.cross_entropy(z, y))
    torch.testing.assert_close(head.probs(z), torch.softmax(z, -1))


def test_log_softmax_head_outputs_log_probs_and_uses_nll():
    head = make("log_softmax")
    feats = torch.randn(8, 6)
    s = head(feats)
    torch.testing.assert_close(s, F.log_softmax(head.fc(feats), -1))
    y = torch.randint(0, 5, (8,))
    torch.testing.assert_close(head.loss(s, y), F.nll_loss(s, y))
    torch.testing.assert_close(head.probs(s), torch.softmax(head.fc(feats), -1))


def test_softmax_and_log_softmax_are_the_same_model():
    a, b = make("softmax"), make("log_softmax")
    b.load_state_dict(a.state_dict())
    feats, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    torch.testing.assert_close(a.loss(a(feats), y), b.loss(b(feats), y))


def test_check_probs():
    assert check_probs(torch.softmax(torch.randn(4, 3), -1))
    assert not check_probs(torch.randn(4, 3))
    assert not check_probs(torch.full((2, 3), 0.5))
