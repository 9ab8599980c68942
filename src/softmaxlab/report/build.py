"""``softmaxlab report DIR``: the HTML and Markdown report of a run or a directory of runs.

The report is rebuilt from files on disk only (:func:`softmaxlab.runs.read_run`), so it
works on old runs and takes about a second. Runs are grouped into variants (everything in
the config but the seed); every number is the mean ± sample standard deviation over a
variant's finished runs (:func:`softmaxlab.stats.aggregate`). Diverged and unfinished runs
are listed, marked, and left out of the means. A metric or figure that the runs did not
record (older runs) is left out with one line saying so.

Sections, in order (their anchors in brackets): the comparison of variants [comparison]
(with each variant's difference to the reference variant and its significance, see
:mod:`softmaxlab.report.significance`), every run [runs] (directories of several runs),
learning curves [learning-curves], confusion matrices [confusion], reliability diagrams
[reliability], gradient norms [gradients], activation statistics per block [activations],
feature maps [feature-maps], accuracy against tau [gumbel] (Gumbel runs only), epoch time
[epoch-time], commands and configs [commands], environment [environment].

``report.html`` is one self-contained file (figures embedded as base64 PNG, inline CSS and
JavaScript, no network requests); ``report.md`` has the same tables and notes, with the
figures as PNG files in ``figures/`` beside it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.colors import to_hex

from softmaxlab import runs
from softmaxlab.dotted import flatten
from softmaxlab.errors import UserError
from softmaxlab.metrics import HIGHER_IS_BETTER
from softmaxlab.report.document import Cell, Code, Image, Note, Report, Section, Table
from softmaxlab.report.figures import (
    FEW_IMAGES_LABEL,
    MAX_ANNOTATED_CLASSES,
    activation_stats_figure,
    confusion_figure,
    epoch_time_figure,
    figure_png,
    grad_norm_figure,
    gumbel_tau_figure,
    learning_curves_figure,
    reliability_figure,
)
from softmaxlab.report.html import render_html
from softmaxlab.report.markdown import format_mean_std, render_markdown
from softmaxlab.report.rundata import Variant, finite, format_value, group_variants
from softmaxlab.report.significance import (
    DIFFERENCES,
    SIGNIFICANT,
    CompareTo,
    at_chance_level,
    choose_reference,
    classes_of,
    difference_table,
    read_compare_to,
    significant_best,
    variant_marks,
)
from softmaxlab.runs import RunRecord, find_run_dirs, read_run
from softmaxlab.stats import mean_std

HTML_FILE = runs.REPORT_HTML
MARKDOWN_FILE = runs.REPORT_MD
#: Where report.md's figures are written, beside it (a run directory's own figures folder).
FIGURES_DIR = runs.FIGURES
FORMATS = {"html": ("html",), "md": ("md",), "both": ("html", "md")}
#: The sections made of figures drawn here, by anchor, with their titles.
FIGURE_SECTIONS = {
    "learning-curves": "Learning curves",
    "confusion": "Confusion matrices",
    "reliability": "Calibration: reliability diagrams",
    "gradients": "Gradient norms per layer",
    "activations": "Activation statistics per block",
    "gumbel": "Gumbel-softmax: accuracy against tau",
    "epoch-time": "Epoch time",
}


@dataclass(frozen=True)
class Column:
    """A metric column: where its value is in a run, how it is shown, which way is better.

    ``higher`` is None for a value with no better direction (no best marked).
    """

    key: str
    header: str
    get: Callable[[RunRecord], float | None]
    digits: int = 3
    scale: float = 1.0
    higher: bool | None = None
    hint: str = ""


def _test(key: str) -> Callable[[RunRecord], float | None]:
    return lambda r: finite(r.test.get(key))


def _timing(key: str) -> Callable[[RunRecord], float | None]:
    return lambda r: finite((r.summary.get("timing") or {}).get(key))


def _band(r: RunRecord, key: str) -> float | None:
    """``p95`` of the run's ``test.<key>`` ECE band, None without one."""
    band = r.test.get(key)
    return finite(band.get("p95")) if isinstance(band, dict) else None


def _direction(key: str, default: bool | None) -> bool | None:
    return HIGHER_IS_BETTER.get(key, default)


