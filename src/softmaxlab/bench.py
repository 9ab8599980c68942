"""Cost of each head: forward+backward time and peak memory against the number of classes.

For every head and class count K, one step is what a training step costs the head::

    f = randn(B, F, requires_grad=True)     # stand-in backbone features (their gradient is computed too)
    head.zero_grad(set_to_none=True)        # as fit() does
    head.loss(head(f), randint(K, (B,))).backward()

timed ``repeats`` times after ``warmup`` untimed steps (``torch.cuda.synchronize`` around each
timed step on CUDA), the heads of one class count taking turns step by step; the median,
min and max go into the results. Heads are built by
:func:`softmaxlab.heads.build_head` with their default options and no class hierarchy, so
``hierarchical`` uses its balanced split into round(sqrt(K)) groups.

The first row of every class count is ``linear``, not a head: the final linear layer alone
with loss = mean of the logits, so its step is the (B, F) x (F, K) product forward and the
two products of its backward. It is the floor every head pays; a head's time minus it is
what its normaliser and loss cost.

A combination that cannot run (out of memory, a head that rejects that K, ...) becomes a
row with ``status: "skipped"`` and the reason in ``note``; it never stops the benchmark.

    >>> parse_classes("10, 1000")
    [10, 1000]
"""

from __future__ import annotations

import contextlib
import csv
import io
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichBar

from softmaxlab import heads, runs
from softmaxlab.config import HeadConfig
from softmaxlab.distributed import resolve_device
from softmaxlab.errors import UserError
from softmaxlab.heads import HEADS
from softmaxlab.report.figures import bench_figure, save_png

#: Default class counts of ``softmaxlab bench heads``.
DEFAULT_CLASSES = (10, 100, 1000, 10_000, 100_000)
#: File names written into the output directory.
JSON_NAME, CSV_NAME, PNG_NAME = "bench-heads.json", "bench-heads.csv", "bench-heads.png"
#: Column order of the CSV (and of each JSON result).
COLUMNS = (
    "head",
    "classes",
    "status",
    "median_ms",
    "min_ms",
    "max_ms",
    "peak_bytes",
    "memory_measure",
    "note",
)


@dataclass
class BenchSettings:
    """What every combination shares."""

    batch: int = 256  # B, samples per step
    features: int = 512  # F, the backbone's feature size
    device: str = "cpu"  # "cpu" or "cuda"
    repeats: int = 5  # timed steps per combination (the median is reported)
    warmup: int = 1  # untimed steps first (allocator, lazy init, kernel selection)
    seed: int = 0  # seeds the head's initial weights and the random features / targets


def parse_classes(text: str) -> list[int]:
    """``"10,100"`` -> ``[10, 100]``; raises :class:`UserError` unless every item is an integer >= 2."""
    items = [t.strip() for t in text.split(",")]
    try:
        values = [int(t) for t in items]
    except ValueError:
        bad = next(t for t in items if not t.lstrip("-").isdigit())
        raise UserError(f"--classes: {bad!r} is not an integer; give counts like --classes 10,100,1000") from None
    if any(v < 2 for v in values):
        raise UserError(f"--classes: every class count must be at least 2, got {text!r}")
    return values


#: The row that is not a head: the final linear layer alone (see the module doc).
BASELINE = "linear"


