"""Calibration metrics against independent references, their properties, and the reliability diagram."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from hytuning_trl import (
    aurc,
    auroc,
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    overconfidence_rate,
    reliability_diagram,
)

conf_correct = st.integers(2, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
    )
)


def _ece_reference(conf, correct, n_bins):
    """A loop-by-loop ECE written independently of the package."""
    total, n = 0.0, len(conf)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        idx = [i for i, c in enumerate(conf) if (lo <= c < hi) or (b == n_bins - 1 and c == 1.0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            avg = sum(conf[i] for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - avg)
    return total


def test_hand_values():
    conf = [0.9, 0.8, 0.3, 0.95, 0.6]
    correct = [1, 0, 0, 1, 1]
    assert brier_score(conf, correct) == pytest.approx(np.mean([0.01, 0.64, 0.09, 0.0025, 0.16]))
    assert overconfidence_rate(conf, correct) == 0.0  # the wrong answers had 0.8 and 0.3
    assert overconfidence_rate([0.95, 0.91, 0.2], [0, 0, 1]) == 1.0
    # risk-coverage: sorted 0.95(1) 0.9(1) 0.8(0) 0.6(1) 0.3(0) -> risks 0, 0, 1/3, 1/4, 2/5
    assert aurc(conf, correct) == pytest.approx(np.mean([0, 0, 1 / 3, 1 / 4, 2 / 5]))
    assert expected_calibration_error([0.25, 0.75], [0, 1], n_bins=2) == pytest.approx(0.25)


@settings(max_examples=60, deadline=None)
@given(conf_correct)
def test_against_references(data):
    conf, correct = data
    assert expected_calibration_error(conf, correct) == pytest.approx(_ece_reference(conf, correct, 15), abs=1e-9)
    if 0 < sum(correct) < len(correct):
        assert auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=1e-9)
    else:
        with pytest.raises(ValueError, match="both correct and wrong"):
            auroc(conf, correct)


@settings(max_examples=60, deadline=None)
@given(conf_correct, st.sampled_from(["uniform", "quantile"]))
def test_ranges(data, strategy):
    conf, correct = data
    assert 0.0 <= expected_calibration_error(conf, correct, strategy=strategy) <= 1.0
    assert 0.0 <= brier_score(conf, correct) <= 1.0
    assert 0.0 <= aurc(conf, correct) <= 1.0
    m = calibration_metrics(conf, correct)
    assert all(v is None or np.isfinite(v) for v in m.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(2, 20).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n - 1))), min_size=1))
def test_ece_zero_for_perfectly_calibrated_groups(groups):
    """Groups of n answers at confidence k / n in (0, 1) with exactly k correct (mixed correctness): every bin's
    accuracy equals its mean confidence, whichever groups share a bin, so ECE is 0. Bug it catches: a bin accuracy or
    weight computed over the wrong members (the uncalibrated draws give ECE > 0, checked below)."""
    conf, correct = [], []
    for n, k in groups:
        conf += [k / n] * n
        correct += [1] * k + [0] * (n - k)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)
    shifted = [min(c + 0.05, 1.0) for c in conf]  # the same answers, 5 points overconfident
    assert expected_calibration_error(shifted, correct) == pytest.approx(0.05, abs=1e-9)


grid = st.integers(2, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1000).map(lambda k: k / 1000), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
    )
)


@settings(max_examples=40, deadline=None)
@given(grid)
def test_auroc_invariant_to_monotone_transforms(data):
    conf, correct = data
    if not 0 < sum(correct) < len(correct):
        return
    c = np.asarray(conf)
    assert auroc(c, correct) == pytest.approx(auroc(c**3, correct), abs=1e-12)
    assert auroc(c, correct) == pytest.approx(auroc((np.exp(c) - 1) / (np.e - 1), correct), abs=1e-12)


def test_degenerate_inputs():
    with pytest.raises(ValueError, match="empty"):
        brier_score([], [])
    with pytest.raises(ValueError, match="pair up"):
        brier_score([0.1, 0.2], [1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError, match="NaN"):
        aurc([float("nan")], [1])
    with pytest.raises(ValueError, match="0/1"):
        brier_score([0.5], [2])
    assert calibration_metrics([0.9, 0.8], [1, 1])["auroc"] is None  # all correct: AUROC undefined, not NaN
    assert overconfidence_rate([0.9, 0.8], [1, 1]) == 0.0
    assert aurc([0.9, 0.8], [0, 0]) == 1.0


def test_reliability_diagram_is_a_png(tmp_path):
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 200)
    correct = rng.uniform(0, 1, 200) < conf
    path = reliability_diagram(conf, correct, tmp_path / "r.png", title="test")
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 300
        assert len(set(img.convert("L").getdata())) > 10  # something was drawn


def test_fit_temperature_against_a_grid():
    """The fitted temperature minimises the gold option's NLL: compared with a fine grid search written here, on
    over-confident logits (the truth is T = 3: logits drawn as 3x the log-probabilities of the labels' law)."""
    import numpy as np

    from hytuning_trl import fit_temperature, temperature_scale

    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(400, 4))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    logits = 3.0 * true_logits  # over-confident by a factor of 3

    def nll(t):
        z = logits / t
        z = z - z.max(1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(400), labels])

    grid = np.linspace(0.5, 8.0, 7501)
    best = grid[np.argmin([nll(t) for t in grid])]
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(best, abs=2e-3) and 2.5 < fitted < 3.5
    probs = temperature_scale(logits, fitted)
    assert (
        probs.sum(1) == pytest.approx(np.ones(400))
        and probs.max(1).mean() < temperature_scale(logits, 1.0).max(1).mean()
    )
    # log-probabilities (a constant shift per row) give the same temperature
    shifted = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert fit_temperature(shifted, labels) == pytest.approx(fitted, abs=1e-5)
    with pytest.raises(ValueError, match="index the 4 options"):
        fit_temperature(logits, labels + 4)


