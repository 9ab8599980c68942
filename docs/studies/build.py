"""Tables, findings and figures of the studies in docs/studies/, from the sweeps' own files.

    python docs/studies/build.py [--runs RUNS]

Run from the repository root after the sweeps of configs/studies/ (each writes
``RUNS/<sweep name>/results.csv`` and ``runs/<run>/metrics.jsonl``), or with
``--runs docs/studies/runs``: the files of the sweeps behind the docs, kept without their
weights by ``docs/studies/keep.py``. Every number in the
generated blocks of docs/studies/*.md (between ``<!-- build:KEY -->`` and
``<!-- /build:KEY -->``) comes from those files: means and sample standard deviations over
the seeds, never typed by hand. A sweep that has not been run, or not to its end, leaves its
blocks as they are.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

from softmaxlab.heads.pitfalls import double_softmax_floor
from softmaxlab.report.markdown import format_mean_std
from softmaxlab.runs import read_history, read_summary
from softmaxlab.stats import ece_band, mean_std

DOCS = Path(__file__).resolve().parent
FIGURES = DOCS / "figures"


# --------------------------------------------------------------------------- reading


def provenance(sweep_dir: Path, rows: list[dict]) -> str:
    """Runs, summed training time, and the environment recorded in the runs' summaries (no
    wall time: the files' times do not survive a copy or a clone of the kept runs)."""
    env = {}
    for row in finished(rows):
        env = (read_summary(sweep_dir / "runs" / row["run"]) or {}).get("env", {})
        break
    train = sum(number(r, "timing.total_train_seconds") or 0 for r in finished(rows))
    statuses = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in dict.fromkeys(r["status"] for r in rows))
    return (
        f"{len(rows)} runs ({statuses}); {train / 60:.0f} min of training summed over the runs; device "
        f"{env.get('device', '?')} ({env.get('cpu', '?')}), {env.get('torch_threads', '?')} torch thread(s) per run, "
        f"torch {env.get('torch', '?')}, softmaxlab {env.get('softmaxlab', '?')}."
    )


def read_rows(sweep_dir: Path) -> list[dict]:
    """results.csv of a sweep, each row with its run's ``history`` (metrics.jsonl records)
    and ``num_classes`` (from the confusion matrix of its summary)."""
    with open(sweep_dir / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        run = sweep_dir / "runs" / row["run"]
        row["history"] = read_history(run)
        summary = read_summary(run) or {}
        row["num_classes"] = len(summary.get("test", {}).get("confusion_matrix") or []) or None
        row["reliability"] = summary.get("test", {}).get("reliability")
        row["reliability_after"] = summary.get("test", {}).get("reliability_after_temperature")
        row["band"] = summary.get("test", {}).get("ece_band")
        row["band_after"] = summary.get("test", {}).get("ece_band_after_temperature")
        matrix = summary.get("test", {}).get("confusion_matrix") or []
        row["predicted_classes"] = sum(any(r[j] for r in matrix) for j in range(len(matrix))) if matrix else None
    return rows


def band_p95(row: dict, after: bool = False) -> float | None:
    """The 95th percentile of the ECE that a perfectly calibrated model with this run's test
    confidences would show (``summary.json``'s ``test.ece_band`` or, ``after`` temperature
    scaling, ``test.ece_band_after_temperature``, from the after-temperature confidences); for
    older summaries computed from the matching reliability bins (:func:`softmaxlab.stats.ece_band`).
    An ECE below it is as calibrated as this many test images can tell."""
    band = row.get("band_after" if after else "band")
    if band:
        return band["p95"]
    rel = row.get("reliability_after" if after else "reliability")
    band = ece_band(rel["count"], rel["confidence"]) if rel else None
    return band["p95"] if band else None


def short_variant(label: str) -> str:
    """A comparisons.csv variant as the tables name it: ``head.name=gumbel, head.tau=1`` ->
    ``gumbel, tau=1``.

    >>> short_variant("head.name=gumbel, head.tau=1, model.softmax_blocks=[0, 1]")
    'gumbel, tau=1, softmax_blocks=[0, 1]'
    """
    parts = [p.split("=", 1) for p in re.split(r", (?=[A-Za-z_][\w.]*=)", label) if "=" in p]
    if not parts:
        return label
    return ", ".join(v if k.endswith(".name") else f"{k.rsplit('.', 1)[-1]}={v}" for k, v in parts)


def read_comparisons(sweep_dir: Path) -> list[dict]:
    """``comparisons.csv`` of a sweep ([] when the sweep wrote none: an older version)."""
    path = sweep_dir / "comparisons.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def difference(row: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    """One comparisons.csv row as ``+1.2 [-0.3, +2.7], p_holm 0.04``, with ``significant`` or
    ``not significant`` (Holm-corrected p < 0.05 over the variants)."""
    if row is None or row.get("mean_diff") in (None, ""):
        return "-"
    mean = float(row["mean_diff"]) * scale
    if row.get("p_holm") in (None, ""):
        return f"{mean:+.{digits}f} (one pair: no test)"
    low, high, p = float(row["ci95_low"]) * scale, float(row["ci95_high"]) * scale, float(row["p_holm"])
    verdict = "**significant**" if p < 0.05 else "not significant"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}], p_holm {p:.2g}, {verdict}"


def p_text(p: str | None) -> str:
    """A p-value from a CSV cell in two significant digits, ``< 0.001`` below that (an exact
    binomial p can underflow to 0), ``-`` when there is none."""
    if p in (None, ""):
        return "-"
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.2g}"


def comparisons_table(comparisons: list[dict], label: Callable[[str], str] = lambda v: v) -> str:
    """Every variant against the sweep's reference: the paired difference (variant minus
    reference, over seeds) in accuracy and ECE (percentage points) and NLL, with its 95 % t
    interval and Holm-corrected p-value, and the exact McNemar p-value on the test images."""
    if not comparisons:
        return "(not run yet)"
    by = {(r["variant"], r["metric"]): r for r in comparisons}
    variants = list(dict.fromkeys(r["variant"] for r in comparisons))
    reference = comparisons[0]["reference"]
    lines = [
        f"| variant (minus `{label(reference)}`) | pairs | accuracy (pp) | ECE (pp) | NLL | McNemar p |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        acc = by.get((v, "accuracy"), {})
        mcnemar = acc.get("mcnemar_p") or ""
        same = " (identical predictions)" if acc.get("identical_predictions") == "true" else ""
        lines.append(
            f"| `{label(v)}` | {acc.get('n_pairs', '')} | {difference(by.get((v, 'accuracy')))} | "
            f"{difference(by.get((v, 'ece')))} | {difference(by.get((v, 'nll')), 1, 3)} | "
            f"{p_text(mcnemar)}{same} |"
        )
    return "\n".join(lines)


def number(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value in (None, ""):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def spread(values: list[float | None], scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± std`` of the finite values (sample std; n - 1), or ``-`` when there are none."""
    mean, std, n = mean_std(values)
    return format_mean_std(mean, std, digits, scale) if n else "-"