class LinearBaseline(torch.nn.Module):
    """The final linear layer with no normaliser: loss = mean of the logits (its gradient is
    a constant, so backward is the two matrix products and nothing else)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits.mean()

    def step_update(self, step: int, total: int) -> None:
        """Nothing changes with the step (heads such as Gumbel anneal here)."""


def parse_heads(text: str | None) -> list[str]:
    """``"softmax,hierarchical"`` -> the names, each checked against the registry (or
    :data:`BASELINE`); None = the baseline and every head."""
    valid = [BASELINE, *HEADS.names()]
    if text is None:
        return valid
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise UserError(f"--heads: unknown head {unknown[0] if unknown else text!r}; valid: {', '.join(valid)}")
    return names


def _saved_bytes_hooks(counted: dict[int, int]) -> torch.autograd.graph.saved_tensors_hooks:
    """Hooks that record the bytes of each distinct storage autograd saves for the backward pass."""

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout == torch.strided:
            storage = t.untyped_storage()
            counted[storage.data_ptr()] = storage.nbytes()
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


class _Case:
    """One head at one class count, built and warmed up, ready to time one step at a time."""

    def __init__(self, name: str, num_classes: int, s: BenchSettings, device: torch.device) -> None:
        self.s, self.device = s, device
        self.row: dict[str, Any] = {c: None for c in COLUMNS} | {"head": name, "classes": num_classes}
        self.row["memory_measure"] = "cuda_peak_allocated" if device.type == "cuda" else "params+grads+saved"
        self.times: list[float] = []
        torch.manual_seed(s.seed)
        if name == BASELINE:
            self.head = LinearBaseline(s.features, num_classes).to(device).train()
        else:
            self.head = heads.build_head(HeadConfig(name=name), s.features, num_classes).to(device).train()
        gen = torch.Generator(device=device).manual_seed(s.seed)
        self.feats = torch.randn(s.batch, s.features, device=device, generator=gen)
        self.target = torch.randint(0, num_classes, (s.batch,), device=device, generator=gen)
        self.saved: dict[int, int] = {}
        for i in range(s.warmup):
            self.head.step_update(i, s.warmup + s.repeats)
            self.step()
        self.row["peak_bytes"] = self.measure_memory()

    def step(self) -> None:
        """What a training step costs the head (see the module doc)."""
        self.head.zero_grad(set_to_none=True)
        f = self.feats.detach().requires_grad_(True)
        with _saved_bytes_hooks(self.saved):
            loss = self.head.loss(self.head(f), self.target)
        loss.backward()

    def measure_memory(self) -> int:
        """Peak bytes of one step (see :func:`measure_classes`), with nothing else in flight."""
        if self.device.type == "cuda":
            self.head.zero_grad(set_to_none=True)
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self.step()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - before
        else:
            self.saved.clear()
            self.step()
            params = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in self.head.parameters()}
            grads = sum(p.grad.untyped_storage().nbytes() for p in self.head.parameters() if p.grad is not None)
            activations = sum(v for k, v in self.saved.items() if k not in params)
            peak = sum(params.values()) + grads + activations
        self.head.zero_grad(set_to_none=True)  # the gradients of idle cases would hold memory
        return peak

    def time_step(self, i: int) -> None:
        """One timed step (step index ``warmup + i`` for heads that anneal)."""
        self.head.step_update(self.s.warmup + i, self.s.warmup + self.s.repeats)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - t0)
        self.head.zero_grad(set_to_none=True)

    def result(self) -> dict[str, Any]:
        t = self.times
        return self.row | {
            "status": "ok",
            "median_ms": 1000 * statistics.median(t),
            "min_ms": 1000 * min(t),
            "max_ms": 1000 * max(t),
        }


def _skipped(name: str, num_classes: int, exc: BaseException) -> dict[str, Any]:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    row = {c: None for c in COLUMNS} | {"head": name, "classes": num_classes, "status": "skipped"}
    return row | {"note": f"{type(exc).__name__}: {message}"[:300]}


#: What makes a combination a ``skipped`` row instead of an error (out of memory is a RuntimeError).
_SKIP = (RuntimeError, MemoryError, ValueError, UserError)


def measure_classes(names: Sequence[str], num_classes: int, s: BenchSettings) -> list[dict[str, Any]]:
    """Time and memory of every head in ``names`` at ``num_classes`` classes, one row each.

    Every head is built and warmed up first; then the timed steps go round the heads,
    ``repeats`` rounds, each round in a rotated order, so that a drift in machine speed hits
    every head alike instead of the heads measured during it. Gradients are released after
    each step, so only the heads' parameters stay allocated between their steps.

    Peak memory is measured on a separate step of each head before the timing:

    * CUDA: ``torch.cuda.max_memory_allocated`` over the step minus the memory allocated
      before it (the head's parameters and the inputs are not counted), i.e. the step's own
      peak: activations, gradients and every transient buffer
      (``memory_measure: "cuda_peak_allocated"``).
    * CPU: the bytes of the head's parameters, their gradients and the distinct tensor
      storages autograd saved for the backward pass during the step, parameters already
      counted not counted twice (``memory_measure: "params+grads+saved"``). Transient
      buffers that live and die inside one operation are not included: it is a lower
      bound of the step's peak, and it is exactly what scales with K for every head.
    """
    device = resolve_device(s.device, "--device")
    rows: dict[str, dict[str, Any]] = {}
    cases: dict[str, _Case] = {}
    try:
        for name in names:
            try:
                cases[name] = _Case(name, num_classes, s, device)
            except _SKIP as exc:
                rows[name] = _skipped(name, num_classes, exc)
        order = list(cases)
        for i in range(s.repeats):
            shift = i % len(order) if order else 0
            for name in order[shift:] + order[:shift]:
                if name in rows:
                    continue  # failed in an earlier round
                try:
                    cases[name].time_step(i)
                except _SKIP as exc:
                    rows[name] = _skipped(name, num_classes, exc)
        for name, case in cases.items():
            rows.setdefault(name, case.result())
    finally:
        cases.clear()  # free the 100,000-class layers before the next class count
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return [rows[name] for name in names]


def bench_heads(
    classes: Sequence[int] = DEFAULT_CLASSES,
    heads: Sequence[str] | None = None,
    settings: BenchSettings | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every head in ``heads`` (default: all registered) at every class count.

    Returns ``{"settings": ..., "env": ..., "results": [row, ...]}`` with one row per
    (class count, head), class counts in the outer loop, heads interleaved within a class
    count (:func:`measure_classes`); ``on_result`` is called after each row (a progress bar).
    """
    s = settings or BenchSettings()
    names = list(heads) if heads is not None else parse_heads(None)
    resolve_device(s.device, "--device")
    results = []
    for k in classes:
        for row in measure_classes(names, k, s):
            results.append(row)
            if on_result is not None:
                on_result(row)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if s.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return {"settings": asdict(s), "env": env, "results": results}


@contextlib.contextmanager
def progress_bar(console: Console, total: int) -> Iterator[Callable[[dict[str, Any]], None]]:
    """An ``on_result`` callback that advances a rich bar on a terminal; silent otherwise (logs, CI)."""
    if not (console.is_terminal and sys.stderr.isatty()):
        yield lambda row: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with RichBar(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("bench heads", total=total)

        def advance(row: dict[str, Any]) -> None:
            bar.update(task, advance=1, description=f"bench heads: {row['head']} K={row['classes']:,}")

        yield advance


def to_csv(results: Sequence[dict[str, Any]]) -> str:
    """The result rows as CSV text with the :data:`COLUMNS` header."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in results:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return buf.getvalue()


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A plain-text table: one line per head, the median ms at each class count (``skip`` when skipped)."""
    classes = sorted({r["classes"] for r in results})
    heads = list(dict.fromkeys(r["head"] for r in results))
    cell = {(r["head"], r["classes"]): r for r in results}
    width = max([len("head"), *map(len, heads)])
    lines = [f"{'median ms':<{width}} " + " ".join(f"{'K=' + format(k, ','):>11}" for k in classes)]
    for name in heads:
        cells = []
        for k in classes:
            r = cell.get((name, k))
            cells.append("" if r is None else "skip" if r["status"] != "ok" else f"{r['median_ms']:.2f}")
        lines.append(f"{name:<{width}} " + " ".join(f"{c:>11}" for c in cells))
    largest = classes[-1] if classes else None
    peaks = [cell.get((n, largest)) for n in heads]
    if largest is not None and any(r and r["peak_bytes"] for r in peaks):
        lines.append(
            f"peak MB at K={largest:,}: "
            + ", ".join(
                f"{r['head']} {r['peak_bytes'] / 2**20:.1f}" for r in peaks if r and r["peak_bytes"] is not None
            )
        )
    skipped = [r for r in results if r["status"] != "ok"]
    lines += [f"skipped {r['head']} at K={r['classes']}: {r['note']}" for r in skipped]
    return "\n".join(lines)


def write_results(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``bench-heads.json``, ``bench-heads.csv`` and ``bench-heads.png`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    paths = {"json": out / JSON_NAME, "csv": out / CSV_NAME, "png": out / PNG_NAME}
    try:
        runs.atomic_write_json(paths["json"], report)
        runs.atomic_write_text(paths["csv"], to_csv(report["results"]))
    except OSError as exc:
        raise UserError(f"cannot write into {str(out)!r}: {exc.strerror or exc}; choose another --out") from None
    s = report["settings"]
    title = f"head forward+backward, batch {s['batch']}, {s['features']} features, {s['device']}"
    save_png(bench_figure(report["results"], title), paths["png"])
    return paths
