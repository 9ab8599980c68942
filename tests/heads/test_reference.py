"""Each head against a reference: torch's own functions, a formula written here, or brute force."""

import math

import pytest
import torch
import torch.nn.functional as F

from softmaxlab.config import HeadConfig
from softmaxlab.errors import UserError
from softmaxlab.heads import build_head
from softmaxlab.heads.adaptive import default_cutoffs
from softmaxlab.heads.gumbel import annealed_tau, gumbel_softmax_sample
from softmaxlab.heads.hierarchical import balanced_groups
from softmaxlab.heads.pitfalls import double_softmax_floor

from ..conftest import tiny_config


def make(name, f=6, k=5, coarse_of=None, **options):
    torch.manual_seed(0)
    return build_head(HeadConfig(name=name, **options), f, k, coarse_of)


# --------------------------------------------------------------------------- pitfalls


def test_double_softmax_loss_is_cross_entropy_of_softmax_outputs():
    head = make("double_softmax")
    feats, y = torch.randn(8, 6), torch.arange(8) % 5
    p = head(feats)
    torch.testing.assert_close(p, torch.softmax(head.fc(feats), -1))
    torch.testing.assert_close(head.loss(p, y), F.cross_entropy(torch.softmax(head.fc(feats), -1), y))
    torch.testing.assert_close(head.probs(p), p)


@pytest.mark.parametrize("k", [2, 6, 100])
def test_double_softmax_loss_never_goes_below_its_floor(k):
    floor = double_softmax_floor(k)
    assert floor == pytest.approx(math.log(1 + (k - 1) / math.e))
    head = make("double_softmax", k=k)
    y = torch.arange(64) % k
    for scale in (1.0, 10.0, 1e4):
        z = scale * torch.randn(64, k)
        per_sample = F.cross_entropy(torch.softmax(z, -1), y, reduction="none")
        assert per_sample.min() >= floor - 1e-5
        assert head.loss(torch.softmax(z, -1), y) >= floor - 1e-5
    # The floor is reached by a confident, correct network.
    z = 1e4 * F.one_hot(y, k).float()
    assert head.loss(torch.softmax(z, -1), y).item() == pytest.approx(floor, abs=1e-5)


def test_double_softmax_floor_values_from_the_issue():
    assert round(double_softmax_floor(6), 2) == 1.04
    assert round(double_softmax_floor(100), 2) == 3.62


def test_naive_softmax_matches_softmax_for_small_logits():
    head = make("naive_softmax")
    z, y = torch.randn(8, 5), torch.arange(8) % 5
    torch.testing.assert_close(head.probs(z), torch.softmax(z, -1))
    torch.testing.assert_close(head.loss(z, y), F.cross_entropy(z, y))


def test_naive_softmax_overflows():
    head = make("naive_softmax")
    z = torch.tensor([[1e4, -1e4, 0.0, 5e3, -5e3], [100.0, 0.0, 0.0, 0.0, 0.0]])
    assert not torch.isfinite(head.probs(z)).all()
    assert not torch.isfinite(head.loss(z, torch.tensor([0, 0])))
    # The stable head is fine on the same logits.
    assert torch.isfinite(make("softmax").loss(z, torch.tensor([0, 0])))


# --------------------------------------------------------------------------- temperature


def test_temperature_matches_torch_softmax_of_scaled_logits():
    head = make("temperature", temperature=2.5)
    feats, y = torch.randn(8, 6), torch.arange(8) % 5
    z = head.fc(feats)
    s = head(feats)
    torch.testing.assert_close(head.probs(s), torch.softmax(z / 2.5, -1))
    torch.testing.assert_close(head.loss(s, y), F.cross_entropy(z / 2.5, y))
    assert [n for n, _ in head.named_parameters()] == ["fc.weight", "fc.bias"]  # T is fixed
    assert head.epoch_record() == {"head_temperature": pytest.approx(2.5)}


def test_learned_temperature_is_a_positive_parameter_with_a_gradient():
    head = make("temperature", temperature=2.0, learn_temperature=True)
    assert isinstance(head.log_temperature, torch.nn.Parameter)
    assert head.temperature.item() == pytest.approx(2.0)
    head.loss(head(torch.randn(8, 6)), torch.arange(8) % 5).backward()
    assert head.log_temperature.grad is not None and head.log_temperature.grad != 0
    with torch.no_grad():
        head.log_temperature.fill_(-30.0)  # any real log T is a positive T
    assert head.temperature.item() > 0


# --------------------------------------------------------------------------- gumbel


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_sample_matches_torch_with_the_same_noise(hard):
    z = torch.randn(8, 5)
    torch.manual_seed(3)
    ref = F.gumbel_softmax(z, tau=0.7, hard=hard)
    torch.manual_seed(3)
    ours = gumbel_softmax_sample(z, 0.7, hard=hard)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_head_training_loss_is_nll_of_the_soft_sample(hard):
    head = make("gumbel", tau=0.7).train()
    feats, y = torch.randn(8, 6), torch.arange(8) % 5
    torch.manual_seed(3)
    scores = head(feats)
    loss = head.loss(scores, y)
    torch.manual_seed(3)
    soft = F.gumbel_softmax(head.fc(feats), tau=0.7, hard=False)
    torch.testing.assert_close(loss, F.nll_loss(soft.log(), y))
    torch.manual_seed(3)
    torch.testing.assert_close(head.sample(scores, hard), F.gumbel_softmax(head.fc(feats), tau=0.7, hard=hard))


