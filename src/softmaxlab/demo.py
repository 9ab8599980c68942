"""``softmaxlab demo``: an offline comparison of output heads on the embedded ``shapes`` data.

Trains each demo variant (a head with its own loss) with three seeds on the same generated
images and writes a Markdown table of mean ± sample standard deviation over the seeds of
test accuracy, NLL and Brier score, and the mean epoch time, followed by one line per
variant on what its row shows. Every run keeps its own run directory under the demo
directory, so any number in the table can be traced to its ``summary.json``. The demo ends
with the report of all its runs (``report.html``, ``report.md``; :mod:`softmaxlab.report`).

The budget (6 variants x 3 seeds x 3 epochs of 5,000 images) is chosen to finish in under
three minutes on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from softmaxlab import runs
from softmaxlab.config import Config, apply_overrides, validate_config
from softmaxlab.data import load_data
from softmaxlab.errors import UserError
from softmaxlab.experiment import run_experiment
from softmaxlab.heads.pitfalls import double_softmax_floor
from softmaxlab.progress import Progress
from softmaxlab.report import format_mean_std, markdown_table
from softmaxlab.report.build import HTML_FILE, write_report
from softmaxlab.stats import aggregate, mean_std


@dataclass(frozen=True)
class DemoVariant:
    """One row of the demo table: a name, the ``head.*`` overrides that make it, and a note.

    ``note`` is formatted with the keys of :func:`_note_values` (for example ``{floor}``).
    """

    name: str
    overrides: tuple[str, ...]
    note: str


DEMO_VARIANTS = (
    DemoVariant("softmax", ("head.name=softmax",), "cross-entropy on the logits; the reference."),
    DemoVariant(
        "log_softmax",
        ("head.name=log_softmax",),
        "NLL on log_softmax outputs: the same model and loss as softmax, so the same numbers to rounding. "
        "A study that finds one clearly better measured something other than the normaliser "
        "(a wrong loss pairing on one side would explain it).",
    ),
    DemoVariant(
        "double_softmax",
        ("head.name=double_softmax",),
        "the pitfall kept on purpose: softmax outputs fed to cross-entropy, which applies softmax again. "
        "Its loss cannot go below ln(1 + (K-1)/e) = {floor:.2f} for K = {classes}, and the second softmax "
        "Jacobian damps its gradients (to 1/K of softmax's at the start).",
    ),
    DemoVariant(
        "temperature",
        ("head.name=temperature", "head.learn_temperature=true"),
        "softmax(z / T) with log T learned with the network from T = 1 (T after training: {temperature}). "
        "T < 1 scales the logits up by 1/T; whether that is why it differs from softmax on this short "
        "budget the demo does not test; with T fixed at 1 this head is exactly softmax.",
    ),
    DemoVariant(
        "gumbel",
        ("head.name=gumbel",),
        "trained on noisy Gumbel-softmax samples (tau = 1), evaluated with the noiseless softmax(z / tau).",
    ),
    DemoVariant(
        "sparsemax",
        ("head.name=sparsemax",),
        "sparsemax with its Fenchel-Young loss: exact zeros in the probabilities. NLL clamps p to 1e-12; "
        "{clamped} of the test images got p = 0 on their true class.",
    ),
)
DEMO_HEADS = tuple(v.name for v in DEMO_VARIANTS)
DEMO_SEEDS = (0, 1, 2)
DEMO_FILE = "demo.md"


def demo_config(variant: str | DemoVariant, seed: int, overrides: list[str] | None = None) -> Config:
    """The config of one demo run: a small simple_cnn on 10-class ``shapes``, 3 epochs.

    ``variant`` is a :class:`DemoVariant` or a head name (then only ``head.name`` is set);
    ``overrides`` (``section.key=value``) change the rest, e.g. to shrink it in tests.
    """
    if isinstance(variant, str):
        variant = DemoVariant(variant, (f"head.name={variant}",), "")
    raw = {
        "name": f"{variant.name}-seed{seed}",
        "data": {"name": "shapes", "num_classes": 10, "train_size": 5000, "val_size": 1000, "test_size": 2000},
        "model": {"name": "simple_cnn", "widths": [16, 32, 64]},
        # channels_last (the default for ReLU models): 1.3-1.4x faster on CPU for this model
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.1, "seed": seed, "channels_last": True},
        # each run's own report without figures: the demo's report draws them for all runs at once
        "report": {"figures": False},
    }
    return validate_config(apply_overrides(raw, [*variant.overrides, *(overrides or [])]), source="demo")


@dataclass
class DemoResult:
    """The demo's directory, its Markdown table, the per-run summaries and its ``report.html``."""

    out_dir: Path
    table: str
    summaries: list[dict[str, Any]]
    report: Path | None = None


