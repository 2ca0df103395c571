"""Confidence-faithfulness metrics: does the model's confidence track its correctness?

Inputs are confidences in ``[0, 1]`` and correctness (bools or 0/1), as lists or numpy arrays of equal, non-zero
length; anything else raises a ``ValueError`` that says what is wrong. Every metric is defined for all-correct and
all-wrong inputs except AUROC, which needs both classes and says so.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "aurc",
    "auroc",
    "brier_score",
    "calibration_bins",
    "calibration_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "golden_section_minimise",
    "overconfidence_rate",
    "reliability_diagram",
    "temperature_scale",
    "uniform_bin_index",
]

ArrayLike = Sequence[float] | np.ndarray


def _check(conf: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(conf, dtype=np.float64).reshape(-1)
    y = np.asarray(correct).reshape(-1)
    if c.size != y.size:
        raise ValueError(f"Got {c.size} confidences but {y.size} correctness labels; they must pair up one to one.")
    if c.size == 0:
        raise ValueError("No predictions: the confidence and correctness arrays are empty.")
    if not np.isfinite(c).all():
        raise ValueError(f"{int((~np.isfinite(c)).sum())} confidences are NaN or infinite.")
    if (c < 0).any() or (c > 1).any():
        raise ValueError(
            f"Confidences must lie in [0, 1]; got values from {c.min():.4g} to {c.max():.4g}. Pass probabilities, "
            "not logits or percentages."
        )
    if y.dtype != bool:
        yf = y.astype(np.float64)
        if not np.isin(yf, (0.0, 1.0)).all():
            raise ValueError("Correctness must be booleans or 0/1.")
        y = yf.astype(bool)
    return c, y


def accuracy(conf: ArrayLike, correct: ArrayLike) -> float:
    """Share of correct answers (``conf`` is checked, not used)."""
    _, y = _check(conf, correct)
    return float(y.mean())


def uniform_bin_index(conf: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """The equal-width bin (``0 .. n_bins - 1``) of each confidence in ``[0, 1]``: ``[b / n, (b + 1) / n)``, the last
    bin closed at 1."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)


def calibration_bins(
    conf: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: str = "uniform"
) -> list[dict[str, float]]:
    """Per bin: ``lower``, ``upper``, ``count``, ``confidence`` (mean) and ``accuracy``; empty bins have count 0.

    ``uniform``: equal-width bins on ``[0, 1]`` (the last one closed). ``quantile``: equal-mass bins of the sorted
    confidences (sizes differ by at most one).
    """
    c, y = _check(conf, correct)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        index = uniform_bin_index(c, n_bins)
        groups = [np.flatnonzero(index == b) for b in range(n_bins)]
        bounds = [(edges[b], edges[b + 1]) for b in range(n_bins)]
    elif strategy == "quantile":
        order = np.argsort(c, kind="stable")
        groups = [g for g in np.array_split(order, min(n_bins, c.size))]
        bounds = [(float(c[g].min()), float(c[g].max())) for g in groups]
    else:
        raise ValueError(f"Unknown binning strategy {strategy!r}; choose 'uniform' or 'quantile'.")
    bins = []
    for g, (lo, hi) in zip(groups, bounds):
        count = len(g)
        bins.append(
            {
                "lower": float(lo),
                "upper": float(hi),
                "count": count,
                "confidence": float(c[g].mean()) if count else 0.0,
                "accuracy": float(y[g].mean()) if count else 0.0,
            }
        )
    return bins


def expected_calibration_error(
    conf: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: str = "uniform"
) -> float:
    """``ECE = sum_b (n_b / N) |acc_b - conf_b|`` over ``n_bins`` equal-width (``uniform``) or equal-mass
    (``quantile``) bins. In ``[0, 1]``; 0 when every bin's accuracy equals its mean confidence."""
    bins = calibration_bins(conf, correct, n_bins, strategy)
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins))


