"""Temperature softmax: p = softmax(z / T), with T fixed or learned."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softmaxlab.heads.base import HEADS, Head, at_least_float32

if TYPE_CHECKING:
    from softmaxlab.config import HeadConfig


@HEADS.register("temperature")
class TemperatureHead(Head):
    """softmax(z / T), cross-entropy; T fixed (head.temperature) or learned (head.learn_temperature).

    p = softmax(z / T), L = -log p_y. T > 1 flattens the distribution, T < 1 sharpens it.
    With a fixed T the model can absorb it into the weights, so it mostly changes the
    effective learning rate and initial confidence; with ``head.learn_temperature`` the head
    learns log T (so T stays positive) jointly with the network, starting from
    ``head.temperature``. The scores are the tempered logits z / T; the current T is logged
    each epoch as ``head_temperature``.
    """

    applies_softmax = True
    temperature_note = (
        "p_T = softmax(log p / T) = softmax(z / (T_head T)): the fitted T multiplies the head's own temperature"
    )

    def __init__(
        self, in_features: int, num_classes: int, cfg: HeadConfig | None = None, coarse_of: Tensor | None = None
    ) -> None:
        super().__init__(in_features, num_classes, cfg, coarse_of)
        self.learn_temperature = self.cfg.learn_temperature
        log_t = torch.tensor(math.log(self.cfg.temperature))
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

    def epoch_record(self) -> dict[str, Any]:
        """The current T (one host read per epoch)."""
        return {"head_temperature": self.temperature.item()}
