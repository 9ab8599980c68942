"""Backbones by name (:data:`MODELS`): images -> features; the head is added separately."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from softmaxlab.config import Config, ModelConfig
from softmaxlab.errors import UserError
from softmaxlab.heads import build_head
from softmaxlab.models import simple_cnn  # noqa: F401  (registers the default model first: `softmaxlab list`)

# isort: split
from softmaxlab.models import resnet12  # noqa: F401  (registers the other models)
from softmaxlab.models.base import MODELS, Classifier


def build_model(cfg: Config, in_channels: int, num_classes: int, coarse_of: Tensor | None = None) -> Classifier:
    """Backbone ``cfg.model.name`` + head ``cfg.head.name`` for ``num_classes`` classes."""
    backbone = MODELS.create(cfg.model.name, in_channels, cfg.model)
    head = build_head(cfg.head, backbone.out_features, num_classes, coarse_of)
    return Classifier(backbone, head)


def load_trained(run_dir: str | Path) -> tuple[Classifier, Config, dict[str, Any]]:
    """The trained model of a run directory (in eval mode, on the CPU), its config and the
    weights payload (``classes``, ``normalization``, ...).

    Raises:
        UserError: no weights, a foreign or corrupt file, or weights that do not fit the
            model the saved config describes.
    """
    from softmaxlab import runs
    from softmaxlab.config import validate_config

    payload = runs.load_weights(run_dir)
    where = str(Path(run_dir) / runs.WEIGHTS)
    cfg = validate_config(payload["config"], source=where)
    norm = payload.get("normalization")
    if not norm:
        raise UserError(f"{where!r} has no normalisation statistics (written by an older softmaxlab); retrain the run")
    coarse_of = payload.get("coarse_of")
    model = build_model(cfg, len(norm["mean"]), len(payload["classes"]), coarse_of)
    runs.load_state_checked(model, payload["state_dict"], f"{where!r}")
    return model.eval(), cfg, payload


def backbone_parameters(name: str, in_channels: int = 3) -> int:
    """Parameters of the backbone ``name`` with its default widths (the head adds F x K + K)."""
    return sum(p.numel() for p in MODELS.create(name, in_channels, ModelConfig(name=name)).parameters())


__all__ = ["MODELS", "Classifier", "backbone_parameters", "build_model", "load_trained"]
