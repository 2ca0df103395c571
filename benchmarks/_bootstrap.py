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

from hytuning_trl.calibration import auroc, brier_score, expected_calibration_error, uniform_bin_index

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


def resampled(metric: str, conf: np.ndarray, correct: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``metric`` on every resample at once: row ``r`` of ``index`` (``m x n`` question indices) is one resample of
    the questions; returns its ``m`` values (NaN for an AUROC of a one-class resample). The formulas of
    :data:`METRICS`, counted from the multiplicities of the questions instead of recomputed per resample:

    * Brier and accuracy: row means of ``(c - y)^2`` and ``y`` at the drawn indices;
    * ECE (15 equal-width bins): ``sum_b |sum_{i in b} (y_i - c_i)| / n``, which is ``sum_b (n_b / n) |acc_b -
      conf_b|``;
    * AUROC (ties count half): with ``P_v`` and ``N_v`` the drawn correct and wrong answers at confidence value
      ``v``, ``sum_v P_v (N_{<v} + N_v / 2) / (P N)``.
    """
    c, y = np.asarray(conf, dtype=float), np.asarray(correct, dtype=float)
    m, n = index.shape
    if metric == "accuracy":
        return y[index].mean(axis=1)
    if metric == "brier":
        return ((c - y) ** 2)[index].mean(axis=1)
    rows = np.repeat(np.arange(m), n)
    if metric == "ece":
        bins = 15
        cells = rows * bins + uniform_bin_index(c, bins)[index].ravel()
        gap = np.bincount(cells, weights=(y - c)[index].ravel(), minlength=m * bins).reshape(m, bins)
        return np.abs(gap).sum(axis=1) / n
    if metric == "auroc":
        counts = np.bincount(rows * n + index.ravel(), minlength=m * n).reshape(m, n).astype(float)
        order = np.argsort(c, kind="stable")
        values = c[order]
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        pos = np.add.reduceat(counts[:, order] * y[order], starts, axis=1)
        neg = np.add.reduceat(counts[:, order] * (1 - y[order]), starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        total = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (pos * (below + neg / 2)).sum(axis=1) / total, np.nan)
    raise ValueError(f"Unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")


def metric_difference(metric: str, a: Records, b: Records) -> float:
    """``metric(b) - metric(a)`` on the same questions."""
    if len(a) != len(b):
        raise ValueError(f"The arms were evaluated on {len(a)} and {len(b)} questions; compare the same questions.")
    (ca, ya), (cb, yb) = _arrays(a), _arrays(b)
    fn = METRICS[metric]
    return float(fn(cb, yb) - fn(ca, ya))


def _interval(diffs) -> tuple[float, float]:
    diffs = np.asarray(diffs, dtype=float)
    finite = diffs[np.isfinite(diffs)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def _draw_questions(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``n_boot`` resamples of ``n`` questions, drawn one resample per call (the stream of the intervals published
    so far)."""
    return np.stack([rng.integers(0, n, n) for _ in range(n_boot)])


def _draw_two_stage(rng: np.random.Generator, sizes: Sequence[int], n_boot: int) -> list[list[tuple[int, np.ndarray]]]:
    """Per bootstrap draw: the seeds drawn with replacement, each with its resample of that seed's questions."""
    k = len(sizes)
    draws = []
    for _ in range(n_boot):
        seeds = rng.integers(0, k, k)
        draws.append([(int(s), rng.integers(0, sizes[s], sizes[s])) for s in seeds])
    return draws


def _two_stage_means(per_seed_values, sizes: Sequence[int], draws) -> np.ndarray:
    """The mean over each draw's seeds of ``per_seed_values(s, index)`` (one value per row of ``index``), computed
    seed by seed over every draw that picked it."""
    k = len(sizes)
    values = np.empty((len(draws), k))
    for s in range(k):
        slots = [(d, j) for d, draw in enumerate(draws) for j, (t, _) in enumerate(draw) if t == s]
        if not slots:
            continue
        index = np.stack([draws[d][j][1] for d, j in slots])
        got = per_seed_values(s, index)
        for (d, j), v in zip(slots, got):
            values[d, j] = v
    return values.mean(axis=1)


def paired_bootstrap(metric: str, a: Records, b: Records, n_boot: int = 2000, seed: int = 0) -> dict:
    """Point difference ``metric(b) - metric(a)`` and its paired bootstrap 95% interval over questions."""
    point = metric_difference(metric, a, b)  # checks the pairing and the records
    rng = np.random.default_rng(seed)
    n = len(a)
    index = _draw_questions(rng, n, n_boot)
    (ca, ya), (cb, yb) = _arrays(a), _arrays(b)
    diffs = resampled(metric, cb, yb, index) - resampled(metric, ca, ya, index)
    low, high = _interval(diffs)
    return {"metric": metric, "diff": point, "ci95": [low, high], "n_questions": n}


def two_stage_bootstrap(
    metric: str, a_by_seed: Sequence[Records], b_by_seed: Sequence[Records], n_boot: int = 2000, seed: int = 0
) -> dict:
    """Mean over seeds of ``metric(b) - metric(a)``, with a 95% interval from resampling seeds, then questions."""
    if len(a_by_seed) != len(b_by_seed) or not a_by_seed:
        raise ValueError("Both arms need the same, non-zero number of seeds.")
    rng = np.random.default_rng(seed)
    k = len(a_by_seed)
    point = float(np.mean([metric_difference(metric, a, b) for a, b in zip(a_by_seed, b_by_seed)]))
    arrays = [(_arrays(a), _arrays(b)) for a, b in zip(a_by_seed, b_by_seed)]
    sizes = [len(a) for a in a_by_seed]

    def diff(s, index):
        (ca, ya), (cb, yb) = arrays[s]
        return resampled(metric, cb, yb, index) - resampled(metric, ca, ya, index)

    diffs = _two_stage_means(diff, sizes, _draw_two_stage(rng, sizes, n_boot))
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
    sizes = [len(c) for c, _ in arrays]
    draws = _draw_two_stage(rng, sizes, n_boot)
    low, high = _interval(_two_stage_means(lambda s, index: resampled(metric, *arrays[s], index), sizes, draws))
    n = len(by_seed[0])
    return {"metric": metric, "value": point, "ci95": [low, high], "n_seeds": len(arrays), "n_questions": n}
