"""Temperature softmax: p = softmax(z / T), with T fixed or learned."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from softmaxlab.heads.base import HEADS, Head, Reduce, at_least_float32
from softmaxlab.registry import Options


class TemperatureOptions(Options):
    """Options of the ``temperature`` head."""

    temperature: float = Field(1.0, gt=0)  # T in softmax(z / T); the start value when learned
    learn_temperature: bool = False  # learn log T (so T stays positive) with the network


@HEADS.register("temperature", options=TemperatureOptions)
class TemperatureHead(Head):
    """softmax(z / T), cross-entropy; T fixed (head.temperature) or learned (head.learn_temperature).

    p = softmax(z / T), L = -log p_y. T > 1 flattens the distribution, T < 1 sharpens it.
    With a fixed T the model can absorb it into the weights, so it mostly changes the
    effective learning rate and initial confidence; with ``head.learn_temperature`` the head
    learns log T (so T stays positive) jointly with the network, starting from
    ``head.temperature``. The scores are the tempered logits z / T; the current T is logged
    each epoch as ``head_temperature``.
    """

    temperature_note = (
        "p_T = softmax(log p / T) = softmax(z / (T_head T)): the fitted T multiplies the head's own temperature"
    )

    options: TemperatureOptions

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        options: TemperatureOptions | None = None,
        coarse_of: Tensor | None = None,
    ) -> None:
        super().__init__(in_features, num_classes, options, coarse_of)
        self.learn_temperature = self.options.learn_temperature
        log_t = torch.tensor(math.log(self.options.temperature))
        if self.learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> Tensor:
        """T = exp(log T), a 0-d tensor."""
        return self.log_temperature.exp()

    def forward(self, features: Tensor) -> Tensor:
        """(B, F) -> (B, K) tempered logits z / T."""
        z = self.fc(features)
        return z / self.temperature.to(z.dtype)

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """L = -log softmax(z / T)_y (max-shifted by torch)."""
        return F.cross_entropy(scores, target)

    def log_probs(self, scores: Tensor) -> Tensor:
        """log softmax(z / T)."""
        return F.log_softmax(at_least_float32(scores), dim=-1)

    def epoch_record(self, reduce: Reduce | None = None) -> dict[str, Any]:
        """The current T (one host read per epoch; the same on every process)."""
        return {"head_temperature": self.temperature.item()}