#: Fractions shown as percentages with one decimal.
PERCENT: dict[str, Any] = {"digits": 1, "scale": 100.0}
COLUMNS = (
    Column("accuracy", "accuracy (%)", _test("accuracy"), **PERCENT, higher=_direction("accuracy", True)),
    Column("top5", "top-5 (%)", _test("top5"), **PERCENT, higher=_direction("top5", True)),
    Column("f1_macro", "F1 (%)", _test("f1_macro"), **PERCENT, higher=_direction("f1_macro", True), hint="macro mean"),
    Column("nll", "NLL", _test("nll"), digits=3, higher=_direction("nll", False), hint="negative log-likelihood, nats"),
    Column(
        "ece",
        "ECE (%)",
        _test("ece"),
        digits=2,
        scale=100.0,
        higher=_direction("ece", False),
        hint="expected calibration error, 15 confidence bins",
    ),
    Column(
        "ece_band",
        "ECE band p95 (%)",
        lambda r: _band(r, "ece_band"),
        digits=2,
        scale=100.0,
        hint="the ECE that a perfectly calibrated model with these confidences exceeds 5 % of the time on this "
        "many test images: an ECE below it is no evidence of miscalibration",
    ),
    Column(
        "ece_after_temperature",
        "ECE after T (%)",
        _test("ece_after_temperature"),
        digits=2,
        scale=100.0,
        higher=_direction("ece_after_temperature", False),
        hint="ECE after temperature scaling fitted on the validation split",
    ),
    Column(
        "ece_band_after_temperature",
        "ECE band p95 after T (%)",
        lambda r: _band(r, "ece_band_after_temperature"),
        digits=2,
        scale=100.0,
        hint="the ECE band (see ECE band p95) of the temperature-scaled probabilities",
    ),
    Column("temperature", "T", lambda r: finite(r.summary.get("temperature")), digits=2, hint="fitted temperature"),
    Column("epoch_seconds", "epoch time (s)", _timing("mean_epoch_seconds"), digits=2, higher=False),
    Column(
        "images_per_second",
        "images/s",
        _timing("train_images_per_second"),
        digits=0,
        higher=True,
        hint="training images per second, median over the epochs at full image size",
    ),
)


#: The columns of the main comparison table; the others go to a second table ("further
#: metrics and cost"), so that the first fits a 1,400 px window with a dozen variants.
MAIN_COLUMNS = ("accuracy", "f1_macro", "nll", "ece", "ece_band")


# --------------------------------------------------------------------------- tables


def _metric_cell(v: Variant, col: Column, best: bool, interval: bool) -> Cell:
    """``mean ± std`` over the variant's finished runs; one run's value alone, with its 95 %
    bootstrap interval (``test.ci95.<key>``) when ``interval``."""
    have = [r for r in v.finished if col.get(r) is not None]
    m, s, n = mean_std([col.get(r) for r in have])
    if not n:
        return Cell("n/a")
    if n > 1:
        return Cell(format_mean_std(m, s, digits=col.digits, scale=col.scale), m * col.scale, best=best)
    text = f"{m * col.scale:.{col.digits}f}"  # one run: no spread to show
    ci = (have[0].test.get("ci95") or {}).get(col.key) if isinstance(have[0].test.get("ci95"), dict) else None
    if interval and isinstance(ci, list) and len(ci) == 2 and all(finite(x) is not None for x in ci):
        text += f" [{ci[0] * col.scale:.{col.digits}f}, {ci[1] * col.scale:.{col.digits}f}]"
    return Cell(text, m * col.scale, best=best)


def _present(columns: Sequence[Column], records: Sequence[RunRecord]) -> tuple[list[Column], list[Column]]:
    """(columns some finished run has a value for, columns none has)."""
    done = [r for r in records if r.status == "finished"]
    have = [c for c in columns if any(c.get(r) is not None for r in done)]
    return have, [c for c in columns if c not in have]


def _missing_note(missing: Sequence[Column], records: Sequence[RunRecord]) -> Note | None:
    if not missing or not any(r.status == "finished" for r in records):
        return None
    names = ", ".join(c.header for c in missing)
    return Note(f"Not recorded by these runs (older runs, or not applicable to their heads), so left out: {names}.")


def _status_text(v: Variant) -> tuple[str, str | None]:
    counts: dict[str, int] = {}
    for r in v.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    n = len(v.runs)
    if counts.get("finished", 0) == n:
        return "finished", None
    if counts.get("finished", 0) == 0:
        only = next(iter(counts)) if len(counts) == 1 else "not finished"
        return only, "diverged" if "diverged" in counts else "unfinished"
    parts = [f"{k} of {n} {s}" for s, k in counts.items() if s != "finished"]
    return ", ".join(parts), "partial"


def _config(r: RunRecord, key: str, default: Any = "?") -> Any:
    """The run's config value at the dotted ``key``; ``default`` where config.yaml lacks it."""
    return flatten(r.config).get(key, default)


