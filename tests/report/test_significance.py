"""The comparison's statistics: the reference variant, differences with intervals and
Holm-corrected p-values, McNemar, when a best value is bolded, chance level, ECE bands."""

import json

import yaml

from softmaxlab.report import build
from softmaxlab.report.build import build_report
from softmaxlab.report.document import Note, Table
from softmaxlab.report.html import render_html
from softmaxlab.report.rundata import group_variants
from softmaxlab.report.significance import at_chance_level, choose_reference, read_compare_to
from softmaxlab.runs import read_run

from .conftest import write_run


def _load(root):
    records = [read_run(p) for p in build.find_run_dirs(root)]
    variants, _ = group_variants(records)
    return records, variants


def _table(section, key):
    return next(b for b in section.blocks if isinstance(b, Table) and b.key == key)


def _notes(section):
    return [b.text for b in section.blocks if isinstance(b, Note)]


def _edit_summary(run, **test):
    summary = json.loads((run / "summary.json").read_text())
    summary["test"].update(test)
    (run / "summary.json").write_text(json.dumps(summary))


def _set_accuracy(root, head, seed, accuracy):
    records, _ = _load(root)
    run = next(r for r in records if r.config["head"]["name"] == head and r.seed == seed)
    _edit_summary(run.path, accuracy=accuracy)


def test_differences_to_the_first_variant_with_intervals_holm_and_mcnemar(study):
    _set_accuracy(study, "gumbel", 1, 0.69)  # gumbel - softmax: -0.10 and -0.11 over the two seeds
    comparison = build_report(study, figures=False).section("comparison")
    table = _table(comparison, "differences")
    assert table.title == "Difference to the reference (head=softmax)"
    assert table.headers == [
        "variant",
        "seeds paired",
        "Δ accuracy (pp)",
        "Δ F1 (pp)",
        "Δ NLL",
        "Δ ECE (pp)",
        "McNemar p (accuracy)",
    ]
    gumbel, sparsemax = ({c.text: c for c in row[:1]} | {"row": row} for row in table.rows)
    row = gumbel["row"]
    assert row[0].text == "head=gumbel" and row[1].text == "2"
    # -0.105 ± 12.71 x 0.0071 / sqrt(2) (t interval, 1 degree of freedom); p = 0.030 < 0.05
    assert row[2].text.startswith("-10.5 [-16.9, -4.1]\np_holm 0.030 ◆ significant") and row[2].significant
    # NLL 1 - accuracy of the fixture, worse by exactly 0.1 on both seeds: no spread, so no test
    assert row[4].text == "+0.100\nno test (no spread over 2 seeds)" and not row[4].significant
    # the 6 of 64 images softmax gets right and gumbel does not, per seed: 12 pooled, p = 2 / 2^12
    assert row[6].text == "< 0.001" and abs(row[6].sort - 2 / 2**12) < 1e-12
    # sparsemax finished one seed (the other diverged): a difference, no test, no McNemar
    row = sparsemax["row"]
    assert row[0].status == "diverged" and row[1].text == "1"
    assert row[2].text == "-20.0\nno test (1 seed)" and not row[2].significant and row[6].text == "n/a"
    notes = _notes(comparison)
    assert any("◆ significant: p_holm < 0.05" in n and "not significant" in n for n in notes)
    assert "head=sparsemax: no McNemar test, a run of the pair has no predictions.npz (an older run)." in notes
    assert 'class="num significant" title="significant after correction"' in render_html(build_report(study, False))


def test_compare_to_of_the_sweep_record_names_the_reference(study):
    record = {
        "base": {},
        "sweep": {"grid": {"head.name": ["softmax", "gumbel"]}, "compare_to": {"head.name": "gumbel"}},
    }
    (study / "sweep.yaml").write_text(yaml.safe_dump(record))
    compare_to, notes = read_compare_to(study)
    assert compare_to.values == {"head.name": "gumbel"} and compare_to.keys == ["head.name"] and notes == []
    table = _table(build_report(study, figures=False).section("comparison"), "differences")
    assert table.title == "Difference to the reference (head=gumbel)"
    assert [row[0].text for row in table.rows] == ["head=softmax", "head=sparsemax"]
    assert table.rows[0][2].text == "+10.0\nno test (no spread over 2 seeds)"  # the same 10 points on both seeds


