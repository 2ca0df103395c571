"""Confidence estimators: six ways to read how sure a model is of its greedy answer, and their post-hoc fits.

Why more than one. The chosen option's probability after the model's own reasoning (``after_reasoning``, ``p_K``)
measures whether the answer FOLLOWS the reasoning, not whether the reasoning is right. While a model's errors are
answers that contradict its own reasoning it sees them; once they are slips inside reasoning that the answer then
follows faithfully, it is blind (0.3.0's evidence: AUROC 0.39-0.51 for converged distillation models), while the
model's own token probabilities along its reasoning still see them (0.80). docs/method.md gives the table.

Single pass (from the scoring pass that already runs, no extra generation):

* ``after_reasoning``: ``p_K``, the option-renormalised probability of the answer after the reasoning and trigger;
* ``weakest_token``: ``min_t p(r_t | x, r_<t)`` over the reasoning's own tokens (answer statement excluded);
* ``reasoning_likelihood``: ``exp(mean_t log p(r_t | x, r_<t))``, the geometric mean of the same probabilities;
* ``prg_gated``: ``p_K * clip(G, 0, 1)``, ``G`` the answer's normalised gain along the reasoning.

From ``k`` sampled completions ``r^(1..k)`` of the same question:

* ``marginal``: ``(1/k) sum_j p(a | x, r^(j))``, each sample's option probability of the greedy answer ``a`` after
  its own reasoning: a Monte Carlo estimate of ``P(a | x)`` with the reasoning integrated out;
* ``consistency``: the share of the samples that state ``a`` (a sample that states nothing disagrees).

An empty reasoning gives ``weakest_token = reasoning_likelihood = 1`` (no token of it was doubted: the minimum and
the product over nothing). Post-hoc calibration, fitted on labelled held-out questions: temperature scaling of the
option log-probabilities where the estimator has them (``after_reasoning``, ``marginal``: one ``T`` for every
sample's options), and for the others the one-parameter power fit ``c' = c ** a`` (``a > 0``: monotone, keeps 0 and
1, fitted by the Bernoulli log-likelihood of correctness), which moves the level of a score whose scale means
nothing by itself (a token probability is not the answer's probability) without reordering it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .calibration import _TEMPERATURE_BOUNDS, fit_temperature, golden_section_minimise, temperature_scale

__all__ = [
    "ESTIMATORS",
    "SAMPLED_ESTIMATORS",
    "SINGLE_PASS_ESTIMATORS",
    "consistency",
    "estimator_confidences",
    "calibrated_confidences",
    "fit_estimator",
    "fit_power",
    "fit_records_temperature",
    "group_shares",
    "majority_vote",
    "marginal",
    "power_scale",
    "prg_gated",
    "reasoning_likelihood",
    "temperature_scaled_records",
    "weakest_token",
]

SINGLE_PASS_ESTIMATORS = ("after_reasoning", "weakest_token", "reasoning_likelihood", "prg_gated")
SAMPLED_ESTIMATORS = ("marginal", "consistency")
ESTIMATORS = SINGLE_PASS_ESTIMATORS + SAMPLED_ESTIMATORS
_POWER_BOUNDS = (1e-3, 1e3)


def _finite(logprobs: Sequence[float]) -> list[float]:
    return [float(x) for x in logprobs if x is not None and math.isfinite(x)]


def weakest_token(logprobs: Sequence[float]) -> float:
    """``min_t exp(lp_t)``: the lowest probability the model gave a token of its own reasoning (1 for none)."""
    lps = _finite(logprobs)
    return math.exp(min(lps)) if lps else 1.0


def reasoning_likelihood(logprobs: Sequence[float]) -> float:
    """``exp(mean_t lp_t)``: the geometric mean of the reasoning tokens' probabilities (1 for none)."""
    lps = _finite(logprobs)
    return math.exp(sum(lps) / len(lps)) if lps else 1.0


def prg_gated(confidence: float, gain: float) -> float:
    """``p_K * clip(G, 0, 1)``: confidence only as far as the reasoning raised it."""
    return confidence * min(max(gain, 0.0), 1.0)


