"""The softmax linter's engine: a corpus of small models with and without each pitfall."""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parameter import is_lazy

import softmaxlab
from softmaxlab.activations import build_activation
from softmaxlab.config import load_config
from softmaxlab.errors import UserError
from softmaxlab.heads import DoubleSoftmaxWarning, SoftmaxNLLWarning
from softmaxlab.heads.check import SoftmaxPitfallWarning
from softmaxlab.linting import KINDS, Finding, _origin, has_errors, lint, warn_findings
from softmaxlab.models import build_model
from softmaxlab.models.external import call_factory, load_factory
from softmaxlab.train import fit

from .conftest import TINY

K = 5  # classes of every model here


def features() -> nn.Sequential:
    """(B, 3, 32, 32) -> (B, 8)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Net(nn.Module):
    """features -> linear -> ``end`` (a function of the logits), called in the model's own forward."""

    def __init__(self, end=lambda z: z) -> None:
        super().__init__()
        self.features, self.fc, self.end = features(), nn.Linear(8, K), end

    def forward(self, x):
        return self.end(self.fc(self.features(x)))


def sequential(*tail: nn.Module) -> nn.Sequential:
    return nn.Sequential(features(), nn.Linear(8, K), *tail)


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


# --------------------------------------------------------------------------- the loss pairings


@pytest.mark.parametrize(
    ("model", "where"),
    [
        (sequential(nn.Softmax(dim=1)), "2"),  # an nn.Softmax module
        (Net(lambda z: F.softmax(z, dim=1)), "F.softmax"),  # functional, in the model's own forward
        (Net(lambda z: z.softmax(-1)), "Tensor.softmax"),  # a tensor method
        (Net(lambda z: torch.softmax(z, 1).float().view(-1, K)), "torch.softmax"),  # .float() and a view hide grad_fn
        (Net(lambda z: F.dropout(torch.softmax(z, 1), 0.1)), "torch.softmax"),
    ],
)
def test_double_softmax_is_found_however_the_softmax_is_written(model, where):
    result = lint(model, nn.CrossEntropyLoss())
    assert kinds(result) == ["double_softmax"] and has_errors(result)
    f = result[0]
    assert (
        f.where == where and "double-softmax pitfall" in f.message and "ln(1 + (K-1)/e) = 0.90 for K = 5" in f.message
    )
    assert "logits" in f.fix
    assert f.source.startswith("test_linting.py:") or where == "2"  # nn.Sequential: torch's own code calls it


def test_a_functional_cross_entropy_in_a_loss_function_is_seen():
    result = lint(sequential(nn.Softmax(dim=-1)), lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1))
    assert kinds(result) == ["double_softmax"]


def test_softmax_into_nll_and_its_fixes():
    assert kinds(lint(sequential(nn.Softmax(dim=1)), nn.NLLLoss())) == ["softmax_into_nll"]
    assert "softmax-into-NLL" in lint(sequential(nn.Softmax(dim=1)), nn.NLLLoss())[0].message
    assert kinds(lint(Net(lambda z: z.sigmoid()), nn.NLLLoss())) == ["softmax_into_nll"]  # probabilities too
    assert lint(sequential(nn.LogSoftmax(dim=1)), nn.NLLLoss()) == []  # the correct pairing


def test_sigmoid_into_cross_entropy_and_into_bce_with_logits():
    model = sequential(nn.Sigmoid())
    assert kinds(lint(model, nn.CrossEntropyLoss())) == ["sigmoid_into_cross_entropy"]
    double = lint(model, nn.BCEWithLogitsLoss())  # float targets of the output's shape, found by trying
    assert kinds(double) == ["sigmoid_into_bce_with_logits"] and "double sigmoid" in double[0].message
    assert lint(model, nn.BCELoss()) == []  # probabilities are what BCELoss takes
    assert lint(sequential(), nn.BCEWithLogitsLoss()) == []


def test_probabilities_into_bce_with_logits_and_kl_div():
    assert kinds(lint(sequential(nn.Softmax(dim=1)), nn.BCEWithLogitsLoss())) == ["softmax_into_bce_with_logits"]
    teacher = torch.full((2, K), 1 / K)
    distil = lint(sequential(nn.Softmax(dim=1)), lambda p, y: F.kl_div(p, teacher, reduction="batchmean"))
    assert kinds(distil) == ["softmax_into_kl_div"]
    assert lint(sequential(nn.LogSoftmax(dim=1)), lambda p, y: F.kl_div(p, teacher, reduction="batchmean")) == []


