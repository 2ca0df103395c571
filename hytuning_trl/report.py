"""Reports of a multiple-choice evaluation: ``calibration.json``, ``predictions.jsonl``, ``reliability.png`` (the
``after_reasoning`` confidence), one ``reliability_<estimator>.png`` per estimator, and the printed tables (over all
questions, forced answers included, and over the stated answers alone; then every estimator side by side)."""

from __future__ import annotations

import json
import os
from typing import Any

from .calibration import calibration_bins, reliability_diagram
from .estimators import ESTIMATORS, estimator_confidences
from .evaluation import MCQEvaluation

__all__ = ["format_table", "write_report"]


def format_table(metrics: dict[str, Any], title: str = "") -> str:
    """A short plain-text table of the metrics: over all questions, and over the stated answers alone."""
    rows = [
        ("n", "n"),
        ("accuracy", "accuracy"),
        ("ECE (15 equal-width bins)", "ece"),
        ("ECE (equal-mass bins)", "ece_quantile"),
        ("Brier", "brier"),
        ("AUROC", "auroc"),
        ("AURC", "aurc"),
        ("overconfidence rate", "overconfidence_rate"),
        ("answers stated", "stated_rate"),
    ]
    stated = metrics.get("stated_only") or {}

    def show(value: Any) -> str:
        return "undefined" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

    lines = [title] if title else []
    lines.append(f"  {'':<28}{'all':>10}{'stated only':>14}")
    for name, key in rows:
        other = show(stated.get(key)) if key in stated else ""
        lines.append(f"  {name:<28}{show(metrics.get(key)):>10}{other:>14}")
    estimators = metrics.get("estimators") or {}
    if estimators:
        names = [n for n in ESTIMATORS if n in estimators]
        lines.append("")
        heading = "  Confidence of the greedy answer, by estimator (docs/method.md)"
        if "maj_at_k" in metrics:
            heading += f"; maj@{metrics['num_samples']} accuracy {metrics['maj_at_k']:.4f}"
        lines.append(heading)
        lines.append(f"  {'':<28}" + "".join(f"{n:>22}" for n in names))
        for name, key in rows[2:8]:
            lines.append(f"  {name:<28}" + "".join(f"{show(estimators[n].get(key)):>22}" for n in names))
    letters = metrics.get("letters") or {}
    if letters:
        lines += ["", "  By option letter (a letter no longer given costs every question whose answer it is)"]
        lines.append(f"  {'':<28}" + "".join(f"{letter:>10}" for letter in letters))
        for name, key in (("gold share", "gold"), ("answered share", "answered"), ("accuracy on them", "accuracy")):
            lines.append(f"  {name:<28}" + "".join(f"{show(v[key]):>10}" for v in letters.values()))
    return "\n".join(lines)


def write_report(
    evaluation: MCQEvaluation, output_dir: str | os.PathLike, title: str | None = None, extra: dict | None = None
) -> dict[str, str]:
    """Write ``calibration.json`` (metrics, n, settings, bins), ``predictions.jsonl``, ``reliability.png`` and one
    ``reliability_<estimator>.png`` per estimator the metrics carry."""
    os.makedirs(output_dir, exist_ok=True)
    conf = [r["confidence"] for r in evaluation.records]
    correct = [r["correct"] for r in evaluation.records]
    n_bins = evaluation.settings.get("n_bins", 15)
    report = {
        "metrics": evaluation.metrics,
        "n": len(evaluation.records),
        "settings": {**evaluation.settings, **(extra or {})},
        "bins": calibration_bins(conf, correct, n_bins),
    }
    paths = {
        "calibration": os.path.join(output_dir, "calibration.json"),
        "predictions": os.path.join(output_dir, "predictions.jsonl"),
        "reliability": os.path.join(output_dir, "reliability.png"),
    }
    with open(paths["calibration"], "w") as f:
        json.dump(report, f, indent=2)
    with open(paths["predictions"], "w") as f:
        for r in evaluation.records:
            f.write(json.dumps(r) + "\n")
    reliability_diagram(conf, correct, paths["reliability"], n_bins=n_bins, title=title)
    names = list(evaluation.metrics.get("estimators") or {})
    per_record = [estimator_confidences(r) for r in evaluation.records] if names else []
    for name in names:
        path = os.path.join(output_dir, f"reliability_{name}.png")
        scores = [c[name] for c in per_record]
        reliability_diagram(scores, correct, path, n_bins=n_bins, title=f"{title or 'Reliability'}: {name}")
        paths[f"reliability_{name}"] = path
    return paths