def groups(rows: list[dict], key: Callable[[dict], str]) -> dict[str, list[dict]]:
    """Rows by ``key``, in first-seen order."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


def finished(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "finished"]


# --------------------------------------------------------------------------- tables


def head_label(row: dict) -> str:
    name = row["head.name"]
    if name == "temperature" and row.get("head.learn_temperature") == "true":
        return "temperature (learned T)"
    if name == "gumbel":
        return "gumbel (tau 1)"
    return name


Column = tuple[str, Callable[[str, list[dict], list[dict]], str]]


def render(rows: list[dict], label: Callable[[dict], str], columns: list[Column]) -> str:
    """A Markdown table with one line per ``label`` group; each column's function gets the
    label, the group's rows and its finished rows."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + " --- |" * len(columns)]
    for name, members in groups(rows, label).items():
        done = finished(members)
        lines.append("| " + " | ".join(fn(name, members, done) for _, fn in columns) + " |")
    return "\n".join(lines)


def stat(key: str, scale: float = 1.0, digits: int = 3) -> Callable[[str, list[dict], list[dict]], str]:
    """Column: mean ± std of a results.csv number over the finished runs."""
    return lambda name, members, done: spread([number(r, key) for r in done], scale, digits)


def last(key: str, scale: float = 1.0, digits: int = 3) -> Callable[[str, list[dict], list[dict]], str]:
    """Column: mean ± std of the last epoch's metrics.jsonl value."""
    return lambda name, members, done: spread(
        [r["history"][-1][key] if r["history"] else None for r in done], scale, digits
    )


def label_column(header: str) -> Column:
    return header, lambda name, members, done: f"`{name}`"


def leading(header: str) -> list[Column]:
    """The first columns of every variant table: its label, its runs, its test accuracy."""
    return [label_column(header), ("runs", runs_column), ("test accuracy %", stat("test.accuracy", 100, 1))]


def band_column(after: bool = False) -> Column:
    """Column: the ECE band's p95 % (:func:`band_p95`), before or after temperature scaling."""
    header = "band p95 % after T" if after else "band p95 %"
    return header, lambda name, members, done: spread([band_p95(r, after) for r in done], 100, 1)


def runs_column(name: str, members: list[dict], done: list[dict]) -> str:
    """``finished/all``, and the other statuses when some runs did not finish."""
    text = f"{len(done)}/{len(members)}"
    if len(done) < len(members):
        text += " (" + ", ".join(sorted({r["status"] for r in members} - {"finished"})) + ")"
    return text


def heads_table(rows: list[dict]) -> str:
    """One line per head: test accuracy, macro F1, NLL, ECE before / after temperature scaling,
    each against the 95th percentile of a perfectly calibrated model's ECE on the same
    confidences (the band), the fitted T, the share of clamped NLL terms, final train loss
    and epoch time."""
    return render(
        rows,
        head_label,
        [
            *leading("head"),
            ("macro F1 %", stat("test.f1_macro", 100, 1)),
            ("NLL", stat("test.nll")),
            ("ECE %", stat("test.ece", 100, 1)),
            band_column(),
            ("ECE % after T", stat("test.ece_after_temperature", 100, 1)),
            band_column(after=True),
            ("fitted T", stat("temperature", 1, 2)),
            ("NLL clamped %", stat("test.nll_clamped", 100, 1)),
            ("final train loss", last("train_loss")),
            ("epoch s", stat("timing.mean_epoch_seconds", 1, 1)),
        ],
    )


