"""What the softmax linter costs: ``softmaxlab lint TARGET --input-shape C,H,W`` against one plain forward.

Both run in this process on the same model and the same batch of 2 random images (the
CLI's example batch): the lint is ``LintTarget.lint()`` of the target the command builds
(a forward under the torch-function mode and the forward hooks in training mode with
gradients on, then one in eval mode without them, with the module state saved and restored
around them; the loss too when ``--loss`` names one); the plain forward is the model's
forward in training mode under ``torch.no_grad()``, what one of the lint's forwards is
without the tracing and the autograd graph. They alternate (lint,
plain, lint, plain, ...) after one warm-up of each, so that drifts in machine speed hit
both; each time is the median over the repeats, and the ratio is the median of the
per-pair ratios, with their min-max. Building the model (and importing timm) is not timed.

    python benchmarks/bench_lint.py [--target timm:resnet50] [--input-shape 3,224,224]
        [--loss torch.nn.CrossEntropyLoss] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from softmaxlab.lint_targets import load_target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="timm:resnet50", help="what `softmaxlab lint` takes")
    parser.add_argument("--input-shape", default="3,224,224", help="C,H,W of the 2 example images")
    parser.add_argument("--loss", default=None, help="as `softmaxlab lint --loss` (default: none, the model alone)")
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs after one warm-up pair")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_target(args.target, args.loss, args.input_shape)
    model, x = target.model, target.example

    def plain() -> None:
        model.train()
        with torch.no_grad():
            model(x)

    lint_s, plain_s = [], []
    findings = target.lint()  # the warm-up pair
    plain()
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        target.lint()
        t1 = time.perf_counter()
        plain()
        t2 = time.perf_counter()
        lint_s.append(t1 - t0)
        plain_s.append(t2 - t1)
    ratios = [a / b for a, b in zip(lint_s, plain_s, strict=True)]
    print(
        f"softmaxlab lint {args.target} --input-shape {args.input_shape}"
        + (f" --loss {args.loss}" if args.loss else "")
        + f" ({torch.get_num_threads()} threads, {args.repeats} pairs, {len(findings)} findings)"
    )
    print(f"lint          {statistics.median(lint_s) * 1e3:9.1f} ms (median)")
    print(f"plain forward {statistics.median(plain_s) * 1e3:9.1f} ms (median)")
    print(f"lint / forward: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
