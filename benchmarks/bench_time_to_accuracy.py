"""Time to accuracy: softmaxlab's defaults against a notebook-style training loop.

For each seed, in one process and on the same training / validation split:

(ours)     ``fit`` with the defaults and no option set other than the dataset
           (``data.name: npz``, ``data.root``); its per-epoch ``epoch_seconds`` and ``val_acc``
           come from the run's records.
(notebook) the usual notebook loop on the same model (built from the same config, so the
           same widths): Adam at 1e-3, batch 64, random horizontal flips only, a
           ``DataLoader`` with per-sample transforms, ``loss.item()`` every step, 12 epochs
           at the full image size (ours too, unless ``--set train.low_res_fraction=...``);
           validation accuracy after each epoch (not timed).

The target of a seed is the best validation accuracy the notebook loop reaches in its 12
epochs; each loop's time to accuracy is its summed training time (evaluation excluded for
both) up to the first epoch whose validation accuracy reaches the target, or "never". The
order of the two loops alternates between seeds, so a drift in machine speed hits both.
Printed per seed and as the median with min-max over seeds: the ratio ours / notebook
(target <= 0.5), and each loop's final validation accuracy.

    python benchmarks/bench_time_to_accuracy.py --data ../shared/data/intel64-train.npz [--seeds 0,1,2]
        [--notebook-epochs 12] [--train-size N] [--device cpu] [--set data.image_size=32]

``--set`` changes the config of both loops (the notebook's model is built from it, and the
images are loaded at its ``data.image_size``), so the ratio is then that of the defaults with
that one change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from softmaxlab import fit, load_config, load_data
from softmaxlab.config import Config
from softmaxlab.data import ImageData
from softmaxlab.distributed import resolve_device
from softmaxlab.models import build_model
from softmaxlab.train import seed_everything


class _Images(Dataset):
    """(C, H, W) uint8 images with one transform call per sample, as notebooks do."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


def notebook_run(cfg: Config, data: ImageData, epochs: int, device: torch.device) -> list[tuple[float, float]]:
    """(training seconds, validation accuracy) after each of ``epochs`` epochs of the notebook loop."""
    seed_everything(cfg.train.seed)
    model = build_model(cfg, data.image_shape[0], data.num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mean, std = data.channel_stats()
    train_tf = v2.Compose([v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    loader = DataLoader(_Images(data.train.x, data.train.y, train_tf), batch_size=64, shuffle=True)
    val_x = v2.Normalize(mean, std)(data.val.x.float() / 255).to(device)
    val_y = data.val.y.to(device)
    out = []
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            _ = loss.item()  # the notebook's running loss: a host sync every step
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            correct = sum(
                (model(val_x[i : i + 1000]).argmax(1) == val_y[i : i + 1000]).sum().item()
                for i in range(0, len(val_y), 1000)
            )
        out.append((seconds, correct / len(val_y)))
    return out


def ours_run(cfg: Config, data: ImageData) -> list[tuple[float, float]]:
    """(training seconds, validation accuracy) after each epoch of ``fit`` with ``cfg``."""
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(cfg, Path(tmp) / "run", data=data)
    return [(r["epoch_seconds"], r["val_acc"]) for r in result.history]


def time_to(curve: list[tuple[float, float]], target: float) -> tuple[float, int] | None:
    """(summed training seconds, epochs) until validation accuracy first reaches ``target``."""
    total = 0.0
    for epoch, (seconds, acc) in enumerate(curve, 1):
        total += seconds
        if acc >= target - 1e-12:
            return total, epoch
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an .npz file (x uint8 N x H x W x C, y)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--notebook-epochs", type=int, default=12)
    parser.add_argument("--train-size", type=int, default=None, help="use only this many training images")
    parser.add_argument(
        "--set", action="append", default=[], help="a config override for both loops, e.g. data.image_size=32"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    overrides = ["data.name=npz", f"data.root={args.data}", f"train.device={args.device}", *args.set]
    cfg = load_config(None, overrides)
    data = load_data(cfg.data)
    if args.train_size is not None:
        from softmaxlab.data import Split

        n = args.train_size
        data.train = Split(
            data.train.x[:n], data.train.y[:n], None if data.train.coarse is None else data.train.coarse[:n]
        )
    device = resolve_device(cfg.train.device)
    with_set = f" with {', '.join(args.set)}" if args.set else ""
    sizes = "-".join(str(cfg.train_image_size(e, data.image_shape[-1])) for e in range(1, cfg.train.epochs + 1))
    print(
        f"{args.data.name}: {len(data.train)} train / {len(data.val)} val images at {data.image_shape}, "
        f"{cfg.model.name} {cfg.model.widths}; ours: softmaxlab defaults{with_set} ({cfg.train.optimizer}, "
        f"lr {cfg.train.lr}, {cfg.train.schedule}, {cfg.train.epochs} epochs at {sizes} px, "
        f"batch {cfg.train.batch_size}); "
        f"notebook: Adam 1e-3, batch 64, flips, {args.notebook_epochs} epochs; "
        f"device {device}, {torch.get_num_threads()} threads",
        flush=True,
    )
    ratios, rows = [], []
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        seeded = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
        runs = {}
        for which in ("ours", "notebook") if i % 2 == 0 else ("notebook", "ours"):
            runs[which] = (
                ours_run(seeded, data) if which == "ours" else notebook_run(seeded, data, args.notebook_epochs, device)
            )
        target = max(acc for _, acc in runs["notebook"])
        reach = {k: time_to(v, target) for k, v in runs.items()}
        ratio = reach["ours"][0] / reach["notebook"][0] if reach["ours"] else float("inf")
        ratios.append(ratio)
        rows.append((seed, target, reach, runs))
        show = {k: (f"{r[0]:.1f} s (epoch {r[1]})" if r else "never") for k, r in reach.items()}
        print(
            f"seed {seed}: target {target:.4f} (notebook's best); ours {show['ours']}, notebook {show['notebook']}; "
            f"ours / notebook {ratio:.3f}; final val acc ours {runs['ours'][-1][1]:.4f}, "
            f"notebook {runs['notebook'][-1][1]:.4f}",
            flush=True,
        )
    print(
        f"ours / notebook time to the notebook's best: median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}; target <= 0.5)"
    )
    finals = [r[3]["ours"][-1][1] for r in rows]
    print(f"ours: final val acc {statistics.fmean(finals):.4f} mean over seeds (min {min(finals):.4f})")


if __name__ == "__main__":
    main(sys.argv[1:])
