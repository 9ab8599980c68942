"""Data preparation time of an image folder: the first run (decode + write the cache) against later runs.

``load_data`` on an ``imagefolder`` tree is timed three ways, in one process, each in a
fresh temporary cache folder so nothing carries over between repeats:

* first run: scan the tree, decode every JPEG (in parallel threads), resize, write the
  uint8 cache;
* second run: scan the tree, find the cache by its key, memory-map it (no decoding);

for ``../shared/data/intel-jpeg-sample`` (180 JPEGs, 150x150) and for a larger tree the
benchmark builds by copying that sample ``--copies`` times under new file names (so every
copy is a distinct file to the cache key). Each timing is the median of ``--repeats``
repeats, with the spread; the target is second / first <= 0.1.

    python benchmarks/bench_cache.py [--copies 10] [--repeats 3] [--image-size 64]
        [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from softmaxlab import load_config, load_data


def build_copies(sample: Path, copies: int, out: Path) -> int:
    """``out/<class>/<copy>-<name>`` for every image of ``sample``, ``copies`` times; returns the count."""
    n = 0
    for class_dir in sorted(p for p in sample.iterdir() if p.is_dir()):
        target = out / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(class_dir.iterdir()):
            for c in range(copies):
                shutil.copyfile(image, target / f"{c:03d}-{image.name}")
                n += 1
    return n


def time_prepare(root: Path, image_size: int, cache_dir: Path) -> float:
    """Seconds for ``load_data`` of the tree at ``root`` with the cache in ``cache_dir``."""
    cfg = load_config(
        None,
        ["data.name=imagefolder", f"data.root={root}", f"data.image_size={image_size}", f"data.cache_dir={cache_dir}"],
    )
    t0 = time.perf_counter()
    load_data(cfg.data)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=10, help="copies of the sample in the larger tree")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    args = ap.parse_args()
    sample = args.data_dir / "intel-jpeg-sample"
    if not sample.is_dir():
        sys.exit(f"{sample} not found; pass --data-dir pointing at the folder with intel-jpeg-sample/")
    print(f"image size {args.image_size}, {args.repeats} repeats (median, min-max)")
    print(f"{'tree':<28}{'images':>7}{'first (s)':>11}{'second (s)':>12}{'second/first':>14}{'(min-max)':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "copies"
        n_big = build_copies(sample, args.copies, big)
        trees = [
            ("intel-jpeg-sample", sample, sum(1 for _ in sample.rglob("*.jpg"))),
            (f"x{args.copies} copies", big, n_big),
        ]
        for label, root, n in trees:
            firsts, seconds = [], []
            for r in range(args.repeats):
                cache = Path(tmp) / f"cache-{label}-{r}"
                firsts.append(time_prepare(root, args.image_size, cache))
                seconds.append(time_prepare(root, args.image_size, cache))
            ratios = [s / f for f, s in zip(firsts, seconds, strict=True)]
            print(
                f"{label:<28}{n:>7}{statistics.median(firsts):>11.3f}{statistics.median(seconds):>12.3f}"
                f"{statistics.median(ratios):>14.3f}{f'{min(ratios):.3f}-{max(ratios):.3f}':>15}"
            )


if __name__ == "__main__":
    main()
