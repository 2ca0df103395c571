"""Names and defaults shared by the config, the engine and the evaluation (no imports: the config depends on nothing
else of the package)."""

from __future__ import annotations

import re

__all__ = [
    "ANCHOR_SIGNALS",
    "CALIBRATION_TARGETS",
    "ANSWER_PROBABILITIES",
    "DEFAULT_ANSWER_PATTERN",
    "DEFAULT_ANSWER_TRIGGER",
    "DEFAULT_MCQ_INSTRUCTION",
    "DEFAULT_STEP_SEPARATOR",
    "DEFAULT_VOCAB_CHUNK_ELEMS",
    "split_options",
    "PAPER",
    "MIXING_RULES",
    "PRG_AGGREGATIONS",
    "SCORING_METHODS",
]

MIXING_RULES = ("prg", "prg_gap", "constant", "chord", "rl_only", "rd_only")
PRG_AGGREGATIONS = ("monotone", "net", "positive", "auc")
ANSWER_PROBABILITIES = ("auto", "options", "raw")
ANCHOR_SIGNALS = ("own", "trace")
SCORING_METHODS = ("auto", "packed", "naive")
CALIBRATION_TARGETS = ("share", "weakest_token")

#: Text placed after the reasoning to ask for the answer when scoring (conditioned on, not scored).
DEFAULT_ANSWER_TRIGGER = "\nThe answer is"
#: The final-answer statement. The answer is read between the end of the match (or the start of group 1, where the
#: pattern has one) and the end of the statement's sentence (:mod:`hytuning_trl.answers`).
DEFAULT_ANSWER_PATTERN = r"[Tt]he (?:final |correct |best )?answer is"
#: The instruction closing every multiple-choice prompt. It names the statement without a placeholder to copy: with
#: '"The answer is X." where X is the letter' SmolLM2-135M-Instruct wrote the literal "The answer is X." (0% stated).
#: Chosen from the measured table in docs/benchmarks.md ("The prompt").
DEFAULT_MCQ_INSTRUCTION = (
    "Think step by step, one short paragraph per step separated by blank lines, then finish with "
    '"The answer is" followed by the letter of the best option.'
)
#: A reasoning step ends after each token whose text contains this (a blank line; single newlines when there is none).
DEFAULT_STEP_SEPARATOR = "\n\n"
#: Logits held at once by the scoring pass's vocabulary projection (one tile: 4M fp32 values, 16 MiB).
DEFAULT_VOCAB_CHUNK_ELEMS = 1 << 22
#: The paper, for the trainer's model card (TRL's ``_paper``) and the package's own card.
PAPER = {
    "title": "Less Approximates More: Harmonizing Performance and Confidence Faithfulness via Hybrid Post-Training "
    "for High-Stakes Tasks",
    "id": "2604.08454",
    "citation": """@article{hytuning2026,
    title  = {Less Approximates More: Harmonizing Performance and Confidence Faithfulness via Hybrid Post-Training
              for High-Stakes Tasks},
    year   = {2026},
    eprint = {arXiv:2604.08454},
}""",
}


def split_options(value: str | list | tuple | None) -> list[str] | None:
    """Option letters from ``"A,B,C,D"``, ``"A B C D"`` or a list of such items; ``None`` for none. Fewer than two or
    duplicated letters are a ``ValueError``, named as the config field and the commands' flag are."""
    if value is None or value == "":
        return None
    items = [value] if isinstance(value, str) else list(value)
    letters = [o for item in items for o in re.split(r"[,\s]+", str(item)) if o]
    if len(letters) < 2 or len(set(letters)) != len(letters):
        raise ValueError(
            f"`answer_options` must name at least two distinct options, got {letters}; e.g. "
            "answer_options=['A', 'B', 'C', 'D'] or --answer_options A,B,C,D."
        )
    return letters