def same_model_finding(rows: list[dict]) -> str:
    """softmax vs log-softmax, seed by seed."""
    by = {(r["head.name"], r["train.seed"]): r for r in finished(rows)}
    seeds = sorted({s for h, s in by if h == "softmax"} & {s for h, s in by if h == "log_softmax"})
    if not seeds:
        return "(not run yet)"
    keys = ("test.accuracy", "test.nll", "test.ece")
    worst = {k: max(abs(number(by["softmax", s], k) - number(by["log_softmax", s], k)) for s in seeds) for k in keys}
    loss = max(
        abs(a["train_loss"] - b["train_loss"])
        for s in seeds
        for a, b in zip(by["softmax", s]["history"], by["log_softmax", s]["history"], strict=True)
    )
    return (
        f"Seed by seed ({len(seeds)} seeds), the largest difference between `softmax` and `log_softmax` is "
        f"{worst['test.accuracy']:.2g} in test accuracy, {worst['test.nll']:.2g} in NLL, {worst['test.ece']:.2g} in "
        f"ECE and {loss:.2g} in any epoch's training loss."
    )


def double_softmax_finding(rows: list[dict]) -> str:
    """The double softmax's final training loss against its floor ln(1 + (K - 1) / e)."""
    double = [r for r in finished(rows) if r["head.name"] == "double_softmax" and r["history"]]
    plain = [r for r in finished(rows) if r["head.name"] == "softmax" and r["history"]]
    if not double:
        return "(not run yet)"
    k = double[0]["num_classes"]
    floor = double_softmax_floor(k)
    gaps = [r["history"][-1]["train_loss"] - floor for r in double]
    acc = spread([number(r, "test.accuracy") for r in double], 100, 1)
    acc_plain = spread([number(r, "test.accuracy") for r in plain], 100, 1)
    first = spread([r["history"][0]["train_loss"] for r in double])
    return (
        f"K = {k} classes: the floor is ln(1 + {k - 1}/e) = {floor:.3f} and a uniform prediction scores "
        f"ln K = {math.log(k):.3f}; the double softmax's training loss goes from {first} (first epoch) to "
        f"{spread([r['history'][-1]['train_loss'] for r in double])} (last), {spread(gaps)} above the floor, "
        f"and it reaches {acc} % test accuracy against {acc_plain} % for `softmax`. Chance is {100 / k:.1f} %. "
        f"Its mean confidence on the test split is {spread([mean_confidence(r) for r in double], 100, 1)} % "
        f"(`softmax`: {spread([mean_confidence(r) for r in plain], 100, 1)} %) and its test NLL "
        f"{spread([number(r, 'test.nll') for r in double])} "
        f"(`softmax`: {spread([number(r, 'test.nll') for r in plain])})."
    )


def mean_confidence(row: dict) -> float | None:
    """Mean top-1 probability over the test split, from the reliability bins of the summary."""
    rel = row.get("reliability")
    if not rel:
        return None
    pairs = [(n, c) for n, c in zip(rel["count"], rel["confidence"], strict=True) if n and c is not None]
    total = sum(n for n, _ in pairs)
    return sum(n * c for n, c in pairs) / total if total else None


def hierarchical_finding(sweep_dir: Path, rows: list[dict], top: int = 5) -> str:
    """The hierarchical head's groups (contiguous label ids, as the head builds them when the
    data has no coarse labels) against the class pairs that `softmax` confuses most (its
    test confusion matrices summed over seeds, both directions)."""
    from softmaxlab.heads.hierarchical import balanced_groups

    plain = [r for r in finished(rows) if r["head.name"] == "softmax"]
    if not plain or not any(r["head.name"] == "hierarchical" for r in finished(rows)):
        return "(not run yet)"
    summaries = [read_summary(sweep_dir / "runs" / r["run"]) for r in plain]
    classes = summaries[0]["classes"]
    k = len(classes)
    total = [[sum(s["test"]["confusion_matrix"][i][j] for s in summaries) for j in range(k)] for i in range(k)]
    pairs = sorted(((total[i][j] + total[j][i], i, j) for i in range(k) for j in range(i + 1, k)), reverse=True)[:top]
    group_of = balanced_groups(k).tolist()
    members = groups(list(range(k)), lambda c: group_of[c])
    split = [(n, i, j) for n, i, j in pairs if group_of[i] != group_of[j]]
    every = k * (k - 1) // 2
    apart = sum(group_of[i] != group_of[j] for i in range(k) for j in range(i + 1, k))
    errors = sum(n for n, _, _ in pairs)
    return (
        f"groups {', '.join('{' + ', '.join(classes[c] for c in m) + '}' for m in members.values())}; "
        f"{len(split)} of the {len(pairs)} class pairs `softmax` confuses most ({len(plain)} seeds, test errors both "
        f"ways) are split across groups: "
        + ", ".join(
            f"{classes[i]}/{classes[j]} ({n}{'' if group_of[i] != group_of[j] else ', same group'})"
            for n, i, j in pairs
        )
        + f"; the split pairs hold {100 * sum(n for n, _, _ in split) / errors:.0f} % of these pairs' errors, while "
        f"groups of these sizes "
        f"split {apart} of all {every} pairs ({100 * apart / every:.0f} %)."
    )


def learned_temperature_finding(rows: list[dict]) -> str:
    """The temperature head with a learned T: T after the first and the last epoch (logged as
    ``head_temperature``), accuracy against softmax, and the post-hoc T fitted on top."""
    runs = [r for r in finished(rows) if r["head.name"] == "temperature" and r["history"]]
    plain = [r for r in finished(rows) if r["head.name"] == "softmax"]
    if not runs or "head_temperature" not in runs[0]["history"][0]:
        return "(not run yet)"
    epochs = min(len(r["history"]) for r in runs)
    path = ", ".join(f"{mean_std([r['history'][e]['head_temperature'] for r in runs])[0]:.2f}" for e in range(epochs))
    return (
        f"learned T after each epoch (mean of {len(runs)} seeds) {path}; last epoch "
        f"{spread([r['history'][-1]['head_temperature'] for r in runs], 1, 2)}; test accuracy "
        f"{spread([number(r, 'test.accuracy') for r in runs], 100, 1)} % against "
        f"{spread([number(r, 'test.accuracy') for r in plain], 100, 1)} % for `softmax`; post-hoc T fitted on top "
        f"{spread([number(r, 'temperature') for r in runs], 1, 2)}."
    )


