"""Backbones by name (:data:`MODELS`): images -> features; the head is added separately."""

from __future__ import annotations

from torch import Tensor

from softmaxlab.config import Config
from softmaxlab.heads import build_head
from softmaxlab.models import simple_cnn  # noqa: F401  (registers the models)
from softmaxlab.models.base import MODELS, Classifier


def build_model(cfg: Config, in_channels: int, num_classes: int, coarse_of: Tensor | None = None) -> Classifier:
    """Backbone ``cfg.model.name`` + head ``cfg.head.name`` for ``num_classes`` classes."""
    backbone = MODELS.create(cfg.model.name, in_channels, cfg.model)
    head = build_head(cfg.head, backbone.out_features, num_classes, coarse_of)
    return Classifier(backbone, head)


__all__ = ["MODELS", "Classifier", "build_model"]