def _describe(v: Variant) -> list[Cell]:
    """The cells that say what a variant is: label, head, activation, model, data, seeds, status."""
    first = v.runs[0]
    status, mark = _status_text(v)
    chance = [m for m in variant_marks(v) if m != "diverged"]  # a divergence is in the status already
    status = ", ".join([status, *chance])
    mark = mark or ("chance" if "chance level" in chance else None)  # greyed only when every run is
    seeds = sorted({str(r.seed) for r in v.runs})
    n_text = str(len(v.runs)) if len(v.finished) == len(v.runs) else f"{len(v.finished)} of {len(v.runs)}"
    classes = first.summary.get("classes")
    data = str(_config(first, "data.name", first.summary.get("dataset", "?")))
    data = f"{data}, {len(classes)} classes" if isinstance(classes, list) else data
    what = [
        str(_config(first, key, first.summary.get(fallback, "?")))
        for key, fallback in (("head.name", "head"), ("model.activation", "activation"), ("model.name", "model"))
    ]
    return [
        Cell(v.label, v.label, status=mark, wrap=True),
        *(Cell(text, text) for text in what),
        Cell(data, data),
        Cell(f"{n_text} ({', '.join(seeds)})", len(v.finished)),
        Cell(status, status, wrap=True),
    ]


COMPARISON_NOTES = (
    "Mean ± sample standard deviation over each variant's finished runs (a single run: its value and, in a "
    "one-run report, its 95 % bootstrap interval over the test images). Click a column header to sort.",
    "Bold: the best mean of a column, and only where it beats the runner-up by a paired t-test over the seeds "
    "both ran (p < 0.05). A variant that diverged, or whose test accuracy is at chance level (its 95 % interval "
    "reaches 1/K for K classes), is marked in its row and never bold.",
    "ECE band p95: the ECE a perfectly calibrated model with the same confidences would exceed in 5 % of draws "
    "on this many test images; an ECE below it is no evidence of miscalibration.",
)


def comparison_section(
    variants: Sequence[Variant],
    records: Sequence[RunRecord],
    compare_to: CompareTo | None = None,
    notes: Sequence[str] = (),
) -> Section:
    """One row per variant: what it is, its seeds, and each metric as mean ± std over seeds
    (the main metrics, then further metrics and cost in a second table), then the difference
    of every variant to the reference (:func:`~softmaxlab.report.significance.choose_reference`
    of ``compare_to``; ``notes`` are the notes of reading it)."""
    columns, missing = _present(COLUMNS, records)
    bests = {c.key: significant_best(variants, c.get, c.higher) for c in columns}
    interval = len(records) == 1
    main = [c for c in columns if c.key in MAIN_COLUMNS]
    other = [c for c in columns if c.key not in MAIN_COLUMNS]
    rows, more = [], []
    for v in variants:
        cells = {c.key: _metric_cell(v, c, bests[c.key] is v, interval) for c in columns}
        rows.append([*_describe(v), *(cells[c.key] for c in main)])
        more.append([Cell(v.label, v.label, status=rows[-1][0].status, wrap=True), *(cells[c.key] for c in other)])
    headers = ["variant", "head", "activation", "model", "data", "seeds", "status", *(c.header for c in main)]
    hints = {c.header: c.hint for c in columns}
    hints["seeds"] = "finished runs (the seeds of all runs)"
    blocks: list[Any] = [Note(text) for text in COMPARISON_NOTES]
    shared = _drop_shared(headers, rows, ("activation", "model", "data")) if len(rows) > 1 else []
    if shared:
        blocks.append(Note(f"Shared by every variant: {', '.join(shared)}."))
    blocks.append(Table("comparison", headers, rows, hints))
    if other:
        title = "Further metrics and cost"
        blocks.append(Table("comparison-more", ["variant", *(c.header for c in other)], more, hints, title=title))
    note = _missing_note(missing, records)
    if note:
        blocks.append(note)
    blocks += _difference_blocks(variants, records, compare_to, notes)
    return Section("comparison", "Comparison of variants", blocks)


def _drop_shared(headers: list[str], rows: list[list[Cell]], candidates: Sequence[str]) -> list[str]:
    """Remove the ``candidates`` columns whose text is the same in every row (in place), so the
    table has room for the variants' labels; returns ``"<header> <value>"`` of each removed."""
    shared = []
    for name in candidates:
        i = headers.index(name)
        values = {row[i].text for row in rows}
        if len(values) == 1:
            shared.append(f"{name} {values.pop()}")
            del headers[i]
            for row in rows:
                del row[i]
    return shared


