"""Every head trains end to end through ``fit``; the pitfalls behave as documented."""

import contextlib
import json
import warnings

import numpy as np
import pytest

from softmaxlab import runs
from softmaxlab.data import load_data
from softmaxlab.errors import DivergedError
from softmaxlab.heads import HEADS, DoubleSoftmaxWarning, SoftmaxNLLWarning, SoftmaxPitfallWarning
from softmaxlab.heads.pitfalls import double_softmax_floor
from softmaxlab.train import fit

from ..conftest import tiny_config

#: Smaller still than the tiny config: one short epoch, so that every head costs about a second.
SMOKE = ["train.epochs=1", "data.train_size=256", "data.val_size=64", "data.test_size=64"]
#: Options that exercise each head's extras in the same run.
EXTRA = {
    "gumbel": ["head.tau_schedule=exponential", "head.anneal_rate=0.1", "head.tau_min=0.5"],
    "temperature": ["head.learn_temperature=true", "head.temperature=2.0"],
}


@pytest.fixture(scope="module")
def smoke_data():
    return load_data(tiny_config(*SMOKE).data)


#: The keys summary.json promises for every finished run (dotted paths).
SUMMARY_CONTRACT = [
    *(f"test.{k}" for k in ("accuracy", "top5", "precision_macro", "recall_macro", "f1_macro", "nll", "brier")),
    *(f"test.{k}" for k in ("ece", "mce", "entropy", "confusion_matrix", "per_class", "reliability")),
    *(f"test.{k}" for k in ("ece_after_temperature", "nll_after_temperature", "reliability_after_temperature")),
    *(f"test.{k}" for k in ("ci95", "ece_band", "ece_band_after_temperature")),
    *(f"test.{k}" for k in ("aurc", "auroc_misclassification", "classwise_ece")),
    "temperature",
    "temperature_note",
    "timing.mean_epoch_seconds",
    "timing.train_images_per_second",
    "env",
]


def check_summary_contract(summary, name, num_classes):
    for key in SUMMARY_CONTRACT:
        node = summary
        for part in key.split("."):
            assert part in node, f"{name}: summary.json has no {key}"
            node = node[part]
    test = summary["test"]
    assert set(test["per_class"]) == {"precision", "recall", "f1", "support"}
    assert set(test["ci95"]) == {"accuracy", "f1_macro", "nll", "brier", "ece"}
    low, high = test["ci95"]["accuracy"]
    assert low <= test["accuracy"] <= high and test["ece_band"]["mean"] <= test["ece_band"]["p95"]
    assert all(len(v) == num_classes for v in test["per_class"].values())
    for rel in (test["reliability"], test["reliability_after_temperature"]):
        if rel is not None:
            assert rel["bins"] == 15 and all(len(rel[k]) == 15 for k in ("count", "confidence", "accuracy"))
    assert summary["temperature_note"].startswith(f"{name}: ")
    # Every head is recalibrated after training; sparsemax, entmax-1.5 and sigmoid on their scores.
    assert summary["temperature"] > 0 and 0 <= test["ece_after_temperature"] <= 1
    assert test["nll_after_temperature"] > 0 and test["ece_band_after_temperature"]["p95"] > 0


def check_predictions(run_dir, summary):
    """predictions.npz holds the test probabilities behind summary.json's test metrics."""
    kept = runs.read_predictions(run_dir)
    probs, targets = kept["probs"], kept["targets"]
    assert probs.dtype == np.float32 and targets.dtype == np.int64
    assert kept["index"].tolist() == list(range(len(targets)))
    assert probs.shape == (len(targets), len(summary["classes"]))
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-3)
    assert (probs.argmax(axis=1) == targets).mean() == pytest.approx(summary["test"]["accuracy"], abs=1e-6)


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_fits_end_to_end(name, smoke_data, tmp_path):
    cfg = tiny_config(*SMOKE, f"head.name={name}", *EXTRA.get(name, []))
    pitfall = {"double_softmax": DoubleSoftmaxWarning, "softmax_nll": SoftmaxNLLWarning}.get(name)
    expect_warning = pytest.warns(pitfall) if pitfall else contextlib.nullcontext()
    with warnings.catch_warnings():
        if pitfall is None:  # every correct pairing trains without a pitfall warning
            warnings.simplefilter("error", SoftmaxPitfallWarning)
        with expect_warning:
            result = fit(cfg, tmp_path / name, data=smoke_data)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["head"] == name
    assert 0 <= summary["test"]["accuracy"] <= 1 and summary["test"]["nll"] > 0
    check_summary_contract(summary, name, smoke_data.num_classes)
    check_predictions(result.run_dir, summary)
    record = runs.read_jsonl(result.run_dir / "metrics.jsonl")[-1]
    if name == "gumbel":  # 4 steps at rate 0.1: tau = max(0.5, exp(-0.3)) before the last step
        assert record["tau"] == pytest.approx(0.7408, abs=1e-3)
    if name == "temperature":
        assert record["head_temperature"] != pytest.approx(2.0)  # learned
    if name == "hierarchical":
        assert 0 <= record["val_coarse_acc"] <= 1


