"""Which differences between variants the report may call real.

* The reference variant: the first, or the one ``sweep.compare_to`` in the sweep's
  ``sweep.yaml`` names (:func:`read_compare_to`, :func:`choose_reference`).
* Every other variant against it, paired by seed (:func:`softmaxlab.stats.compare_variants`):
  the mean difference with its 95 % interval and Holm-corrected p-value, per metric, and the
  exact McNemar test on per-image correctness where the runs kept ``predictions.npz``
  (:func:`difference_table`).
* When a column's best value may be bolded (:func:`significant_best`): only when it beats
  the runner-up by a paired t-test over seeds, and never for a variant that diverged or
  learned nothing (:func:`at_chance_level`, :func:`variant_marks`).

The report may not import the sweep (layers point down), so ``sweep.yaml`` is read here,
leniently: a record that cannot be read or names no variant only changes the reference back
to the first variant, with a note saying so.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softmaxlab import runs
from softmaxlab.config import validate_config
from softmaxlab.dotted import flatten, select_reference, set_dotted
from softmaxlab.errors import UserError
from softmaxlab.report.document import Cell, Table
from softmaxlab.report.rundata import Variant, finite, format_value
from softmaxlab.runs import RunRecord
from softmaxlab.stats import RunOutcome, compare_variants, mean_std, paired_comparison
from softmaxlab.untrusted import load_yaml, read_text

#: The grid key of seeds (``softmaxlab.sweep.SEED_KEY``): runs of one variant differ in it.
SEED_KEY = "train.seed"
#: The sweep's record in a sweep directory (``softmaxlab.sweep.directory.SWEEP_FILE``).
SWEEP_RECORD = "sweep.yaml"
#: The significance level of every test in the report.
ALPHA = 0.05
#: Metrics compared to the reference: header, scale of the shown difference, digits, direction.
DIFFERENCES = {
    "accuracy": ("Δ accuracy (pp)", 100.0, 1, "higher is better"),
    "f1_macro": ("Δ F1 (pp)", 100.0, 1, "higher is better"),
    "nll": ("Δ NLL", 1.0, 3, "lower is better"),
    "ece": ("Δ ECE (pp)", 100.0, 2, "lower is better"),
}
#: The marker of a difference that is significant after Holm's correction.
SIGNIFICANT = "◆"


@dataclass
class CompareTo:
    """``sweep.compare_to`` of a sweep record: its ``values`` ({dotted key: value}), the
    flattened config they name (``reference``: the record's base with them applied, None when
    that does not validate) and the ``keys`` that tell the sweep's variants apart."""

    values: dict[str, Any]
    reference: dict[str, Any] | None = None
    keys: list[str] = field(default_factory=list)


def read_compare_to(root: Path) -> tuple[CompareTo | None, list[str]]:
    """``sweep.compare_to`` of ``root/sweep.yaml``, or None when ``root`` is no sweep directory
    or its record has none; and notes on a record that could not be used (the report then
    compares to the first variant)."""
    path = root / SWEEP_RECORD
    if not path.is_file():
        return None, []
    fallback = "so the first variant is the reference"
    try:
        record = load_yaml(read_text(path, "sweep record", "rerun the sweep"), f"sweep record {str(path)!r}")
    except UserError as exc:
        return None, [f"{SWEEP_RECORD} could not be read ({exc}), {fallback}."]
    sweep = record.get("sweep") if isinstance(record, dict) else None
    compare = sweep.get("compare_to") if isinstance(sweep, dict) else None
    if compare is None:
        return None, []
    if not isinstance(compare, dict) or not compare or not all(isinstance(k, str) for k in compare):
        return None, [f"sweep.compare_to in {SWEEP_RECORD} is not a mapping of config keys to values, {fallback}."]
    keys = [k for part in ("variants", "grid") for k in _override_keys(sweep.get(part)) if k != SEED_KEY]
    return CompareTo(compare, _applied(record.get("base"), compare), list(dict.fromkeys(keys))), []


