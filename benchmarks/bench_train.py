"""Training images/second on real data: softmaxlab's loop, a bare loop, a notebook-style loop.

Three loops train the same model (same init seed) on the same training images, in one
process, with the same batch size and optimiser:

(a) ``fit``'s loop: ``train_one_epoch`` exactly as ``fit`` calls it (uint8 tensors in
    memory, batched random crop + flip, normalisation, the head's loss, the schedule, the
    on-device accumulators; diagnostics off, as in ``bench_loop.py``'s main rows).
(b) a bare PyTorch loop: images normalised to float32 once up front, a permutation per
    epoch, slicing, forward, cross-entropy, backward, step; no augmentation. The floor.
(c) a notebook-style loop: a ``Dataset`` over the same uint8 images with per-sample
    torchvision transforms (``RandomCrop(padding=4)``, ``RandomHorizontalFlip``, to float,
    ``Normalize``), a ``DataLoader`` (shuffle, default ``num_workers=0``), and
    ``loss.item()`` plus a correct count read every step, as the usual notebooks do.

(a) runs in the NCHW layout (``train.channels_last: false``) like (b) and (c), so a/b
measures the loop's overhead alone; (a') is (a) with ``train.channels_last: true`` (NHWC
memory layout for the model and the batches, softmaxlab's default for ReLU models), which
the notebook loop does not use: a'/c is what a user gains by switching from the notebook to
softmaxlab's defaults.

Epochs rotate between the loops (a, b, c, a', a, b, c, a', ...) after one warm-up epoch of
each, so drifts in machine speed hit all alike; each ratio is the median of the per-round
ratios, with the spread (min-max) over rounds. Targets on the CPU: a/b >= 0.95 and
a/c >= 1.5.

Workloads: ``simple_cnn`` (widths 32-64-128) on the Intel scenes at 64 px
(``../shared/data/intel64-train.npz``); the same on the Intel JPEGs, where (c) is the Kaggle
notebooks' pipeline, torchvision ``ImageFolder`` decoding and resizing each 150x150 JPEG
every epoch, and softmaxlab reads the same tree through its ``imagefolder`` cache (the tree
is ``../shared/data/intel-jpeg-sample`` copied under new names until it holds enough
images; the cache is built before timing); and a narrow ``resnet12`` (``model.width=0.25``,
widths 16-40-80-160) on CIFAR-10 at 32 px (``../shared/data/cifar10-10k.npz``).

    python benchmarks/bench_train.py [--rounds 4] [--train-size 2000] [--batch-size 128]
        [--device cpu] [--data-dir ../shared/data] [--only intel|intel-jpeg|cifar]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from bench_loop import _timed, bare_loop, fit_loop
from softmaxlab import load_config, load_data
from softmaxlab.config import Config
from softmaxlab.data import ImageData, Split
from softmaxlab.models import build_model
from softmaxlab.train import seed_everything


class _UInt8Images(Dataset):
    """(C, H, W) uint8 images and labels, one ``transform`` call per sample (as a notebook does)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


