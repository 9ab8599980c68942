import itertools
import math

import numpy as np
import pytest
import torch

from softmaxlab.config import HeadConfig
from softmaxlab.heads import HEADS, build_head
from softmaxlab.metrics import (
    HIGHER_IS_BETTER,
    NO_DIRECTION,
    after_temperature,
    apply_temperature,
    aurc,
    calibration_metrics,
    classification_metrics,
    classwise_ece,
    fit_head_temperature,
    fit_temperature,
    misclassification_auroc,
    selective_metrics,
    temperature_logits,
    validate_probs,
)


def test_hand_worked_example():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 2])
    m = classification_metrics(p, y)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["top5"] == pytest.approx(1.0)  # k capped at 3 classes
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    # precision: class 0 1/2, class 1 1/1, class 2 1/1; recall: 1, 1/2, 1
    assert m["precision_macro"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((1 + 0.5 + 1) / 3)
    f1 = [2 * 0.5 * 1 / 1.5, 2 * 1 * 0.5 / 1.5, 1.0]
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert m["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(1.0)) / 4)
    assert m["nll_clamped"] == 0.0
    brier = [(0.3**2 + 0.2**2 + 0.1**2), (0.1**2 + 0.2**2 + 0.1**2), (0.6**2 + 0.7**2 + 0.1**2), 0.0]
    assert m["brier"] == pytest.approx(sum(brier) / 4)


def test_exact_zero_probability_gives_finite_nll():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    m = classification_metrics(p, torch.tensor([1, 0]))
    assert math.isfinite(m["nll"]) and m["nll"] > 10
    assert m["nll_clamped"] == pytest.approx(0.5)  # says how much of the NLL is the clamp


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (torch.randn(4, 3), "in \\[0, 1\\]"),  # logits are refused, never re-softmaxed
        (torch.full((4, 3), 0.2), "rows must sum to 1"),
        (torch.full((4,), 0.2), "expected \\(N, K\\)"),
    ],
)
def test_bad_input_is_rejected_naming_the_source(probs, match):
    with pytest.raises(ValueError, match=match) as info:
        validate_probs(probs, torch.zeros(probs.shape[0], dtype=torch.long), source="head 'x'")
    assert "head 'x'" in str(info.value)


def test_direction_metadata_covers_every_scalar_metric():
    p, y = torch.softmax(torch.randn(20, 4), 1), torch.randint(0, 4, (20,))
    m = {**classification_metrics(p, y), **after_temperature(p, y, 1.5)}
    scalars = {k for k, v in m.items() if isinstance(v, float)}
    assert scalars == set(HIGHER_IS_BETTER) | NO_DIRECTION
    assert not NO_DIRECTION & set(HIGHER_IS_BETTER)
    assert not any(HIGHER_IS_BETTER[k] for k in ("nll", "brier", "ece", "mce", "ece_after_temperature"))


def test_per_class_values_and_entropy_by_hand():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.0, 0.0, 1.0]])
    m = classification_metrics(p, torch.tensor([0, 1, 1, 2]))
    per_class = m["per_class"]
    assert per_class["precision"] == pytest.approx([0.5, 1.0, 1.0])
    assert per_class["recall"] == pytest.approx([1.0, 0.5, 1.0])
    assert per_class["f1"] == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert per_class["support"] == [1, 2, 1]
    rows = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]]
    entropy = [-sum(q * math.log(q) for q in row) for row in rows] + [0.0]  # 0 log 0 = 0
    assert m["entropy"] == pytest.approx(sum(entropy) / 4)


#: conf 0.9 (bin 13) right and wrong, 0.55 (bin 8) right, 1.0 (bin 14, closed at 1) wrong, 0.95 (bin 14) right.
CAL_P = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.55, 0.45, 0.0], [0.0, 0.0, 1.0], [0.95, 0.05, 0.0]])
CAL_Y = torch.tensor([0, 0, 0, 1, 0])