def test_a_compare_to_that_matches_nothing_or_cannot_be_read_falls_back_with_a_note(study):
    _, variants = _load(study)
    reference, notes = choose_reference(variants, {"head.name": "entmax15", "train.lr": 0.1})
    assert reference is variants[0]
    assert notes == [
        "sweep.compare_to (head.name=entmax15, train.lr=0.1) matches no variant, so the first variant is the reference."
    ]
    (study / "sweep.yaml").write_text("sweep: {compare_to: [head.name]}\n")
    comparison = build_report(study, figures=False).section("comparison")
    assert _table(comparison, "differences").title.endswith("(head=softmax)")
    assert any("sweep.compare_to in sweep.yaml is not a mapping" in n for n in _notes(comparison))
    (study / "sweep.yaml").write_text("sweep: {compare_to: {a: 1}\n")  # not YAML
    assert "could not be read" in read_compare_to(study)[1][0]


def test_one_seed_or_one_variant_gives_a_note_and_the_rest_of_the_report(tmp_path):
    write_run(tmp_path / "one" / "a", seed=0, accuracy=0.8)
    write_run(tmp_path / "one" / "b", "head.name=sparsemax", seed=0, accuracy=0.6)
    comparison = build_report(tmp_path / "one", figures=False).section("comparison")
    assert "paired comparisons need at least 2 seeds" in " ".join(_notes(comparison))
    assert _table(comparison, "differences").rows[0][2].text == "-20.0\nno test (1 seed)"
    assert not any(c.best for row in _table(comparison, "comparison").rows for c in row)
    for seed in (0, 1):
        write_run(tmp_path / "same" / f"s{seed}", seed=seed)
    report = build_report(tmp_path / "same", figures=False)
    assert "One variant: no other to compare it to, so no differences or tests." in _notes(report.section("comparison"))
    assert "runs" in [s.key for s in report.sections]


def test_a_corrupt_predictions_file_is_a_note_not_a_crash(study):
    (study / "gumbel-1" / "predictions.npz").write_bytes(b"not an archive")
    comparison = build_report(study, figures=False).section("comparison")
    assert any(n.startswith("gumbel-1: predictions.npz could not be read") for n in _notes(comparison))
    assert "McNemar p (accuracy)" not in _table(comparison, "differences").headers  # no variant has one now


def test_best_is_bold_only_when_it_beats_the_runner_up_significantly(tmp_path):
    # a: 0.80, 0.70 ; b: 0.72, 0.74 -> a's mean is best, but the paired differences (+0.08, -0.04) are noise
    for seed, (a, b) in enumerate(((0.80, 0.72), (0.70, 0.74))):
        write_run(tmp_path / f"a{seed}", seed=seed, accuracy=a)
        write_run(tmp_path / f"b{seed}", "head.name=sparsemax", seed=seed, accuracy=b)
    records, variants = _load(tmp_path)
    table = _table(build.comparison_section(variants, records), "comparison")
    accuracy = table.headers.index("accuracy (%)")
    assert [row[accuracy].text for row in table.rows] == ["75.0 ± 7.1", "73.0 ± 1.4"]
    assert not any(row[accuracy].best for row in table.rows)