def test_gumbel_hard_sample_is_one_hot_forward_with_soft_gradients():
    head = make("gumbel")
    z = torch.randn(4, 5, requires_grad=True)
    y = head.sample(z, hard=True)
    assert torch.equal(y.detach(), F.one_hot(z.argmax(-1), 5).float())
    (y * torch.arange(5.0)).sum().backward()
    soft_grad = torch.autograd.grad((torch.softmax(z, -1) * torch.arange(5.0)).sum(), z)[0]
    torch.testing.assert_close(z.grad, soft_grad)


def test_gumbel_evaluation_is_the_noiseless_tempered_softmax():
    head = make("gumbel", tau=0.5).eval()
    feats = torch.randn(8, 6)
    torch.testing.assert_close(head.probs(head(feats)), torch.softmax(head.fc(feats) / 0.5, -1))
    torch.testing.assert_close(head(feats), head(feats))  # no noise


def test_gumbel_tau_anneals_exponentially_to_its_floor():
    head = make("gumbel", tau=2.0, tau_schedule="exponential", tau_min=0.3, anneal_rate=0.01)
    assert head.epoch_record() == {"tau": 2.0}
    head.step_update(100, 1000)
    assert head.epoch_record()["tau"] == pytest.approx(2.0 * math.exp(-1.0))
    assert head.epoch_record()["tau"] == pytest.approx(annealed_tau(100, 2.0, 0.3, 0.01))
    head.step_update(10_000, 20_000)
    assert head.epoch_record()["tau"] == pytest.approx(0.3)
    assert head.state_dict()["tau"].item() == pytest.approx(0.3)  # saved with the weights
    constant = make("gumbel", tau=2.0)
    constant.step_update(10_000, 20_000)
    assert constant.epoch_record()["tau"] == 2.0


def test_gumbel_tau_must_be_positive():
    with pytest.raises(ValueError, match="greater than 0"):
        HeadConfig(name="gumbel", tau=0)
    with pytest.raises(UserError, match=r"head\.tau"):
        tiny_config("head.name=gumbel", "head.tau=-1")


# --------------------------------------------------------------------------- sparse heads


def sparsemax_by_sorting(z):
    """Martins & Astudillo (2016): sort, find the support size k(z), threshold, clip."""
    zs, _ = torch.sort(z, dim=-1, descending=True)
    ks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cumsum = zs.cumsum(-1)
    support = 1 + ks * zs > cumsum  # (B, K), True for the first k(z) sorted entries
    k = support.sum(-1, keepdim=True)
    tau = (cumsum.gather(-1, k - 1) - 1) / k
    return torch.clamp(z - tau, min=0)


def test_sparsemax_matches_the_sort_based_formula():
    head = make("sparsemax")
    z = 3 * torch.randn(16, 5)
    p = head.probs(z)
    torch.testing.assert_close(p, sparsemax_by_sorting(z))
    assert (p == 0).any()  # sparse: exact zeros
    assert torch.isneginf(head.log_probs(z)).any()


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_sparse_losses_vanish_with_a_large_enough_margin(name):
    head = make(name)
    y = torch.arange(8) % 5
    z = 10.0 * F.one_hot(y, 5).float()
    assert head.loss(z, y).item() == pytest.approx(0.0, abs=1e-6)
    assert head.loss(torch.randn(8, 5), y) > 0


def test_entmax15_satisfies_its_closed_form():
    # p_k = max(0, z_k / 2 - t)^2 with one threshold t per row.
    head = make("entmax15")
    z = 3 * torch.randn(16, 5, dtype=torch.float64)
    p = head.probs(z)
    t = z / 2 - p.sqrt()  # the threshold, on the support
    on = p > 0
    t_max = torch.where(on, t, -torch.inf).amax(-1, keepdim=True)
    t_min = torch.where(on, t, torch.inf).amin(-1, keepdim=True)
    assert (t_max - t_min).max() < 1e-8
    assert (z / 2 <= t_max + 1e-8)[~on].all() and (~on).any()


# --------------------------------------------------------------------------- sigmoid


def test_sigmoid_probs_are_normalised_sigmoids_and_loss_is_bce():
    head = make("sigmoid")
    z, y = torch.randn(8, 5), torch.arange(8) % 5
    q = torch.sigmoid(z)
    torch.testing.assert_close(head.probs(z), q / q.sum(-1, keepdim=True))
    expected = F.binary_cross_entropy_with_logits(z, F.one_hot(y, 5).float(), reduction="none").sum(-1).mean()
    torch.testing.assert_close(head.loss(z, y), expected)
    torch.testing.assert_close(head.predict(z), q.argmax(-1))


