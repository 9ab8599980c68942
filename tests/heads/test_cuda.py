"""On a GPU, a training step of every head runs without a host sync (skipped without CUDA)."""

import pytest
import torch

from softmaxlab.config import HeadConfig
from softmaxlab.heads import HEADS, build_head

#: torch's AdaptiveLogSoftmaxWithLoss asks the host which samples fall in each cluster.
SYNCS_BY_DESIGN = {"adaptive"}
EXTRA = {"gumbel": {"tau_schedule": "exponential"}, "temperature": {"learn_temperature": True}}

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")


@pytest.mark.parametrize("name", sorted(set(HEADS.names()) - SYNCS_BY_DESIGN))
def test_training_step_never_syncs_with_the_host(name):
    torch.manual_seed(0)
    head = build_head(HeadConfig(name=name, **EXTRA.get(name, {})), 32, 100).cuda()
    feats = torch.randn(64, 32, device="cuda")
    target = torch.randint(0, 100, (64,), device="cuda")
    head(feats)  # warm-up: lazy initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3):
            head.step_update(step, 10)
            scores = head(feats)
            loss = head.loss(scores, target)
            loss.backward()
            head.predict(scores.detach())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("name", HEADS.names())
def test_probs_on_the_gpu_match_the_cpu(name):
    torch.manual_seed(0)
    head = build_head(HeadConfig(name=name), 32, 100).eval()
    feats = torch.randn(16, 32)
    expected = head.probs(head(feats))
    head = head.cuda()
    got = head.probs(head(feats.cuda())).cpu()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
