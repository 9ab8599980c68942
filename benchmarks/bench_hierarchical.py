"""Two-level hierarchical softmax: our ``hierarchical`` head against the ``hierarchicalsoftmax`` package.

Both get the same two-level tree, built here: K classes split into round(sqrt(K)) contiguous
groups of balanced sizes (:func:`softmaxlab.heads.hierarchical.balanced_groups`, the tree
our head builds when it is given no hierarchy). In the package it is a ``SoftmaxNode`` root
with one child per group and the group's classes as that child's children. Both compute
the same loss, -mean log p(y) = -mean [log p(g(y)) + log p(y | g(y))]; the script checks
that by loading our head's weights into the package's output layer (the package lays the
root's G group logits first, then each group's class logits in order, which for contiguous
groups is ``cat(coarse.weight, fc.weight)``) and comparing the two losses.

The package is timed the two ways its README describes: ``HierarchicalSoftmaxLinear`` (its
lazy output layer, which evaluates only the slices of the layer the loss asks for) and a
plain ``nn.Linear(F, root.layer_size)`` (every logit); the faster of the two is the
baseline of the ratio. The full ``softmax`` head is timed alongside for the one-third
target. A step is what ``softmaxlab bench heads`` times: zero the gradients, the head's
forward and loss on random (B, F) features that require a gradient, backward. Methods
alternate within each round (ours, package lazy, package dense, softmax, then again) so
that drifts in machine speed hit all of them; each method's time is the median over rounds,
the ratio is the ratio of the medians, with the min-max of the per-round ratios.

The package is not a dependency of softmaxlab; install it for this script only:

    pip install hierarchicalsoftmax
    python benchmarks/bench_hierarchical.py [--classes 100000] [--batch 256] [--features 512]
        [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from softmaxlab.config import HeadConfig
from softmaxlab.heads import build_head
from softmaxlab.heads.hierarchical import balanced_groups


def package_tree(group_of: Tensor):  # -> (root SoftmaxNode, (K,) node id of each class)
    """The two-level tree of ``group_of`` in the package's API, indexed, with each class's node id."""
    from hierarchicalsoftmax import SoftmaxNode

    root = SoftmaxNode("root")
    groups = [SoftmaxNode(f"group{g}", parent=root) for g in range(int(group_of.max()) + 1)]
    leaves = [SoftmaxNode(f"class{k}", parent=groups[g]) for k, g in enumerate(group_of.tolist())]
    root.set_indexes()
    return root, root.get_node_ids_tensor(leaves)


def timed(device: torch.device, step: Callable[[], None]) -> float:
    """Seconds of one call of ``step``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        import hierarchicalsoftmax as hs
        from hierarchicalsoftmax import HierarchicalSoftmaxLinear, HierarchicalSoftmaxLoss
    except ImportError:
        print("needs the hierarchicalsoftmax package: pip install hierarchicalsoftmax", file=sys.stderr)
        return 2
    from importlib.metadata import version

    device = torch.device(args.device)
    k, b, f_dim = args.classes, args.batch, args.features
    torch.manual_seed(0)
    group_of = balanced_groups(k)
    ours = build_head(HeadConfig(name="hierarchical"), f_dim, k).to(device)
    softmax = build_head(HeadConfig(name="softmax"), f_dim, k).to(device)
    t0 = time.perf_counter()
    root, node_id = package_tree(group_of)
    tree_s = time.perf_counter() - t0
    lazy = HierarchicalSoftmaxLinear(root=root, in_features=f_dim).to(device)
    dense = nn.Linear(f_dim, root.layer_size).to(device)
    with torch.no_grad():  # the same weights as ours, in the package's layout
        for layer in (lazy, dense):
            layer.weight.copy_(torch.cat([ours.coarse.weight, ours.fc.weight]))
            layer.bias.copy_(torch.cat([ours.coarse.bias, ours.fc.bias]))
    pkg_loss = HierarchicalSoftmaxLoss(root)

    feats = torch.randn(b, f_dim, device=device)
    target = torch.randint(0, k, (b,), device=device)
    pkg_target = node_id.to(device)[target]

    def step(params: list[nn.Parameter], loss_of: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def run() -> None:
            for p in params:
                p.grad = None
            x = feats.detach().requires_grad_(True)
            loss_of(x).backward()

        return run

    methods = {
        "softmaxlab hierarchical": step(list(ours.parameters()), lambda x: ours.loss(ours(x), target)),
        "package, lazy layer": step(list(lazy.parameters()), lambda x: pkg_loss(lazy(x), pkg_target)),
        "package, dense layer": step(list(dense.parameters()), lambda x: pkg_loss(dense(x), pkg_target)),
        "softmaxlab softmax": step(list(softmax.parameters()), lambda x: softmax.loss(softmax(x), target)),
    }
    with torch.no_grad():
        ours_loss = ours.loss(ours(feats), target).item()
        lazy_loss = pkg_loss(lazy(feats), pkg_target).item()
    print(
        f"{k} classes in {len(root.children)} groups, batch {b}, {f_dim} features, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, hierarchicalsoftmax {version(hs.__name__)}"
    )
    print(f"same tree, same weights: loss {ours_loss:.6f} (ours) vs {lazy_loss:.6f} (package); tree {tree_s:.1f} s")

    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(args.rounds + 1):
        for name, run in methods.items():
            t = timed(device, run)
            if r > 0:  # round 0 is the warm-up
                times[name].append(t)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"{'method':<24} {'median ms':>10} {'min':>8} {'max':>8}")
    for name, ts in times.items():
        print(f"{name:<24} {1000 * median[name]:>10.1f} {1000 * min(ts):>8.1f} {1000 * max(ts):>8.1f}")

    ours_t = times["softmaxlab hierarchical"]
    best = min(("package, lazy layer", "package, dense layer"), key=median.__getitem__)
    per_round = [p / o for p, o in zip(times[best], ours_t, strict=True)]
    print(
        f"package ({best.split(', ')[1]}) / ours: {median[best] / median['softmaxlab hierarchical']:.1f}x "
        f"(per round {min(per_round):.1f}-{max(per_round):.1f}; target >= 10x)"
    )
    per_round = [o / s for o, s in zip(ours_t, times["softmaxlab softmax"], strict=True)]
    print(
        f"ours / full softmax: {median['softmaxlab hierarchical'] / median['softmaxlab softmax']:.3f} "
        f"(per round {min(per_round):.3f}-{max(per_round):.3f}; target <= 0.333)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
