"""The intervals behind the baseline comparison (benchmarks/_bootstrap.py), checked by hand."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from _bootstrap import (  # noqa: E402
    metric_difference,
    metric_interval,
    paired_bootstrap,
    resampled,
    two_stage_bootstrap,
)


def _records(conf, correct):
    return [{"confidence": c, "correct": y} for c, y in zip(conf, correct)]


def test_point_differences_by_hand():
    a = _records([0.9, 0.6, 0.3, 0.8], [1, 0, 0, 1])
    b = _records([0.7, 0.2, 0.4, 0.9], [1, 1, 0, 1])
    assert metric_difference("accuracy", a, b) == pytest.approx(0.75 - 0.5)
    brier_a = np.mean([0.01, 0.36, 0.09, 0.04])
    brier_b = np.mean([0.09, 0.64, 0.16, 0.01])
    assert metric_difference("brier", a, b) == pytest.approx(brier_b - brier_a)
    with pytest.raises(ValueError, match="same questions"):
        metric_difference("accuracy", a, b[:3])


def test_identical_arms_have_a_zero_interval():
    """Bug it catches: resampling the two arms with different question indices (an unpaired bootstrap)."""
    rng = np.random.default_rng(1)
    a = _records(rng.uniform(0.3, 0.9, 50), rng.integers(0, 2, 50))
    out = paired_bootstrap("brier", a, a, n_boot=200)
    assert out["diff"] == 0.0 and out["ci95"] == [0.0, 0.0] and out["n_questions"] == 50


def test_interval_covers_a_real_difference_and_excludes_zero():
    rng = np.random.default_rng(2)
    correct = rng.integers(0, 2, 400)
    a = _records(np.full(400, 0.5), correct)  # uninformative confidence
    b = _records(np.where(correct == 1, 0.8, 0.2), correct)  # confidence that tracks correctness
    out = paired_bootstrap("brier", a, b, n_boot=500)
    assert out["diff"] == pytest.approx(0.04 - 0.25)  # Brier 0.04 against 0.25, by hand
    low, high = out["ci95"]
    assert low <= out["diff"] <= high and high < 0


def test_two_stage_over_seeds():
    rng = np.random.default_rng(3)
    seeds_a, seeds_b = [], []
    for shift in (0.0, 0.1, 0.2):  # the arms differ by a different amount at each seed
        correct = rng.integers(0, 2, 100)
        seeds_a.append(_records(np.full(100, 0.5), correct))
        seeds_b.append(_records(np.clip(np.where(correct == 1, 0.6 + shift, 0.4 - shift), 0, 1), correct))
    out = two_stage_bootstrap("brier", seeds_a, seeds_b, n_boot=300)
    by_seed = [metric_difference("brier", a, b) for a, b in zip(seeds_a, seeds_b)]
    assert out["diff"] == pytest.approx(np.mean(by_seed)) and out["n_seeds"] == 3
    assert out["ci95"][0] <= out["diff"] <= out["ci95"][1]
    assert "10 distinct seed resamples" in out["caveat"]  # C(5, 3) multisets of 3 seeds


def test_metric_interval_has_a_seed_stage():
    """Three seeds at accuracy 0.2, 0.5 and 0.8 (100 questions each): the mean is 0.5 and, because a resample can
    draw the same seed three times (1/27 of the time), the interval must reach far toward 0.2 and 0.8. Bug it
    catches: resampling questions only (that interval is about 0.5 +- 0.06)."""
    seeds = [_records(np.full(100, 0.5), np.arange(100) < k) for k in (20, 50, 80)]
    out = metric_interval("accuracy", seeds, n_boot=1000)
    assert out["value"] == pytest.approx(0.5) and out["n_seeds"] == 3 and out["n_questions"] == 100
    assert out["ci95"][0] < 0.35 and out["ci95"][1] > 0.65
    one = metric_interval("brier", seeds[:1], n_boot=300)
    assert one["value"] == pytest.approx(0.25)  # confidence 0.5 everywhere: Brier 0.25 whatever the answers
    assert one["ci95"] == [pytest.approx(0.25), pytest.approx(0.25)]


def test_resampled_metrics_against_sklearn_and_the_bins_by_hand():
    """Every resample's metric counted at once from the question multiplicities equals the metric recomputed on that
    resample: sklearn's AUROC (ties included: confidences on a 0.1 grid; NaN when a resample has one class only), the
    ECE summed bin by bin over 15 equal-width bins by hand, Brier and accuracy as plain means."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    for n, grid in ((9, True), (60, True), (60, False)):
        conf = rng.uniform(0, 1, n)
        conf = np.round(conf, 1) if grid else conf
        correct = (rng.uniform(0, 1, n) < conf).astype(float)
        index = rng.integers(0, n, (300, n))
        index[0] = np.flatnonzero(correct)[0]  # one class only
        got = {m: resampled(m, conf, correct, index) for m in ("accuracy", "brier", "ece", "auroc")}
        for r, i in enumerate(index):
            c, y = conf[i], correct[i]
            assert got["accuracy"][r] == pytest.approx(y.mean())
            assert got["brier"][r] == pytest.approx(np.mean((c - y) ** 2))
            ece = 0.0
            for b in range(15):
                upper = (b + 1) / 15
                inside = (c >= b / 15) & ((c < upper) if b < 14 else (c <= 1.0))
                if inside.any():
                    ece += inside.sum() / n * abs(y[inside].mean() - c[inside].mean())
            assert got["ece"][r] == pytest.approx(ece, abs=1e-12)
            if 0 < y.sum() < n:
                assert got["auroc"][r] == pytest.approx(roc_auc_score(y, c), abs=1e-12)
            else:
                assert np.isnan(got["auroc"][r])
        assert np.isnan(got["auroc"][0])
