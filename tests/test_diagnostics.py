import math

import pytest
import torch
from torch import nn

from softmaxlab.diagnostics import (
    GradNorms,
    activation_stats,
    block_outputs,
    blocks_of,
    parameterised_layers,
)
from softmaxlab.experiment import run_experiment
from softmaxlab.models import build_model

from .conftest import tiny_config


def _fit(tmp_path, name, *overrides):
    return run_experiment(tiny_config(*overrides), tmp_path / name)


def test_grad_norms_are_the_mean_over_steps():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    norms = GradNorms(model)
    expected = {"0": 0.0, "2": 0.0}
    for _ in range(3):
        model.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        norms.update()
        expected["0"] += model[0].weight.grad.norm().item() / 3
        expected["2"] += model[2].weight.grad.norm().item() / 3
    got = norms.read()
    assert got.keys() == expected.keys()
    for k in got:
        assert got[k] == pytest.approx(expected[k], rel=1e-5)
    assert norms.read() == {}  # reset after reading


def test_grad_norms_count_a_missing_gradient_as_zero():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(3, 1))
    norms = GradNorms(model)
    model[0](torch.randn(2, 3)).sum().backward()  # model[1] gets no gradient
    norms.update()
    assert norms.read()["1"] == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
def test_grad_norms_update_never_syncs_with_the_host():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)).cuda()
    norms = GradNorms(model)
    model(torch.randn(2, 3, device="cuda")).sum().backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            norms.update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert norms.steps == 3


def test_block_outputs_leave_no_hooks_and_keep_the_mode():
    model = build_model(tiny_config(), 3, 4)
    model.train()
    outs = block_outputs(model, torch.randn(2, 3, 16, 16))
    assert [o.shape for o in outs] == [(2, 8, 8, 8), (2, 16, 4, 4)]
    assert model.training
    assert all(not b._forward_hooks for b in blocks_of(model))


def test_activation_stats_per_block():
    model = build_model(tiny_config("model.activation=softmax_hw"), 3, 4)
    stats = activation_stats(model, torch.randn(4, 3, 16, 16))
    assert list(stats) == ["block0", "block1"]
    for s in stats.values():
        assert set(s) == {"mean", "std", "near_zero"}
        assert 0 <= s["near_zero"] <= 1 and s["std"] >= 0
    # A spatial softmax's entries are ~1 / (H W) before pooling: far below a ReLU's ~0.5.
    assert stats["block0"]["mean"] < 0.1


def test_fit_records_diagnostics_every_epoch(tmp_path):
    result = _fit(tmp_path, "on")
    layers = [name for name, _ in parameterised_layers(result.model)]
    assert layers == [
        "backbone.blocks.0.0",
        "backbone.blocks.0.1",
        "backbone.blocks.1.0",
        "backbone.blocks.1.1",
        "head.fc",
    ]
    for record in result.history:
        assert list(record["grad_norms"]) == layers
        assert all(math.isfinite(v) and v > 0 for v in record["grad_norms"].values())
        assert list(record["activation_stats"]) == ["block0", "block1"]
        relu = record["activation_stats"]["block0"]
        assert relu["near_zero"] > 0  # some ReLU outputs are exactly 0
    assert (result.run_dir / "figures" / "feature_maps.png").stat().st_size > 0


def test_diagnostics_disabled_gives_empty_dicts(tmp_path):
    result = _fit(tmp_path, "off", "diagnostics.enabled=false", "train.epochs=1")
    assert result.history[0]["grad_norms"] == {} and result.history[0]["activation_stats"] == {}
    assert not (result.run_dir / "figures" / "feature_maps.png").exists()


def test_spatial_softmax_gradients_vanish(tmp_path):
    # Same data, seed and schedule: the first convolution of a spatial-softmax network gets
    # gradients more than 10 times smaller than the ReLU network's (about 60 times here).
    common = ("train.epochs=1", "data.train_size=256", "diagnostics.probe_size=8")
    relu = _fit(tmp_path, "relu", *common).history[0]["grad_norms"]["backbone.blocks.0.0"]
    soft = _fit(tmp_path, "soft", *common, "model.activation=softmax_hw").history[0]["grad_norms"]
    assert soft["backbone.blocks.0.0"] < relu / 10
    # Rescaling the softmax to mean 1 gives them back.
    fixed = _fit(tmp_path, "fix", *common, "model.activation=softmax_hw", "model.softmax_rescale=true")
    assert fixed.history[0]["grad_norms"]["backbone.blocks.0.0"] > relu / 10