def test_ece_mce_and_reliability_by_hand():
    m = calibration_metrics(CAL_P, CAL_Y)
    # bins: 8 -> |1 - 0.55|, 13 -> |0.5 - 0.9|, 14 -> |0.5 - 0.975| with 1, 2, 2 images
    assert m["ece"] == pytest.approx((0.45 + 2 * 0.4 + 2 * 0.475) / 5, abs=1e-6)
    # A confidence of exactly 1 belongs to the last bin (in a bin of its own MCE would be 1).
    assert m["mce"] == pytest.approx(0.475, abs=1e-6)
    r = m["reliability"]
    assert r["bins"] == 15 and r["count"] == [0] * 8 + [1] + [0] * 4 + [2, 2]
    assert r["confidence"][8] == pytest.approx(0.55) and r["confidence"][14] == pytest.approx(0.975)
    assert r["accuracy"][8] == 1.0 and r["accuracy"][13] == 0.5 and r["accuracy"][14] == 0.5
    assert r["confidence"][0] is None and r["accuracy"][0] is None


def loop_ece(p, y, n_bins=15):
    """ECE and MCE by an explicit loop over equal-width bins [lo, hi), the last closed at 1."""
    conf, pred = p.max(dim=1)
    ece, mce = 0.0, 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [i for i in range(len(y)) if lo <= conf[i] < hi or (b == n_bins - 1 and conf[i] == 1.0)]
        if inside:
            acc = sum(float(pred[i] == y[i]) for i in inside) / len(inside)
            mean_conf = sum(float(conf[i]) for i in inside) / len(inside)
            ece += len(inside) / len(y) * abs(acc - mean_conf)
            mce = max(mce, abs(acc - mean_conf))
    return ece, mce


def test_ece_and_mce_match_an_explicit_loop_over_bins():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(400, 5, generator=g), dim=1)
    p[:40] = torch.nn.functional.one_hot(torch.arange(40) % 5, 5).float()  # certain: confidence exactly 1
    y = torch.randint(0, 5, (400,), generator=g)
    m = classification_metrics(p, y)
    ece, mce = loop_ece(p, y)
    assert m["ece"] == pytest.approx(ece, abs=1e-5)
    assert m["mce"] == pytest.approx(mce, abs=1e-5)
    r = m["reliability"]
    assert sum(r["count"]) == 400
    from_bins = sum(n * abs(a - c) for n, a, c in zip(r["count"], r["accuracy"], r["confidence"], strict=True) if n)
    assert from_bins / 400 == pytest.approx(m["ece"], abs=1e-5)


def test_temperature_scaling_recovers_a_known_temperature_and_lowers_ece():
    g = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(8000, 10, generator=g, dtype=torch.float64)
    # Labels drawn from softmax(z / 3): the logits z are three times too confident.
    y = torch.multinomial(torch.softmax(z / 3, dim=1), 1, generator=g)[:, 0]
    t = fit_temperature(z[:4000], y[:4000])
    assert t == pytest.approx(3.0, rel=0.06)
    # From the probabilities alone (log p = z - logsumexp z): the same temperature.
    p = torch.softmax(z, dim=1).float()
    assert fit_temperature(temperature_logits(p[:4000]), y[:4000]) == pytest.approx(t, rel=1e-3)
    assert fit_temperature(z[:4000], y[:4000]) == t  # deterministic
    before = calibration_metrics(p[4000:], y[4000:])["ece"]
    after = after_temperature(p[4000:], y[4000:], t)
    assert after["ece_after_temperature"] < before / 3
    assert after["nll_after_temperature"] < classification_metrics(p[4000:], y[4000:])["nll"]
    assert after["reliability_after_temperature"]["bins"] == 15