def _difference_blocks(
    variants: Sequence[Variant], records: Sequence[RunRecord], compare_to: CompareTo | None, notes: Sequence[str]
) -> list[Any]:
    """The table of differences to the reference with its legend and notes (a note alone with one variant)."""
    if len(variants) < 2:
        return [Note("One variant: no other to compare it to, so no differences or tests.")]
    reference, chosen = choose_reference(variants, compare_to)
    done = [r for r in records if r.status == "finished"]
    metrics = [m for m in DIFFERENCES if any(finite(r.test.get(m)) is not None for r in done)]
    if not metrics:
        return [Note("No finished run has a test metric to compare.")]
    table, problems = difference_table(variants, reference, metrics)
    legend = (
        f"Each variant − the reference ({reference.label}), mean over the seeds both ran, [95 % t interval]; "
        "accuracy, F1 and ECE in percentage points; higher is better for accuracy and F1, lower for NLL and ECE. "
        f"{SIGNIFICANT} significant: p_holm < 0.05, the paired t-test over seeds with Holm's correction over the "
        f"{len(variants) - 1} variants compared (per metric); otherwise not significant. McNemar p: the exact test "
        "on which test images each gets right, seeds pooled (not corrected)."
    )
    return [*(Note(n) for n in (*notes, *chosen)), Note(legend), table, *(Note(n) for n in problems)]


def runs_section(records: Sequence[RunRecord], root: Path) -> Section:
    """One row per run, diverged, unfinished and chance-level runs marked; no value is bolded
    (one run against another is no test)."""
    wanted = ("accuracy", "nll", "ece", "epoch_seconds")
    columns = [c for c in _present(COLUMNS, records)[0] if c.key in wanted]
    rows = []
    for r in records:
        status, mark = r.status, None
        if r.status == "diverged":
            epoch = (r.summary.get("diverged") or {}).get("epoch")
            status, mark = (f"diverged at epoch {epoch}" if epoch else "diverged"), "diverged"
        elif r.status != "finished":
            mark = "unfinished"
        elif at_chance_level(r):
            status, mark = "finished, chance level", "chance"
        cells = [
            Cell(r.name, r.name, status=mark, wrap=True),
            Cell(r.variant, r.variant, wrap=True),
            Cell(str(r.seed), finite(r.seed) if finite(r.seed) is not None else str(r.seed)),
            Cell(status, status),
            Cell(str(len(r.history)), len(r.history)),
        ]
        for c in columns:
            v = c.get(r) if r.status == "finished" else None
            if v is None:
                cells.append(Cell("n/a"))
            else:
                cells.append(Cell(f"{v * c.scale:.{c.digits}f}", v * c.scale))
        where = _relative(r.path, root)
        cells.append(Cell(where, where, wrap=True))
        rows.append(cells)
    headers = ["run", "variant", "seed", "status", "epochs", *(c.header for c in columns), "directory"]
    return Section(
        "runs",
        "Runs",
        [
            Note("Every run on its own; diverged and unfinished runs are left out of the comparison's means."),
            Table("runs", headers, rows, {c.header: c.hint for c in columns}),
        ],
    )


# --------------------------------------------------------------------------- figures


def _image(name: str, fig: Any, alt: str, caption: str = "") -> Image:
    return Image(name, figure_png(fig), alt, caption)


def _chance_levels(variants: Sequence[Variant]) -> list[float]:
    """The distinct chance accuracies 1/K of the runs (K from the summary, else ``data.num_classes``)."""
    levels = set()
    for r in (r for v in variants for r in v.runs):
        k = classes_of(r) or finite(_config(r, "data.num_classes", None))
        if k:
            levels.add(1.0 / k)
    return sorted(levels)


def curves_section(variants: Sequence[Variant]) -> Section:
    """Loss and accuracy per epoch, training and validation, a line (and band) per variant."""
    with_history = [(v.label, v.color, [r.history for r in v.runs if r.history]) for v in variants]
    with_history = [t for t in with_history if t[2]]
    if not with_history:
        return Section("learning-curves", FIGURE_SECTIONS["learning-curves"], [Note("No run has a metrics.jsonl yet.")])
    fig = learning_curves_figure(with_history, _chance_levels(variants))
    caption = "Validation solid, training dashed (training numbers are measured with augmentation, as trained); "
    caption += "the dotted line is chance level, 1/K for K classes."
    if any(len(v.runs) > 1 for v in variants):
        caption += " Lines are means over seeds; bands are ± one standard deviation."
    image = _image("learning_curves", fig, "loss and accuracy per epoch", caption)
    return Section("learning-curves", FIGURE_SECTIONS["learning-curves"], [image])


def _summed_confusion(records: Sequence[RunRecord]) -> list[list[float]] | None:
    matrices = [r.test.get("confusion_matrix") for r in records]
    matrices = [m for m in matrices if isinstance(m, list) and m]
    if not matrices:
        return None
    k = len(matrices[0])
    same = [m for m in matrices if len(m) == k]
    return [[sum(m[i][j] for m in same) for j in range(k)] for i in range(k)]