def brier_score(conf: ArrayLike, correct: ArrayLike) -> float:
    """Mean squared error of the confidence against correctness: ``mean((conf - correct)^2)``, in ``[0, 1]``."""
    c, y = _check(conf, correct)
    return float(np.mean((c - y.astype(np.float64)) ** 2))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    starts = ends - counts + 1
    return ((starts + ends) / 2.0)[inverse]


def auroc(conf: ArrayLike, correct: ArrayLike) -> float:
    """Area under the ROC curve of confidence as a detector of correct answers (Mann-Whitney U, ties count half):
    the probability that a random correct answer has higher confidence than a random wrong one. Undefined - and a
    ``ValueError`` - when all answers are correct or all are wrong."""
    c, y = _check(conf, correct)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUROC needs both correct and wrong answers; got {n_pos} correct and {n_neg} wrong out of {y.size}."
        )
    ranks = _average_ranks(c)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def aurc(conf: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve: answers sorted by confidence, most confident first; for each coverage
    ``k / N`` the risk is the error rate among the ``k`` most confident; AURC is the mean risk over ``k = 1..N``.
    Lower is better; equal confidences are taken in their given order."""
    c, y = _check(conf, correct)
    order = np.argsort(-c, kind="stable")
    errors = np.cumsum(~y[order])
    return float(np.mean(errors / np.arange(1, c.size + 1)))


def overconfidence_rate(conf: ArrayLike, correct: ArrayLike, threshold: float = 0.9) -> float:
    """Share of WRONG answers given with confidence ``>= threshold`` (0 when no answer is wrong)."""
    c, y = _check(conf, correct)
    wrong = ~y
    return float((c[wrong] >= threshold).mean()) if wrong.any() else 0.0


def calibration_metrics(conf: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> dict[str, Any]:
    """All metrics at once: ``n``, ``accuracy``, ``ece``, ``ece_quantile``, ``brier``, ``auroc`` (``None`` when
    undefined), ``aurc``, ``overconfidence_rate``, ``mean_confidence``."""
    c, y = _check(conf, correct)
    try:
        auc: float | None = auroc(c, y)
    except ValueError:
        auc = None
    return {
        "n": int(c.size),
        "accuracy": float(y.mean()),
        "mean_confidence": float(c.mean()),
        "ece": expected_calibration_error(c, y, n_bins, "uniform"),
        "ece_quantile": expected_calibration_error(c, y, n_bins, "quantile"),
        "brier": brier_score(c, y),
        "auroc": auc,
        "aurc": aurc(c, y),
        "overconfidence_rate": overconfidence_rate(c, y),
    }


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]))


def golden_section_minimise(f: Any, lo: float, hi: float, tol: float = 1e-7) -> float:
    """The minimiser of a unimodal ``f`` on ``[lo, hi]`` by golden-section search (the midpoint of the last bracket,
    narrower than ``tol``): the one-parameter fits of the post-hoc calibrations."""
    golden = (5**0.5 - 1) / 2
    a, b = lo + (1 - golden) * (hi - lo), lo + golden * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - golden) * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = f(b)
    return (lo + hi) / 2


#: The search interval of :func:`fit_temperature` (and what :func:`temperature_at_bound` compares with by default).
_TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)


def fit_temperature(
    logits: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    bounds: tuple[float, float] = _TEMPERATURE_BOUNDS,
    tol: float = 1e-7,
) -> float:
    """Post-hoc temperature scaling (Guo et al., 2017): the one temperature ``T`` that minimises the mean NLL of the
    gold option under ``softmax(z / T)``, over labelled questions (the held-out anchor in this package's benchmarks).

    ``logits``: one row of option scores per question (logits, or the option-renormalised log-probabilities of
    ``predictions.jsonl``: a constant shift per row does not matter); ``labels``: the gold option's index. The NLL is
    convex in ``1 / T``, so a golden-section search over ``1 / T`` within ``bounds`` finds the minimum (a bound when
    the minimum lies outside them, with a warning). The lower bound is reached when the gold option already scores
    highest on every question: sharpening then always lowers the NLL, no finite temperature minimises it, and the
    fit pushes every confidence towards 1; with a few questions and an accurate model that is common (16 questions
    at 94% accuracy: 0.94^16, about one fit in three)."""
    z = np.asarray(logits, dtype=float)
    y = np.asarray(labels, dtype=int)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"`logits` must be (n_questions, n_options) with one label each, got {z.shape} and {len(y)}.")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"`labels` must index the {z.shape[1]} options.")
    beta = golden_section_minimise(lambda b: _nll(z, y, 1 / b), 1.0 / bounds[1], 1.0 / bounds[0], tol)
    temperature = float(1.0 / beta)
    if temperature_at_bound(temperature, bounds):
        why = (
            "the gold option scores highest on every question, so no finite temperature minimises the NLL and the fit "
            "sharpens every confidence towards 1"
            if temperature < 1
            else "the scores carry almost nothing about the gold option, and the fit flattens every confidence"
        )
        warnings.warn(
            f"fit_temperature: T = {temperature:.3g} is the bound of {bounds}: {why}. Fit on more labelled questions "
            "(with wrong answers among them), or keep T = 1.",
            stacklevel=2,
        )
    return temperature


def temperature_at_bound(
    temperature: float, bounds: tuple[float, float] = _TEMPERATURE_BOUNDS, rtol: float = 1e-3
) -> bool:
    """Whether a fitted temperature is (within ``rtol``) one of ``bounds``: the NLL had no minimum inside them, and the
    temperature says more about the bounds than about the model (:func:`fit_temperature`)."""
    return bool(temperature <= bounds[0] * (1 + rtol) or temperature >= bounds[1] * (1 - rtol))


def temperature_scale(logits: Sequence[Sequence[float]] | np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(z / T)`` row by row: the option probabilities after temperature scaling."""
    z = np.asarray(logits, dtype=float) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def reliability_diagram(
    conf: ArrayLike, correct: ArrayLike, path: str | os.PathLike, n_bins: int = 15, title: str | None = None
) -> str:
    """Write a reliability diagram as a PNG: accuracy per equal-width confidence bin against the diagonal of perfect
    calibration, the gap shaded, bin counts below, ECE in the title. Needs matplotlib (extra ``eval``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reliability_diagram needs matplotlib: pip install 'hytuning-trl[eval]'.") from exc
    c, y = _check(conf, correct)
    bins = calibration_bins(c, y, n_bins, "uniform")
    ece = expected_calibration_error(c, y, n_bins)
    width = 1.0 / n_bins
    centers = [b["lower"] + width / 2 for b in bins]
    fig, (ax, ax_counts) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    accs = [b["accuracy"] if b["count"] else 0.0 for b in bins]
    confs = [b["confidence"] if b["count"] else centers[i] for i, b in enumerate(bins)]
    ax.bar(centers, accs, width=width * 0.95, color="#3b75af", edgecolor="black", label="accuracy")
    gaps_bottom = [min(a, cf) for a, cf in zip(accs, confs)]
    gaps = [abs(a - cf) if b["count"] else 0.0 for a, cf, b in zip(accs, confs, bins)]
    ax.bar(
        centers,
        gaps,
        bottom=gaps_bottom,
        width=width * 0.95,
        color="none",
        edgecolor="#d62728",
        hatch="///",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    heading = title or "Reliability diagram"
    ax.set_title(f"{heading}\nECE = {ece:.3f}  (n = {c.size}, accuracy = {y.mean():.3f})", fontsize=10)
    counts = [b["count"] for b in bins]
    ax_counts.bar(centers, counts, width=width * 0.95, color="gray", edgecolor="black")
    for x, n in zip(centers, counts):
        if n:
            ax_counts.text(x, n, str(n), ha="center", va="bottom", fontsize=7)
    ax_counts.set_ylim(0, max(counts) * 1.3 if max(counts) else 1)
    ax_counts.set_xlabel("confidence")
    ax_counts.set_ylabel("count")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