def test_double_softmax_learns_clearly_worse_than_softmax_and_warns(tmp_path):
    # 10 classes: the floor is ln(1 + 9/e) = 1.46 and the second softmax damps every gradient.
    common = ["data.num_classes=10", "train.epochs=2"]
    data = load_data(tiny_config(*common).data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DoubleSoftmaxWarning)  # softmax on logits: no warning
        good = fit(tiny_config(*common), tmp_path / "softmax", data=data)
    with pytest.warns(DoubleSoftmaxWarning, match="double-softmax"):
        bad = fit(tiny_config(*common, "head.name=double_softmax"), tmp_path / "double", data=data)
    assert bad.summary["test"]["accuracy"] < good.summary["test"]["accuracy"] - 0.04
    good_drop = good.history[0]["train_loss"] - good.history[-1]["train_loss"]
    bad_drop = bad.history[0]["train_loss"] - bad.history[-1]["train_loss"]
    assert bad_drop < 0.25 * good_drop
    assert bad.history[-1]["train_loss"] >= double_softmax_floor(10)


def test_naive_softmax_with_a_huge_learning_rate_diverges(smoke_data, tmp_path):
    cfg = tiny_config(*SMOKE, "head.name=naive_softmax", "train.lr=10", "train.schedule=constant")
    with pytest.raises(DivergedError, match="naive_softmax") as info:
        fit(cfg, tmp_path / "naive", data=smoke_data)
    assert info.value.epoch == 1
    summary = json.loads((tmp_path / "naive" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["head"] == "naive_softmax"


#: One step of 64 images per epoch: what bfloat16 autocast needs to show a dtype clash.
BF16 = ["train.epochs=1", "data.train_size=64", "data.val_size=32", "data.test_size=32", "train.amp=bf16"]


@pytest.fixture(scope="module")
def bf16_data():
    return load_data(tiny_config(*BF16).data)


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_trains_and_evaluates_under_bfloat16_autocast(name, bf16_data, tmp_path):
    """Both full-size study configs train in bf16; the hierarchical and adaptive heads crashed on
    their first step ("mat1 and mat2 must have the same dtype"), the adaptive head's bf16
    probabilities did not sum to 1."""
    cfg = tiny_config(*BF16, f"head.name={name}", "diagnostics.enabled=false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SoftmaxPitfallWarning)
        result = fit(cfg, tmp_path / name, data=bf16_data)
    assert result.summary["status"] == "finished" and 0 <= result.summary["test"]["accuracy"] <= 1


def test_softmax_activations_in_every_block_are_one_warning_not_one_per_module(smoke_data, tmp_path):
    cfg = tiny_config(*SMOKE, "head.name=double_softmax", "model.widths=[8,8,8]", "model.activation=softmax_hw")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(cfg, tmp_path / "run", data=smoke_data)
    pitfalls = [w for w in caught if issubclass(w.category, SoftmaxPitfallWarning)]
    assert [w.category for w in pitfalls] == [DoubleSoftmaxWarning, SoftmaxPitfallWarning]
    hidden = str(pitfalls[1].message)
    assert hidden.startswith("intermediate_softmax (warning) at 3 places: backbone.blocks.0.2, backbone.blocks.1.2, ")
    assert "fix: use a pointwise activation" in hidden and f"softmaxlab lint {tmp_path / 'run'}` explains" in hidden


def test_merge_repeated_counts_the_places_and_keeps_single_findings():
    from softmaxlab.linting import Finding
    from softmaxlab.train import SHOWN_PLACES, merge_repeated

    def finding(kind, where, fix="use relu"):
        return Finding(kind, "warning", where, f"{kind} at {where}", fix)

    hidden = [finding("intermediate_softmax", f"blocks.{i}") for i in range(SHOWN_PLACES + 3)]
    single = finding("log_of_softmax", "head")
    other = finding("intermediate_softmax", "x", fix="other")
    merged = merge_repeated([hidden[0], single, *hidden[1:], hidden[1], other, other])  # found twice: one place
    assert [(f.kind, f.where) for f in merged] == [
        ("intermediate_softmax", f"{SHOWN_PLACES + 3} places"),
        ("log_of_softmax", "head"),
        ("intermediate_softmax", "x"),  # another fix: another warning
    ]
    assert merged[0].message == ", ".join(f"blocks.{i}" for i in range(SHOWN_PLACES)) + " and 3 more"
    assert merged[1] is single
    assert merged[0].fix.startswith("use relu; ")
    four = merge_repeated(hidden[: SHOWN_PLACES + 1])  # one more than shown: named, not "and 1 more"
    assert four[0].message == ", ".join(f"blocks.{i}" for i in range(SHOWN_PLACES + 1))
