"""Tests parametrised over the head registry: a new head gets them for free."""

import pytest
import torch
import torch.nn.functional as F

from softmaxlab.config import HeadConfig
from softmaxlab.heads import HEADS, build_head, check_probs

NAMES = HEADS.names()
#: Heads that are meant to overflow (tested in test_reference.py instead).
UNSTABLE = {"naive_softmax"}
#: Heads whose loss is -mean log p_y of the distribution that ``log_probs`` reports (in eval mode).
NLL_HEADS = {"softmax", "log_softmax", "naive_softmax", "temperature", "gumbel", "hierarchical", "adaptive"}


def make(name, f=6, k=5, dtype=torch.float32, **options):
    torch.manual_seed(0)
    return build_head(HeadConfig(name=name, **options), f, k).to(dtype)


def test_every_head_has_a_one_line_summary():
    for name in NAMES:
        assert HEADS.summary(name), name
    assert "ln(1+(K-1)/e)" in HEADS.summary("double_softmax")


@pytest.mark.parametrize("name", NAMES)
def test_probs_are_distributions(name):
    head = make(name)
    scores = head(torch.randn(8, 6))
    p = head.probs(scores)
    assert p.shape == (8, 5) and check_probs(p)
    assert torch.equal(head.predict(scores), p.argmax(1))
    torch.testing.assert_close(head.log_probs(scores).exp(), p)


@pytest.mark.parametrize("name", sorted(set(NAMES) - UNSTABLE))
def test_extreme_logits_stay_finite(name):
    head = make(name)
    # Features of norm ~1e4 give logits of +-1e4 whatever the head's output layers are.
    feats = 1e4 * torch.randn(4, 6)
    scores = head(feats)
    p = head.probs(scores)
    assert torch.isfinite(p).all() and check_probs(p)
    loss = head.loss(scores, torch.tensor([0, 1, 2, 4]))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", sorted(set(NAMES) - UNSTABLE))
def test_extreme_biases_stay_finite(name):
    head = make(name)
    if head.fc is None:
        pytest.skip("no base linear layer")
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.copy_(torch.tensor([1e4, -1e4, 0.0, 5e3, -5e3]))
    scores = head(torch.zeros(2, 6))
    p = head.probs(scores)
    assert torch.isfinite(p).all() and check_probs(p)
    assert torch.isfinite(head.loss(scores, torch.tensor([0, 1])))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_probs(name, dtype):
    head = make(name, dtype=dtype)
    try:
        scores = head(torch.randn(8, 6).to(dtype))
        p = head.probs(scores)
        loss = head.loss(scores, torch.randint(0, 5, (8,)))
    except RuntimeError as exc:  # an op without a CPU kernel for this dtype
        if "not implemented" in str(exc):
            pytest.skip(str(exc))
        raise
    assert torch.isfinite(p).all() and check_probs(p, atol=1e-2)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", NAMES)
def test_loss_has_finite_gradients(name):
    head = make(name)
    loss = head.loss(head(torch.randn(16, 6)), torch.arange(16) % 5)
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    head = make(name, 4, 3, torch.float64)
    target = torch.tensor([0, 2, 1])
    feats = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def loss(f):
        torch.manual_seed(1)  # the same noise on every call (gumbel)
        return head.loss(head(f), target)

    assert torch.autograd.gradcheck(loss, (feats,))


@pytest.mark.parametrize("name", sorted(NLL_HEADS))
def test_loss_is_nll_of_log_probs_in_eval_mode(name):
    head = make(name).eval()
    scores = head(torch.randn(8, 6))
    y = torch.arange(8) % 5
    torch.testing.assert_close(head.loss(scores, y), F.nll_loss(head.log_probs(scores), y))


@pytest.mark.parametrize("name", NAMES)
def test_saved_weights_reload_to_the_same_distribution(name):
    head = make(name).eval()
    head.step_update(500, 1000)
    other = build_head(HeadConfig(name=name), 6, 5).eval()
    other.load_state_dict(head.state_dict())
    feats = torch.randn(8, 6)
    torch.testing.assert_close(other.probs(other(feats)), head.probs(head(feats)))


@pytest.mark.parametrize("name", NAMES)
def test_temperature_scalable_is_declared(name):
    expected = name not in {"sparsemax", "entmax15", "sigmoid"}
    assert HEADS.get(name).temperature_scalable is expected


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
