"""hytuning-trl: HyTuning for TRL.

Reinforcement learning from the model's own internal feedback (RLIF) on unlabeled questions, mixed with reasoning
distillation (RD) on a few supervised traces, the mix set by Progressive Reasoning Gain (PRG). An implementation of
"Less Approximates More" (arXiv 2604.08454); the paper publishes no code or formulas, so every concrete choice here
is this package's own and configurable. Models trained with it are research artefacts, not for clinical use.

``__all__`` lists what a user imports; the engine (packing, row builders, the RD iterator) stays importable from its
own module. docs/api.md lists the public API.
"""

import importlib
from typing import TYPE_CHECKING, Any

#: Where each public name lives. Imported on first use (PEP 562): `import hytuning_trl` and the commands
#: (`hytuning-eval`, `hytuning-prg`) do not load TRL's trainer stack, which alone takes about 10 s to import.
_LOCATIONS: dict[str, str] = {
    "AnswerExtractor": "answers",
    "ParsedCompletion": "answers",
    "read_answer": "answers",
    "accuracy": "calibration",
    "aurc": "calibration",
    "auroc": "calibration",
    "brier_score": "calibration",
    "calibration_metrics": "calibration",
    "expected_calibration_error": "calibration",
    "fit_temperature": "calibration",
    "overconfidence_rate": "calibration",
    "reliability_diagram": "calibration",
    "temperature_at_bound": "calibration",
    "temperature_scale": "calibration",
    "CalibrationEvalCallback": "callbacks",
    "PRGCallback": "callbacks",
    "HyTuningConfig": "config",
    "ESTIMATORS": "estimators",
    "calibrated_confidences": "estimators",
    "consistency": "estimators",
    "estimator_confidences": "estimators",
    "fit_estimator": "estimators",
    "fit_power": "estimators",
    "group_shares": "estimators",
    "majority_vote": "estimators",
    "marginal": "estimators",
    "power_scale": "estimators",
    "prg_gated": "estimators",
    "reasoning_likelihood": "estimators",
    "weakest_token": "estimators",
    "SamplingOutOfMemory": "evaluation",
    "evaluate_mcq": "evaluation",
    "fit_records_temperature": "estimators",
    "temperature_scaled_records": "estimators",
    "load_mcq": "mcq",
    "MixingState": "mixing",
    "normalised_gain": "prg",
    "prg_score": "prg",
    "split_steps": "prg",
    "analyse_prg": "prg_analysis",
    "write_report": "report",
    "AgreementBrierReward": "rewards",
    "AnswerConfidenceReward": "rewards",
    "AnswerReward": "rewards",
    "EntropyReward": "rewards",
    "InternalFeedbackReward": "rewards",
    "MajorityVoteReward": "rewards",
    "PRGGatedConfidenceReward": "rewards",
    "PRGReward": "rewards",
    "SelfCertaintyReward": "rewards",
    "RolloutStats": "scoring",
    "answer_logprob_trajectory": "scoring",
    "score_rollouts": "scoring",
    "HyTuningTrainer": "trainer",
}

if TYPE_CHECKING:  # what type checkers and IDEs read
    from .answers import AnswerExtractor, ParsedCompletion, read_answer
    from .calibration import (
        accuracy,
        aurc,
        auroc,
        brier_score,
        calibration_metrics,
        expected_calibration_error,
        fit_temperature,
        overconfidence_rate,
        reliability_diagram,
        temperature_at_bound,
        temperature_scale,
    )
    from .callbacks import CalibrationEvalCallback, PRGCallback
    from .config import HyTuningConfig
    from .estimators import (
        ESTIMATORS,
        calibrated_confidences,
        consistency,
        estimator_confidences,
        fit_estimator,
        fit_power,
        fit_records_temperature,
        group_shares,
        majority_vote,
        marginal,
        power_scale,
        prg_gated,
        reasoning_likelihood,
        temperature_scaled_records,
        weakest_token,
    )
    from .evaluation import (
        SamplingOutOfMemory,
        evaluate_mcq,
    )
    from .mcq import load_mcq
    from .mixing import MixingState
    from .prg import normalised_gain, prg_score, split_steps
    from .prg_analysis import analyse_prg
    from .report import write_report
    from .rewards import (
        AgreementBrierReward,
        AnswerConfidenceReward,
        AnswerReward,
        EntropyReward,
        InternalFeedbackReward,
        MajorityVoteReward,
        PRGGatedConfidenceReward,
        PRGReward,
        SelfCertaintyReward,
    )
    from .scoring import RolloutStats, answer_logprob_trajectory, score_rollouts
    from .trainer import HyTuningTrainer

__version__ = "0.4.0.dev0"

__all__ = [
    "AgreementBrierReward",
    "AnswerConfidenceReward",
    "AnswerExtractor",
    "AnswerReward",
    "CalibrationEvalCallback",
    "ESTIMATORS",
    "EntropyReward",
    "HyTuningConfig",
    "HyTuningTrainer",
    "InternalFeedbackReward",
    "MajorityVoteReward",
    "MixingState",
    "PRGCallback",
    "PRGGatedConfidenceReward",
    "PRGReward",
    "ParsedCompletion",
    "RolloutStats",
    "SamplingOutOfMemory",
    "SelfCertaintyReward",
    "accuracy",
    "analyse_prg",
    "answer_logprob_trajectory",
    "aurc",
    "auroc",
    "brier_score",
    "calibrated_confidences",
    "calibration_metrics",
    "consistency",
    "estimator_confidences",
    "evaluate_mcq",
    "expected_calibration_error",
    "fit_estimator",
    "fit_power",
    "fit_records_temperature",
    "fit_temperature",
    "group_shares",
    "load_mcq",
    "majority_vote",
    "marginal",
    "normalised_gain",
    "overconfidence_rate",
    "power_scale",
    "prg_gated",
    "prg_score",
    "read_answer",
    "reasoning_likelihood",
    "reliability_diagram",
    "score_rollouts",
    "split_steps",
    "temperature_at_bound",
    "temperature_scale",
    "temperature_scaled_records",
    "weakest_token",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        value = getattr(importlib.import_module(f".{_LOCATIONS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