def test_log_softmax_into_cross_entropy_is_a_harmless_note():
    result = lint(sequential(nn.LogSoftmax(dim=1)), nn.CrossEntropyLoss())
    assert kinds(result) == ["log_softmax_into_cross_entropy"] and not has_errors(result)
    assert "harmless" in result[0].message and result[0].severity == "note"


@pytest.mark.parametrize(
    "end",
    [
        lambda z: torch.log(F.softmax(z, dim=1)),
        lambda z: z.softmax(1).log(),
        lambda z: torch.log(z.softmax(1) + 1e-8),  # an epsilon only hides it
        lambda z: z.softmax(1).clamp(min=1e-12).log(),
    ],
)
def test_log_of_softmax_is_a_warning_and_its_output_counts_as_log_probabilities(end):
    result = lint(Net(end), nn.NLLLoss())
    assert kinds(result) == ["log_of_softmax"] and "log_softmax" in result[0].fix
    assert kinds(lint(Net(end), nn.CrossEntropyLoss())) == ["log_of_softmax", "log_softmax_into_cross_entropy"]


def test_log_of_sigmoid():
    result = lint(Net(lambda z: torch.log(torch.sigmoid(z))), lambda out, y: -out.mean())
    assert kinds(result) == ["log_of_sigmoid"] and "logsigmoid" in result[0].fix


def test_softmax_over_the_batch_and_over_a_single_value():
    over_batch = lint(sequential(nn.Softmax(dim=0)), nn.NLLLoss())
    assert kinds(over_batch) == ["softmax_over_batch", "softmax_into_nll"]
    assert "the batch" in over_batch[0].message
    one_logit = nn.Sequential(features(), nn.Linear(8, 1), nn.Softmax(dim=1))
    constant = lint(one_logit, lambda p, y: F.binary_cross_entropy(p.squeeze(1), y.float()), target=torch.ones(2))
    assert kinds(constant) == ["constant_softmax"] and "BCEWithLogitsLoss" in constant[0].fix


def test_a_softmax_output_without_a_loss_is_a_note():
    result = lint(sequential(nn.Softmax(dim=1)))
    assert kinds(result) == ["softmax_output"] and result[0].where == "2"
    assert lint(sequential()) == []


# --------------------------------------------------------------------------- softmax inside the network


class Hidden(nn.Module):
    """conv -> ``act`` -> conv -> pool -> linear."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv1, self.act, self.conv2 = nn.Conv2d(3, 4, 3), act, nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, K)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.conv2(self.act(self.conv1(x))), 1).flatten(1))


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    ("act", "axes"),
    [
        (build_activation("softmax_h"), "over height of a (B, C, H, W) map"),
        (build_activation("softmax_w"), "over width of a (B, C, H, W) map"),
        (build_activation("softmax_hw"), "over height and width of a (B, C, H, W) map"),
        (build_activation("softmax_c"), "over channels of a (B, C, H, W) map"),
        (Lambda(lambda x: x.flatten(2).softmax(-1).view_as(x) * 9), "over height and width of a (B, C, H, W) map"),
        (Lambda(lambda x: x.permute(0, 2, 3, 1).softmax(-1).permute(0, 3, 1, 2)), "over channels"),
        (Lambda(lambda x: F.relu(x.softmax(2)) + x), "over height of a (B, C, H, W) map"),  # mixed, still fed on
        (Lambda(lambda x: F.interpolate(x.softmax(1)[:, :, 1:], size=x.shape[2:])), "over channels of a (B, C, H, W)"),
    ],
)
def test_an_intermediate_softmax_is_found_with_its_axes(act, axes):
    result = lint(Hidden(act), nn.CrossEntropyLoss())
    assert kinds(result) == ["intermediate_softmax"]
    f = result[0]
    assert f.where == "act" and axes in f.message and "F.conv2d in Conv2d" in f.message
    assert f.severity == "warning" and "ReLU" in f.fix


def test_softmax_as_an_mlp_activation_is_intermediate_and_one_finding_per_module():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8), nn.Softmax(dim=1), nn.Linear(8, 8))
    mlp.append(nn.Softmax(dim=1)).append(nn.Linear(8, K))
    result = lint(mlp, nn.CrossEntropyLoss())
    assert [(f.kind, f.where) for f in result] == [("intermediate_softmax", "2"), ("intermediate_softmax", "4")]
    assert "over the features of a (B, F) tensor" in result[0].message


class Attention(nn.Module):
    """Patches -> nn.MultiheadAttention, scaled_dot_product_attention, a hand-written
    q @ k^T softmax (with dropout) @ v, talking heads (a linear over the heads of the maps),
    attention pooling (a spatial softmax weighting a map) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 8, 8, stride=8)  # (B, 8, 4, 4)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.qkv, self.talk, self.pool, self.fc = nn.Linear(8, 24), nn.Linear(2, 2), nn.Conv2d(8, 1, 1), nn.Linear(8, K)

    def forward(self, x):
        m = self.patches(x)
        t = m.flatten(2).transpose(1, 2)  # (B, 16, 8)
        t = t + self.mha(t, t, t, need_weights=False)[0]
        q, k, v = self.qkv(t).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)  # (B, 2 heads, 16, 4) each
        t = t + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        a = F.dropout((q @ k.transpose(-2, -1) / 2).softmax(dim=-1), 0.1, self.training)
        t = t + (a @ v).transpose(1, 2).flatten(2)
        talk = self.talk(a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # mixes the heads' maps
        t = t + torch.matmul(talk, v).transpose(1, 2).flatten(2)
        w = self.pool(m).flatten(2).softmax(-1)  # (B, 1, 16) over the positions
        pooled = (m.flatten(2) * w).sum(-1)  # (B, 8)
        return self.fc(t.mean(1) + pooled)


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc1, self.fc2, self.head = nn.Conv2d(3, 8, 3), nn.Linear(8, 4), nn.Linear(4, 8), nn.Linear(8, K)

    def forward(self, x):
        m = F.gelu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(m.mean((2, 3))))))  # (B, 8)
        m = m * s[:, :, None, None]
        return self.head(F.adaptive_avg_pool2d(m, 1).flatten(1))


