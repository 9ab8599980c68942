"""Training throughput of ``fit``'s loop against a bare PyTorch loop, in one process.

Both train the same ``simple_cnn`` + softmax head (same init seed) on the same ``shapes``
tensors with the same batch size and optimiser. The bare loop is the floor a notebook
would write: the images normalised to float32 once up front, a random permutation per
epoch, slicing, forward, cross-entropy, backward, step, nothing else. ``fit``'s loop is
``train_one_epoch`` exactly as ``fit`` calls it, in the bare loop's NCHW layout
(``train.channels_last: false``): the uint8 loader with batched
normalisation (and random crop + flip in the "crop + flip" row), the head's loss, the
learning-rate schedule, the on-device accumulators of the training state and fit's own
hooks (checkpoint every N steps, off as by default, and progress).

Epochs alternate between the two loops (ours, bare, ours, bare, ...) so that drifts in
machine speed hit both alike; the ratio is the median of the per-pair ratios, with the
spread (min-max) over pairs. One warm-up epoch of each is not counted.

The last row ("diagnostics on / off") compares ``fit``'s loop with itself: diagnostics on
(per-step gradient norms accumulated on the device, plus the per-epoch read and the
activation statistics of 256 validation images, as ``fit`` does) against off, alternating
epochs in the same way; its ratio is on/off throughput (1.0 = free). ``--no-diagnostics``
skips it.

    python benchmarks/bench_loop.py [--pairs 8] [--train-size 4000] [--batch-size 128] [--device cpu]
        [--no-diagnostics]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from softmaxlab import load_config, load_data
from softmaxlab.checkpoint import TrainingState
from softmaxlab.config import Config
from softmaxlab.data import ImageData
from softmaxlab.diagnostics import Diagnostics
from softmaxlab.distributed import World
from softmaxlab.models import build_model
from softmaxlab.progress import Progress
from softmaxlab.train import (
    Checkpointer,
    Hooks,
    ProgressHook,
    build_optimizer,
    lr_factor,
    make_loaders,
    seed_everything,
    train_one_epoch,
)


def _timed(device: torch.device, run: Callable[[], int]) -> float:
    """Images/second of one call of ``run`` (which returns the number of images)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    images = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def fit_loop(
    cfg: Config, data: ImageData, device: torch.device, epochs: int, diagnostics: bool = False
) -> Callable[[], int]:
    """One epoch of ``fit``'s own loop per call; with ``diagnostics``, also what ``fit`` pays for them."""
    seed_everything(cfg.train.seed)
    model = build_model(cfg, data.image_shape[0], data.num_classes).to(device)
    if cfg.uses_channels_last():
        model = model.to(memory_format=torch.channels_last)  # as fit does
    world = World()
    loaders = make_loaders(data, cfg, device, world)
    loader = loaders["train"]
    diag = Diagnostics(model, loaders["val"], diagnostics, cfg.diagnostics.probe_size)
    opt = build_optimizer(model, cfg.train)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, "onecycle", 0.2))
    state = TrainingState(model, opt, sched, len(loader), total, diag.grad_norms, cfg.train.amp)
    hooks = Hooks([Checkpointer(Path("unused"), world), ProgressHook(Progress())])  # fit's own hooks

    def run() -> int:
        loader.set_epoch(state.epochs_done + 1)
        images = train_one_epoch(state, loader, hooks, world)["images"]
        state.end_epoch({})
        if diagnostics:
            diag.epoch_record()  # the once-per-epoch read of the norms + activation_stats
        return images

    return run


def bare_loop(cfg: Config, data: ImageData, device: torch.device) -> Callable[[], int]:
    """One epoch of the bare loop per call."""
    seed_everything(cfg.train.seed)
    model = build_model(cfg, data.image_shape[0], data.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    mean, std = data.channel_stats()
    x = (data.train.x.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    x, y = x.to(device), data.train.y.to(device)
    bs, n = cfg.train.batch_size, len(y)

    def run() -> int:
        model.train()
        perm = torch.randperm(n, device=device)
        for i in range(n // bs):
            idx = perm[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (n // bs) * bs

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8, help="measured (ours, bare) epoch pairs after one warm-up pair")
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--diagnostics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the diagnostics on / off row",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    print(
        f"simple_cnn on shapes 32 px, batch {args.batch_size}, {args.train_size} training images, "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.pairs} epoch pairs"
    )
    print(f"{'fit loop':<17}{'fit img/s':>10}{'bare img/s':>11}{'ratio (median)':>15}{'min':>7}{'max':>7}")
    for label, aug in (("no augmentation", ["data.crop_padding=0", "data.flip=false"]), ("crop + flip", [])):
        overrides = [
            f"data.train_size={args.train_size}",
            "data.val_size=10",
            "data.test_size=10",
            f"train.batch_size={args.batch_size}",
            f"train.device={args.device}",
            "model.widths=[32,64,128]",
            "train.channels_last=false",  # the bare loop's layout
            *aug,
        ]
        cfg = load_config(None, overrides)
        data = load_data(cfg.data)
        ours, bare = fit_loop(cfg, data, device, args.pairs + 1), bare_loop(cfg, data, device)
        ours(), bare()  # warm-up
        pairs = [(_timed(device, ours), _timed(device, bare)) for _ in range(args.pairs)]
        ratios = [o / b for o, b in pairs]
        o_med = statistics.median(o for o, _ in pairs)
        b_med = statistics.median(b for _, b in pairs)
        print(
            f"{label:<17}{o_med:>10.0f}{b_med:>11.0f}{statistics.median(ratios):>15.3f}"
            f"{min(ratios):>7.3f}{max(ratios):>7.3f}"
        )

    if args.diagnostics:
        _diagnostics_row(args, device)


def _diagnostics_row(args: argparse.Namespace, device: torch.device) -> None:
    """fit's loop with diagnostics on against off (crop + flip), alternating epochs."""
    overrides = [
        f"data.train_size={args.train_size}",
        "data.val_size=256",  # the default diagnostics.probe_size
        "data.test_size=10",
        f"train.batch_size={args.batch_size}",
        f"train.device={args.device}",
        "model.widths=[32,64,128]",
        "train.channels_last=false",
    ]
    cfg = load_config(None, overrides)
    data = load_data(cfg.data)
    on, off = fit_loop(cfg, data, device, args.pairs + 1, True), fit_loop(cfg, data, device, args.pairs + 1)
    on(), off()  # warm-up
    pairs = [(_timed(device, on), _timed(device, off)) for _ in range(args.pairs)]
    ratios = [a / b for a, b in pairs]
    print(f"{'':<17}{'on img/s':>10}{'off img/s':>11}{'on/off (median)':>16}{'min':>7}{'max':>7}")
    print(
        f"{'diagnostics':<17}{statistics.median(a for a, _ in pairs):>10.0f}"
        f"{statistics.median(b for _, b in pairs):>11.0f}{statistics.median(ratios):>16.3f}"
        f"{min(ratios):>7.3f}{max(ratios):>7.3f}"
    )


if __name__ == "__main__":
    main()
