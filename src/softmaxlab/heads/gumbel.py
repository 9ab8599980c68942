"""Gumbel-softmax: a differentiable sample of a categorical distribution (Jang et al., 2017).

With logits z, Gumbel noise g_k = -log(-log u_k), u_k ~ U(0, 1), and a temperature tau > 0,

    y_soft = softmax((z + g) / tau)

is a point of the simplex that tends to a one-hot sample of softmax(z) as tau -> 0. The
straight-through variant outputs y_hard = one_hot(argmax y_soft) in the forward pass and
uses the gradient of y_soft: y = y_hard - stop_grad(y_soft) + y_soft.

Which distribution a trained Gumbel head "predicts" is a choice, and calibration depends on
it (``head.eval_rule``): ``tau``, softmax(z / tau), the noiseless limit of the soft sample;
``plain``, softmax(z), the categorical distribution that Gumbel-max samples (arg max_k z_k +
g_k ~ softmax(z)); ``sample_mean``, the mean of S soft samples
(1/S) sum_s softmax((z + g_s) / tau), what the training loss sees on average. All three have
the same arg max only for ``tau`` and ``plain``; the sample mean can differ where classes are close.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from softmaxlab.heads.base import HEADS, Head, Reduce, at_least_float32
from softmaxlab.registry import Options


def gumbel_noise(like: Tensor) -> Tensor:
    """Standard Gumbel noise shaped like ``like``: -log(E), E ~ Exp(1) (as torch draws it)."""
    return -torch.empty_like(like, memory_format=torch.legacy_contiguous_format).exponential_().log()


def gumbel_softmax_sample(z: Tensor, tau: float | Tensor, hard: bool = False, noise: Tensor | None = None) -> Tensor:
    """(B, K) sample y_soft = softmax((z + g) / tau), or the straight-through one-hot if ``hard``.

    With ``noise=None`` the noise is drawn as ``torch.nn.functional.gumbel_softmax`` draws
    it, so both give the same sample from the same random state.
    """
    g = gumbel_noise(z) if noise is None else noise
    y_soft = torch.softmax((z + g) / tau, dim=-1)
    return straight_through(y_soft) if hard else y_soft


def straight_through(y_soft: Tensor) -> Tensor:
    """y_hard - stop_grad(y_soft) + y_soft: one-hot arg max forward, gradient of y_soft backward."""
    y_hard = torch.zeros_like(y_soft).scatter_(-1, y_soft.argmax(dim=-1, keepdim=True), 1.0)
    return y_hard - y_soft.detach() + y_soft


def annealed_tau(step: int, tau0: float, tau_min: float, rate: float) -> float:
    """tau = max(tau_min, tau0 * exp(-rate * step)); a pure function of the step.

    >>> [round(annealed_tau(step, 1.0, 0.1, 1e-3), 4) for step in (0, 1000, 10**6)]
    [1.0, 0.3679, 0.1]
    """
    return max(tau_min, tau0 * math.exp(-rate * step))


#: Options that mean something only with another option's value: {option: (that option, value)}.
_APPLIES_WITH = {
    "tau_min": ("tau_schedule", "exponential"),
    "anneal_rate": ("tau_schedule", "exponential"),
    "eval_samples": ("eval_rule", "sample_mean"),
    "eval_seed": ("eval_rule", "sample_mean"),
}


class GumbelOptions(Options):
    """Options of the ``gumbel`` head."""

    tau: float = Field(1.0, gt=0)  # temperature tau0 of the Gumbel-softmax samples
    tau_schedule: Literal["constant", "exponential"] = "constant"  # how tau changes with the step
    tau_min: float = Field(0.5, gt=0)  # exponential: tau = max(tau_min, tau0 * exp(-anneal_rate * step))
    anneal_rate: float = Field(1e-3, ge=0)  # exponential: decay rate of tau per optimisation step
    # The evaluation distribution: softmax(z / tau), softmax(z), or the mean of noisy samples.
    eval_rule: Literal["tau", "plain", "sample_mean"] = "tau"
    eval_samples: int = Field(32, ge=1, le=1024)  # sample_mean: soft samples averaged per image
    eval_seed: int = Field(0, ge=0, le=2**32 - 1)  # sample_mean: seed of the evaluation noise

    @field_validator(*_APPLIES_WITH)
    @classmethod
    def _applies_only_with(cls, v: Any, info: ValidationInfo) -> Any:
        # Silently ignored otherwise; the option they depend on is validated first (field order).
        key, needed = _APPLIES_WITH[info.field_name]
        changed = v != cls.model_fields[info.field_name].default
        if changed and info.data.get(key, needed) != needed:
            raise ValueError(f"applies to head.{key}={needed} only")
        return v


@HEADS.register("gumbel", options=GumbelOptions)
class GumbelSoftmaxHead(Head):
    """Gumbel-softmax sample softmax((z+g)/tau) in training (NLL); head.eval_rule at evaluation.

    Training: the scores are the noisy tempered logits s = (z + g) / tau, so softmax(s) is
    the soft sample y_soft and the loss is its negative log-likelihood
    L = -log y_soft_y = cross_entropy(s, y). Evaluation (``head.eval_rule``, see the module
    docstring): ``tau``, s = z / tau and p = softmax(z / tau); ``plain``, s = z and
    p = softmax(z); ``sample_mean``, s = z / tau and
    p = (1/S) sum_s softmax(s + g_s / tau) over S = ``head.eval_samples`` noise vectors g_s
    over the K classes, drawn from a generator seeded with ``head.eval_seed`` and the same for
    every image (so an image's p does not depend on its batch). The evaluation loss is
    -log p_y of that p.

    ``head.tau`` is tau0; with ``head.tau_schedule: exponential`` it anneals as
    tau = max(tau_min, tau0 * exp(-anneal_rate * step)), updated before every step and
    logged each epoch as ``tau``. tau is a buffer, so a saved model evaluates with the
    annealed value.

    :meth:`sample` gives the sample behind training scores, soft or straight-through one-hot
    (``hard=True``, what a downstream layer would consume). The loss always uses the soft
    sample, because the log of a one-hot vector is 0 or -inf: for this classification loss a
    straight-through variant would have the same gradients and predictions, so it is no option.
    """

    options: GumbelOptions

    @property
    def temperature_note(self) -> str:  # type: ignore[override]
        """What the fitted T does under this head's evaluation rule."""
        return {
            "tau": "p_T = softmax(log p / T) = softmax(z / (tau T)): the fitted T multiplies the evaluation tau",
            "plain": "p_T = softmax(log p / T) = softmax(z / T), the logits that Gumbel-max samples from",
            "sample_mean": "p_T = softmax(log p / T): the mean of the noisy samples raised to 1/T and renormalised",
        }[self.options.eval_rule]

    def __init__(
        self, in_features: int, num_classes: int, options: GumbelOptions | None = None, coarse_of: Tensor | None = None
    ) -> None:
        super().__init__(in_features, num_classes, options, coarse_of)
        self.tau0 = self.options.tau
        self.register_buffer("tau", torch.tensor(self.tau0))

    def step_update(self, step: int, total_steps: int) -> None:
        """Anneal tau (a device-side fill, no host sync)."""
        o = self.options
        if o.tau_schedule == "exponential":
            self.tau.fill_(annealed_tau(step, self.tau0, o.tau_min, o.anneal_rate))

    def forward(self, features: Tensor) -> Tensor:
        """(B, F) -> (B, K): (z + g) / tau when training; z / tau when evaluating (z with
        ``eval_rule: plain``)."""
        z = self.fc(features)
        if self.training:
            z = z + gumbel_noise(z)
        elif self.options.eval_rule == "plain":
            return z
        return z / self.tau.to(z.dtype)

    def sample(self, scores: Tensor, hard: bool = False) -> Tensor:
        """The (B, K) sample behind training scores: y_soft, or the straight-through y_hard."""
        y_soft = torch.softmax(scores, dim=-1)
        return straight_through(y_soft) if hard else y_soft

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """L = -log softmax(s)_y: NLL of the soft sample (training) or of the evaluation p."""
        if not self.training and self.options.eval_rule == "sample_mean":
            return F.nll_loss(self.log_probs(scores), target)
        return F.cross_entropy(scores, target)

    def log_probs(self, scores: Tensor) -> Tensor:
        """log softmax(s) (training; ``tau`` and ``plain`` rules), or the log of the mean of
        S soft samples, accumulated one sample at a time with logaddexp (``sample_mean``)."""
        s = at_least_float32(scores)
        if self.training or self.options.eval_rule != "sample_mean":
            return F.log_softmax(s, dim=-1)
        o = self.options
        # S noise vectors over the K classes, the same for every image (common random numbers):
        # an image's p then does not depend on which batch it is in, or where.
        generator = torch.Generator(device=s.device).manual_seed(o.eval_seed)
        e = torch.empty(o.eval_samples, s.shape[-1], device=s.device, dtype=s.dtype).exponential_(generator=generator)
        noise = -e.log() / self.tau.to(s.dtype)  # (S, K): g / tau, g = -log E, E ~ Exp(1)
        total = None
        for g in noise:
            log_sample = F.log_softmax(s + g, dim=-1)
            total = log_sample if total is None else torch.logaddexp(total, log_sample)
        return total - math.log(o.eval_samples)

    def epoch_record(self, reduce: Reduce | None = None) -> dict[str, Any]:
        """The current tau (one host read per epoch; the same on every process)."""
        return {"tau": self.tau.item()}