def _note_values(variant: DemoVariant, results: list[Any], classes: int) -> dict[str, str | float | int]:
    """Numbers quoted in a variant's note, measured on its runs (mean ± std over seeds)."""
    values: dict[str, str | float | int] = {"floor": double_softmax_floor(classes), "classes": classes}
    temps = [r.history[-1]["head_temperature"] for r in results if "head_temperature" in r.history[-1]]
    if temps:
        values["temperature"] = format_mean_std(*mean_std(temps)[:2], digits=2)
    clamped = [r.summary["test"]["nll_clamped"] for r in results]
    values["clamped"] = format_mean_std(*mean_std(clamped)[:2], digits=1, scale=100) + " %"
    return values


def run_demo(
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    variants: tuple[DemoVariant, ...] = DEMO_VARIANTS,
    seeds: tuple[int, ...] = DEMO_SEEDS,
    overrides: list[str] | None = None,
    report_figures: bool = True,
) -> DemoResult:
    """Run every (variant, seed) demo run and write ``<out_dir>/demo.md``, then the report of
    all the runs, ``<out_dir>/report.html`` and ``report.md`` (with figures unless ``report_figures`` is false)."""
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    with runs.lock_dir(out):  # one demo per directory at a time (each run also locks its own)
        return _run_demo(out, overwrite, progress, variants, seeds, overrides, report_figures)


def _run_demo(
    out: Path,
    overwrite: bool,
    progress: Progress | None,
    variants: tuple[DemoVariant, ...],
    seeds: tuple[int, ...],
    overrides: list[str] | None,
    report_figures: bool,
) -> DemoResult:
    if (out / DEMO_FILE).exists() and not overwrite:
        raise UserError(f"{str(out)!r} already holds a demo; choose another --out or pass --overwrite to replace it")
    configs = [(v, demo_config(v, s, overrides)) for v in variants for s in seeds]
    data = load_data(configs[0][1].data)  # every run sees the same images; only head and seed differ
    results: dict[str, list[Any]] = {v.name: [] for v in variants}
    rows = []
    for variant, cfg in configs:
        result = run_experiment(cfg, out / str(cfg.name), overwrite=overwrite, progress=progress, data=data)
        results[variant.name].append(result)
        rows.append({"variant": variant.name, **result.summary})

    table = _table(rows)
    first = configs[0][1]
    classes = first.data.num_classes
    notes = "\n".join(f"- **{v.name}**: {v.note.format(**_note_values(v, results[v.name], classes))}" for v in variants)
    text = (
        "# softmaxlab demo\n\n"
        f"`{first.model.name}` (widths {first.model.widths}) on `shapes` ({classes} classes, "
        f"{first.data.train_size} training / {first.data.test_size} test images, {data.image_shape[-1]} px), "
        f"{first.train.epochs} epochs, {first.train.optimizer} lr {first.train.lr:g} {first.train.schedule}; "
        f"mean ± sample std over seeds {list(seeds)}. Device: {rows[0]['env']['device']}.\n\n"
        f"{table}\n\n"
        f"{notes}\n\n"
        "Reproduce: `softmaxlab demo`; each run's directory holds its config.yaml, metrics.jsonl and "
        "summary.json, and `softmaxlab run DIR/config.yaml` repeats one run.\n"
    )
    runs.atomic_write_text(out / DEMO_FILE, text)
    write_report(out, figures=report_figures)
    return DemoResult(out, table, [r.summary for v in variants for r in results[v.name]], out / HTML_FILE)


def _table(rows: list[dict[str, Any]]) -> str:
    """The demo's Markdown table: mean ± sample std over each variant's seeds."""
    stats = aggregate(
        rows,
        group_by=["variant"],
        metrics={
            "accuracy": lambda s: s["test"]["accuracy"],
            "nll": lambda s: s["test"]["nll"],
            "brier": lambda s: s["test"]["brier"],
            "epoch_seconds": lambda s: s["timing"]["mean_epoch_seconds"],
        },
    )
    return markdown_table(
        ["head", "test accuracy (%)", "test NLL", "test Brier", "epoch time (s)", "seeds"],
        [
            [
                r["variant"],
                format_mean_std(r["accuracy_mean"], r["accuracy_std"], digits=1, scale=100),
                format_mean_std(r["nll_mean"], r["nll_std"], digits=3),
                format_mean_std(r["brier_mean"], r["brier_std"], digits=3),
                format_mean_std(r["epoch_seconds_mean"], r["epoch_seconds_std"], digits=2),
                r["accuracy_n"],
            ]
            for r in stats
        ],
    )
