import pytest
import torch

from softmaxlab.config import load_config
from softmaxlab.models import MODELS, Classifier, build_model


@pytest.mark.parametrize("name", MODELS.names())
def test_forward_backward(name):
    cfg = load_config(None, [f"model.name={name}", "model.widths=[4,8]"])
    model = build_model(cfg, 3, 7)
    assert isinstance(model, Classifier)
    x = torch.randn(2, 3, 16, 16)
    scores = model(x)
    assert scores.shape == (2, 7)
    model.head.loss(scores, torch.tensor([0, 6])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_simple_cnn_features_and_activation_injected():
    cfg = load_config(None, ["model.widths=[4,8,12]", "model.activation=tanh", "model.batch_norm=false"])
    model = build_model(cfg, 1, 3)
    assert model.backbone.out_features == 12
    assert model.backbone(torch.randn(2, 1, 16, 16)).shape == (2, 12)
    assert all(b.activation_name == "tanh" for b in model.backbone.blocks)
    assert any(isinstance(m, torch.nn.Tanh) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
