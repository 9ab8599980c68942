"""Tests parametrised over the head registry: a new head gets them for free."""

import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import softmaxlab
from softmaxlab.config import HeadConfig
from softmaxlab.heads import HEADS, Head, build_head, check_probs
from softmaxlab.metrics import fit_loss_temperature, temperature_scaled_probs

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


#: Heads recalibrated on their own scores: their probabilities are not a softmax of them.
SCORE_SCALED = {"sparsemax", "entmax15", "sigmoid"}


@pytest.mark.parametrize("name", NAMES)
def test_every_head_is_temperature_scalable_and_says_on_what(name):
    head = HEADS.get(name)
    assert head.temperature_scalable
    assert head.temperature_input == ("scores" if name in SCORE_SCALED else "log_probs")


@pytest.mark.parametrize("name", sorted(SCORE_SCALED))
def test_score_scaled_heads_map_z_over_t_and_fit_t_on_their_own_loss(name):
    head = make(name, k=6).eval()
    torch.manual_seed(1)
    z = 3 * torch.randn(400, 6, dtype=torch.float64)
    y = torch.where(torch.rand(400) < 0.6, z.argmax(1), torch.randint(0, 6, (400,)))  # overconfident
    p = head.probs(z)
    torch.testing.assert_close(temperature_scaled_probs(head, p, 1.0, z).double(), p, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        temperature_scaled_probs(head, p, 2.5, z).double(), head.probs(z / 2.5), atol=1e-6, rtol=0
    )
    t = fit_loss_temperature(head, z, y)
    grid = torch.linspace(-3, 3, 601, dtype=torch.float64).exp()  # T from 0.05 to 20, 1 % steps
    losses = torch.stack([head.loss(z / g, y) for g in grid])
    best = grid[losses.argmin()].item()
    assert t == pytest.approx(best, rel=0.02) and t > 1  # overconfident logits are flattened
    assert head.loss(z / t, y) <= losses.min() + 1e-9
    if name != "sigmoid":  # a larger T widens the support of a sparse mapping
        assert (head.probs(z / 4) > 0).sum() > (head.probs(z) > 0).sum()


def test_softmax_nll_loss_is_minus_p_y_and_vanishes_where_the_model_is_wrong():
    head = make("softmax_nll")
    feats = torch.randn(8, 6)
    p = head(feats)
    y = torch.arange(8) % 5
    torch.testing.assert_close(p, torch.softmax(head.fc(feats), -1))
    torch.testing.assert_close(head.loss(p, y), -p.gather(1, y[:, None]).mean())
    assert -1 <= head.loss(p, y).item() <= 0
    # dL/dz = -p_y (e_y - p): an image the model is sure is class 1, labelled 0, gives ~no gradient
    z = torch.tensor([[-8.0, 8.0, 0.0, 0.0, 0.0]], requires_grad=True)
    head.loss(torch.softmax(z, -1), torch.tensor([0])).backward()
    ce = torch.tensor([[-8.0, 8.0, 0.0, 0.0, 0.0]], requires_grad=True)
    F.cross_entropy(ce, torch.tensor([0])).backward()
    assert z.grad.abs().max() < 1e-6 < 0.5 < ce.grad.abs().max()


GUMBEL_RULES = ("tau", "plain", "sample_mean")


def test_gumbel_eval_rules_give_the_distributions_they_name():
    torch.manual_seed(0)
    feats = torch.randn(64, 6)
    heads = {rule: make("gumbel", tau=0.3, eval_rule=rule).eval() for rule in GUMBEL_RULES}
    z = heads["tau"].fc(feats)
    torch.testing.assert_close(heads["tau"].probs(heads["tau"](feats)), torch.softmax(z / 0.3, -1))
    torch.testing.assert_close(heads["plain"].probs(heads["plain"](feats)), torch.softmax(z, -1))
    mean_head = make("gumbel", tau=0.3, eval_rule="sample_mean", eval_samples=1000).eval()
    sampled = mean_head.probs(mean_head(feats))
    # Monte Carlo reference: 1000 soft samples drawn here from another generator
    g = torch.Generator().manual_seed(123)
    draws = -torch.empty(1000, *z.shape).exponential_(generator=g).log()
    reference = torch.softmax((z + draws) / 0.3, -1).mean(0)
    assert (sampled - reference).abs().max() < 0.05
    assert check_probs(sampled) and torch.equal(sampled, mean_head.probs(mean_head(feats)))  # seeded
    # an image's p does not depend on its batch: the same images in another order and batch size
    order = torch.randperm(64)
    alone = torch.cat([mean_head.probs(mean_head(chunk)) for chunk in feats[order].split(7)])
    torch.testing.assert_close(alone, sampled[order])
    s = mean_head(feats)
    y = torch.arange(64) % 5
    torch.testing.assert_close(mean_head.loss(s, y), F.nll_loss(mean_head.log_probs(s), y))
    notes = {rule: h.temperature_note for rule, h in heads.items()}
    assert len(set(notes.values())) == 3 and "tau T" in notes["tau"]


def test_gumbel_sample_options_apply_to_the_sample_mean_rule_only():
    with pytest.raises(ValueError, match="eval_rule=sample_mean only"):
        HeadConfig(name="gumbel", eval_samples=8)
    assert HeadConfig(name="gumbel", eval_rule="sample_mean", eval_samples=8).eval_samples == 8


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


def test_every_class_attribute_a_head_declares_is_read_by_the_library():
    # A flag a head sets that nothing reads is an option accepted and ignored (applies_softmax
    # and expects_log_probs were, once the linter took over the pitfall warnings): every
    # ClassVar of Head must be read as an attribute (``head.<name>``) somewhere in the package.
    flags = [n for n, a in inspect.get_annotations(Head).items() if str(a).startswith("ClassVar")]
    assert {"temperature_scalable", "uses_fc", "maps_logits"} <= set(flags)
    source = "\n".join(p.read_text() for p in Path(softmaxlab.__file__).parent.rglob("*.py"))
    unread = [n for n in flags if not re.search(rf"\.{n}\b", source)]
    assert not unread, f"Head declares {unread}, which nothing reads: remove them or use them"
