"""Internal-feedback confidence rewards (RLIF): the policy rewards itself with its own statistics.

TRL reward functions see text and token ids, never logits. :class:`~hytuning_trl.HyTuningTrainer` runs one no-grad
scoring pass per generation round and passes its results to every reward function as the keyword argument
``hytuning_stats`` (one :class:`~hytuning_trl.scoring.RolloutStats` per local completion, aligned with
``completions``). Plain TRL reward functions ignore it; these rewards use it. Each is a callable class with a
class-level ``__name__`` (the metric name, TRL's convention) and is picklable.

Write your own by subclassing :class:`InternalFeedbackReward` and implementing ``score`` (one completion) or, with
``group_wise = True``, ``score_group`` (one group of ``num_generations`` completions, gathered across processes)::

    class ConfidentAndShort(InternalFeedbackReward):
        __name__ = "confident_and_short"

        def score(self, stats):
            return stats.self_certainty - 0.001 * len(stats.completion_ids)
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from .estimators import group_shares
from .scoring import RolloutStats
from .sharding import gather_objects

__all__ = [
    "AgreementBrierReward",
    "AnswerConfidenceReward",
    "AnswerReward",
    "EntropyReward",
    "InternalFeedbackReward",
    "MajorityVoteReward",
    "PRGGatedConfidenceReward",
    "PRGReward",
    "SelfCertaintyReward",
    "normalise_answer",
]


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class InternalFeedbackReward:
    """Base class of the rewards computed from the policy's own statistics.

    Subclasses implement :meth:`score` (a float, or ``None`` where the completion cannot be scored: TRL then leaves it
    out of that reward's statistics). Group-wise rewards set ``group_wise = True`` and implement :meth:`score_group`;
    the base gathers the statistics of all processes first, so a group that spans processes is whole, and returns this
    process's slice. Non-finite scores become ``None``.
    """

    __name__ = "internal_feedback"
    group_wise: bool = False

    def __call__(
        self,
        prompts: list[Any] | None = None,
        completions: list[Any] | None = None,
        completion_ids: list[list[int]] | None = None,
        hytuning_stats: list[RolloutStats] | None = None,
        hytuning_num_generations: list[int] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if hytuning_stats is None:
            raise ValueError(
                f"The reward {self.__name__!r} needs the policy's own statistics (the `hytuning_stats` keyword), "
                "which only hytuning_trl.HyTuningTrainer computes. Train with HyTuningTrainer instead of "
                "trl.GRPOTrainer, or call the reward with hytuning_stats=hytuning_trl.score_rollouts(...)."
            )
        if completions is not None and len(completions) != len(hytuning_stats):
            raise ValueError(f"Got {len(completions)} completions but {len(hytuning_stats)} statistics records.")
        if not self.group_wise:
            return [_finite_or_none(self.score(s)) for s in hytuning_stats]
        group_size = hytuning_num_generations[0] if hytuning_num_generations else len(hytuning_stats)
        everyone, offset = gather_objects(hytuning_stats)
        if len(everyone) % group_size:
            raise ValueError(f"{len(everyone)} completions do not split into groups of {group_size}.")
        scores: list[float | None] = []
        for start in range(0, len(everyone), group_size):
            group = everyone[start : start + group_size]
            group_scores = self.score_group(group)
            if len(group_scores) != len(group):
                raise ValueError(f"{self.__name__}.score_group returned {len(group_scores)} scores for {len(group)}.")
            scores.extend(_finite_or_none(s) for s in group_scores)
        return scores[offset : offset + len(hytuning_stats)]

    def score(self, stats: RolloutStats) -> float | None:
        """The reward of one completion from its statistics."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(stats) or set group_wise = True.")

    def score_group(self, group: list[RolloutStats]) -> list[float | None]:
        """The rewards of one group of completions of the same prompt (group-wise rewards)."""
        return [self.score(s) for s in group]


class SelfCertaintyReward(InternalFeedbackReward):
    """Self-certainty (INTUITOR, arXiv 2505.19590): mean over completion tokens of
    ``KL(U || p) = logsumexp(z) - mean(z) - log V``, from the live policy's raw logits. Higher = more certain.

    Args:
        (none)

    Returns:
        One float (nats, >= 0) per completion; ``None`` for an empty completion.

    Example::

        trainer = HyTuningTrainer(model, reward_funcs=[SelfCertaintyReward()], ...)
    """

    __name__ = "self_certainty"

    def score(self, stats: RolloutStats) -> float | None:
        return stats.self_certainty


class EntropyReward(InternalFeedbackReward):
    """Negative mean token entropy (RENT, arXiv 2505.22660): ``-mean_t H(p_t)``.

    Returns:
        One float (nats, <= 0) per completion; ``None`` for an empty completion.

    Example::

        trainer = HyTuningTrainer(model, reward_funcs=[EntropyReward()], ...)
    """

    __name__ = "neg_entropy"

    def score(self, stats: RolloutStats) -> float | None:
        return -stats.entropy


class AnswerReward(InternalFeedbackReward):
    """Base of the rewards that read the completion's answer. A forced answer (options mode, none stated: the model's
    top option after the trigger) gets ``None`` unless the reward is built with ``use_forced=True``: choosing an
    answer by its final probability flatters every confidence measure.

    Args:
        use_forced: score forced answers too.
    """

    def __init__(self, use_forced: bool = False):
        self.use_forced = use_forced

    def _usable(self, stats: RolloutStats) -> bool:
        return stats.answer_usable(self.use_forced)