def _mean_metric(records: Sequence[RunRecord], key: str) -> float | None:
    m, _, n = mean_std([v for v in (finite(r.test.get(key)) for r in records) if v is not None])
    return m if n else None


def confusion_section(variants: Sequence[Variant]) -> Section:
    """Row-normalised confusion matrices: of the best and the worst variant (by mean test
    accuracy, summed over seeds), or of every run when there is one variant."""
    title = FIGURE_SECTIONS["confusion"]
    have = [v for v in variants if _summed_confusion(v.finished) is not None]
    if not have:
        return Section("confusion", title, [Note("No finished run has test.confusion_matrix: no matrices.")])
    blocks: list[Any] = [Note("Each cell is the percentage of its row's (true class's) test images.")]
    k = max(len(_summed_confusion(v.finished) or []) for v in have)
    if k > MAX_ANNOTATED_CLASSES:
        blocks.append(Note(f"{k} classes: the cells are colour only, numbers that small could not be read."))
    if len(have) == 1:
        v = have[0]
        for i, r in enumerate(v.finished):
            cm = r.test.get("confusion_matrix")
            if not isinstance(cm, list):
                continue
            acc = finite(r.test.get("accuracy"))
            label = f"{v.label}, {r.name}" + (f": accuracy {acc * 100:.1f} %" if acc is not None else "")
            name = "confusion" if len(v.finished) == 1 else f"confusion-{i}"
            fig = confusion_figure(cm, r.summary.get("classes") or [], label)
            blocks.append(_image(name, fig, f"confusion matrix of {r.name}"))
        return Section("confusion", title, blocks)
    ranked = sorted(have, key=lambda v: _mean_metric(v.finished, "accuracy") or 0.0, reverse=True)
    for which, v in (("best", ranked[0]), ("worst", ranked[-1])):
        acc = _mean_metric(v.finished, "accuracy")
        n = len(v.finished)
        label = f"{which}: {v.label}, mean accuracy {acc * 100:.1f} %" if acc is not None else f"{which}: {v.label}"
        fig = confusion_figure(_summed_confusion(v.finished), v.finished[0].summary.get("classes") or [], label)
        caption = f"The {which} variant by mean test accuracy" + (f", summed over its {n} runs." if n > 1 else ".")
        blocks.append(_image(f"confusion_{which}", fig, f"confusion matrix of the {which} variant", caption))
    return Section("confusion", title, blocks)


def combined_bins(records: Sequence[RunRecord], key: str) -> tuple[list, list, list] | None:
    """One reliability diagram from several runs' ``test.<key>``: counts summed, per-bin
    confidence and accuracy averaged weighted by count. None when no run has it.

    >>> a = RunRecord(Path("a"), {}, {"test": {"r": {"count": [2, 0], "confidence": [0.5, None],
    ...     "accuracy": [0.5, None]}}}, [])
    >>> b = RunRecord(Path("b"), {}, {"test": {"r": {"count": [2, 1], "confidence": [0.25, 0.75],
    ...     "accuracy": [0.0, 1.0]}}}, [])
    >>> combined_bins([a, b], "r")
    ([0.375, 0.75], [0.25, 1.0], [4, 1])
    """
    found = [r.test.get(key) for r in records]
    found = [d for d in found if isinstance(d, dict) and isinstance(d.get("count"), list)]
    if not found:
        return None
    k = len(found[0]["count"])
    found = [d for d in found if len(d["count"]) == k]
    confidence, accuracy, count = [], [], []
    for b in range(k):
        n = sum(d["count"][b] or 0 for d in found)
        conf = [(d["confidence"][b], d["count"][b]) for d in found if d["count"][b] and d["confidence"][b] is not None]
        acc = [(d["accuracy"][b], d["count"][b]) for d in found if d["count"][b] and d["accuracy"][b] is not None]
        w_conf, w_acc = sum(w for _, w in conf), sum(w for _, w in acc)
        confidence.append(sum(x * w for x, w in conf) / w_conf if w_conf else None)
        accuracy.append(sum(x * w for x, w in acc) / w_acc if w_acc else None)
        count.append(n)
    return confidence, accuracy, count


def _ece_label(v: Variant, ece_key: str) -> str:
    """``label (ECE 3.10 %, band p95 3.60 %)``: the mean ECE and ECE band over the variant's runs."""
    ece = _mean_metric(v.finished, ece_key)
    if ece is None:
        return v.label
    band_key = "ece_band" if ece_key == "ece" else "ece_band_after_temperature"
    m, _, n = mean_std([b for b in (_band(r, band_key) for r in v.finished) if b is not None])
    band = f", band p95 {m * 100:.2f} %" if n else ""
    return f"{v.label} (ECE {ece * 100:.2f} %{band})"