class SoftmaxOnlyForInference(nn.Module):
    """Logits in training, probabilities in eval: evaluation that normalises the outputs does it twice."""

    def __init__(self) -> None:
        super().__init__()
        self.net = sequential()

    def forward(self, x):
        z = self.net(x)
        return z if self.training else z.softmax(-1)


@pytest.mark.parametrize(
    ("model", "loss"),
    [
        (Attention(), nn.CrossEntropyLoss()),
        (SqueezeExcite(), nn.CrossEntropyLoss()),
        (Hidden(nn.GELU()), nn.CrossEntropyLoss()),
        (Hidden(build_activation("relu")), nn.CrossEntropyLoss()),
        (sequential(nn.LogSoftmax(dim=1)), nn.NLLLoss()),
        (sequential(), nn.BCEWithLogitsLoss()),
    ],
    ids=["attention", "squeeze_excite", "gelu", "relu", "log_softmax_nll", "bce_logits"],
)
def test_clean_models_have_no_findings(model, loss):
    assert lint(model, loss) == []


@pytest.fixture(scope="module")
def library_models():
    timm = pytest.importorskip("timm")
    import torchvision

    return {
        "timm:vit_tiny_patch16_224": timm.create_model(
            "vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=K
        ),
        "timm:resnet18": timm.create_model("resnet18", num_classes=K),
        "torchvision:resnet18": torchvision.models.resnet18(num_classes=K),
        "torchvision:mobilenet_v3_small": torchvision.models.mobilenet_v3_small(num_classes=K),  # SE blocks
        "torchvision:efficientnet_b0": torchvision.models.efficientnet_b0(num_classes=K),
    }


@pytest.mark.parametrize(
    "name",
    [
        "timm:vit_tiny_patch16_224",
        "timm:resnet18",
        "torchvision:resnet18",
        "torchvision:mobilenet_v3_small",
        "torchvision:efficientnet_b0",
    ],
)
def test_library_classifiers_are_clean(library_models, name):
    assert lint(library_models[name], nn.CrossEntropyLoss()) == []


# --------------------------------------------------------------------------- the contract around it