# --------------------------------------------------------------------------- hierarchical


def brute_force_hierarchical(head, feats):
    """p(k) = softmax(c)[g(k)] * exp(z_k) / sum_{j: g(j) = g(k)} exp(z_j), class by class."""
    c = torch.softmax(head.coarse(feats), -1)
    z = head.fc(feats)
    group = head.group_of.tolist()
    out = torch.zeros_like(z)
    for k in range(z.shape[1]):
        same = [j for j in range(z.shape[1]) if group[j] == group[k]]
        out[:, k] = c[:, group[k]] * z[:, k].exp() / z[:, same].exp().sum(-1)
    return out


@pytest.mark.parametrize("coarse_of", [None, [1, 0, 1, 1, 2, 0, 2]])
def test_hierarchical_matches_brute_force(coarse_of):
    cof = None if coarse_of is None else torch.tensor(coarse_of)
    head = make("hierarchical", k=7, coarse_of=cof)
    feats, y = torch.randn(16, 6, dtype=torch.float64), torch.arange(16) % 7
    head = head.double()
    ref = brute_force_hierarchical(head, feats)
    torch.testing.assert_close(head.probs(head(feats)), ref)
    torch.testing.assert_close(head.loss(head(feats), y), -ref[torch.arange(16), y].log().mean())
    if coarse_of is not None:
        assert head.group_of.tolist() == coarse_of


def test_hierarchical_default_groups_are_balanced_around_sqrt_k():
    groups = balanced_groups(100)
    assert groups.max().item() + 1 == 10
    assert torch.bincount(groups).tolist() == [10] * 10
    sizes = torch.bincount(balanced_groups(23))
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 1
    assert make("hierarchical", k=23).num_groups == 5


def test_hierarchical_coarse_accuracy_and_its_epoch_record():
    coarse_of = torch.tensor([0, 0, 1, 1, 1])
    head = make("hierarchical", coarse_of=coarse_of)
    feats, y = torch.randn(32, 6), torch.arange(32) % 5
    acc = head.coarse_accuracy(head(feats), y)
    expected = (torch.softmax(head.coarse(feats), -1).argmax(-1) == coarse_of[y]).float().mean()
    torch.testing.assert_close(acc, expected)
    head.eval()
    with torch.no_grad():
        head.loss(head(feats[:20]), y[:20])
        head.loss(head(feats[20:]), y[20:])
    assert head.epoch_record() == {"val_coarse_acc": pytest.approx(acc.item())}
    assert head.epoch_record() == {}  # read once
    head.train()
    head.loss(head(feats), y)
    assert head.epoch_record() == {}  # training batches are not tallied


def test_hierarchical_rejects_a_wrong_hierarchy():
    with pytest.raises(ValueError, match="coarse_of"):
        make("hierarchical", coarse_of=torch.tensor([0, 1, 1]))


# --------------------------------------------------------------------------- adaptive


def test_adaptive_matches_torch_log_prob():
    head = make("adaptive", f=8, k=40)
    feats, y = torch.randn(16, 8), torch.arange(16) * 5 % 40
    scores = head(feats)
    torch.testing.assert_close(head.log_probs(scores), head.asm.log_prob(feats))
    torch.testing.assert_close(head.loss(scores, y), head.asm(feats, y).loss)
    torch.testing.assert_close(head.loss(scores, y), F.nll_loss(head.log_probs(scores), y))
    assert head.asm.cutoffs == [*default_cutoffs(40), 40] == [2, 10, 40]
    assert head.fc is None


def test_adaptive_cutoffs_are_configurable_and_checked():
    head = make("adaptive", k=40, cutoffs=[5, 20])
    assert head.asm.cutoffs == [5, 20, 40]
    with pytest.raises(UserError, match=r"head\.cutoffs"):
        make("adaptive", k=10, cutoffs=[5, 20])
    with pytest.raises(UserError, match=r"head\.cutoffs"):
        tiny_config("head.name=adaptive", "head.cutoffs=[20,5]")


# --------------------------------------------------------------------------- head options


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["head.tau=0.5"], "gumbel only"),
        (["head.name=temperature", "head.tau_schedule=exponential"], "gumbel only"),
        (["head.name=gumbel", "head.hard=true"], "was removed: it changed neither training nor evaluation"),
        (["head.name=gumbel", "head.temperature=2"], "temperature only"),
        (["head.cutoffs=[2]"], "adaptive only"),
        (["head.name=gumbel", "head.anneal_rate=0.1"], "exponential only"),
    ],
)
def test_options_the_head_would_ignore_are_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        tiny_config(*overrides)


def test_options_of_the_chosen_head_are_accepted():
    cfg = tiny_config("head.name=gumbel", "head.tau=0.5", "head.tau_schedule=exponential", "head.tau_min=0.1")
    assert (cfg.head.tau, cfg.head.tau_min) == (0.5, 0.1)
