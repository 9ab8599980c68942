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


def ours_run(cfg: Config, data: ImageData) -> dict[str, list[tuple[float, float]]]:
    """(training seconds, validation accuracy) after each epoch of ``fit`` with ``cfg``; with
    ``train.eval_flip`` also the same epochs' single-view accuracy under ``"single view"``."""
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(cfg, Path(tmp) / "run", data=data)
    curves = {"": [(r["epoch_seconds"], r["val_acc"]) for r in result.history]}
    if cfg.train.eval_flip:
        curves["single view"] = [(r["epoch_seconds"], r["val_acc_single_view"]) for r in result.history]
    return curves


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"short:train.epochs=6,train.lr=0.2"`` -> ("short", ["train.epochs=6", "train.lr=0.2"])."""
    name, _, overrides = text.partition(":")
    return name, [o for o in overrides.split(",") if o]


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
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:KEY=VALUE[,KEY=VALUE]: also train the defaults with these overrides against the same notebook "
        "curve (repeatable; the plain defaults always run first)",
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    overrides = ["data.name=npz", f"data.root={args.data}", f"train.device={args.device}", *args.set]
    variants = {"defaults": load_config(None, overrides)}
    extras: dict[str, list[str]] = {"defaults": []}
    for name, extra in map(parse_variant, args.variant):
        if name in extras or name == "notebook" or not extra:
            parser.error(f"--variant {name!r}: give a new name and at least one override, NAME:KEY=VALUE[,KEY=VALUE]")
        variants[name], extras[name] = load_config(None, [*overrides, *extra]), extra
    data = load_data(variants["defaults"].data)
    if args.train_size is not None:
        data.train = _first(data.train, args.train_size)
    device = resolve_device(variants["defaults"].train.device)
    for name, cfg in variants.items():
        print(_describe(name, cfg, data, [*args.set, *extras[name]], args.data.name), flush=True)
    print(
        f"notebook: Adam 1e-3, batch 64, flips, {args.notebook_epochs} epochs; device {device}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    results: dict[str, list[tuple[float, float]]] = {}  # row -> per-seed (ratio, final accuracy)
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        curves = _one_seed(seed, variants, data, args.notebook_epochs, device, notebook_first=i % 2 == 1)
        target = max(acc for _, acc in curves["notebook"])
        reach_nb = time_to(curves["notebook"], target)
        print(f"seed {seed}: target {target:.4f} (notebook's best), notebook {_show(reach_nb)}", flush=True)
        for row, curve in curves.items():
            if row == "notebook":
                continue
            reach = time_to(curve, target)
            ratio = reach[0] / reach_nb[0] if reach else float("inf")
            results.setdefault(row, []).append((ratio, curve[-1][1]))
            print(f"  {row}: {_show(reach)}; ours / notebook {ratio:.3f}; final val acc {curve[-1][1]:.4f}", flush=True)
    print(
        f"ours / notebook time to the notebook's best, median (min-max) over seeds {args.seeds}; "
        "final val acc, mean (min-max):"
    )
    for row, per_seed in results.items():
        ratios, finals = [r for r, _ in per_seed], [a for _, a in per_seed]
        print(
            f"  {row:<32} {statistics.median(ratios):7.3f} ({min(ratios):.3f}-{max(ratios):.3f})   "
            f"{statistics.fmean(finals):.4f} ({min(finals):.4f}-{max(finals):.4f})"
        )


def _first(split, n: int):
    from softmaxlab.data import Split

    return Split(split.x[:n], split.y[:n], None if split.coarse is None else split.coarse[:n])


def _describe(name: str, cfg: Config, data: ImageData, changes: list[str], file: str) -> str:
    t = cfg.train
    sizes = "-".join(str(cfg.train_image_size(e, data.image_shape[-1])) for e in range(1, t.epochs + 1))
    return (
        f"{file}: {len(data.train)} train / {len(data.val)} val images at {data.image_shape}, "
        f"{cfg.model.name} {cfg.model.widths}; {name}: softmaxlab defaults"
        f"{' with ' + ', '.join(changes) if changes else ''} ({t.optimizer}, lr {t.lr}, {t.schedule}, "
        f"{t.epochs} epochs at {sizes} px, batch {t.batch_size}, eval_flip {t.eval_flip})"
    )


def _one_seed(
    seed: int, variants: dict[str, Config], data: ImageData, epochs: int, device: torch.device, notebook_first: bool
) -> dict[str, list[tuple[float, float]]]:
    """Every curve of one seed: the notebook's, and each variant's (its single-view one too)."""
    order = ["notebook", *variants] if notebook_first else [*variants, "notebook"]
    curves: dict[str, list[tuple[float, float]]] = {}
    for which in order:
        cfg = variants["defaults" if which == "notebook" else which]
        seeded = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
        if which == "notebook":
            curves["notebook"] = notebook_run(seeded, data, epochs, device)
            continue
        for suffix, curve in ours_run(seeded, data).items():
            curves[f"{which} ({suffix})" if suffix else which] = curve
    return curves


def _show(reach: tuple[float, int] | None) -> str:
    return f"{reach[0]:.1f} s (epoch {reach[1]})" if reach else "never"


if __name__ == "__main__":
    main(sys.argv[1:])