class AnswerConfidenceReward(AnswerReward):
    """``p_K``: the probability of the final answer after the full reasoning (option-renormalised for multiple
    choice).

    Args:
        use_forced: score forced answers too (default: ``None`` for them).

    Returns:
        One float in ``[0, 1]`` per completion; ``None`` without an answer (or with a forced one).

    Example::

        trainer = HyTuningTrainer(model, reward_funcs=[AnswerConfidenceReward()], ...)
    """

    __name__ = "answer_confidence"

    def score(self, stats: RolloutStats) -> float | None:
        return stats.answer_confidence if self._usable(stats) else None


class PRGReward(AnswerReward):
    """PRG itself as a dense reward (as PACR, arXiv 2510.22255): reasoning that builds support for its answer.

    Args:
        use_forced: score forced answers too (default: ``None`` for them).

    Returns:
        One float in ``[-1, 1]`` per completion (the configured ``prg_aggregation``); 0 without reasoning steps;
        ``None`` without an answer (or with a forced one).

    Example::

        trainer = HyTuningTrainer(model, reward_funcs=[SelfCertaintyReward(), PRGReward()], ...)
    """

    __name__ = "prg"

    def score(self, stats: RolloutStats) -> float | None:
        return stats.prg if self._usable(stats) else None


class PRGGatedConfidenceReward(AnswerReward):
    """Confidence only as far as the reasoning built it: ``r = p_K * clip(G, 0, 1)``.

    ``G`` is the normalised gain of the stated answer along the reasoning (:attr:`RolloutStats.gain`:
    ``(p_K - p_0) / (1 - p_0)`` for a rise, ``(p_K - p_0) / p_0`` for a fall). An answer that was as likely before
    any reasoning as after it (``G = 0``), or whose support the reasoning lowered, earns 0, however confident; the
    same confidence earns more the larger the share of the possible rise the reasoning achieved. The guard against
    confident answers that the reasoning does not warrant.

    Args:
        use_forced: score forced answers too (default: ``None`` for them).

    Returns:
        One float in ``[0, 1]`` per completion; ``None`` without an answer (or with a forced one).

    Example::

        trainer = HyTuningTrainer(model, reward_funcs=[SelfCertaintyReward(), PRGGatedConfidenceReward()], ...)
    """

    __name__ = "prg_gated_confidence"

    def score(self, stats: RolloutStats) -> float | None:
        return stats.prg_gated_confidence if self._usable(stats) else None


def normalise_answer(answer: str) -> str:
    """An answer as compared within a group: stripped, casefolded, trailing punctuation removed."""
    return answer.strip().casefold().rstrip(".,;:!?").strip()


class MajorityVoteReward(AnswerReward):
    """Agreement with the group's majority answer (TTRL, arXiv 2504.16084): 1 if the completion's answer is the most
    frequent answer of its group, else 0.

    The group is gathered across processes before the vote. Ties go to the answer that sorts first, so the vote does
    not depend on the order of the completions. Answers are compared after :func:`normalise_answer`.

    Args:
        use_forced: count the model's forced multiple-choice answers (default: they neither vote nor score).

    Returns:
        1.0 or 0.0 per completion; ``None`` without an answer (or with a forced one).

    Example::

        trainer = HyTuningTrainer(model, reward_funcs=[MajorityVoteReward()], ...)
    """

    __name__ = "majority_vote"
    group_wise = True

    def score_group(self, group: list[RolloutStats]) -> list[float | None]:
        answers = [normalise_answer(s.answer) if self._usable(s) else None for s in group]
        counts = Counter(a for a in answers if a is not None)
        if not counts:
            return [None] * len(group)
        majority = min(counts, key=lambda a: (-counts[a], a))
        return [None if a is None else float(a == majority) for a in answers]


class AgreementBrierReward(AnswerReward):
    """Label-free calibration: ``r = -(p_K - share)^2``, with ``share`` the fraction of the group's stated answers that
    equal this one (compared after :func:`normalise_answer`).

    The model's confidence in an answer should match how often the model itself reaches that answer: the
    counterweight to self-certainty's pull toward confident wrong answers. The group is gathered across processes.

    Args:
        use_forced: count and score forced answers too (default: they neither count nor score).

    Returns:
        One float in ``[-1, 0]`` per completion; ``None`` without a stated answer, or in a group with fewer than two
        stated answers.

    Example::

        trainer = HyTuningTrainer(model, reward_funcs=[SelfCertaintyReward(), AgreementBrierReward()],
                                  args=HyTuningConfig(..., reward_weights=[0.1, 1.0]))
    """

    __name__ = "agreement_brier"
    group_wise = True

    def score_group(self, group: list[RolloutStats]) -> list[float | None]:
        shares = group_shares([normalise_answer(s.answer) if self._usable(s) else None for s in group])
        out: list[float | None] = []
        for share, s in zip(shares, group):
            confidence = s.answer_confidence
            out.append(None if share is None or confidence is None else -((confidence - share) ** 2))
        return out