def test_apply_temperature_keeps_predictions_and_sums_to_one():
    p = torch.softmax(torch.randn(50, 6), dim=1)
    for t in (0.3, 1.0, 4.0):
        q = apply_temperature(p, t)
        torch.testing.assert_close(q.sum(dim=1), torch.ones(50))
        assert torch.equal(q.argmax(dim=1), p.argmax(dim=1))
    torch.testing.assert_close(apply_temperature(p, 1.0), p)
    assert apply_temperature(p, 4.0).max() < p.max()  # flatter


def test_no_temperature_gives_null_values_not_missing_keys():
    out = after_temperature(CAL_P, CAL_Y, None)
    keys = ("ece_after_temperature", "ece_band_after_temperature", "nll_after_temperature")
    assert out == {**dict.fromkeys(keys), "reliability_after_temperature": None}


@pytest.mark.parametrize("name", HEADS.names())
def test_each_head_gets_a_temperature_and_says_what_it_does(name):
    head = build_head(HeadConfig(name=name), 6, 4).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        scores = head(torch.randn(64, 6, generator=g))
        p = head.probs(scores)
    y = torch.randint(0, 4, (64,), generator=g)
    t, note = fit_head_temperature(head, p, y, source=f"head {name!r}", scores=scores)
    assert note.startswith(f"{name}: ") and 0.01 <= t <= 100 and "fitted on the validation split" in note
    after = after_temperature(p, y, t, head, scores)
    assert 0 <= after["ece_after_temperature"] <= 1 and math.isfinite(after["nll_after_temperature"])
    if head.temperature_input == "scores":
        with pytest.raises(ValueError, match="pass them"):  # the scores are needed, never guessed
            fit_head_temperature(head, p, y, source=f"head {name!r}")


def test_temperature_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="finite logits"):
        fit_temperature(torch.tensor([[0.0, -math.inf]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="N >= 1"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    head = build_head(HeadConfig(name="softmax"), 6, 3)
    with pytest.raises(ValueError, match=r"head 'softmax'.*in \[0, 1\]"):  # logits, never re-softmaxed
        fit_head_temperature(head, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), source="head 'softmax'")


def test_no_dense_confusion_matrix_beyond_the_limit():
    """100,000 classes would make an 80 GB matrix after all the training: left out instead."""
    from softmaxlab.metrics import MAX_CONFUSION_CLASSES, classification_metrics

    k = MAX_CONFUSION_CLASSES + 1
    probs = torch.full((4, k), 1.0 / k)
    m = classification_metrics(probs, torch.tensor([0, 1, 2, k - 1]))
    assert m["confusion_matrix"] is None and len(m["per_class"]["recall"]) == k
    small = classification_metrics(probs[:, :3] * k / 3, torch.tensor([0, 1, 2, 2]))
    assert len(small["confusion_matrix"]) == 3


def test_class_scores_beyond_the_limit_equal_torchmetrics_and_need_no_k_squared_memory():
    """Past MAX_CONFUSION_CLASSES the scores are counted by hand (torchmetrics' K^2 bincount would
    take 80 GB at 100,000 classes); they must equal torchmetrics' where both can run."""
    from torchmetrics.functional.classification import multiclass_f1_score, multiclass_precision, multiclass_recall

    from softmaxlab.metrics import MAX_CONFUSION_CLASSES, _class_scores, classification_metrics

    k = MAX_CONFUSION_CLASSES + 7
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 40, (500,), generator=g)  # most classes have no images
    probs = torch.softmax(3 * torch.randn(500, k, generator=g), dim=1)
    probs[:250] = torch.softmax(10 * torch.nn.functional.one_hot(target[:250], k).float(), dim=1)  # half right
    macro, per_class = _class_scores(probs.argmax(dim=1), target, k)
    for name, fn in {"precision": multiclass_precision, "recall": multiclass_recall, "f1": multiclass_f1_score}.items():
        assert macro[f"{name}_macro"] == pytest.approx(fn(probs, target, num_classes=k, average="macro").item())
        assert per_class[name] == pytest.approx(fn(probs, target, num_classes=k, average="none").tolist())
    m = classification_metrics(probs, target)
    one_hot = torch.nn.functional.one_hot(target, k).float()
    assert m["brier"] == pytest.approx((probs - one_hot).pow(2).sum(dim=1).mean().item(), abs=1e-6)
    assert m["precision_macro"] == macro["precision_macro"] and m["confusion_matrix"] is None


def test_bootstrap_intervals_equal_a_loop_over_the_same_resamples():
    """The vectorised bootstrap against the plain definition: each resample's metrics computed
    from its own images with the library's point estimates (torchmetrics' ECE and F1)."""
    from softmaxlab.metrics import bootstrap_ci, classification_metrics

    g = torch.Generator().manual_seed(1)
    n, k, resamples = 300, 4, 60
    target = torch.randint(0, k, (n,), generator=g)
    logits = 2 * torch.randn(n, k, generator=g)
    logits[torch.arange(n), target] += 1.5
    probs = torch.softmax(logits, dim=1)
    draws = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(0))
    per_resample = [classification_metrics(probs[i], target[i]) for i in draws]
    ci = bootstrap_ci(probs, target, resamples=resamples, seed=0)
    for name in ("accuracy", "f1_macro", "nll", "brier", "ece"):
        values = torch.tensor([m[name] for m in per_resample], dtype=torch.float64)
        expected = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        assert ci[name] == pytest.approx(expected, abs=1e-5), name