#: Heads whose training loss is the NLL of the probabilities they output.
NLL_LOSS_HEADS = ("softmax", "log_softmax", "temperature", "hierarchical")


def calibration_finding(rows: list[dict]) -> str:
    """Post-hoc temperature scaling: ECE and NLL before and after, against the ECE floor,
    for the heads that have a temperature; and the validation split's NLL against the test split's."""
    lines = []
    for head in dict.fromkeys(r["head.name"] for r in finished(rows)):
        done = [r for r in finished(rows) if r["head.name"] == head and number(r, "temperature") is not None]
        if not done:
            continue
        lines.append(
            f"- `{head}`: T = {spread([number(r, 'temperature') for r in done], 1, 2)}; test ECE "
            f"{spread([number(r, 'test.ece') for r in done], 100, 1)} % -> "
            f"{spread([number(r, 'test.ece_after_temperature') for r in done], 100, 1)} % (band p95: a perfectly "
            f"calibrated model would stay below {spread([band_p95(r) for r in done], 100, 1)} % before and "
            f"{spread([band_p95(r, after=True) for r in done], 100, 1)} % after); test NLL "
            f"{spread([number(r, 'test.nll') for r in done])} -> "
            f"{spread([number(r, 'test.nll_after_temperature') for r in done])}"
            # val.loss is the head's own loss: the NLL only where that loss is the NLL of p.
            + (
                f"; NLL on the validation split T was fitted on {spread([number(r, 'val.loss') for r in done])}."
                if head in NLL_LOSS_HEADS
                else "."
            )
        )
    return "\n".join(lines) or "(not run yet)"


def many_classes_table(rows: list[dict]) -> str:
    """Softmax, log-softmax and the double softmax with many classes: accuracy, macro
    precision / recall / F1, how many classes the model ever predicts, the final training
    loss against the double softmax's floor."""
    k = next((r["num_classes"] for r in finished(rows) if r["num_classes"]), None)
    predicted = lambda name, members, done: spread([r["predicted_classes"] for r in done], 1, 1)  # noqa: E731
    floor = lambda name, members, done: f"{double_softmax_floor(k):.3f}" if name == "double_softmax" and k else ""  # noqa: E731
    return render(
        rows,
        lambda r: r["head.name"],
        [
            *leading("head"),
            ("macro precision", stat("test.precision_macro", 1, 4)),
            ("macro recall", stat("test.recall_macro", 1, 4)),
            ("macro F1", stat("test.f1_macro", 1, 4)),
            (f"classes ever predicted (of {k})", predicted),
            ("final train loss", last("train_loss")),
            ("floor ln(1 + (K-1)/e)", floor),
        ],
    )


def gumbel_label(row: dict) -> str:
    tau = f"{float(row['head.tau']):g}"
    if row.get("head.tau_schedule") == "exponential":
        return f"{tau} -> {float(row.get('head.tau_min') or 0.5):g} (exponential, rate {row['head.anneal_rate']})"
    return tau + (f", {rule}" if (rule := eval_rule(row)) != "tau" else "")


def eval_rule(row: dict) -> str:
    """The Gumbel head's evaluation rule of a results.csv row (``tau`` where not overridden)."""
    return row.get("head.eval_rule") or "tau"


#: What each evaluation rule reports, for the table.
RULES = {"tau": "softmax(z / tau)", "plain": "softmax(z)", "sample_mean": "mean of 32 soft samples"}


def gumbel_rules_table(rows: list[dict]) -> str:
    """The constant taus that were evaluated under every rule: accuracy, ECE against its band,
    ECE after temperature scaling, the fitted T and NLL before and after it, per (tau, rule)."""
    done = [r for r in finished(rows) if r.get("head.tau_schedule") != "exponential"]
    taus = sorted({r["head.tau"] for r in done if eval_rule(r) != "tau"}, key=float)
    if not taus:
        return "(not run yet)"
    chosen = [r for r in done if r["head.tau"] in taus]
    chosen.sort(key=lambda r: (float(r["head.tau"]), list(RULES).index(eval_rule(r))))
    return render(
        chosen,
        lambda r: f"{float(r['head.tau']):g}\t{RULES[eval_rule(r)]}",
        [
            ("tau", lambda name, members, d: name.split("\t")[0]),
            ("evaluated as", lambda name, members, d: name.split("\t")[1]),
            ("runs", runs_column),
            ("test accuracy %", stat("test.accuracy", 100, 1)),
            ("ECE %", stat("test.ece", 100, 1)),
            band_column(),
            ("ECE % after T", stat("test.ece_after_temperature", 100, 1)),
            band_column(after=True),
            ("fitted T", stat("temperature", 1, 2)),
            ("NLL", stat("test.nll")),
            ("NLL after T", stat("test.nll_after_temperature")),
        ],
    )


