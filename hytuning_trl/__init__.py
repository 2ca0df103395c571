"""hytuning-trl: HyTuning for TRL.

Reinforcement learning from the model's own internal feedback (RLIF) on unlabeled questions, mixed with reasoning
distillation (RD) on a few supervised traces, the mix set by Progressive Reasoning Gain (PRG). An implementation of
"Less Approximates More" (arXiv 2604.08454); the paper publishes no code or formulas, so every concrete choice here
is this package's own and configurable. Models trained with it are research artefacts, not for clinical use.
"""

from .answers import AnswerExtractor, ParsedCompletion, option_letters
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
from .config import ANSWER_PROBABILITIES, MIXING_RULES, HyTuningConfig
from .distill import (
    DistillExample,
    ShardedEndlessIterator,
    collate_distill,
    rd_loss,
    tokenize_distill_dataset,
)
from .evaluation import (
    CalibrationEvalCallback,
    EvalArguments,
    MCQEvaluation,
    evaluate_mcq,
    format_mcq_prompt,
    load_mcq,
    run_evaluation,
    summarise,
    write_report,
)
from .mixing import MixingState, chord_weight, compute_rd_weight, prg_weight, update_ema
from .packing import Row, RowResult, build_naive_rows, build_packed_row, get_backbone_and_head, run_rows
from .prg import PRG_AGGREGATIONS, answer_logprob_trajectory, prg_score, split_steps, token_texts
from .rewards import (
    AnswerConfidenceReward,
    EntropyReward,
    InternalFeedbackReward,
    MajorityVoteReward,
    PRGGatedConfidenceReward,
    PRGReward,
    SelfCertaintyReward,
)
from .scoring import RolloutStats, score_rollouts, to_id_lists
from .trainer import STATE_FILE, HyTuningTrainer

__version__ = "0.1.0"

__all__ = [
    "accuracy",
    "answer_logprob_trajectory",
    "ANSWER_PROBABILITIES",
    "AnswerConfidenceReward",
    "AnswerExtractor",
    "aurc",
    "auroc",
    "brier_score",
    "build_naive_rows",
    "build_packed_row",
    "calibration_bins",
    "calibration_metrics",
    "CalibrationEvalCallback",
    "chord_weight",
    "collate_distill",
    "compute_rd_weight",
    "DistillExample",
    "EntropyReward",
    "EvalArguments",
    "evaluate_mcq",
    "expected_calibration_error",
    "format_mcq_prompt",
    "get_backbone_and_head",
    "HyTuningConfig",
    "HyTuningTrainer",
    "InternalFeedbackReward",
    "load_mcq",
    "MajorityVoteReward",
    "MCQEvaluation",
    "MIXING_RULES",
    "MixingState",
    "option_letters",
    "overconfidence_rate",
    "ParsedCompletion",
    "PRG_AGGREGATIONS",
    "prg_score",
    "prg_weight",
    "PRGCallback",
    "PRGGatedConfidenceReward",
    "PRGReward",
    "rd_loss",
    "reliability_diagram",
    "RolloutStats",
    "Row",
    "RowResult",
    "run_evaluation",
    "run_rows",
    "score_rollouts",
    "SelfCertaintyReward",
    "ShardedEndlessIterator",
    "split_steps",
    "summarise",
    "STATE_FILE",
    "to_id_lists",
    "token_texts",
    "tokenize_distill_dataset",
    "update_ema",
    "write_report",
    "__version__",
]