def test_the_accuracy_interval_has_the_binomial_width_and_the_summary_keys_are_there():
    from softmaxlab.metrics import after_temperature, classification_metrics

    g = torch.Generator().manual_seed(2)
    n = 2000
    target = torch.randint(0, 10, (n,), generator=g)
    logits = torch.randn(n, 10, generator=g)
    logits[torch.arange(n), target] += 1.0
    m = classification_metrics(torch.softmax(logits, dim=1), target)
    low, high = m["ci95"]["accuracy"]
    acc = m["accuracy"]
    assert low < acc < high
    se = (acc * (1 - acc) / n) ** 0.5
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
    band = m["ece_band"]
    assert 0 < band["mean"] < band["p95"] < 0.1
    after = after_temperature(torch.softmax(logits, dim=1), target, 1.5)
    assert after["ece_band_after_temperature"]["p95"] > 0
    assert after_temperature(torch.softmax(logits, dim=1), target, None)["ece_band_after_temperature"] is None


# ---- selective prediction: AURC, misclassification AUROC, class-wise ECE against literal loops


def literal_aurc(conf, correct, order):
    """AURC of one order of the images (most confident first), by the definition."""
    risks = [sum(not correct[i] for i in order[:j]) / j for j in range(1, len(order) + 1)]
    return sum(risks) / len(risks)


def mean_aurc_over_tie_orders(conf, correct):
    """The mean literal AURC over every order of the tied images (groups by equal confidence)."""
    groups = [[i for i in range(len(conf)) if conf[i] == c] for c in sorted(set(conf), reverse=True)]
    orders = [sum(parts, ()) for parts in itertools.product(*(itertools.permutations(g) for g in groups))]
    return sum(literal_aurc(conf, correct, list(o)) for o in orders) / len(orders)


def expected_aurc_loop(conf, correct):
    """At each coverage j: the errors above the j-th confidence plus the expected errors among
    the tied images that complete the top j, each tied image wrong with the group's rate."""
    n, sorted_conf, total = len(conf), sorted(conf, reverse=True), 0.0
    for j in range(1, n + 1):
        c = sorted_conf[j - 1]
        above = [i for i in range(n) if conf[i] > c]
        tied = [i for i in range(n) if conf[i] == c]
        errors = sum(not correct[i] for i in above)
        errors += (j - len(above)) * sum(not correct[i] for i in tied) / len(tied)
        total += errors / j
    return total / n