def gumbel_table(rows: list[dict]) -> str:
    """Gumbel-softmax against tau (evaluated as softmax(z / tau)): accuracy, F1, NLL, ECE and
    its band before and after temperature scaling, the fitted T, the final training loss."""
    return render(
        [r for r in rows if eval_rule(r) == "tau"],
        gumbel_label,
        [
            ("tau", lambda name, members, done: name),
            ("runs", runs_column),
            ("test accuracy %", stat("test.accuracy", 100, 1)),
            ("macro F1 %", stat("test.f1_macro", 100, 1)),
            ("NLL", stat("test.nll")),
            ("ECE %", stat("test.ece", 100, 1)),
            band_column(),
            ("ECE % after T", stat("test.ece_after_temperature", 100, 1)),
            ("fitted T", stat("temperature", 1, 2)),
            ("final train loss", last("train_loss")),
        ],
    )


def activation_label(row: dict) -> str:
    label = row["model.activation"]
    if row.get("model.softmax_rescale") == "true":
        label += " + rescale"
    if row.get("model.learn_activation_temperature") == "true":
        label += " + learned T"
    if row.get("model.softmax_blocks"):
        label += f" in blocks {row['model.softmax_blocks']}"
    if row.get("model.bn_eps"):
        label += f" + BatchNorm eps {float(row['model.bn_eps']):g}"
    if row.get("train.optimizer") == "sgd":
        label += " (SGD one-cycle)"
    return label


def pairing_finding(rows: list[dict], comparisons: list[dict]) -> str:
    """Each pairing bug with many classes: accuracy, the classes it ever predicts, macro
    precision, and its paired difference to `softmax` with the McNemar test; the correct pairings beside."""
    k = next((r["num_classes"] for r in finished(rows) if r["num_classes"]), None)
    by = {(r["variant"], r["metric"]): r for r in comparisons}
    lines = []
    for head in dict.fromkeys(r["head.name"] for r in finished(rows)):
        done = [r for r in finished(rows) if r["head.name"] == head]
        acc = by.get((f"head.name={head}", "accuracy"))
        versus = "" if head == "softmax" else f"; minus `softmax`, in points: {difference(acc)}"
        if acc and acc.get("mcnemar_p"):
            versus += f", McNemar p {p_text(acc['mcnemar_p'])}"
        lines.append(
            f"- `{head}`: {spread([number(r, 'test.accuracy') for r in done], 100, 1)} % test accuracy (chance "
            f"{100 / k:.1f} %), {spread([r['predicted_classes'] for r in done], 1, 1)} of {k} classes ever predicted, "
            f"macro precision {spread([number(r, 'test.precision_macro') for r in done], 1, 4)}{versus}"
        )
    return "\n".join(lines) or "(not run yet)"


#: A run has left chance once its validation accuracy is this far above 1/K.
ESCAPE_MARGIN = 0.05


def escape_epoch(row: dict) -> int | None:
    """The first epoch whose validation accuracy is at least 1/K + :data:`ESCAPE_MARGIN`
    (None: never), K from the run's confusion matrix."""
    k = row["num_classes"]
    return next((h["epoch"] for h in row["history"] if k and h["val_acc"] >= 1 / k + ESCAPE_MARGIN), None)


def val_at(epoch: int) -> Callable[[str, list[dict], list[dict]], str]:
    """Column: validation accuracy % after ``epoch`` (1-based), mean ± std."""
    return lambda name, members, done: spread(
        [r["history"][epoch - 1]["val_acc"] if len(r["history"]) >= epoch else None for r in done], 100, 1
    )


def escape_column(name: str, members: list[dict], done: list[dict]) -> str:
    epochs = [escape_epoch(r) for r in done]
    left = [e for e in epochs if e is not None]
    return f"{spread(left, 1, 1)} ({len(left)} of {len(done)})" if left else f"never (0 of {len(done)})"


def intermediate_adam_table(rows: list[dict]) -> str:
    """The notebook-setting study: accuracy, when validation accuracy leaves chance, validation
    accuracy along the 50 epochs, and the first and last layers' gradient norms."""
    return render(
        rows,
        activation_label,
        [
            *leading("activation"),
            (f"first epoch val acc >= chance + {100 * ESCAPE_MARGIN:g} pp", escape_column),
            ("val acc % epoch 5", val_at(5)),
            ("epoch 25", val_at(25)),
            ("epoch 50", val_at(50)),
            ("final train accuracy %", last("train_acc", 100, 1)),
            ("head grad norm, last epoch", grad_norm(False)),
            ("first conv grad norm, last epoch", grad_norm(True)),
        ],
    )


def grad_norm(first: bool) -> Callable[[str, list[dict], list[dict]], str]:
    """Column: the last epoch's gradient norm of the first layer (first block's conv) or the
    last one (the head's linear layer)."""

    def get(r: dict) -> float | None:
        norms = r["history"][-1].get("grad_norms") if r["history"] else None
        return norms[list(norms)[0 if first else -1]] if norms else None

    return lambda name, members, done: spread([get(r) for r in done], 1, 4)


def intermediate_table(rows: list[dict]) -> str:
    return render(
        rows,
        activation_label,
        [
            *leading("activation"),
            ("macro F1 %", stat("test.f1_macro", 100, 1)),
            ("NLL", stat("test.nll")),
            ("final train accuracy %", last("train_acc", 100, 1)),
            ("head grad norm, last epoch", grad_norm(False)),
            ("first conv grad norm, last epoch", grad_norm(True)),
        ],
    )