#: One planted pitfall of each kind: (kind, model, loss).
PLANTED = [
    ("double_softmax", lambda: sequential(nn.Softmax(dim=1)), nn.CrossEntropyLoss()),
    ("softmax_into_nll", lambda: sequential(nn.Softmax(dim=1)), nn.NLLLoss()),
    ("sigmoid_into_cross_entropy", lambda: sequential(nn.Sigmoid()), nn.CrossEntropyLoss()),
    ("sigmoid_into_bce_with_logits", lambda: sequential(nn.Sigmoid()), nn.BCEWithLogitsLoss()),
    ("softmax_into_bce_with_logits", lambda: sequential(nn.Softmax(dim=1)), nn.BCEWithLogitsLoss()),
    ("softmax_into_kl_div", lambda: sequential(nn.Softmax(dim=1)), nn.KLDivLoss(reduction="batchmean")),
    ("logits_into_nll", lambda: sequential(), nn.NLLLoss()),
    ("softmax_over_batch", lambda: sequential(nn.Softmax(dim=0)), None),
    ("constant_softmax", lambda: nn.Sequential(features(), nn.Linear(8, 1), nn.Softmax(dim=1)), None),
    ("probabilities_in_eval", lambda: SoftmaxOnlyForInference(), nn.CrossEntropyLoss()),
    ("log_of_softmax", lambda: Net(lambda z: z.softmax(1).log()), nn.NLLLoss()),
    ("log_of_sigmoid", lambda: Net(lambda z: z.sigmoid().log()), None),
    ("intermediate_softmax", lambda: Hidden(build_activation("softmax_hw")), nn.CrossEntropyLoss()),
    ("log_probabilities_in_eval", lambda: Net(lambda z: z if torch.is_grad_enabled() else z.log_softmax(1)), None),
    ("log_softmax_into_cross_entropy", lambda: sequential(nn.LogSoftmax(dim=1)), nn.CrossEntropyLoss()),
    ("softmax_output", lambda: sequential(nn.Softmax(dim=1)), None),
]


def test_every_kind_has_a_planted_case():
    assert [kind for kind, _, _ in PLANTED] == list(KINDS)


@pytest.mark.parametrize(("kind", "make", "loss"), PLANTED, ids=[p[0] for p in PLANTED])
def test_every_kind_is_found_where_it_is_planted(kind, make, loss):
    result = lint(make(), loss)
    assert kind in kinds(result)
    f = next(f for f in result if f.kind == kind)
    assert f.severity == KINDS[kind] and f.message and f.fix and f.where


def test_lint_leaves_the_model_and_the_random_state_as_they_were():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(K))
    model(torch.zeros(2, 3, 32, 32))
    model.eval()
    model[2].train()  # a module left in its own mode stays in it
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    lint(model, nn.CrossEntropyLoss())
    after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(1))
    assert [m.training for m in model] == [False, False, True, False, False]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_outputs_in_a_tuple_or_a_dict_are_linted():
    class Two(nn.Module):
        def __init__(self, wrap) -> None:
            super().__init__()
            self.net, self.wrap = sequential(nn.Softmax(dim=1)), wrap

        def forward(self, x):
            return self.wrap(self.net(x))

    assert kinds(lint(Two(lambda p: (p, p.detach())), nn.CrossEntropyLoss())) == ["double_softmax"]
    assert kinds(lint(Two(lambda p: {"aux": 0, "logits": p}), nn.CrossEntropyLoss())) == ["double_softmax"]


def test_bad_models_and_losses_are_user_errors():
    with pytest.raises(UserError, match=r"fails on a batch of shape \(2, 1, 32, 32\).*--input-shape"):
        lint(sequential(), example=torch.randn(2, 1, 32, 32))
    with pytest.raises(UserError, match="returned a str"):
        lint(Lambda(lambda x: "no tensor"))
    with pytest.raises(UserError, match=r"loss cannot be called.*TypeError"):
        lint(sequential(), nn.TripletMarginLoss())


def test_findings_become_warnings_of_the_pitfall_classes():
    double = lint(sequential(nn.Softmax(dim=1)), nn.CrossEntropyLoss())
    nll = lint(sequential(nn.Softmax(dim=1)), nn.NLLLoss())
    hidden = lint(Hidden(build_activation("softmax_hw")), nn.CrossEntropyLoss())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_findings([*double, *nll, *hidden])
    assert [w.category for w in caught] == [DoubleSoftmaxWarning, SoftmaxNLLWarning, SoftmaxPitfallWarning]
    assert str(caught[0].message).startswith("double_softmax (error) at 2: ")
    assert all(".py:" not in str(w.message) for w in caught)  # one line for the CLI, no source line


def test_the_public_api():
    assert softmaxlab.lint is lint and softmaxlab.Finding is Finding
    f = Finding("a", "b", "head", "m", "f")
    assert list(f.to_dict()) == ["kind", "severity", "where", "message", "fix", "source"]  # the JSON's keys, in order
    assert f.to_dict()["source"] == "" and str(f) == "a (b) at head: m; fix: f"