def _override_keys(part: Any) -> list[str]:
    if isinstance(part, dict):
        return [k for k in part if isinstance(k, str)]
    if isinstance(part, list):
        return [k for v in part if isinstance(v, dict) for k in v if isinstance(k, str)]
    return []


def _applied(base: Any, values: dict[str, Any]) -> dict[str, Any] | None:
    """The flattened, validated config of the record's ``base`` with ``values`` set; None when
    there is no base or they do not validate together."""
    if not isinstance(base, dict):
        return None
    raw = copy.deepcopy(base)
    try:
        for key, value in values.items():
            set_dotted(raw, key, value)
        return flatten(validate_config(raw, SWEEP_RECORD, legacy=True).to_dict())
    except (UserError, TypeError, ValueError, AttributeError):
        return None


def choose_reference(
    variants: Sequence[Variant], compare_to: CompareTo | dict[str, Any] | None
) -> tuple[Variant, list[str]]:
    """The variant that ``compare_to`` names by the rule the sweep's comparisons.csv uses
    (:func:`softmaxlab.dotted.select_reference`; a plain mapping: the variants holding all its
    values), the first of several, else the first variant; with notes when it matches none or several."""
    if not compare_to:
        return variants[0], []
    if isinstance(compare_to, dict):
        compare_to = CompareTo(compare_to)
    wanted = ", ".join(f"{k}={format_value(v)}" for k, v in compare_to.values.items())
    candidates = [v for v in variants if v.runs]
    flats = [flatten(v.runs[0].config) for v in candidates]
    chosen = select_reference(flats, compare_to.reference, compare_to.keys, compare_to.values)
    found = [candidates[i] for i in chosen]
    if not found:
        return variants[0], [f"sweep.compare_to ({wanted}) matches no variant, so the first variant is the reference."]
    notes = [
        f"sweep.compare_to ({wanted}) matches {len(found)} variants; the first, {found[0].label}, is the reference."
    ]
    return found[0], notes if len(found) > 1 else []


def classes_of(record: RunRecord) -> int | None:
    """The number of classes K of a run: its ``summary.classes``, else its confusion matrix's size."""
    for value in (record.summary.get("classes"), record.test.get("confusion_matrix")):
        if isinstance(value, list) and value:
            return len(value)
    return None


def at_chance_level(record: RunRecord) -> bool:
    """Whether a finished run's test accuracy is indistinguishable from guessing, 1/K for K classes:

    1. the bootstrap interval ``test.ci95.accuracy`` reaches down to 1/K (low <= 1/K), else
    2. with N test images (the confusion matrix's sum), accuracy <= 1/K + 1.96 sqrt(1/K (1 - 1/K) / N),
       the upper end of the 95 % normal interval of a guesser's accuracy, else
    3. accuracy <= 1.5 / K (halfway from chance to twice chance).

    False when K or the accuracy is unknown.

    >>> run = RunRecord(Path("r"), {}, {"classes": list("abcd"), "test": {"accuracy": 0.3}}, [])
    >>> at_chance_level(run)  # rule 3: 0.3 <= 1.5 / 4
    True
    >>> run.summary["test"]["ci95"] = {"accuracy": [0.27, 0.33]}
    >>> at_chance_level(run)  # rule 1: the interval stays above 0.25
    False
    """
    k, accuracy = classes_of(record), finite(record.test.get("accuracy"))
    if not k or accuracy is None:
        return False
    chance = 1.0 / k
    ci95 = record.test.get("ci95")
    interval = ci95.get("accuracy") if isinstance(ci95, dict) else None
    low = finite(interval[0]) if isinstance(interval, list) and len(interval) == 2 else None
    if low is not None:
        return low <= chance
    matrix = record.test.get("confusion_matrix")
    rows = [row for row in matrix if isinstance(row, list)] if isinstance(matrix, list) else []
    n = sum(finite(x) or 0.0 for row in rows for x in row)
    if n > 0:
        return accuracy <= chance + 1.96 * math.sqrt(chance * (1 - chance) / n)
    return accuracy <= 1.5 * chance


