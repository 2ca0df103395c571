"""hytuning-trl: HyTuning for TRL.

Reinforcement learning from the model's own internal feedback (RLIF) on unlabeled questions, mixed with reasoning
distillation (RD) on a few supervised traces, the mix set by Progressive Reasoning Gain (PRG). An implementation of
"Less Approximates More" (arXiv 2604.08454); the paper publishes no code or formulas, so every concrete choice here
is this package's own and configurable. Models trained with it are research artefacts, not for clinical use.
"""

from .answers import AnswerExtractor, ParsedCompletion
from .calibration import (
    accuracy,
    aurc,
    auroc,
    brier_score,
    calibration_bins,
    calibration_metrics,
    expected_calibration_error,
    overconfidence_rate,
    reliability_diagram,
)
from .callbacks import PRGCallback
from .config import HyTuningConfig
from .evaluation import (
    CalibrationEvalCallback,
    EvalArguments,
    MCQEvaluation,
    evaluate_mcq,
    format_mcq_prompt,
    load_mcq,
    run_evaluation,
    write_report,
)
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
    "accuracy",
    "answer_logprob_trajectory",
    "AnswerConfidenceReward",
    "AnswerExtractor",
    "aurc",
    "auroc",
    "brier_score",
    "calibration_bins",
    "calibration_metrics",
    "CalibrationEvalCallback",
    "chord_weight",
    "compute_rd_weight",
    "EntropyReward",
    "EvalArguments",
    "evaluate_mcq",
    "expected_calibration_error",
    "format_mcq_prompt",
    "HyTuningConfig",
    "HyTuningTrainer",
    "InternalFeedbackReward",
    "load_mcq",
    "MajorityVoteReward",
    "MCQEvaluation",
    "MixingState",
    "overconfidence_rate",
    "ParsedCompletion",
    "prg_score",
    "prg_weight",
    "PRGCallback",
    "PRGGatedConfidenceReward",
    "PRGReward",
    "reliability_diagram",
    "RolloutStats",
    "run_evaluation",
    "score_rollouts",
    "SelfCertaintyReward",
    "split_steps",
    "update_ema",
    "write_report",
    "__version__",
]
