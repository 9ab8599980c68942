import io
import re

import pytest
from PIL import Image as PILImage

from softmaxlab.errors import UserError
from softmaxlab.report import build
from softmaxlab.report.build import build_report, write_report
from softmaxlab.report.document import Image, Note, Table
from softmaxlab.report.rundata import group_variants
from softmaxlab.runs import read_run

from .conftest import write_run

SECTIONS = {
    "comparison": "Comparison of variants",
    "runs": "Runs",
    "learning-curves": "Learning curves",
    "confusion": "Confusion matrices",
    "reliability": "Calibration: reliability diagrams",
    "gradients": "Gradient norms per layer",
    "activations": "Activation statistics per block",
    "feature-maps": "Feature maps",
    "gumbel": "Gumbel-softmax: accuracy against tau",
    "epoch-time": "Epoch time",
    "commands": "Commands and configs",
    "environment": "Environment",
}
DRAWN = [
    "learning_curves",
    "confusion_best",
    "confusion_worst",
    "reliability",
    "grad_norms",
    "activation_stats",
    "gumbel_tau",
    "epoch_time",
]


def _rows(html: str, key: str) -> list[str]:
    body = html.split(f'id="table-{key}"', 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr[ >].*?</tr>", body.split("<tbody>", 1)[1])


def test_report_of_a_directory_of_runs_has_every_section(study_report):
    html = (study_report / "report.html").read_text()
    assert re.findall(r'<section id="([^"]+)">', html) == list(SECTIONS)
    # one row per variant in the comparison, one per run below it; the diverged run is marked
    comparison, runs = _rows(html, "comparison"), _rows(html, "runs")
    assert len(comparison) == 3 and len(runs) == 6
    labels = [r.split("</td>")[0].rsplit(">", 1)[1] for r in comparison]
    assert labels == ["head=softmax", "head=gumbel", "head=sparsemax"]
    diverged = [r for r in runs if r.startswith('<tr class="diverged">')]
    assert len(diverged) == 1 and "sparsemax-1" in diverged[0] and "diverged at epoch 3" in diverged[0]
    assert "1 of 2 diverged" in comparison[2] and "1 of 2 (0, 1)" in comparison[2]
    # mean ± std over seeds; softmax has the best accuracy (80 %), 10 points ahead of gumbel on
    # both seeds: the same difference twice has no spread, so no paired test, and nothing is bold
    assert '<td data-sort="80.0" class="num">80.0 ± 0.0</td>' in comparison[0] and "num best" not in comparison[0]
    for header in ("top-5 (%)", "F1 (%)", "NLL", "ECE (%)", "ECE after T (%)", "epoch time (s)", "images/s"):
        assert f">{header}</th>" in html
    # figures embedded as PNG, the runs' feature maps included; nothing fetched from the network
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == len(DRAWN) + 3
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "@import" not in html
    # the Markdown report: the same sections and tables, the figures as PNG files beside it
    md = (study_report / "report.md").read_text()
    assert re.findall(r"^## (.+)$", md, flags=re.M) == list(SECTIONS.values())
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    maps = [f"{run}/figures/feature_maps.png" for run in ("softmax-0", "gumbel-0", "sparsemax-0")]
    drawn = [f"figures/{name}.png" for name in DRAWN]
    assert links == drawn[:6] + maps + drawn[6:]  # the feature maps come before Gumbel and epoch time
    for link in links:
        with PILImage.open(study_report / link) as png:
            assert png.format == "PNG" and png.size[0] >= 60
    assert "| head=sparsemax | sparsemax | 1 of 2 (0, 1) |" in md and "| 80.0 ± 0.0 |" in md and "**80.0" not in md
    assert "Shared by every variant: activation relu, model simple\\_cnn, data shapes, 4 classes." in md
    assert "softmaxlab run " in md and "sparsemax-1: training diverged at epoch 3" in md


def test_learning_curves_draw_each_variant_in_its_colour(study):
    variants, _ = group_variants([read_run(p) for p in build.find_run_dirs(study)], build.palette(3))
    curves = build.curves_section(variants).blocks[0]
    with PILImage.open(io.BytesIO(curves.png)) as png:
        colours = {c for _, c in png.convert("RGB").getcolors(1 << 20)}
    for v, tab10 in zip(variants, ("#1f77b4", "#ff7f0e", "#2ca02c"), strict=True):
        assert v.color == tab10 and tuple(int(tab10[i : i + 2], 16) for i in (1, 3, 5)) in colours


def test_older_runs_without_calibration_leave_it_out_and_say_so(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / f"old-{seed}", seed=seed, calibration=False, diagnostics=False)
    records = [read_run(p) for p in build.find_run_dirs(tmp_path)]
    variants, _ = group_variants(records)
    blocks = build.comparison_section(variants, records).blocks
    table = next(b for b in blocks if isinstance(b, Table))
    assert "ECE (%)" not in table.headers and "accuracy (%)" in table.headers
    missing = "so left out: ECE (%), ECE band p95 (%), ECE after T (%), ECE band p95 after T (%), T."
    assert any(missing in b.text for b in blocks if isinstance(b, Note))
    reliability = build.reliability_section(variants).blocks
    assert all(isinstance(b, Note) for b in reliability) and "test.reliability" in reliability[0].text
    activations = build.activations_section(variants).blocks
    assert len(activations) == 1 and "No run recorded activation_stats" in activations[0].text
    report = build_report(tmp_path, figures=False)
    assert "gumbel" not in [s.key for s in report.sections]  # no Gumbel runs, no section
    assert "All runs share one config but the seed." in report.intro


def test_single_run(tmp_path):
    run = write_run(tmp_path / "one", "head.name=gumbel")  # constant tau: nothing to plot against
    assert write_report(run, "html", figures=False) == [run / "report.html"]
    assert not (run / "report.md").exists()
    report = build_report(run, figures=False)
    assert "runs" not in [s.key for s in report.sections] and report.title == "softmaxlab report: one"
    variants, _ = group_variants([read_run(run)])
    assert [b.name for b in build.confusion_section(variants).blocks if isinstance(b, Image)] == ["confusion"]
    assert "tau was constant (1) in every Gumbel run" in build.gumbel_section(variants).blocks[0].text
    assert build.epoch_time_section(variants).blocks[0].text == "One variant: 1.50 s per epoch (see the table)."


def test_light_report_draws_no_figures_but_keeps_the_tables(study):
    report = build_report(study, figures=False)
    assert [s.key for s in report.sections] == list(SECTIONS)
    drawn = [b for s in report.sections for b in s.blocks if isinstance(b, Image) and b.source is None]
    assert not drawn and "report.figures: false" in report.section("learning-curves").blocks[0].text
    assert len(report.section("feature-maps").blocks) == 3  # the runs' own PNGs, read, not drawn
    tables = [b.key for b in report.section("comparison").blocks if isinstance(b, Table)]
    assert tables == ["comparison", "comparison-more", "differences"]


def test_unreadable_and_unfinished_runs_do_not_stop_the_report(study):
    (study / "softmax-1" / "summary.json").write_text("{not json")
    (study / "gumbel-1" / "summary.json").unlink()
    report = build_report(study, figures=False)
    runs = next(b for b in report.section("runs").blocks if isinstance(b, Table))
    status = {row[0].text: row[3].text for row in runs.rows}
    assert status["softmax-1"] == "unfinished" and status["gumbel-1"] == "unfinished"
    notes = [b.text for b in report.section("commands").blocks if isinstance(b, Note)]
    assert "softmax-1: summary.json could not be read (JSONDecodeError)" in notes


def test_bad_directories_and_formats_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "missing")
    with pytest.raises(UserError, match="holds no runs"):
        write_report(tmp_path)
    write_run(tmp_path / "r")
    with pytest.raises(UserError, match="unknown report format 'pdf'"):
        write_report(tmp_path, "pdf")


def test_confusion_of_many_classes_is_colour_only_and_says_so(tmp_path):
    import json

    run = write_run(tmp_path / "many")
    summary = json.loads((run / "summary.json").read_text())
    k = 40
    summary["classes"] = [f"c{i}" for i in range(k)]
    summary["test"]["confusion_matrix"] = [[5 if i == j else 0 for j in range(k)] for i in range(k)]
    (run / "summary.json").write_text(json.dumps(summary))
    variants, _ = group_variants([read_run(run)])
    blocks = build.confusion_section(variants).blocks
    assert "40 classes: the cells are colour only" in blocks[1].text and isinstance(blocks[2], Image)