def marginal(samples: Sequence[dict], answer: Any, temperature: float = 1.0) -> float:
    """``(1/k) sum_j p(answer | x, r^(j))`` over ``samples`` (each with ``option_logprobs`` after its own reasoning
    and ``option_letters``), the option log-probabilities divided by ``temperature`` first (1: as scored); a sample
    without option scores, or whose options lack ``answer``, counts 0. ``nan`` without samples."""
    if not samples:
        return math.nan
    total = 0.0
    for s in samples:
        letters, logprobs = s.get("option_letters"), s.get("option_logprobs")
        if logprobs is not None and letters is not None and answer in letters:
            total += float(temperature_scale([logprobs], temperature)[0][list(letters).index(answer)])
    return total / len(samples)


def consistency(answers: Sequence[Any], answer: Any) -> float:
    """The share of the samples' stated ``answers`` equal to ``answer`` (``None``: stated nothing, disagrees)."""
    if not answers:
        return math.nan
    return sum(a is not None and a == answer for a in answers) / len(answers)


def majority_vote(answers: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
    """The most frequent non-``None`` answer; a tie goes to the tied answer with the larger summed ``weights`` (the
    samples' option probabilities), then to the one that sorts first. ``None`` when every answer is ``None``."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    mass: dict[Any, float] = {}
    for i, a in enumerate(answers):
        if a is not None:
            mass[a] = mass.get(a, 0.0) + (float(weights[i]) if weights is not None else 0.0)
    return min(counts, key=lambda a: (-counts[a], -mass[a], str(a)))


def group_shares(answers: Sequence[Any]) -> list[float | None]:
    """For each answer of a group, the share of the group's stated answers equal to it; ``None`` for an unstated one
    (``None``) and for every member of a group with fewer than two stated answers. What ``marginal`` estimates, on
    the group a trainer sampled: the target of the agreement Brier reward and of ``calibration_target="share"``."""
    stated = [a for a in answers if a is not None]
    if len(stated) < 2:
        return [None] * len(answers)
    counts = Counter(stated)
    return [None if a is None else counts[a] / len(stated) for a in answers]


def estimator_confidences(record: dict) -> dict[str, float]:
    """Every estimator a record of :func:`~hytuning_trl.evaluation.evaluate_mcq` carries (sampled ones only when it
    has ``samples``), recomputed from what the record keeps: ``confidence``, ``reasoning_logprobs``, ``gain``,
    ``chosen`` and ``samples``."""
    lps = record.get("reasoning_logprobs") or []
    gain = record.get("gain")
    out = {
        "after_reasoning": float(record["confidence"]),
        "weakest_token": weakest_token(lps),
        "reasoning_likelihood": reasoning_likelihood(lps),
        "prg_gated": prg_gated(float(record["confidence"]), gain) if gain is not None else 0.0,
    }
    samples = record.get("samples")
    if samples:
        out["marginal"] = marginal(samples, record["chosen"])
        out["consistency"] = consistency([s["answer"] if s.get("stated") else None for s in samples], record["chosen"])
    return out


def _option_rows(records: Sequence[dict], what: str) -> tuple[list[list[float]], list[list[str]]]:
    logprobs, letters = [], []
    for i, r in enumerate(records):
        if r.get("option_logprobs") is None or r.get("option_letters") is None:
            raise ValueError(
                f"{what}: record {i} has no 'option_logprobs' / 'option_letters' (predictions.jsonl written before "
                "0.3.0, or a question whose options could not be scored); evaluate again with `hytuning-eval`."
            )
        logprobs.append([float(x) for x in r["option_logprobs"]])
        letters.append(list(r["option_letters"]))
    return logprobs, letters


def _padded(rows: list[list[float]]) -> Any:
    """Rows of option scores as one array, questions with fewer options padded with -inf (probability 0)."""
    out = np.full((len(rows), max(map(len, rows))), -np.inf)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def fit_records_temperature(records: Sequence[dict]) -> float:
    """Post-hoc temperature scaling fitted on evaluated, labelled questions (``predictions.jsonl`` records): the
    temperature ``T`` minimising the mean NLL of the gold option under ``softmax(option_logprobs / T)``
    (:func:`~hytuning_trl.calibration.fit_temperature`). No second generation: the option log-probabilities after
    the model's own reasoning are in the records."""
    if not records:
        raise ValueError("fit_records_temperature needs at least one evaluated question.")
    logprobs, letters = _option_rows(records, "fit_records_temperature")
    labels = []
    for i, (r, row) in enumerate(zip(records, letters)):
        if r["gold"] not in row:
            raise ValueError(f"fit_records_temperature: record {i}'s gold {r['gold']!r} is not among its {row}.")
        labels.append(row.index(r["gold"]))
    return fit_temperature(_padded(logprobs), labels)


def temperature_scaled_records(records: Sequence[dict], temperature: float) -> list[dict]:
    """The records with ``confidence`` = the chosen option's probability under ``softmax(option_logprobs / T)``
    (answers and correctness unchanged: one temperature does not reorder the options), the raw one kept as
    ``confidence_raw``."""
    logprobs, letters = _option_rows(records, "temperature_scaled_records")
    probs = temperature_scale(_padded(logprobs), temperature)
    out = []
    for i, (r, row, p) in enumerate(zip(records, letters, probs)):
        if r["chosen"] not in row:
            raise ValueError(f"temperature_scaled_records: record {i}'s answer {r['chosen']!r} is not among {row}.")
        confidence = float(p[row.index(r["chosen"])])
        out.append({**r, "confidence": confidence, "confidence_raw": r["confidence"], "temperature": temperature})
    return out


def _bernoulli_nll(conf: np.ndarray, correct: np.ndarray) -> float:
    c = np.clip(conf, 1e-12, 1 - 1e-12)
    return float(-np.mean(np.where(correct, np.log(c), np.log1p(-c))))


def fit_power(conf: Sequence[float], correct: Sequence[bool], bounds: tuple[float, float] = _POWER_BOUNDS) -> float:
    """The exponent ``a`` of the power fit ``c' = c ** a`` minimising the Bernoulli NLL of correctness, searched over
    ``log a`` within ``bounds``. Confidences of 0 stay 0 and 1 stays 1 whatever ``a``."""
    c = np.asarray(conf, dtype=float)
    y = np.asarray(correct, dtype=bool)
    if c.size == 0 or c.size != y.size:
        raise ValueError(f"fit_power needs one correctness label per confidence, got {c.size} and {y.size}.")
    log_a = golden_section_minimise(
        lambda la: _bernoulli_nll(c ** math.exp(la), y), math.log(bounds[0]), math.log(bounds[1]), 1e-6
    )
    return float(math.exp(log_a))


def power_scale(conf: Sequence[float], exponent: float) -> list[float]:
    """``c ** a`` for each confidence."""
    return [float(c) ** exponent for c in conf]


def _marginal_at(records: Sequence[dict], temperature: float, answers: Sequence[Any]) -> list[float]:
    """``marginal`` of each record for ``answers`` at ``temperature``."""
    for i, r in enumerate(records):
        if not r.get("samples"):
            raise ValueError(f"record {i} has no 'samples': evaluate with num_samples > 0 for the marginal estimator.")
    return [marginal(r["samples"], answer, temperature) for r, answer in zip(records, answers)]


def fit_estimator(records: Sequence[dict], name: str) -> dict[str, Any]:
    """Fit ``name``'s post-hoc calibration on labelled records (``gold`` known): ``{"kind": "temperature", "value":
    T}`` for ``after_reasoning`` and ``marginal``, ``{"kind": "power", "value": a}`` for the others. Apply it with
    :func:`calibrated_confidences`."""
    if name not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {name!r}; the estimators are {', '.join(ESTIMATORS)}.")
    if not records:
        raise ValueError(f"fit_estimator({name!r}) needs at least one labelled record.")
    if name == "after_reasoning":
        return {"kind": "temperature", "value": fit_records_temperature(records)}
    if name == "marginal":
        golds = [r["gold"] for r in records]

        def nll(beta: float) -> float:
            p = np.clip(_marginal_at(records, 1.0 / beta, golds), 1e-12, 1.0)
            return float(-np.mean(np.log(p)))

        beta = golden_section_minimise(nll, 1.0 / _TEMPERATURE_BOUNDS[1], 1.0 / _TEMPERATURE_BOUNDS[0])
        return {"kind": "temperature", "value": float(1.0 / beta)}
    conf = [estimator_confidences(r)[name] for r in records]
    return {"kind": "power", "value": fit_power(conf, [bool(r["correct"]) for r in records])}


def calibrated_confidences(records: Sequence[dict], name: str, fit: dict[str, Any]) -> list[float]:
    """``name``'s confidences of ``records`` after the post-hoc fit of :func:`fit_estimator`."""
    if name == "after_reasoning":
        return [r["confidence"] for r in temperature_scaled_records(records, fit["value"])]
    if name == "marginal":
        return _marginal_at(records, fit["value"], [r["chosen"] for r in records])
    return power_scale([estimator_confidences(r)[name] for r in records], fit["value"])