def jpeg_folder(root: Path, size: int, padding: int, mean: list[float], std: list[float], n: int) -> Dataset:
    """The Intel notebooks' pipeline: torchvision ``ImageFolder`` decoding and resizing each JPEG
    every epoch, then per-sample crop, flip, to-tensor and normalise; ``n`` images of it."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.RandomCrop(size, padding=padding),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    folder = datasets.ImageFolder(str(root), transform=transform)
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[:n]
    return Subset(folder, order.tolist())


def copy_tree(sample: Path, copies: int, out: Path) -> Path:
    """``out/<class>/<copy>-<name>``: every image of ``sample``, ``copies`` times under new names."""
    for class_dir in sorted(p for p in sample.iterdir() if p.is_dir()):
        (out / class_dir.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(class_dir.iterdir()):
            for c in range(copies):
                shutil.copyfile(image, out / class_dir.name / f"{c:03d}-{image.name}")
    return out


def notebook_loop(
    cfg: Config, data: ImageData, device: torch.device, dataset: Dataset | None = None
) -> Callable[[], int]:
    """One epoch of the notebook-style loop per call (over ``dataset`` when given)."""
    seed_everything(cfg.train.seed)
    model = build_model(cfg, data.image_shape[0], data.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    mean, std = data.channel_stats()
    size = data.image_shape[1:]
    transform = v2.Compose(
        [
            v2.RandomCrop(size, padding=cfg.data.crop_padding),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
    if dataset is None:
        dataset = _UInt8Images(data.train.x, data.train.y, transform)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True)

    def run() -> int:
        model.train()
        seen, running_loss, correct = 0, 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running_loss += loss.item() * yb.shape[0]  # a host sync every step
            correct += (out.argmax(1) == yb).sum().item()
            seen += yb.shape[0]
        return seen

    return run


#: The model of the simple_cnn rows, fixed so that the rows stay comparable with earlier runs.
SIMPLE_CNN = ["model.name=simple_cnn", "model.widths=[32,64,128]"]
WORKLOADS = {
    "intel": ("simple_cnn on Intel scenes 64 px", "intel64-train.npz", 64, SIMPLE_CNN),
    "intel-jpeg": ("simple_cnn, Intel JPEGs -> 64 px", "intel-jpeg-sample", 64, SIMPLE_CNN),
    "cifar": (
        "resnet12 x0.25 on CIFAR-10 32 px",
        "cifar10-10k.npz",
        32,
        ["model.name=resnet12", "model.width=0.25"],
    ),
}


def _ratio(rounds: list[list[float]], i: int, j: int) -> str:
    """Median and min-max over rounds of loop i's throughput over loop j's."""
    r = [x[i] / x[j] for x in rounds]
    return f"{statistics.median(r):>7.3f}{f'{min(r):.3f}-{max(r):.3f}':>13}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="measured (a, b, c) epoch rounds after one warm-up round")
    ap.add_argument("--train-size", type=int, default=2000, help="training images used per epoch")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--only", choices=sorted(WORKLOADS), default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    print(
        f"batch {args.batch_size}, {args.train_size} training images, device {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds"
    )
    print(
        "workload".ljust(34)
        + "".join(h.rjust(9) for h in ("a img/s", "b img/s", "c img/s", "a' img/s"))
        + "".join(h.rjust(7) + "(min-max)".rjust(13) for h in ("a/b", "a/c", "a'/c"))
    )
    tmp_root = tempfile.TemporaryDirectory(prefix="bench-train-")  # removed at exit
    for key, (label, file, size, model) in WORKLOADS.items():
        if args.only and key != args.only:
            continue
        path = args.data_dir / file
        if not path.exists():
            sys.exit(f"{path} not found; pass --data-dir pointing at the folder with {file}")
        source = ["data.name=npz", f"data.root={path}"]
        if path.is_dir():  # a JPEG tree: copies of the sample, enough for train_size training images
            tmp = Path(tmp_root.name)
            path = copy_tree(path, -(-args.train_size // 120) + 1, tmp / "tree")
            source = ["data.name=imagefolder", f"data.root={path}", f"data.cache_dir={tmp / 'cache'}"]
        cfg = load_config(
            None,
            [
                *source,
                f"data.image_size={size}",
                f"train.batch_size={args.batch_size}",
                f"train.device={args.device}",
                "train.channels_last=false",  # (a) in NCHW like (b) and (c); (a') is the NHWC copy below
                "diagnostics.enabled=false",
                *model,
            ],
        )
        data = load_data(cfg.data)
        # The first train_size images of the (shuffled, stratified) training split.
        data.train = Split(data.train.x[: args.train_size], data.train.y[: args.train_size])
        jpegs = None
        if cfg.data.name == "imagefolder":
            mean, std = data.channel_stats()
            jpegs = jpeg_folder(path, size, cfg.data.crop_padding, mean, std, len(data.train))
        nhwc = cfg.model_copy(update={"train": cfg.train.model_copy(update={"channels_last": True})})
        loops = [
            fit_loop(cfg, data, device, args.rounds + 1),
            bare_loop(cfg, data, device),
            notebook_loop(cfg, data, device, jpegs),
            fit_loop(nhwc, data, device, args.rounds + 1),
        ]
        for loop in loops:
            loop()  # warm-up
        rounds = [[_timed(device, loop) for loop in loops] for _ in range(args.rounds)]
        med = [statistics.median(r[i] for r in rounds) for i in range(4)]

        print(
            f"{label + f' ({len(data.train)})':<34}{med[0]:>9.0f}{med[1]:>9.0f}{med[2]:>9.0f}{med[3]:>9.0f}"
            + "".join(_ratio(rounds, i, j) for i, j in ((0, 1), (0, 2), (3, 2)))
        )


if __name__ == "__main__":
    main()