def layer_table(rows: list[dict], epoch: int, key: str, fields: tuple[str, ...] = ()) -> str:
    """Per variant, per layer (``key = "grad_norms"``: weight-gradient norm of each conv and
    the head's linear layer) or per block (``"activation_stats"``: ``fields`` of each block's
    output on the fixed probe images) at ``epoch`` (0 = first, -1 = last): mean ± std over seeds."""
    groups_ = groups(finished(rows), activation_label)
    sample = next(r["history"][epoch][key] for m in groups_.values() for r in m if r["history"])
    names = [n for n in sample if key != "grad_norms" or n.endswith(".0") or n.startswith("head")]
    short = {n: n.replace("backbone.blocks.", "conv ").replace(".0", "").replace("head.fc", "head") for n in names}
    columns = [(n, f) for n in names for f in (fields or ("",))]
    lines = [
        "| variant | " + " | ".join(f"{short[n]} {f}".strip() for n, f in columns) + " |",
        "|" + " --- |" * (len(columns) + 1),
    ]
    for label, members in groups_.items():
        cells = []
        for n, f in columns:
            vals = [r["history"][epoch][key][n] for r in members if r["history"]]
            vals = [v[f] if f else v for v in vals]
            digits = 4 if max(abs(v) for v in vals) >= 0.01 else 6
            cells.append(spread(vals, 1, digits))
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def learned_activation_temperature(sweep_dir: Path, rows: list[dict]) -> str:
    """The temperatures T = exp(log T) that the runs with a learned activation temperature
    ended with, per block, read from each run's ``model.pt``."""
    import torch

    done = [r for r in finished(rows) if r.get("model.learn_activation_temperature") == "true"]
    if not done:
        return "(not run yet)"
    per_block: dict[str, list[float]] = {}
    for r in done:
        state = torch.load(sweep_dir / "runs" / r["run"] / "model.pt", weights_only=True)["state_dict"]
        for key, value in state.items():
            if key.endswith("log_temperature"):
                block = key.removeprefix("backbone.blocks.").split(".")[0]
                per_block.setdefault(f"block {block}", []).append(float(value.exp()))
    return (
        f"learned T after the last epoch ({len(done)} seeds, T starts at 1): "
        + ", ".join(f"{name} {spread(vals, 1, 2)}" for name, vals in per_block.items())
        + "."
    )


