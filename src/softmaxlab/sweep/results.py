"""The sweep's tables: ``results.csv`` (one row per run) and ``aggregate.csv`` (per variant).

``aggregate.csv`` groups the runs by the keys that define a variant (every override but the
seed) and gives the mean, sample standard deviation and count of each metric over the
finished runs (:func:`softmaxlab.stats.aggregate`), so a table never shows one lucky seed as
if it were the answer.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from softmaxlab import runs
from softmaxlab.errors import UserError
from softmaxlab.stats import aggregate, group_key
from softmaxlab.sweep.directory import AGGREGATE_FILE, RESULTS_FILE, RUNS_DIR
from softmaxlab.sweep.plan import SweepRun
from softmaxlab.sweep.spec import SEED_KEY, SweepSpec


def summary_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Every scalar number of a run's summary, by dotted key (``test.accuracy``, ``timing.mean_epoch_seconds``)."""
    out: dict[str, Any] = {}
    for section in ("test", "val", "timing"):
        for key, value in (summary.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{section}.{key}"] = value
    for key in ("temperature", "epochs"):
        if isinstance(summary.get(key), (int, float)) and not isinstance(summary.get(key), bool):
            out[key] = summary[key]
    return out


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, (list, dict, bool)) or value is None:
        return "" if value is None else json.dumps(value)
    return value


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    runs.atomic_write_text(path, buffer.getvalue())


def _run_metrics(run_dir: Path) -> dict[str, Any]:
    try:
        return summary_metrics(runs.read_summary(run_dir) or {})
    except UserError:  # an unreadable summary: the row keeps its status, without numbers
        return {}


def result_rows(
    out: Path, plan: list[SweepRun], outcome: dict[str, tuple[str, str | None]], spec: SweepSpec
) -> list[dict[str, Any]]:
    """One row per run: name, overrides (an empty cell where a variant leaves the base config's
    value), status, error and every summary metric; ``pending`` for runs not trained yet."""
    keys = spec.override_keys()
    rows = []
    for run in plan:
        status, error = outcome.get(run.name, ("pending", None))
        row: dict[str, Any] = {"run": run.name, **{k: run.overrides.get(k) for k in keys}, "status": status}
        row["error"] = error or ""
        if status in ("finished", "diverged"):
            row.update(_run_metrics(out / RUNS_DIR / run.name))
        rows.append(row)
    return rows


def aggregate_rows(rows: list[dict[str, Any]], spec: SweepSpec) -> list[dict[str, Any]]:
    """Per combination of the override keys but ``train.seed``: the number of runs, of finished
    runs and, for each metric, mean, sample standard deviation and count over the finished runs."""
    keys = spec.override_keys()
    metric_keys = list(dict.fromkeys(k for r in rows for k in r if k not in {"run", "status", "error", *keys}))
    group_by = [k for k in keys if k != SEED_KEY]
    # Every remaining combination gets a row; only finished runs enter the means.
    stats = aggregate(
        [{**r, "_": 0} for r in rows],
        group_by or ["_"],
        {k: (lambda r, k=k: r.get(k) if r["status"] == "finished" else None) for k in metric_keys},
    )
    counts = Counter(group_key(r, group_by) for r in rows)
    finished = Counter(group_key(r, group_by) for r in rows if r["status"] == "finished")
    table = []
    for a in stats:
        key = group_key(a, group_by)
        metrics = {k: v for k, v in a.items() if k not in group_by and k != "_"}
        table.append({**{k: a[k] for k in group_by}, "runs": counts[key], "finished": finished[key], **metrics})
    return table


def write_results(
    out: Path, plan: list[SweepRun], outcome: dict[str, tuple[str, str | None]], spec: SweepSpec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write ``results.csv`` (:func:`result_rows`) and ``aggregate.csv`` (:func:`aggregate_rows`);
    returns both tables' rows. Holds the sweep directory's lock (re-entrant: the sweep holds it)."""
    rows = result_rows(out, plan, outcome, spec)
    table = aggregate_rows(rows, spec)
    with runs.lock_dir(out):
        _write_csv(out / RESULTS_FILE, rows)
        _write_csv(out / AGGREGATE_FILE, table)
    return rows, table
