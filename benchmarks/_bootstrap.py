"""Intervals for comparing two training arms on the same evaluation questions (for benchmarks/compare_baselines.py).

A record is one evaluated question: ``{"confidence": float, "correct": bool}`` (as in ``predictions.jsonl``). An arm
at one seed is a list of records in question order; two arms are compared on the same questions.

* ``paired_bootstrap``: within one seed, resample the questions (the same indices for both arms) and recompute
  ``metric(b) - metric(a)``; the percentile 95% interval of the differences.
* ``two_stage_bootstrap``: across seeds, resample the seeds with replacement, then the questions within each drawn
  seed (paired), and average the per-seed differences. With 3 seeds only 10 distinct seed multisets exist, so the
  seed stage is coarse: say so next to every such interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from hytuning_trl.calibration import auroc, brier_score, expected_calibration_error

Records = Sequence[dict]


def _arrays(records: Records) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([r["confidence"] for r in records], dtype=float),
        np.array([bool(r["correct"]) for r in records], dtype=float),
    )


def _auroc_or_nan(conf, correct) -> float:
    try:
        return auroc(conf, correct)
    except ValueError:  # one class only in a resample
        return float("nan")


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda conf, correct: float(correct.mean()),
    "brier": brier_score,
    "ece": expected_calibration_error,
    "auroc": _auroc_or_nan,
}


def metric_difference(metric: str, a: Records, b: Records, index: np.ndarray | None = None) -> float:
    """``metric(b) - metric(a)`` on the questions ``index`` (all by default)."""
    if len(a) != len(b):
        raise ValueError(f"The arms were evaluated on {len(a)} and {len(b)} questions; compare the same questions.")
    (ca, ya), (cb, yb) = _arrays(a), _arrays(b)
    if index is not None:
        ca, ya, cb, yb = ca[index], ya[index], cb[index], yb[index]
    fn = METRICS[metric]
    return float(fn(cb, yb) - fn(ca, ya))


def _interval(diffs: list[float]) -> tuple[float, float]:
    finite = np.array([d for d in diffs if np.isfinite(d)])
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def paired_bootstrap(metric: str, a: Records, b: Records, n_boot: int = 2000, seed: int = 0) -> dict:
    """Point difference ``metric(b) - metric(a)`` and its paired bootstrap 95% interval over questions."""
    rng = np.random.default_rng(seed)
    n = len(a)
    diffs = [metric_difference(metric, a, b, rng.integers(0, n, n)) for _ in range(n_boot)]
    low, high = _interval(diffs)
    return {"metric": metric, "diff": metric_difference(metric, a, b), "ci95": [low, high], "n_questions": n}


def two_stage_bootstrap(
    metric: str, a_by_seed: Sequence[Records], b_by_seed: Sequence[Records], n_boot: int = 2000, seed: int = 0
) -> dict:
    """Mean over seeds of ``metric(b) - metric(a)``, with a 95% interval from resampling seeds, then questions."""
    if len(a_by_seed) != len(b_by_seed) or not a_by_seed:
        raise ValueError("Both arms need the same, non-zero number of seeds.")
    rng = np.random.default_rng(seed)
    k = len(a_by_seed)
    point = float(np.mean([metric_difference(metric, a, b) for a, b in zip(a_by_seed, b_by_seed)]))
    diffs = []
    for _ in range(n_boot):
        seeds = rng.integers(0, k, k)
        per_seed = []
        for s in seeds:
            n = len(a_by_seed[s])
            per_seed.append(metric_difference(metric, a_by_seed[s], b_by_seed[s], rng.integers(0, n, n)))
        diffs.append(float(np.mean(per_seed)))
    low, high = _interval(diffs)
    return {
        "metric": metric,
        "diff": point,
        "ci95": [low, high],
        "n_seeds": k,
        "n_questions": len(a_by_seed[0]),
        "caveat": f"{k} seeds allow only {_multisets(k)} distinct seed resamples",
    }


def _multisets(k: int) -> int:
    """Distinct multisets of size k from k seeds: C(2k - 1, k)."""
    from math import comb

    return comb(2 * k - 1, k)


def metric_interval(metric: str, by_seed: Sequence[Records], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over seeds of ``metric`` and its 95% interval: resample the seeds, then the questions within each drawn
    seed (one seed: the questions alone)."""
    if not by_seed:
        raise ValueError("No seeds to summarise.")
    rng = np.random.default_rng(seed)
    fn = METRICS[metric]
    arrays = [_arrays(r) for r in by_seed]
    point = float(np.mean([fn(c, y) for c, y in arrays]))
    draws = []
    for _ in range(n_boot):
        per_seed = []
        for s in rng.integers(0, len(arrays), len(arrays)):
            c, y = arrays[s]
            i = rng.integers(0, len(c), len(c))
            per_seed.append(fn(c[i], y[i]))
        draws.append(float(np.mean(per_seed)))
    low, high = _interval(draws)
    n = len(by_seed[0])
    return {"metric": metric, "value": point, "ci95": [low, high], "n_seeds": len(arrays), "n_questions": n}