def head_cost_table(report: dict) -> str:
    """Median ms [min - max] of each head's forward + backward at each class count, and the
    median as a multiple of the linear layer alone (``linear``) at the same K."""
    results = [r for r in report["results"] if r["status"] == "ok"]
    classes = sorted({r["classes"] for r in results})
    cell = {(r["head"], r["classes"]): r for r in results}
    heads = list(dict.fromkeys(r["head"] for r in results))
    lines = [
        "| head | " + " | ".join(f"K = {k:,}" for k in classes) + " |",
        "| --- | " + " | ".join("---" for _ in classes) + " |",
    ]
    for head in heads:
        cells = []
        for k in classes:
            r, base = cell.get((head, k)), cell.get(("linear", k))
            if r is None:
                cells.append("skipped")
                continue
            text = f"{r['median_ms']:.1f} [{r['min_ms']:.1f} - {r['max_ms']:.1f}]"
            if base is not None and head != "linear":
                text += f" ({r['median_ms'] / base['median_ms']:.2f}x)"
            cells.append(text)
        lines.append(f"| `{head}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def head_cost_finding(report: dict) -> str:
    """At the largest K: the share of softmax's step that the linear layer takes, and
    log-softmax against softmax."""
    results = {(r["head"], r["classes"]): r for r in report["results"] if r["status"] == "ok"}
    k = max(c for _, c in results)
    get = {h: results.get((h, k)) for h in ("linear", "softmax", "log_softmax", "hierarchical", "adaptive")}
    if not (get["linear"] and get["softmax"] and get["log_softmax"]):
        return "(not run yet)"
    soft, lin, logs = get["softmax"]["median_ms"], get["linear"]["median_ms"], get["log_softmax"]["median_ms"]
    s = report["settings"]
    text = (
        f"At K = {k:,} (batch {s['batch']}, {s['features']} features, {s['device']}, {report['env'].get('threads')} "
        f"threads, median of {s['repeats']}): the linear layer alone takes {lin:.0f} ms, {100 * lin / soft:.0f} % of "
        f"softmax's {soft:.0f} ms; log-softmax takes {logs:.0f} ms, {logs / soft:.2f}x softmax."
    )
    for head in ("hierarchical", "adaptive"):
        if get[head]:
            text += f" `{head}` takes {get[head]['median_ms']:.0f} ms ({get[head]['median_ms'] / soft:.2f}x softmax)."
    return text


def headline_table(have: dict[str, list[dict]]) -> str:
    """The README's table: test accuracy and ECE of each head on each dataset studied."""
    sources = [
        ("output-heads-intel", "Intel scenes (6 classes)"),
        ("output-heads-cifar10", "CIFAR-10 10k (10 classes)"),
        ("many-classes", "shapes, 100 classes"),
    ]
    sources = [(key, title) for key, title in sources if key in have]
    labels = list(dict.fromkeys(head_label(r) for key, _ in sources for r in have[key]))
    lines = [
        "| head | " + " | ".join(f"{title}: accuracy % / ECE %" for _, title in sources) + " |",
        "|" + " --- |" * (len(sources) + 1),
    ]
    for label in labels:
        cells = []
        for key, _ in sources:
            done = [r for r in finished(have[key]) if head_label(r) == label]
            acc = spread([number(r, "test.accuracy") for r in done], 100, 1)
            ece = spread([number(r, "test.ece") for r in done], 100, 1)
            cells.append(f"{acc} / {ece}" if done else "")
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def plot_train_loss(rows_by_dataset: dict[str, list[dict]], path: Path) -> None:
    """Training loss per epoch of softmax and the double softmax, with the double softmax's floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows_by_dataset), figsize=(5 * len(rows_by_dataset), 3.6), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], rows_by_dataset.items(), strict=True):
        k = None
        for head, colour in (("softmax", "black"), ("double_softmax", "tab:red")):
            for i, r in enumerate(r for r in finished(rows) if r["head.name"] == head and r["history"]):
                k = r["num_classes"] or k
                epochs = [h["epoch"] for h in r["history"]]
                ax.plot(epochs, [h["train_loss"] for h in r["history"]], color=colour, label=head if i == 0 else None)
        if k:
            ax.axhline(double_softmax_floor(k), color="tab:red", ls="--", lw=1, label=f"ln(1 + (K-1)/e), K = {k}")
            ax.axhline(math.log(k), color="grey", ls=":", lw=1, label="ln K (uniform guess)")
        ax.set(title=dataset, xlabel="epoch", ylabel="training loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    FIGURES.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gumbel(rows: list[dict], path: Path, softmax: list[dict] | None = None) -> None:
    """Test accuracy and ECE (before and after temperature scaling) against a constant tau,
    mean and std over seeds; the annealed runs at their starting tau; softmax's accuracy
    (same setup) as a reference band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, ece_ax) = plt.subplots(1, 2, figsize=(9, 3.4))

    def points(members: list[dict], key: str, scale: float = 100) -> tuple[float, float]:
        mean, std, _ = mean_std([number(r, key) * scale for r in members])
        return mean, std

    rows = [r for r in rows if eval_rule(r) == "tau"]  # the rules have their own table
    const = groups([r for r in finished(rows) if r.get("head.tau_schedule") != "exponential"], gumbel_label)
    annealed = groups([r for r in finished(rows) if r.get("head.tau_schedule") == "exponential"], gumbel_label)
    taus = [float(t) for t in const]
    for ax, key, colour, label in (
        (acc_ax, "test.accuracy", "tab:blue", "constant tau"),
        (ece_ax, "test.ece", "tab:red", "ECE, constant tau"),
        (ece_ax, "test.ece_after_temperature", "tab:green", "ECE after T, constant tau"),
    ):
        stats = [points(m, key) for m in const.values()]
        ax.errorbar(
            taus, [m for m, _ in stats], yerr=[e for _, e in stats], marker="o", capsize=3, color=colour, label=label
        )
        for name, members in annealed.items():
            m, e = points(members, key)
            tau0 = float(members[0]["head.tau"])
            ax.errorbar(
                [tau0],
                [m],
                yerr=[e],
                marker="s",
                capsize=3,
                color=colour,
                mfc="white",
                label=f"annealed {name.split(' (')[0]}",
            )
    if softmax:
        m, e = points(softmax, "test.accuracy")
        acc_ax.axhspan(m - e, m + e, color="grey", alpha=0.25, label="softmax head (mean ± std)")
    acc_ax.set(xscale="log", xlabel="tau", ylabel="test accuracy %", ylim=(50, 90), title="accuracy")
    ece_ax.set(xscale="log", xlabel="tau", ylabel="ECE %", title="calibration")
    for ax in (acc_ax, ece_ax):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Gumbel-softmax head on the Intel scenes (32 px, 8 epochs, 3 seeds)", fontsize=10)
    fig.tight_layout()
    FIGURES.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_escape(rows: list[dict], path: Path) -> None:
    """Validation accuracy and the first convolution's gradient norm per epoch, per variant
    (mean and std over seeds), with chance 1/K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, grad_ax) = plt.subplots(1, 2, figsize=(11, 4))
    k = None
    for i, (label, members) in enumerate(groups(finished(rows), activation_label).items()):
        k = members[0]["num_classes"] or k
        epochs = min(len(r["history"]) for r in members)
        x = list(range(1, epochs + 1))
        for ax, get in (
            (acc_ax, lambda h: 100 * h["val_acc"]),
            (grad_ax, lambda h: next(iter(h["grad_norms"].values())) if h.get("grad_norms") else math.nan),
        ):
            stats = [mean_std([get(r["history"][e]) for r in members]) for e in range(epochs)]
            mean = [m for m, _, _ in stats]
            ax.plot(x, mean, color=f"C{i}", label=label, lw=1.2)
            ax.fill_between(x, [m - s for m, s, _ in stats], [m + s for m, s, _ in stats], color=f"C{i}", alpha=0.15)
    if k:
        acc_ax.axhline(100 / k, color="grey", ls=":", label=f"chance (1/{k})")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy %", title="validation accuracy")
    grad_ax.set(xlabel="epoch", ylabel="gradient norm", yscale="log", title="first convolution's weight gradient")
    acc_ax.legend(fontsize=7, loc="lower right")
    for ax in (acc_ax, grad_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    FIGURES.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the documents


def fill(doc: Path, blocks: dict[str, str]) -> None:
    """Replace each ``<!-- build:KEY -->`` ... ``<!-- /build:KEY -->`` block of ``doc``."""
    text = doc.read_text(encoding="utf-8")
    for key, body in blocks.items():
        pattern = re.compile(rf"(<!-- build:{re.escape(key)} -->\n)(?:.*?\n)?(<!-- /build:{re.escape(key)} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{doc} has no block {key!r}")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    doc.write_text(text, encoding="utf-8")
    print(f"wrote {doc} ({', '.join(blocks)})")


def main() -> None:
    from numerics import numerics_table  # beside this script, which Python puts on the path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder holding the sweep directories")
    runs = parser.parse_args().runs
    sweeps = {name: runs / name for name in ("output-heads-intel", "output-heads-cifar10", "gumbel-tau-intel")}
    sweeps["intermediate"] = runs / "intermediate-softmax-study"
    sweeps["intermediate-adam"] = runs / "intermediate-softmax-adam"
    sweeps["many-classes"] = runs / "double-softmax-100-classes"
    have = {name: read_rows(path) for name, path in sweeps.items() if (path / "results.csv").is_file()}
    for name in [n for n, rows in have.items() if any(r["status"] in ("pending", "unfinished") for r in rows)]:
        print(f"{sweeps[name]}: runs not trained yet; its blocks stay as they are until the sweep is finished")
        del have[name]
    compared = {name: read_comparisons(sweeps[name]) for name in have}
    fill(DOCS / "output-heads.md", {"numerics": numerics_table()})

    heads: dict[str, str] = {}
    curves: dict[str, list[dict]] = {}
    for name, dataset in (("output-heads-intel", "intel"), ("output-heads-cifar10", "cifar10")):
        if name in have:
            rows = have[name]
            heads[f"heads-{dataset}"] = heads_table(rows)
            heads[f"setup-{dataset}"] = provenance(sweeps[name], rows)
            heads[f"same-model-{dataset}"] = same_model_finding(rows)
            heads[f"double-softmax-{dataset}"] = double_softmax_finding(rows)
            heads[f"calibration-{dataset}"] = calibration_finding(rows)
            heads[f"learned-t-{dataset}"] = learned_temperature_finding(rows)
            heads[f"hierarchical-{dataset}"] = hierarchical_finding(sweeps[name], rows)
            heads[f"comparisons-{dataset}"] = comparisons_table(compared[name], short_variant)
            curves[{"intel": "Intel scenes, 32 px", "cifar10": "CIFAR-10 10k subset"}[dataset]] = rows
    if "gumbel-tau-intel" in have:
        heads["gumbel-tau"] = gumbel_table(have["gumbel-tau-intel"])
        heads["setup-gumbel"] = provenance(sweeps["gumbel-tau-intel"], have["gumbel-tau-intel"])
        heads["gumbel-rules"] = gumbel_rules_table(have["gumbel-tau-intel"])
        heads["comparisons-gumbel"] = comparisons_table(compared["gumbel-tau-intel"], short_variant)
        softmax = [r for r in finished(have.get("output-heads-intel", [])) if r["head.name"] == "softmax"]
        plot_gumbel(have["gumbel-tau-intel"], FIGURES / "gumbel-tau.png", softmax)
    if "many-classes" in have:
        heads["many-classes"] = many_classes_table(have["many-classes"])
        heads["double-softmax-many"] = double_softmax_finding(have["many-classes"])
        heads["setup-many-classes"] = provenance(sweeps["many-classes"], have["many-classes"])
        heads["calibration-many"] = calibration_finding(have["many-classes"])
        heads["pairing-many"] = pairing_finding(have["many-classes"], compared["many-classes"])
        heads["comparisons-many"] = comparisons_table(compared["many-classes"], short_variant)
        curves["shapes, 100 classes"] = have["many-classes"]
    if len(curves) == 3:  # one panel per dataset: a partial rebuild keeps the figure as it is
        plot_train_loss(curves, FIGURES / "double-softmax-loss.png")
    if heads:
        fill(DOCS / "output-heads.md", heads)
    if all(k in have for k in ("output-heads-intel", "output-heads-cifar10", "many-classes")):
        # all three or none: a partial rebuild would drop the columns of the sweeps not there
        fill(DOCS.parents[1] / "README.md", {"headline": headline_table(have)})
    bench = runs / "bench-heads" / "bench-heads.json"
    if bench.is_file():
        import shutil

        report = json.loads(bench.read_text())
        fill(
            DOCS / "head-cost.md",
            {"head-cost": head_cost_table(report), "head-cost-finding": head_cost_finding(report)},
        )
        FIGURES.mkdir(exist_ok=True)
        shutil.copyfile(bench.with_suffix(".png"), FIGURES / "head-cost.png")
    if "intermediate" in have and all(r["status"] != "pending" for r in have["intermediate"]):
        rows = have["intermediate"]
        fill(
            DOCS.parent / "intermediate-softmax.md",
            {
                "intermediate": intermediate_table(rows),
                "setup-intermediate": provenance(sweeps["intermediate"], rows),
                "grad-first": layer_table(rows, 0, "grad_norms"),
                "grad-last": layer_table(rows, -1, "grad_norms"),
                "activations-last": layer_table(rows, -1, "activation_stats", ("mean", "std", "near_zero")),
                "learned-activation-t": learned_activation_temperature(sweeps["intermediate"], rows),
                "comparisons-intermediate": comparisons_table(compared["intermediate"], short_variant),
            },
        )
    if "intermediate-adam" in have and all(r["status"] != "pending" for r in have["intermediate-adam"]):
        rows = have["intermediate-adam"]
        plot_escape(rows, FIGURES / "intermediate-adam.png")
        fill(
            DOCS.parent / "intermediate-softmax.md",
            {
                "adam": intermediate_adam_table(rows),
                "setup-adam": provenance(sweeps["intermediate-adam"], rows),
                "comparisons-adam": comparisons_table(compared["intermediate-adam"], short_variant),
                "adam-grad-last": layer_table(rows, -1, "grad_norms"),
                "adam-activations-last": layer_table(rows, -1, "activation_stats", ("mean", "std", "near_zero")),
            },
        )


if __name__ == "__main__":
    main()
