"""hytuning-trl: HyTuning for TRL.

Reinforcement learning from the model's own internal feedback (RLIF) on unlabeled questions, mixed with reasoning
distillation (RD) on a few supervised traces, the mix set by Progressive Reasoning Gain (PRG). An implementation of
"Less Approximates More" (arXiv 2604.08454); the paper publishes no code or formulas, so every concrete choice here
is this package's own and configurable. Models trained with it are research artefacts, not for clinical use.
"""

from .callbacks import PRGCallback
from .config import HyTuningConfig
from .mixing import MixingState, chord_weight, compute_rd_weight, prg_weight, update_ema
from .prg import answer_logprob_trajectory, prg_score, split_steps
from .rewards import (
    AnswerConfidenceReward,
    EntropyReward,
    InternalFeedbackReward,
    MajorityVoteReward,
    PRGGatedConfidenceReward,
    PRGReward,
    SelfCertaintyReward,
)
from .scoring import RolloutStats, score_rollouts
from .trainer import HyTuningTrainer

__version__ = "0.1.0"

__all__ = [
    "AnswerConfidenceReward",
    "EntropyReward",
    "HyTuningConfig",
    "HyTuningTrainer",
    "InternalFeedbackReward",
    "MajorityVoteReward",
    "MixingState",
    "PRGCallback",
    "PRGGatedConfidenceReward",
    "PRGReward",
    "RolloutStats",
    "SelfCertaintyReward",
    "__version__",
    "answer_logprob_trajectory",
    "chord_weight",
    "compute_rd_weight",
    "prg_score",
    "prg_weight",
    "score_rollouts",
    "split_steps",
    "update_ema",
]