# --------------------------------------------------------------------------- from an outside review


def label_smoothing_cross_entropy(output, target, smoothing=0.1):
    """Label-smoothing cross-entropy written with log_softmax, as timm's LabelSmoothingCrossEntropy is."""
    logp = F.log_softmax(output, dim=-1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    return ((1 - smoothing) * nll - smoothing * logp.mean(-1)).mean()


def test_a_loss_that_takes_log_softmax_of_probabilities_is_a_double_softmax():
    findings = lint(sequential(nn.Softmax(dim=1)), label_smoothing_cross_entropy)
    assert kinds(findings) == ["double_softmax"] and "F.log_softmax" in findings[0].message
    assert lint(sequential(), label_smoothing_cross_entropy) == []  # on logits it is a correct loss


class InferenceSoftmax(Net):
    """Softmax only where no gradient is taken: probabilities where evaluation runs it."""

    def forward(self, x):
        z = super().forward(x)
        return z if torch.is_grad_enabled() else z.softmax(1)


def test_the_model_is_run_with_gradients_on_as_the_loss_sees_it_in_training():
    # No double_softmax (the loss sees logits); the evaluation's forward, without gradients, sees probabilities.
    assert kinds(lint(InferenceSoftmax(), nn.CrossEntropyLoss())) == ["probabilities_in_eval"]


def test_scaled_probabilities_are_a_double_softmax_without_the_floor_of_exact_ones():
    (exact,) = lint(Net(lambda z: z.softmax(1)), nn.CrossEntropyLoss())
    (scaled,) = lint(Net(lambda z: 100 * z.softmax(1)), nn.CrossEntropyLoss())
    assert exact.kind == scaled.kind == "double_softmax"
    assert "loss stuck above" in exact.message and "loss stuck above" not in scaled.message


def test_logits_into_nll_is_found_from_the_values_and_hand_written_log_probabilities_pass():
    assert kinds(lint(sequential(), nn.NLLLoss())) == ["logits_into_nll"]
    assert lint(Net(lambda z: z - z.logsumexp(1, keepdim=True)), nn.NLLLoss()) == []
    assert lint(sequential(nn.LogSoftmax(dim=1)), nn.NLLLoss()) == []


# --------------------------------------------------------------------------- eval mode


def line_of(obj, text: str) -> int:
    """The line of ``obj``'s source (in this file) that holds ``text``."""
    lines, start = inspect.getsourcelines(obj)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_probabilities_only_in_eval_mode_are_an_error():
    result = lint(SoftmaxOnlyForInference(), nn.CrossEntropyLoss())
    assert kinds(result) == ["probabilities_in_eval"] and has_errors(result)
    f = result[0]
    assert f.where == "Tensor.softmax" and "in eval mode the model outputs softmax probabilities" in f.message
    assert "outputs logits" in f.message and "model.user_head: none" in f.message and "logits" in f.fix
    assert f.source == f"test_linting.py:{line_of(SoftmaxOnlyForInference.forward, 'softmax(-1)')}"
    assert lint(SoftmaxOnlyForInference().eval(), nn.CrossEntropyLoss()) == result  # whichever mode it is left in
    sigmoid = Net(lambda z: z if torch.is_grad_enabled() else torch.sigmoid(z))
    assert kinds(lint(sigmoid, nn.CrossEntropyLoss())) == ["probabilities_in_eval"]
    log_then_p = Net(lambda z: F.log_softmax(z, 1) if torch.is_grad_enabled() else F.softmax(z, 1))
    assert kinds(lint(log_then_p, nn.NLLLoss())) == ["probabilities_in_eval"]


class LogSoftmaxOn(nn.Module):
    """``F.log_softmax`` of what ``net`` outputs, as softmaxlab's log_softmax head with ``model.user_head: none``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return F.log_softmax(self.net(x), dim=-1)


def test_a_normaliser_of_eval_only_probabilities_is_found_at_the_probabilities():
    # log-probabilities in both modes, but in eval mode those of probabilities: normalised twice
    result = lint(LogSoftmaxOn(SoftmaxOnlyForInference()), nn.NLLLoss())
    assert kinds(result) == ["probabilities_in_eval"]
    assert result[0].where == "net"
    assert "(Tensor.softmax in SoftmaxOnlyForInference, then F.log_softmax" in result[0].message
    assert lint(LogSoftmaxOn(sequential()), nn.NLLLoss()) == []


def test_log_probabilities_only_in_eval_mode_are_a_warning():
    result = lint(Net(lambda z: z if torch.is_grad_enabled() else F.log_softmax(z, 1)), nn.CrossEntropyLoss())
    assert kinds(result) == ["log_probabilities_in_eval"] and not has_errors(result)
    assert "softmax(log_softmax(z)) = softmax(z)" in result[0].message and "sigmoid" in result[0].message


def test_the_same_values_in_both_modes_are_no_eval_finding():
    assert kinds(lint(sequential(nn.Softmax(dim=1)), nn.CrossEntropyLoss())) == ["double_softmax"]  # training's rule
    assert kinds(lint(sequential(nn.Softmax(dim=1)))) == ["softmax_output"]
    assert lint(sequential(nn.LogSoftmax(dim=1)), nn.NLLLoss()) == []
    assert lint(Net(lambda z: z if torch.is_grad_enabled() else z / 2), nn.CrossEntropyLoss()) == []  # logits both


class FailsInEval(Net):
    def forward(self, x):
        if not self.training:
            raise RuntimeError("no eval path")
        return super().forward(x)


def test_a_model_that_fails_in_eval_mode_is_a_user_error():
    with pytest.raises(UserError, match=r"fails in eval mode on a batch of shape \(2, 3, 32, 32\).*no eval path"):
        lint(FailsInEval(), nn.CrossEntropyLoss())


EVAL_SOFTMAX = """
from torch import nn


class EvalSoftmax(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        z = self.net(x)
        return z if self.training else z.softmax(-1)  # probabilities for inference, as user code often has it
"""


def user_config(spec: str, *overrides: str):
    """The tiny config (without the built-in CNN's widths) for the factory ``spec``, its own logits as the logits."""
    tiny = [o for o in TINY if not o.startswith("model.widths")]
    return load_config(None, [*tiny, f"model.name={spec}", "model.user_head=none", *overrides])


def test_fit_warns_about_a_user_model_with_probabilities_in_eval_mode(tmp_path):
    (tmp_path / "evalnet.py").write_text(EVAL_SOFTMAX)
    spec = f"{tmp_path / 'evalnet.py'}:EvalSoftmax"
    cfg = user_config(spec, "train.epochs=1", "data.train_size=64", "diagnostics.enabled=false")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(cfg, tmp_path / "run")
    pitfalls = [str(w.message) for w in caught if issubclass(w.category, SoftmaxPitfallWarning)]
    assert len(pitfalls) == 1 and pitfalls[0].startswith("probabilities_in_eval (error) at backbone.net: ")
    assert [w.category for w in caught if str(w.message) == pitfalls[0]] == [DoubleSoftmaxWarning]
    model = build_model(user_config(spec, "head.name=log_softmax"), 3, 4)  # the head's log_softmax on them
    assert kinds(lint(model, model.head.loss)) == ["probabilities_in_eval"]


# --------------------------------------------------------------------------- the model stays as it was


def test_lint_leaves_a_model_in_training_mode_and_its_batch_norm_statistics_as_they_were():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.append(nn.Linear(4, K))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lint(model, nn.CrossEntropyLoss())  # a training-mode forward would update the statistics, and count it
    assert all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert int(model[1].num_batches_tracked) == 0
    inference = SoftmaxOnlyForInference()
    lint(inference, nn.CrossEntropyLoss())  # after its eval-mode forward too
    assert all(m.training for m in inference.modules())


def test_lint_leaves_a_lazy_model_lazy():
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.append(nn.LazyLinear(K)).append(nn.Softmax(dim=1))
    assert kinds(lint(model, nn.CrossEntropyLoss())) == ["double_softmax"]  # linted on a copy
    assert [type(model[i]).__name__ for i in (0, 1, 5)] == ["LazyConv2d", "LazyBatchNorm2d", "LazyLinear"]
    assert all(is_lazy(t) for t in (*model.parameters(), model[1].running_mean, model[1].running_var))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, K) and type(model[5]) is nn.Linear  # as before lint


# --------------------------------------------------------------------------- where a finding points


FACTORY = """
from torch import nn

from softmaxlab.activations import build_activation


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.act, self.conv2 = nn.Conv2d(3, 4, 3), build_activation("softmax_hw"), nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.conv2(self.act(self.conv1(x)))  # softmaxlab's softmax activation, called here
        return self.fc(x.mean((2, 3)))


def ends_in_softmax():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), nn.Softmax(1))
"""


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "user_net.py"
    path.write_text(FACTORY)
    return path


def user_model(spec: str) -> nn.Module:
    """The factory's model as ``softmaxlab run`` builds it: softmaxlab's backbone and head around it."""
    return build_model(load_config(None, [f"model.name={spec}", "model.user_head=none", "data.num_classes=5"]), 3, 5)


def test_a_finding_points_at_the_users_line_not_into_softmaxlab(factory_file):
    line = next(i for i, text in enumerate(FACTORY.splitlines(), 1) if "softmax activation, called here" in text)
    spec = f"{factory_file}:Net"
    wrapped = user_model(spec)
    for findings in (lint(call_factory(spec, load_factory(spec))), lint(wrapped, wrapped.head.loss)):
        assert [(f.kind, f.source) for f in findings] == [("intermediate_softmax", f"user_net.py:{line}")]


def test_without_a_user_line_a_finding_points_at_the_line_that_made_the_op(factory_file):
    wrapped = user_model(f"{factory_file}:ends_in_softmax")
    [double] = lint(wrapped, wrapped.head.loss)
    # An nn.Softmax runs inside torch: no line made it (not softmaxlab's wrapper that called the network)
    assert (double.kind, double.where, double.source) == ("double_softmax", "backbone.net.4", "")
    builtin = build_model(load_config(None, ["head.name=double_softmax"]), 3, 5)
    [head] = lint(builtin, builtin.head.loss)
    assert head.where == "head" and head.source.startswith("softmaxlab/heads/pitfalls.py:")  # its own head


def test_whose_code_a_frame_is():
    timm = pytest.importorskip("timm")
    import torchvision

    assert _origin(timm.models.resnet.__file__, "timm.models.resnet") == "library"
    assert _origin(torchvision.models.resnet.__file__, "torchvision.models.resnet") == "library"
    assert _origin(softmaxlab.activations.__file__, "softmaxlab.activations") == "library"
    assert _origin(inspect.__file__, "inspect") == "library"  # the standard library
    assert _origin(F.__file__, "torch.nn.functional") == "torch"
    assert _origin(__file__, __name__) == "user"


# --------------------------------------------------------------------------- provenance through combinations


def ensemble_mean(z):
    return torch.stack([z.softmax(1), (2 * z).softmax(1)]).mean(0)


#: (model end, whether its rows are still distributions: the double softmax's floor holds).
COMBINATIONS = {
    "rows by index": (lambda z: z.softmax(1)[torch.arange(z.shape[0])], True),
    "full slice": (lambda z: z.softmax(1)[:, :K], True),
    "index_select rows": (lambda z: z.softmax(1).index_select(0, torch.tensor([1, 0])), True),
    "cat along the batch": (lambda z: torch.cat([z.softmax(1), (2 * z).softmax(1)])[: z.shape[0]], True),
    "where picks rows": (lambda z: torch.where(z[:, :1] > 0, z.softmax(1), (2 * z).softmax(1)), True),
    "ensemble mean": (ensemble_mean, True),
    "test-time augmentation": (lambda z: torch.stack([z.softmax(1), (2 * z).softmax(1)], dim=1).mean(1), True),
    "zero classes padded": (lambda z: F.pad(z.softmax(1), (0, 2)), True),
    "ensemble sum / 2": (lambda z: (z.softmax(1) + (2 * z).softmax(1)) / 2, False),
    "sum of three / 3": (lambda z: sum(F.softmax(t * z, 1) for t in (1, 2, 3)) / 3, False),
    "classes sliced": (lambda z: z.softmax(1)[:, :3], False),
    "classes narrowed": (lambda z: z.softmax(1).narrow(1, 0, 3), False),
    "one class per image": (lambda z: z.softmax(1)[:, 1:2], False),
    "cat along the classes": (lambda z: torch.cat([z.softmax(1), z.softmax(1)], 1), False),
    "where within rows": (lambda z: torch.where(z > 0, z.softmax(1), (2 * z).softmax(1)), False),
    "where with a scalar": (lambda z: torch.where(z > 0, z.softmax(1), 0.0), False),
    "masked_fill": (lambda z: z.softmax(1).masked_fill(z < -1, 0.0), False),
    "gather": (lambda z: z.softmax(1).gather(1, torch.zeros(z.shape[0], 3, dtype=torch.long)), False),
}


@pytest.mark.parametrize("case", list(COMBINATIONS))
def test_probabilities_are_followed_through_selections_joins_and_ensembles(case):
    end, distributions = COMBINATIONS[case]
    [f] = lint(Net(end), nn.CrossEntropyLoss())
    assert f.kind == "double_softmax" and ("loss stuck above" in f.message) == distributions


class Dense(nn.Module):
    """(B, 3, 32, 32) -> per-pixel scores (B, K, 8, 8) -> ``end``."""

    def __init__(self, end) -> None:
        super().__init__()
        self.conv, self.end = nn.Conv2d(3, K, 3, stride=4), end

    def forward(self, x):
        return self.end(self.conv(x))


@pytest.mark.parametrize(
    ("end", "distributions"),
    [
        (lambda m: F.interpolate(m.softmax(1), size=(16, 16), mode="bilinear"), True),
        (lambda m: F.interpolate(m.softmax(1), scale_factor=2.0), True),  # nearest
        (lambda m: F.pad(m.softmax(1), (1, 1, 1, 1), mode="replicate"), True),
        (lambda m: m.softmax(1).mean((2, 3)), True),  # the mean of the pixels' distributions
        (lambda m: F.interpolate(m.softmax(1), size=(16, 16), mode="bicubic"), False),  # overshoots [0, 1]
        (lambda m: F.pad(m.softmax(1), (1, 1, 1, 1)), False),  # zero pixels: rows that sum to 0
    ],
    ids=["bilinear", "nearest", "replicate_pad", "spatial_mean", "bicubic", "zero_pad"],
)
def test_per_pixel_probabilities_are_followed_through_resampling(end, distributions):
    [f] = lint(Dense(end), nn.CrossEntropyLoss())
    assert f.kind == "double_softmax" and ("loss stuck above" in f.message) == distributions


def test_sigmoids_and_logs_through_combinations():
    assert kinds(lint(Net(lambda z: z.sigmoid()[:, 0]), nn.BCEWithLogitsLoss())) == ["sigmoid_into_bce_with_logits"]
    [log] = lint(Net(lambda z: ensemble_mean(z).log()), nn.NLLLoss())
    assert log.kind == "log_of_softmax" and "torch.logsumexp" in log.fix  # no log_softmax gives a mean's log
    [double] = lint(Net(ensemble_mean), nn.CrossEntropyLoss())
    assert "torch.logsumexp" in double.fix


def log_space_ensemble(z):
    """log of the members' mean probabilities, computed stably."""
    return torch.logsumexp(torch.stack([F.log_softmax(z, 1), F.log_softmax(2 * z, 1)]), 0) - math.log(2)


def entropy_of_the_mean_prediction(out, y):
    """Cross-entropy minus the entropy of the batch's mean prediction (a diversity regulariser)."""
    mean = out.softmax(1).mean(0)
    return F.cross_entropy(out, y) + (mean * mean.log()).sum()


class ClassTokenAttention(nn.Module):
    """The first token's attention row (indexed out of the map) weights the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.patches, self.fc = nn.Conv2d(3, 8, 8, stride=8), nn.Linear(8, K)

    def forward(self, x):
        t = self.patches(x).flatten(2).transpose(1, 2)  # (B, 16, 8)
        a = (t @ t.transpose(1, 2)).softmax(-1)  # (B, 16, 16)
        return self.fc((a[:, :1] @ t).squeeze(1))


@pytest.mark.parametrize(
    ("model", "loss"),
    [
        (Net(lambda z: torch.where(z > 0, z.softmax(1), z)), nn.CrossEntropyLoss()),  # logits elsewhere: mixed
        (Net(lambda z: torch.cat([z.softmax(1), z], 1)[:, K:]), nn.CrossEntropyLoss()),  # beside untagged: dropped
        (Net(lambda z: z * z.softmax(1).sum(1, keepdim=True)), nn.CrossEntropyLoss()),  # a sum over classes: 1
        (Net(log_space_ensemble), nn.NLLLoss()),  # the stable ensemble
        (Net(), entropy_of_the_mean_prediction),  # a mean over the batch is no image's distribution
        (ClassTokenAttention(), nn.CrossEntropyLoss()),
    ],
    ids=["where_with_logits", "cat_with_logits", "sum_over_classes", "log_space", "batch_mean", "cls_attention"],
)
def test_combinations_that_are_no_pitfall(model, loss):
    assert lint(model, loss) == []