def reliability_section(variants: Sequence[Variant]) -> Section:
    """Reliability diagrams before and after temperature scaling, a line per variant."""
    title = FIGURE_SECTIONS["reliability"]
    panels = []
    blocks: list[Any] = []
    for key, ece_key, panel in (
        ("reliability", "ece", "before temperature scaling"),
        ("reliability_after_temperature", "ece_after_temperature", "after temperature scaling"),
    ):
        lines = []
        for v in variants:
            bins = combined_bins(v.finished, key)
            if bins is None:
                continue
            lines.append((_ece_label(v, ece_key), v.color, *bins))
        if lines:
            panels.append((panel, lines))
        elif panel.startswith("before"):
            blocks.append(Note("No finished run has test.reliability (runs from before calibration was recorded)."))
        else:
            blocks.append(Note("No finished run has test.reliability_after_temperature: no diagram after scaling."))
    if panels:
        fig = reliability_figure(panels)
        caption = (
            "Accuracy against mean confidence in 15 equal-width confidence bins (seeds pooled); points below the "
            f"diagonal are over-confident. Hollow circles: a {FEW_IMAGES_LABEL}, too few for its accuracy to mean "
            "much. Below each diagram: the share of each variant's test images in each bin. The ECE band p95 is "
            "the ECE a perfectly calibrated model with these confidences exceeds in 5 % of draws."
        )
        blocks.insert(0, _image("reliability", fig, "reliability diagrams", caption))
    notes = {}
    for v in variants:
        for r in v.finished:
            if (
                "temperature" in r.summary
                and r.summary.get("temperature") is None
                and r.summary.get("temperature_note")
            ):
                notes.setdefault(f"{v.label}: no temperature scaling ({r.summary['temperature_note']})", None)
    blocks.extend(Note(n) for n in notes)
    return Section("reliability", title, blocks)


def gradients_section(variants: Sequence[Variant]) -> Section:
    """Per-layer gradient-norm curves, when the runs recorded ``grad_norms``."""
    title = FIGURE_SECTIONS["gradients"]
    data = [
        (v.label, v.color, [r.history for r in v.runs if any(x.get("grad_norms") for x in r.history)]) for v in variants
    ]
    data = [t for t in data if t[2]]
    if not data:
        return Section(
            "gradients", title, [Note("No run recorded grad_norms (diagnostics.enabled: false, or no epoch yet).")]
        )
    fig = grad_norm_figure(data)
    caption = "Mean L2 norm of each layer's weight gradient over an epoch's steps (log scale); a layer whose "
    caption += "norm falls by orders of magnitude gets (almost) no learning signal."
    return Section("gradients", title, [_image("grad_norms", fig, "gradient norm per layer and epoch", caption)])


def _final_activation_stats(history: Sequence[dict]) -> dict | None:
    """``activation_stats`` of the last epoch record that has any (None when none has)."""
    found = [r["activation_stats"] for r in history if isinstance(r.get("activation_stats"), dict)]
    found = [f for f in found if f]
    return found[-1] if found else None


def activations_section(variants: Sequence[Variant]) -> Section:
    """Each block's output mean, std and near-zero fraction at the last epoch, per variant."""
    title = FIGURE_SECTIONS["activations"]
    data = []
    for v in variants:
        finals = [f for f in (_final_activation_stats(r.history) for r in v.runs) if f]
        if finals:
            data.append((v.label, v.color, finals))
    if not data:
        note = "No run recorded activation_stats (diagnostics.enabled: false, or runs from before they were recorded)."
        return Section("activations", title, [Note(note)])
    caption = "Each block's output on the fixed validation probe at the last epoch (bars: mean over seeds, "
    caption += "± one standard deviation): a block whose outputs are almost all near zero passes little signal on."
    fig = activation_stats_figure(data)
    return Section("activations", title, [_image("activation_stats", fig, "activation statistics per block", caption)])


def feature_maps_section(variants: Sequence[Variant], root: Path) -> Section:
    """Each variant's ``figures/feature_maps.png`` (its first run that has one)."""
    title = "Feature maps"
    blocks: list[Any] = []
    for v in variants:
        for r in v.runs:
            path = r.path / FIGURES_DIR / "feature_maps.png"
            if path.is_file():
                caption = f"{v.label}: {r.name}, each block's output for the first validation image."
                image = Image(f"feature_maps-{len(blocks)}", path.read_bytes(), f"feature maps of {r.name}", caption)
                image.source = path
                blocks.append(image)
                break
    if not blocks:
        blocks.append(Note("No run has figures/feature_maps.png (diagnostics.enabled: false, or not finished)."))
    return Section("feature-maps", title, blocks)