def test_fit_temperature_warns_at_a_bound():
    """When the gold option scores highest on every question the NLL falls with every sharpening (checked here by
    hand at three temperatures), so the fit ends at the lower bound, and says so; a fit inside the bounds is silent."""
    import warnings

    import numpy as np

    from hytuning_trl import fit_temperature, temperature_at_bound

    logits = np.array([[2.0, 0.5, 0.0, -1.0], [0.1, 1.5, 1.0, 0.0], [0.0, 0.2, 0.9, 0.3]])
    labels = np.array([0, 1, 2])  # every gold option is the top one

    def nll(t):
        z = logits / t
        return np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(3), labels])

    assert nll(0.1) < nll(0.5) < nll(1.0)
    with pytest.warns(UserWarning, match="bound.*scores highest on every question"):
        t = fit_temperature(logits, labels)
    assert t == pytest.approx(0.05, rel=1e-4) and temperature_at_bound(t)
    labels = np.array([0, 2, 2])  # one gold option is not the top one: the NLL has a minimum, found by a grid here
    grid = np.linspace(0.2, 10.0, 9801)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inside = fit_temperature(logits, labels)
    assert inside == pytest.approx(grid[np.argmin([nll(t) for t in grid])], abs=2e-3)
    assert not temperature_at_bound(inside)


def test_temperature_on_prediction_records_by_hand():
    """``fit_records_temperature`` fits on the gold options of predictions.jsonl records (ragged: a 3-option question
    beside 4-option ones) and ``temperature_scaled_records`` rescales the chosen option's probability; both checked
    against sums written out here."""
    import math

    import numpy as np

    from hytuning_trl import fit_records_temperature, temperature_scaled_records

    def logs(*ps):
        return [math.log(x) for x in ps]

    letters = ["A", "B", "C", "D"]
    records = [
        {"gold": "A", "chosen": "A", "correct": True, "confidence": 0.9,
         "option_letters": letters, "option_logprobs": logs(0.9, 0.05, 0.03, 0.02)},
        {"gold": "C", "chosen": "B", "correct": False, "confidence": 0.8,
         "option_letters": ["A", "B", "C"], "option_logprobs": logs(0.1, 0.8, 0.1)},
        {"gold": "D", "chosen": "A", "correct": False, "confidence": 0.7,
         "option_letters": letters, "option_logprobs": logs(0.7, 0.1, 0.1, 0.1)},
    ]  # fmt: skip
    scaled = temperature_scaled_records(records, 2.0)
    # T = 2: p_i ** (1/2), renormalised over the question's own options
    assert scaled[1]["confidence"] == pytest.approx(math.sqrt(0.8) / (2 * math.sqrt(0.1) + math.sqrt(0.8)), abs=1e-9)
    assert scaled[0]["confidence"] == pytest.approx(
        math.sqrt(0.9) / sum(math.sqrt(x) for x in (0.9, 0.05, 0.03, 0.02)), abs=1e-9
    )
    assert [r["confidence_raw"] for r in scaled] == [0.9, 0.8, 0.7]
    assert [r["correct"] for r in scaled] == [True, False, False]

    def nll(t):  # mean -log p_T(gold), each question over its own options
        total = 0.0
        for r in records:
            z = np.array(r["option_logprobs"]) / t
            total += np.log(np.exp(z).sum()) - z[r["option_letters"].index(r["gold"])]
        return total / len(records)

    grid = np.linspace(0.5, 19.9, 19401)
    best = grid[np.argmin([nll(t) for t in grid])]
    assert fit_records_temperature(records) == pytest.approx(best, abs=2e-3)
    assert best > 1.5  # two confident wrong answers: the fit softens
    with pytest.raises(ValueError, match="record 0 has no 'option_logprobs'"):
        fit_records_temperature([{**records[0], "option_logprobs": None}])
    with pytest.raises(ValueError, match="gold 'E' is not among"):
        fit_records_temperature([{**records[0], "gold": "E"}])
