"""The model card HyTuning writes beside every saved model (full model or PEFT adapter): the base model, the mixing
rule, the citation, the final calibration figures when a report exists, and the not-for-clinical-use warning."""

from __future__ import annotations

import json
import os
from typing import Any

from .constants import PAPER

__all__ = ["CLINICAL_WARNING", "render_model_card", "write_model_card"]

CLINICAL_WARNING = (
    "**Not for clinical use.** This model is a research artefact. It must not be used to diagnose, treat or advise "
    "patients, whatever its benchmark figures."
)

CITATION = PAPER["citation"]

_FIGURES = (
    ("accuracy", "accuracy"),
    ("ece", "ECE (15 equal-width bins)"),
    ("brier", "Brier"),
    ("auroc", "AUROC"),
    ("aurc", "AURC"),
    ("overconfidence_rate", "overconfidence rate"),
    ("stated_rate", "answers stated"),
)


def render_model_card(
    base_model: str | None,
    mixing: str,
    *,
    rd_weight_trajectory: list[float] | None = None,
    calibration: dict[str, Any] | None = None,
    adapter: bool = False,
    extra_tags: list[str] | None = None,
) -> str:
    """The card as markdown with a YAML header (``calibration``: the ``metrics`` of a ``calibration.json``)."""
    base = base_model or "unknown (not recorded in the model's config)"
    tags = ["trl", "grpo", "hytuning", "calibration", *(extra_tags or [])]
    header = ["---", "library_name: " + ("peft" if adapter else "transformers"), "tags:"]
    header += [f"- {t}" for t in tags]
    if base_model:
        header.append(f"base_model: {base_model}")
    header.append("---")
    lines = [
        *header,
        "",
        f"# {'LoRA adapter' if adapter else 'Model'} post-trained with HyTuning",
        "",
        CLINICAL_WARNING,
        "",
        f"- Base model: `{base}`",
        "- Method: HyTuning (arXiv 2604.08454) with [hytuning-trl](https://github.com/hytuning-trl/hytuning-trl): "
        "GRPO on the model's own internal feedback mixed with reasoning distillation, "
        "`loss = (1 - rd_weight) * L_GRPO + rd_weight * L_RD`.",
        f"- Mixing rule: `{mixing}`",
    ]
    if rd_weight_trajectory:
        shown = ", ".join(f"{w:.3f}" for w in rd_weight_trajectory)
        lines.append(f"- `rd_weight` by optimizer step: {shown}")
    if calibration:
        lines += ["", "## Confidence faithfulness (last calibration report)", "", "| metric | value |", "|---|---|"]
        for key, name in _FIGURES:
            value = calibration.get(key)
            if value is not None:
                lines.append(f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |")
        n = calibration.get("n")
        lines += ["", f"Measured on {n} held-out questions; see `calibration.json` for the settings and the bins."]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def write_model_card(output_dir: str, base_model: str | None, mixing: str, **kwargs: Any) -> str:
    """Write ``README.md`` into ``output_dir``; with no ``calibration`` given, use ``calibration_after/`` or
    ``calibration.json`` in ``output_dir`` when a report is there. Returns the path."""
    if kwargs.get("calibration") is None:
        for candidate in ("calibration_after/calibration.json", "calibration.json"):
            path = os.path.join(output_dir, candidate)
            if os.path.exists(path):
                with open(path) as f:
                    report = json.load(f)
                kwargs["calibration"] = {**report.get("metrics", {}), "n": report.get("n")}
                break
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as f:
        f.write(render_model_card(base_model, mixing, **kwargs))
    return path
