"""Shared fixtures: tiny configs and datasets that train in seconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from softmaxlab.config import Config, load_config

#: A ``shapes`` run small enough for unit tests: 4 classes, 16 px, a narrow CNN.
TINY = [
    "data.num_classes=4",
    "data.image_size=16",
    "data.train_size=1024",
    "data.val_size=128",
    "data.test_size=256",
    "model.widths=[8,16]",
    "train.epochs=2",
    "train.batch_size=64",
    "train.eval_batch_size=256",
    "train.device=cpu",
    "report.figures=false",  # each fit's report without figures (milliseconds); tests/report draws them
]


def tiny_config(*overrides: str) -> Config:
    """The tiny config with extra ``section.key=value`` overrides."""
    return load_config(None, [*TINY, *overrides])


@pytest.fixture(autouse=True)
def _torch_threads():
    # Two cores: keep torch from oversubscribing when pytest runs beside other work.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _user_cache(tmp_path_factory, monkeypatch):
    # Image-folder caches go to the user cache folder by default: a fresh one per test, never the
    # developer's ~/.cache (and no test sees another's cache).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
