"""Names and defaults shared by the config, the engine and the evaluation (no imports: the config depends on nothing
else of the package)."""

from __future__ import annotations

__all__ = [
    "ANCHOR_SIGNALS",
    "ANSWER_PROBABILITIES",
    "DEFAULT_ANSWER_PATTERN",
    "DEFAULT_ANSWER_TRIGGER",
    "DEFAULT_MCQ_INSTRUCTION",
    "MIXING_RULES",
    "PRG_AGGREGATIONS",
    "SCORING_METHODS",
]

MIXING_RULES = ("prg", "prg_gap", "constant", "chord", "rl_only", "rd_only")
PRG_AGGREGATIONS = ("monotone", "net", "positive", "auc")
ANSWER_PROBABILITIES = ("auto", "options", "raw")
ANCHOR_SIGNALS = ("own", "trace")
SCORING_METHODS = ("auto", "packed", "naive")

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
