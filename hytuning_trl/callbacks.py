"""PRGCallback: the public hook that turns the mixing state into the RD weight of the next step."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .mixing import MixingState, compute_rd_weight

__all__ = ["PRGCallback"]


class PRGCallback(TrainerCallback):
    """The hook that sets the RD weight (``loss = (1 - rd_weight) * L_GRPO + rd_weight * L_RD``).

    :class:`~hytuning_trl.HyTuningTrainer` owns the mixing state (:class:`~hytuning_trl.mixing.MixingController`): at
    every optimizer step it folds the globally reduced anchor and policy statistics into the state, then calls
    :meth:`compute_rd_weight` with the step about to run and a copy of the state. Every process sees the same state,
    so every process sets the same weight. To change the rule, pass an instance of a subclass in ``callbacks`` (the
    trainer uses the first ``PRGCallback`` there and refuses two)::

        class SlowerPRG(PRGCallback):
            def compute_rd_weight(self, args, state, step, max_steps):
                return 0.5 * super().compute_rd_weight(args, state, step, max_steps)
    """

    def compute_rd_weight(self, args: Any, state: MixingState, step: int, max_steps: int) -> float:
        """The RD weight of step ``step`` (in ``[0, 1]``) under ``args.mixing``; override to change the rule.

        Args:
            args: the trainer's :class:`~hytuning_trl.HyTuningConfig`.
            state: a copy of the mixing state (averages, rounds, the current weight).
            step: the optimizer step about to run (0 for the first).
            max_steps: the number of optimizer steps of the run.
        """
        return compute_rd_weight(args, state, step, max_steps)
