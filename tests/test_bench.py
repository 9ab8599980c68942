"""The head cost benchmark: every head runs, results are written, failures become skipped rows."""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from softmaxlab import bench
from softmaxlab.cli import app
from softmaxlab.errors import UserError
from softmaxlab.heads import HEADS
from softmaxlab.heads.hierarchical import group_logits

TINY = bench.BenchSettings(batch=8, features=16, repeats=1)


def test_tiny_bench_runs_every_head_and_writes_json_csv_png(tmp_path):
    report = bench.bench_heads([10, 50], settings=TINY)
    rows = report["results"]
    names = [bench.BASELINE, *HEADS.names()]
    assert [(r["classes"], r["head"]) for r in rows] == [(k, n) for k in (10, 50) for n in names]
    for r in rows:
        assert r["status"] == "ok", r
        assert set(bench.COLUMNS) <= r.keys()
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["peak_bytes"] > 0
    paths = bench.write_results(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["batch"] == 8 and data["env"]["torch"] == torch.__version__
    assert len(data["results"]) == len(rows)
    with paths["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == bench.COLUMNS and len(table) == len(rows)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = bench.format_table(rows)
    assert "hierarchical" in text and "K=50" in text


def test_memory_grows_with_the_class_count():
    rows = bench.bench_heads([10, 1000], heads=["softmax"], settings=TINY)["results"]
    small, large = (r["peak_bytes"] for r in rows)
    # The (K, F) weight and its gradient alone: 2 * 4 bytes * 1000 * 16.
    assert large > small and large >= 2 * 4 * 1000 * 16


def test_a_combination_that_cannot_run_is_a_skipped_row(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")

    monkeypatch.setattr("softmaxlab.heads.build_head", boom)
    rows = bench.bench_heads([10], heads=["softmax"], settings=TINY)["results"]
    assert rows[0]["status"] == "skipped" and "out of memory" in rows[0]["note"]
    assert rows[0]["median_ms"] is None
    assert "skipped softmax at K=10" in bench.format_table(rows)
    assert ",skipped," in bench.to_csv(rows)


@pytest.mark.parametrize("text", ["10,abc", "0", "10,,100", "-5"])
def test_parse_classes_rejects_bad_counts(text):
    with pytest.raises(UserError, match="--classes"):
        bench.parse_classes(text)


@pytest.mark.parametrize(("args", "fragment"), [(["--classes", "10,abc"], "'abc'"), (["--classes", "0"], "at least 2")])
def test_cli_bad_classes_exit_2_with_one_line(tmp_path, args, fragment):
    result = CliRunner().invoke(app, ["bench", "heads", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def test_cli_tiny_bench(tmp_path):
    args = ["--classes", "10", "--batch", "4", "--features", "8", "--repeats", "1", "--heads", "softmax,hierarchical"]
    result = CliRunner().invoke(app, ["bench", "heads", *args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "hierarchical" in result.stdout
    assert {p.name for p in tmp_path.iterdir()} == {bench.JSON_NAME, bench.CSV_NAME, bench.PNG_NAME}


def test_hierarchical_group_logits_gradients_match_a_gather():
    """The sparse CPU path of the hierarchical head (chosen for the benchmark's cost) against W[rows] @ f."""
    torch.manual_seed(0)
    f = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([[0, 1, 2], [3, 4, 0], [5, 6, 0]])
    assert torch.autograd.gradcheck(lambda f, w, b: group_logits(f, w, b, rows), (f, w, b))
    expected = torch.bmm(w[rows], f.unsqueeze(-1)).squeeze(-1) + b[rows]
    torch.testing.assert_close(group_logits(f, w, b, rows), expected)


def test_linear_baseline_is_the_layer_alone():
    # Same layer, same seed: the baseline's parameters are the softmax head's; softmax also
    # keeps the (B, K) logits for its backward, the baseline does not.
    rows = bench.bench_heads([1000], heads=[bench.BASELINE, "softmax"], settings=TINY)["results"]
    base, soft = rows
    assert base["head"] == "linear" and base["status"] == "ok"
    assert soft["peak_bytes"] - base["peak_bytes"] >= 8 * 1000 * 4
    with pytest.raises(UserError, match="valid: linear, softmax"):
        bench.parse_heads("linaer")


def test_heads_take_turns_so_a_drift_hits_every_head(monkeypatch):
    """The timed steps of one class count go round the heads in rotated order, not head by head."""
    calls = []
    real = bench._Case.time_step

    def record(self, i):
        calls.append((i, self.row["head"]))
        real(self, i)

    monkeypatch.setattr(bench._Case, "time_step", record)
    settings = bench.BenchSettings(batch=8, features=16, repeats=3)
    names = [bench.BASELINE, "softmax", "log_softmax"]
    rows = bench.bench_heads([10], heads=names, settings=settings)["results"]
    assert [r["head"] for r in rows] == names and all(r["status"] == "ok" for r in rows)
    assert calls == [
        (0, "linear"), (0, "softmax"), (0, "log_softmax"),
        (1, "softmax"), (1, "log_softmax"), (1, "linear"),
        (2, "log_softmax"), (2, "linear"), (2, "softmax"),
    ]  # fmt: skip


def test_a_head_failing_mid_timing_is_skipped_and_the_others_finish(monkeypatch):
    real = bench._Case.time_step

    def flaky(self, i):
        if self.row["head"] == "softmax" and i == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        real(self, i)

    monkeypatch.setattr(bench._Case, "time_step", flaky)
    rows = bench.bench_heads([10], heads=[bench.BASELINE, "softmax"], settings=bench.BenchSettings(8, 16, repeats=3))
    base, soft = rows["results"]
    assert base["status"] == "ok" and soft["status"] == "skipped" and "out of memory" in soft["note"]
