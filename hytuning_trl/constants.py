"""Names and defaults shared by the config, the engine and the evaluation (no imports: the config depends on nothing
else of the package)."""

from __future__ import annotations

__all__ = [
    "ANSWER_PROBABILITIES",
    "DEFAULT_ANSWER_PATTERN",
    "DEFAULT_ANSWER_TRIGGER",
    "MIXING_RULES",
    "PRG_AGGREGATIONS",
    "SCORING_METHODS",
]

MIXING_RULES = ("prg", "prg_gap", "constant", "chord", "rl_only", "rd_only")
PRG_AGGREGATIONS = ("monotone", "net", "positive", "auc")
ANSWER_PROBABILITIES = ("auto", "options", "raw")
SCORING_METHODS = ("auto", "packed", "naive")

#: Text placed after the reasoning to ask for the answer when scoring (conditioned on, not scored).
DEFAULT_ANSWER_TRIGGER = "\nThe answer is"
#: The final-answer statement. The answer is read between the end of the match (or the start of group 1, where the
#: pattern has one) and the end of the statement's sentence (:mod:`hytuning_trl.answers`).
DEFAULT_ANSWER_PATTERN = r"[Tt]he (?:final |correct |best )?answer is"