def variant_marks(v: Variant) -> list[str]:
    """What makes a variant's numbers untrustworthy: ``diverged`` (a run diverged; its mean is
    over the survivors only) and ``chance level`` (all its finished runs at chance level,
    :func:`at_chance_level`) or ``k of n at chance level``."""
    marks = ["diverged"] if any(r.status == "diverged" for r in v.runs) else []
    chance = sum(at_chance_level(r) for r in v.finished)
    if chance and chance == len(v.finished):
        marks.append("chance level")
    elif chance:
        marks.append(f"{chance} of {len(v.finished)} at chance level")
    return marks


def significant_best(
    variants: Sequence[Variant], get: Callable[[RunRecord], float | None], higher: bool | None
) -> Variant | None:
    """The variant to mark best in a column, or None.

    Among the variants without :func:`variant_marks` that have a value, the one with the best
    mean over its finished runs is best only if it beats the runner-up by the paired t-test
    over the seeds both ran (:func:`softmaxlab.stats.paired_comparison`, p < :data:`ALPHA`, the
    difference over those seeds in its favour): a best mean within the seeds' noise is no
    winner. None for a column with no direction, fewer than two such variants, or equal means.
    """
    if higher is None:
        return None
    ranked = []
    for v in variants:
        values = {r.seed: get(r) for r in v.finished}
        values = {s: x for s, x in values.items() if x is not None}
        if values and not variant_marks(v):
            ranked.append((mean_std(list(values.values()))[0], v, values))
    if len(ranked) < 2:
        return None
    ranked.sort(key=lambda t: t[0], reverse=higher)
    (first, best, a), (second, _, b) = ranked[:2]
    seeds = [s for s in a if s in b]
    if first == second or len(seeds) < 2:
        return None
    test = paired_comparison([a[s] for s in seeds], [b[s] for s in seeds])
    # The ranking is over each variant's own runs; the test over the seeds both ran must agree
    # in direction (with other seed sets the runner-up can be ahead on the shared seeds).
    ahead = test["mean_diff"] > 0 if higher else test["mean_diff"] < 0
    return best if ahead and test["p_value"] is not None and test["p_value"] < ALPHA else None


def run_outcomes(v: Variant, metrics: Sequence[str], notes: list[str]) -> dict[Any, RunOutcome]:
    """A variant's finished runs by seed as :class:`~softmaxlab.stats.RunOutcome` (test
    metrics, and predicted and true class per test image from ``predictions.npz`` where it
    is there and readable; a corrupt one adds a note)."""
    out: dict[Any, RunOutcome] = {}
    for r in v.finished:
        if r.seed in out:  # two runs of one seed: the first is compared
            continue
        try:
            kept = runs.read_predictions(r.path)
        except runs.UnreadableFileError as exc:
            kept = None
            notes.append(f"{r.name}: {exc.problem}, so no McNemar test for it.")
        outcome = RunOutcome({m: finite(r.test.get(m)) for m in metrics})
        if kept is not None:
            outcome.predicted, outcome.targets = kept["predicted"], kept["targets"]
        out[r.seed] = outcome
    return out


def format_p(p: float) -> str:
    """A p-value in three decimals, ``< 0.001`` below that.

    >>> format_p(0.04567), format_p(0.0002), format_p(1.0)
    ('0.046', '< 0.001', '1.000')
    """
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _difference_cell(row: dict[str, Any], scale: float, digits: int) -> Cell:
    """``+1.2 [-0.3, +2.7]`` over ``p_holm 0.041 ◆ significant`` (or ``not significant``)."""
    d = row["mean_diff"]
    if d is None:
        return Cell("no seed both ran")
    text = f"{d * scale:+.{digits}f}"
    low, high, p = row["ci95_low"], row["ci95_high"], row["p_holm"]
    if low is None or high is None or p is None:
        why = f"{row['n_pairs']} seed" if row["n_pairs"] < 2 else f"no spread over {row['n_pairs']} seeds"
        return Cell(f"{text}\nno test ({why})", d * scale)
    significant = p < ALPHA
    verdict = f"{SIGNIFICANT} significant" if significant else "not significant"
    text += f" [{low * scale:+.{digits}f}, {high * scale:+.{digits}f}]\np_holm {format_p(p)} {verdict}"
    return Cell(text, d * scale, significant=significant)