def gumbel_section(variants: Sequence[Variant]) -> Section | None:
    """Accuracy against tau for the Gumbel-softmax variants; None when there are none."""
    gumbel = [v for v in variants if _config(v.runs[0], "head.name", v.runs[0].summary.get("head")) == "gumbel"]
    if not gumbel:
        return None
    title = FIGURE_SECTIONS["gumbel"]
    per_epoch = []
    for v in gumbel:
        taus = [t for r in v.runs for t in (finite(x.get("tau")) for x in r.history) if t is not None]
        if taus and max(taus) - min(taus) > 1e-9:
            per_epoch.append((v.label, v.color, [r.history for r in v.runs]))
    per_setting = []
    for v in gumbel:
        tau0 = finite(_config(v.runs[0], "head.tau", None))
        m, s, n = mean_std([a for a in (finite(r.test.get("accuracy")) for r in v.finished) if a is not None])
        if tau0 is not None and n:
            per_setting.append((v.label, v.color, tau0, m, s))
    if len({t[2] for t in per_setting}) < 2:
        per_setting = []
    if not per_epoch and not per_setting:
        taus = sorted({format_value(_config(v.runs[0], "head.tau", "?")) for v in gumbel})
        return Section(
            "gumbel",
            title,
            [
                Note(
                    f"tau was constant ({', '.join(taus)}) in every Gumbel run, so there is no curve: anneal it "
                    "(head.tau_schedule=exponential) or compare several head.tau values."
                )
            ],
        )
    fig = gumbel_tau_figure(per_epoch, per_setting)
    caption = "Validation accuracy at each epoch against that epoch's tau, and/or test accuracy per starting tau."
    return Section("gumbel", title, [_image("gumbel_tau", fig, "accuracy against tau", caption)])


def epoch_time_section(variants: Sequence[Variant]) -> Section:
    """Mean epoch time per variant as bars (two or more variants)."""
    title = FIGURE_SECTIONS["epoch-time"]
    bars = []
    for v in variants:
        m, s, n = mean_std([t for t in (_timing("mean_epoch_seconds")(r) for r in v.finished) if t is not None])
        if n:
            bars.append((v.label, v.color, m, s))
    if not bars:
        return Section("epoch-time", title, [Note("No finished run has timing.mean_epoch_seconds.")])
    if len(bars) == 1:
        return Section("epoch-time", title, [Note(f"One variant: {bars[0][2]:.2f} s per epoch (see the table).")])
    fig = epoch_time_figure(bars)
    caption = "Mean training time per epoch (± one standard deviation over seeds); compare only runs on one device."
    return Section("epoch-time", title, [_image("epoch_time", fig, "epoch time per variant", caption)])


# --------------------------------------------------------------------------- provenance


def commands_section(records: Sequence[RunRecord]) -> Section:
    """Per run: the command that reproduces it and its resolved config.yaml."""
    blocks: list[Any] = []
    for r in records:
        try:
            config = (r.path / runs.CONFIG).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            config = "(config.yaml could not be read)\n"
        blocks.append(Code(f"{r.name} ({r.status}): command", r.command, "bash"))
        message = (r.summary.get("diverged") or {}).get("message")
        if message:
            blocks.append(Note(f"{r.name}: {message}"))
        for problem in r.problems:
            blocks.append(Note(f"{r.name}: {problem}"))
        blocks.append(Code(f"{r.name}: config.yaml", config, "yaml", collapsed=True))
    return Section("commands", "Commands and configs", blocks)


def environment_section(records: Sequence[RunRecord]) -> Section:
    """The ``env`` of the runs: one value per key, or each distinct value with its run count."""
    envs = [r.summary.get("env") for r in records]
    envs = [e for e in envs if isinstance(e, dict)]
    if not envs:
        return Section("environment", "Environment", [Note("No run has a summary.json with env yet.")])
    keys = list(dict.fromkeys(k for e in envs for k in e if k != "seed"))
    rows = []
    for k in keys:
        counts: dict[str, int] = {}
        for e in envs:
            value = str(e.get(k, "(not recorded)"))
            counts[value] = counts.get(value, 0) + 1
        text = next(iter(counts)) if len(counts) == 1 else "; ".join(f"{v} ({n} runs)" for v, n in counts.items())
        rows.append([Cell(k, k), Cell(text, text)])
    return Section("environment", "Environment", [Table("environment", ["key", "value"], rows)])


# --------------------------------------------------------------------------- the report