def test_chance_level_and_diverged_variants_are_marked_and_never_bold(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / f"good{seed}", seed=seed, accuracy=0.8)
        write_run(tmp_path / f"fair{seed}", "head.name=gumbel", seed=seed, accuracy=0.7 - 0.01 * seed)
        guess = write_run(tmp_path / f"guess{seed}", "head.name=sparsemax", seed=seed, accuracy=0.26)
        _edit_summary(guess, ece=0.001)  # the best ECE by far, but a model that guesses
    write_run(tmp_path / "broken0", "head.name=entmax15", seed=0, accuracy=0.95)
    write_run(tmp_path / "broken1", "head.name=entmax15", seed=1, status="diverged")
    records, variants = _load(tmp_path)
    table = _table(build.comparison_section(variants, records), "comparison")
    rows = {row[0].text: row for row in table.rows}
    status, accuracy, ece = (table.headers.index(h) for h in ("status", "accuracy (%)", "ECE (%)"))
    assert (
        rows["head=sparsemax"][status].text == "finished, chance level" and rows["head=sparsemax"][0].status == "chance"
    )
    assert rows["head=entmax15"][0].status == "partial" and "diverged" in rows["head=entmax15"][status].text
    # entmax15's surviving seed (95 %) and sparsemax's ECE are not bold; softmax beats gumbel on both
    assert [name for name, row in rows.items() if row[accuracy].best] == ["head=softmax"]
    assert "head=sparsemax" not in [name for name, row in rows.items() if row[ece].best]


def test_chance_level_rules(tmp_path):
    run = read_run(write_run(tmp_path / "r", accuracy=0.3))  # ci95 [0.2, 0.4] reaches 1/4
    assert at_chance_level(run)
    del run.summary["test"]["ci95"]  # 64 test images: 0.25 + 1.96 sqrt(0.25 * 0.75 / 64) = 0.356
    assert at_chance_level(run)
    run.summary["test"]["accuracy"] = 0.36
    assert not at_chance_level(run)
    del run.summary["test"]["confusion_matrix"]  # no image count: 0.36 <= 1.5 / 4
    assert at_chance_level(run)
    del run.summary["classes"]  # no K: not judged
    assert not at_chance_level(run)


def test_ece_band_columns_and_a_single_runs_intervals(tmp_path):
    run = write_run(tmp_path / "one", accuracy=0.8)
    comparison = build_report(run, figures=False).section("comparison")
    table = _table(comparison, "comparison")
    row = dict(zip(table.headers, table.rows[0], strict=True))
    assert row["accuracy (%)"].text == "80.0 [70.0, 90.0]" and row["NLL"].text == "0.200 [0.100, 0.300]"
    assert row["ECE band p95 (%)"].text == "5.00" and row["ECE (%)"].text == "6.00"
    more = _table(comparison, "comparison-more")
    assert "ECE band p95 after T (%)" in more.headers
    _, variants = _load(tmp_path)
    label = build.reliability_section(variants).blocks[0]
    assert label.alt == "reliability diagrams"
    assert build._ece_label(variants[0], "ece") == "head=softmax (ECE 6.00 %, band p95 5.00 %)"


def test_the_best_mean_is_not_bolded_when_the_runner_up_is_ahead_on_the_seeds_both_ran():
    from pathlib import Path

    from softmaxlab.report.rundata import Variant
    from softmaxlab.report.significance import significant_best
    from softmaxlab.runs import RunRecord

    def run(seed, accuracy):
        summary = {"status": "finished", "classes": list("abcdef"), "test": {"accuracy": accuracy}}
        return RunRecord(Path(f"r{seed}"), {"train": {"seed": seed}}, summary, [])

    # a: five seeds, its mean carried by seeds 2-4; b: two seeds, ahead of a on both by 5 points
    a = Variant("a", [run(0, 0.70), run(1, 0.71), run(2, 0.95), run(3, 0.95), run(4, 0.95)])
    b = Variant("b", [run(0, 0.75), run(1, 0.765)])
    get = lambda r: r.test["accuracy"]  # noqa: E731
    assert significant_best([a, b], get, higher=True) is None
    c = Variant("c", [run(0, 0.60), run(1, 0.615), run(2, 0.80), run(3, 0.80), run(4, 0.79)])
    assert significant_best([a, c], get, higher=True) is a  # ahead on every shared seed, p < 0.05