def _mcnemar_cell(row: dict[str, Any] | None) -> Cell:
    if row is None or row["mcnemar_p"] is None:
        return Cell("n/a")
    if row["identical_predictions"]:
        return Cell("identical predictions", 1.0)
    return Cell(format_p(row["mcnemar_p"]), row["mcnemar_p"])


def _grouped(notes: Sequence[str], labels: Sequence[str]) -> list[str]:
    """``notes`` as sentences, those of the form ``<label>: <problem>`` merged into one per
    problem, listing the variants (or saying "every variant") so that ten runs without
    predictions make one line, not ten.

    >>> _grouped(["a: no test", "b: no test", "too few seeds"], ["a", "b"])
    ['Too few seeds.', 'Every variant compared: no test.']
    """
    by_problem: dict[str, list[str]] = {}
    out = []
    for note in notes:
        label = next((x for x in labels if note.startswith(f"{x}: ")), None)
        if label is None:
            out.append(note[:1].upper() + note[1:].rstrip(".") + ".")
        else:
            by_problem.setdefault(note[len(label) + 2 :].rstrip("."), []).append(label)
    for problem, which in by_problem.items():
        who = "Every variant compared" if len(which) == len(labels) > 1 else ", ".join(which)
        out.append(f"{who}: {problem}.")
    return out


def difference_table(
    variants: Sequence[Variant], reference: Variant, metrics: Sequence[str]
) -> tuple[Table, list[str]]:
    """Every variant but ``reference`` against it, a row each: the seeds paired and, per metric
    of ``metrics`` (keys of :data:`DIFFERENCES`), the mean paired difference variant − reference
    with its 95 % t interval and Holm-corrected p-value; the exact McNemar p of accuracy.
    Returns the table and notes (one sentence each) on what could not be computed."""
    notes: list[str] = []
    outcomes = {v.label: run_outcomes(v, metrics, notes) for v in variants}
    rows, stat_notes = compare_variants(outcomes, reference.label, metrics)
    notes += _grouped(stat_notes, [v.label for v in variants if v is not reference])
    by_key = {(r["variant"], r["metric"]): r for r in rows}
    body = []
    for v in variants:
        if v is reference:
            continue
        mark = "diverged" if any(r.status == "diverged" for r in v.runs) else None
        first = next((by_key[(v.label, m)] for m in metrics if (v.label, m) in by_key), None)
        pairs = first["n_pairs"] if first else 0
        cells = [Cell(v.label, v.label, status=mark, wrap=True), Cell(str(pairs), pairs)]
        for m in metrics:
            _, scale, digits, _ = DIFFERENCES[m]
            cells.append(_difference_cell(by_key[(v.label, m)], scale, digits))
        cells.append(_mcnemar_cell(by_key.get((v.label, "accuracy"))))
        body.append(cells)
    headers = ["variant", "seeds paired", *(DIFFERENCES[m][0] for m in metrics), "McNemar p (accuracy)"]
    if all(row[-1].sort is None for row in body):  # no variant has one: the notes say why
        headers.pop()
        for row in body:
            row.pop()
    hints = {
        DIFFERENCES[m][0]: f"variant − reference, mean over the seeds both ran [95 % t interval]; {DIFFERENCES[m][3]}"
        for m in metrics
    }
    hints["McNemar p (accuracy)"] = "exact McNemar test on per-image correctness, seeds pooled (not corrected)"
    hints["seeds paired"] = "seeds that both the variant and the reference ran to the end"
    return Table("differences", headers, body, hints, title=f"Difference to the reference ({reference.label})"), notes