def palette(n: int) -> list[str]:
    """Colours for ``n`` variants as hex strings: matplotlib's tab10, or past 10 tab20 with its
    ten dark shades first (its pairs of a dark and a light shade would put look-alikes side by
    side); they repeat past 20."""
    if n <= 10:
        return [to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
    colours = matplotlib.colormaps["tab20"].colors
    return [to_hex(c) for c in (*colours[0::2], *colours[1::2])]


def _relative(path: Path, root: Path) -> str:
    rel = os.path.relpath(path, root)
    return "." if rel == "." else Path(rel).as_posix()


def build_report(path: str | Path, figures: bool = True) -> Report:
    """Read the runs at ``path`` (a run directory or a directory of runs) and build the report.

    ``figures=False`` leaves out the figures drawn here (the sections say so), which takes
    milliseconds instead of about a second; the runs' feature maps are still included.

    Raises:
        UserError: ``path`` does not exist or holds no run.
    """
    root = Path(path)
    records = [read_run(d) for d in find_run_dirs(root)]
    variants, keys = group_variants(records)
    colours = palette(len(variants))
    for i, v in enumerate(variants):
        v.color = colours[i % len(colours)]
    single = len(records) == 1
    finished = sum(r.status == "finished" for r in records)
    intro = [
        (
            f"One run: {records[0].name} ({records[0].status})."
            if single
            else f"{len(records)} runs ({finished} finished) in {len(variants)} variants."
        ),
        f"The variants differ in: {', '.join(keys)} (seed and name aside)." if keys else "",
        f"Built from the files on disk; rebuild with `softmaxlab report {root.as_posix()}`.",
    ]
    if not keys and not single:
        intro[1] = "All runs share one config but the seed."
    intro = [line for line in intro if line]
    compare_to, notes = read_compare_to(root)
    sections = [comparison_section(variants, records, compare_to, notes)]
    if not single:
        sections.append(runs_section(records, root))
    if figures:
        drawn = [curves_section(variants), confusion_section(variants), reliability_section(variants)]
        drawn += [gradients_section(variants), activations_section(variants), gumbel_section(variants)]
        drawn.append(epoch_time_section(variants))
    else:
        skipped = Note(f"Not drawn (report.figures: false); `softmaxlab report {root.as_posix()}` draws it.")
        has_gumbel = any(_config(v.runs[0], "head.name", v.runs[0].summary.get("head")) == "gumbel" for v in variants)
        drawn = [Section(k, t, [skipped]) for k, t in FIGURE_SECTIONS.items() if k != "gumbel" or has_gumbel]
    by_key = {s.key: s for s in drawn if s is not None}
    by_key["feature-maps"] = feature_maps_section(variants, root)
    order = (
        "learning-curves",
        "confusion",
        "reliability",
        "gradients",
        "activations",
        "feature-maps",
        "gumbel",
        "epoch-time",
    )
    sections += [by_key[k] for k in order if k in by_key]
    sections += [commands_section(records), environment_section(records)]
    name = records[0].name if single else root.resolve().name
    return Report(f"softmaxlab report: {name}", intro, sections)


def parse_format(fmt: str) -> tuple[str, ...]:
    """``html`` | ``md`` | ``both`` -> the formats to write; anything else is a UserError."""
    if fmt not in FORMATS:
        raise UserError(f"unknown report format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def write_report(path: str | Path, fmt: str = "both", figures: bool = True) -> list[Path]:
    """Build the report of ``path`` and write ``report.html`` and/or ``report.md`` into it
    (with ``figures/*.png`` beside ``report.md``); returns the paths of the reports written.
    ``figures`` as in :func:`build_report`.

    Raises:
        UserError: bad ``path`` or ``fmt``, or a directory that cannot be written.
    """
    formats = parse_format(fmt)
    root = Path(path)
    report = build_report(root, figures)
    written: list[Path] = []
    with runs.lock_dir(root):  # no report over a run or sweep that another process is writing
        _write(report, root, formats, written)
    return written


def _write(report: Report, root: Path, formats: tuple[str, ...], written: list[Path]) -> None:
    try:
        if "md" in formats:
            links: dict[str, str] = {}
            for section in report.sections:
                for block in section.blocks:
                    if not isinstance(block, Image):
                        continue
                    if block.source is not None:
                        links[block.name] = _relative(block.source, root)
                    else:
                        target = root / FIGURES_DIR / f"{block.name}.png"
                        runs.atomic_write_bytes(target, block.png)
                        links[block.name] = _relative(target, root)
            runs.atomic_write_text(root / MARKDOWN_FILE, render_markdown(report, links))
            written.append(root / MARKDOWN_FILE)
        if "html" in formats:
            runs.atomic_write_text(root / HTML_FILE, render_html(report))
            written.append(root / HTML_FILE)
    except OSError as exc:
        raise UserError(
            f"cannot write the report into {str(root)!r}: {exc.strerror or exc}; check its permissions"
        ) from None