def mann_whitney(conf, correct):
    right = [c for c, ok in zip(conf, correct, strict=True) if ok]
    wrong = [c for c, ok in zip(conf, correct, strict=True) if not ok]
    wins = sum(1.0 if r > w else 0.5 if r == w else 0.0 for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def loop_classwise_ece(p, y, n_bins=15):
    """For every class and bin, the images whose p_ik is in the bin (edges of the float32 linspace)."""
    edges = torch.linspace(0, 1, n_bins + 1).tolist()
    p, y = p.float().numpy().astype(np.float64), y.numpy()
    n, k = p.shape
    per_class = []
    for c in range(k):
        ece = 0.0
        for b in range(n_bins):
            inside = [i for i in range(n) if edges[b] <= p[i, c] < edges[b + 1] or (b == n_bins - 1 and p[i, c] == 1)]
            if inside:
                freq = np.mean([y[i] == c for i in inside])
                ece += len(inside) / n * abs(freq - np.mean([p[i, c] for i in inside]))
        per_class.append(ece)
    return float(np.mean(per_class))


def random_probs(seed, n=300, k=6, sparse=False):
    """Softmax probabilities with tied confidences (a tenth of the rows repeat others, some rows
    are one-hot) and, when ``sparse``, exact zeros as a sparse head gives."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    logits = 2 * torch.randn(n, k, generator=g, dtype=torch.float64)
    logits[torch.arange(n), y] += 1 + 3 * torch.rand(n, generator=g, dtype=torch.float64)  # better than chance
    p = torch.softmax(logits, dim=1)
    if sparse:
        p = torch.where(p < 0.3 * p.max(dim=1, keepdim=True).values, 0.0, p)  # the arg max stays
    p[: n // 10] = p[n // 10 : 2 * (n // 10)]  # exact ties
    p[-5:] = torch.nn.functional.one_hot(torch.arange(5) % k, k).double()  # confidence exactly 1
    return (p / p.sum(dim=1, keepdim=True)).float(), y


def conf_correct(p, y):
    conf, pred = p.max(dim=1)
    return conf, pred == y


@pytest.mark.parametrize("sparse", [False, True])
def test_selective_metrics_match_literal_loops_on_random_probabilities(sparse):
    p, y = random_probs(3, sparse=sparse)
    conf, correct = conf_correct(p, y)
    assert len(set(conf.tolist())) < len(conf) - 30  # there are ties to handle
    m = classification_metrics(p, y)
    assert m["aurc"] == pytest.approx(expected_aurc_loop(conf.tolist(), correct.tolist()), abs=1e-12)
    assert m["auroc_misclassification"] == pytest.approx(mann_whitney(conf.tolist(), correct.tolist()), abs=1e-6)
    assert m["classwise_ece"] == pytest.approx(loop_classwise_ece(p, y), abs=1e-6)
    assert 0.5 < m["auroc_misclassification"] < 1 and 0 < m["aurc"] < 1 - m["accuracy"]
    assert m["classwise_ece"] != pytest.approx(m["ece"], abs=1e-3)  # a different quantity


@pytest.mark.parametrize("seed", range(4))
def test_aurc_with_ties_is_the_mean_over_every_order_of_the_tied_images(seed):
    g = torch.Generator().manual_seed(seed)
    conf = torch.randint(1, 4, (8,), generator=g).float() / 4  # 8 images in 3 confidence levels
    correct = torch.rand(8, generator=g) < 0.6
    expected = mean_aurc_over_tie_orders(conf.tolist(), correct.tolist())
    assert aurc(conf, correct) == pytest.approx(expected, abs=1e-12)
    for _ in range(5):  # whatever order the images come in
        perm = torch.randperm(8, generator=g)
        assert aurc(conf[perm], correct[perm]) == pytest.approx(expected, abs=1e-12)


def test_aurc_does_not_depend_on_the_input_order():
    p, y = random_probs(5, sparse=True)
    m = selective_metrics(p, y)
    for seed in range(3):
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        assert selective_metrics(p[perm], y[perm]) == pytest.approx(m, abs=1e-12)
    # Taking the tied images in input order instead would move it: the order of the ties matters.
    conf, correct = torch.tensor([0.9, 0.9, 0.5]), [True, False, True]
    assert literal_aurc(conf, correct, [0, 1, 2]) == pytest.approx((0 + 1 / 2 + 1 / 3) / 3)
    assert literal_aurc(conf, correct, [1, 0, 2]) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    for order in ([0, 1, 2], [1, 0, 2]):  # both give the mean of the two
        assert aurc(conf[order], torch.tensor(correct)[order]) == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)


def test_a_wrong_variant_would_fail_these_tests():
    """An ascending sort (least confident first) or a negated score gives other values."""
    p, y = random_probs(7)
    conf, correct = conf_correct(p, y)
    m = selective_metrics(p, y)
    ascending = literal_aurc(conf.tolist(), correct.tolist(), conf.argsort().tolist())
    assert ascending > m["aurc"] + 0.1
    assert mann_whitney((-conf).tolist(), correct.tolist()) == pytest.approx(1 - m["auroc_misclassification"])
    assert m["auroc_misclassification"] > 0.6
    # the class-wise ECE depends on the labels: one that ignored them would fail the loop comparison
    assert loop_classwise_ece(p, (y + 1) % 6) > m["classwise_ece"] + 0.05


def test_all_right_all_wrong_and_a_perfect_ranking():
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    assert aurc(conf, torch.ones(5, dtype=torch.bool)) == 0.0
    assert aurc(conf, torch.zeros(5, dtype=torch.bool)) == 1.0
    assert misclassification_auroc(conf, torch.ones(5, dtype=torch.bool)) is None
    assert misclassification_auroc(conf, torch.zeros(5, dtype=torch.bool)) is None
    perfect = torch.tensor([True, True, True, False, False])
    assert aurc(conf, perfect) == pytest.approx((1 / 4 + 2 / 5) / 5)  # sum_{j>N-e} (j - N + e) / j / N
    assert misclassification_auroc(conf, perfect) == 1.0
    assert misclassification_auroc(conf, perfect.flip(0)) == 0.0
    assert aurc(torch.full((5,), 0.5), perfect) == pytest.approx(0.4)  # all tied: the error rate
    p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    m = classification_metrics(p, torch.tensor([0, 0, 1]))
    assert m["aurc"] == 0.0 and m["auroc_misclassification"] is None


def test_classwise_ece_by_hand_and_none_beyond_the_class_limit():
    # class 0: 1.0 in bin 14 (freq 1), 0.5 in bin 7 (freq 0); class 1: 0.0 (freq 0), 0.5 (freq 1)
    assert classwise_ece(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 1])) == pytest.approx(0.25)
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1]), 3).float()
    assert classwise_ece(one_hot, torch.tensor([0, 1, 2, 1])) == 0.0  # certain and right
    from softmaxlab.metrics import MAX_CONFUSION_CLASSES

    k = MAX_CONFUSION_CLASSES + 1
    m = classification_metrics(torch.full((4, k), 1.0 / k), torch.tensor([0, 1, 2, k - 1]))
    assert m["classwise_ece"] is None and m["aurc"] == pytest.approx(0.75)  # all tied, predicting class 0
    at_limit = torch.full((4, MAX_CONFUSION_CLASSES), 1.0 / MAX_CONFUSION_CLASSES)
    assert classwise_ece(at_limit, torch.tensor([0, 1, 2, 3])) is not None


def test_classwise_ece_in_chunks_equals_one_pass(monkeypatch):
    import softmaxlab.metrics as metrics

    p, y = random_probs(11, n=100, k=5, sparse=True)
    whole = classwise_ece(p, y)
    monkeypatch.setattr(metrics, "_CLASSWISE_ENTRIES", 7 * 5)  # 7 images a chunk, the last one short
    assert classwise_ece(p, y) == pytest.approx(whole, abs=1e-12)
