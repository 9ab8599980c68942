"""A head with an option of its own, added from outside the package in one place: its options,
its class, one decorator. It trains through load_config + fit with the option set as
``--set`` sets it, and its option behaves like every built-in one."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from softmaxlab import HEADS, Head, Options, fit, load_config
from softmaxlab.config import HeadConfig, config_keys
from softmaxlab.errors import UserError

from ..conftest import TINY


class FocalOptions(Options):
    """Options of the ``focal`` head."""

    gamma: float = Field(2.0, ge=0)  # focusing exponent: (1 - p_y)^gamma weights each image's loss


class FocalHead(Head):
    """Focal loss (Lin et al., 2017) on softmax(z): L = -(1 - p_y)^gamma log p_y; p = softmax(z)."""

    options: FocalOptions

    def loss(self, scores, target):
        log_p = F.log_softmax(scores.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
        return (-((1 - log_p.exp()) ** self.options.gamma) * log_p).mean()

    def log_probs(self, scores):
        return F.log_softmax(scores.float(), dim=-1)


@pytest.fixture
def focal():
    HEADS.register("focal", options=FocalOptions)(FocalHead)
    try:
        yield FocalHead
    finally:
        HEADS.unregister("focal")


def test_a_head_with_its_own_option_trains_from_the_command_line_overrides(focal, tmp_path):
    cfg = load_config(None, [*TINY, "train.epochs=1", "head.name=focal", "head.gamma=0.5"])
    assert isinstance(cfg.head, FocalOptions) and cfg.head.gamma == 0.5
    assert "head.gamma" in config_keys()[1]  # a sweep may vary it
    result = fit(cfg, tmp_path / "focal")
    assert isinstance(result.model.head, FocalHead) and result.model.head.options.gamma == 0.5
    assert result.summary["head"] == "focal" and 0 <= result.summary["test"]["accuracy"] <= 1
    written = load_config(result.run_dir / "config.yaml")
    assert written.to_dict()["head"] == {"name": "focal", "gamma": 0.5}  # only the options of the chosen head
    # gamma = 0 is cross-entropy: the loss equals the softmax head's on the same scores.
    scores, y = torch.randn(8, 4), torch.arange(8) % 4
    plain = focal(6, 4, FocalOptions(gamma=0)).loss(scores, y)
    torch.testing.assert_close(plain, F.cross_entropy(scores, y))


def test_its_option_is_validated_and_owned_like_a_built_in_one(focal):
    with pytest.raises(UserError, match=r"invalid value for 'head\.gamma'.*greater than or equal to 0"):
        load_config(None, ["head.name=focal", "head.gamma=-1"])
    with pytest.raises(UserError, match=r"'head\.gamma'.*applies to head\.name=focal only; head\.name is 'softmax'"):
        load_config(None, ["head.gamma=0.5"])
    with pytest.raises(UserError, match=r"unknown config key 'head\.gama'.*did you mean 'head\.gamma'"):
        load_config(None, ["head.name=focal", "head.gama=1"])
    assert load_config(None, ["head.gamma=2.0"]).head.name == "softmax"  # at its default: dropped, as before
    assert HeadConfig(name="focal").gamma == 2.0


def test_unregistered_it_is_gone(focal):
    HEADS.unregister("focal")
    try:
        with pytest.raises(UserError, match="unknown head 'focal'"):
            load_config(None, ["head.name=focal"])
    finally:
        HEADS.register("focal", options=FocalOptions)(FocalHead)
