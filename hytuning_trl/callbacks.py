"""PRGCallback: turns each round's PRG statistics into the RD weight of the next step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .mixing import MixingState, compute_rd_weight, update_ema

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import HyTuningTrainer

__all__ = ["PRGCallback"]


class PRGCallback(TrainerCallback):
    """Sets the RD weight ``lam`` after every optimizer step.

    The trainer reduces each generation round's PRG statistics across processes as soon as the round is scored and
    queues the global means; at the end of the step this callback folds them into the moving averages
    (``ema = decay * ema + (1 - decay) * mean``, once per round, non-finite means left out) and asks
    :meth:`compute_rd_weight` for the next ``lam``. Every process sees the same means, so every process sets the same
    ``lam``. :class:`~hytuning_trl.HyTuningTrainer` adds this callback itself; pass an instance of a subclass in
    ``callbacks`` to change the rule, e.g.::

        class SlowerPRG(PRGCallback):
            def compute_rd_weight(self, args, state, step, max_steps):
                return 0.5 * super().compute_rd_weight(args, state, step, max_steps)
    """

    def __init__(self) -> None:
        self.trainer: HyTuningTrainer | None = None

    def bind(self, trainer: HyTuningTrainer) -> None:
        """Attach to the trainer whose ``mixing_state`` and ``rd_weight`` this callback drives."""
        self.trainer = trainer

    def compute_rd_weight(self, args: Any, state: MixingState, step: int, max_steps: int) -> float:
        """The RD weight for the next step; override to change the rule."""
        return compute_rd_weight(args, state, step, max_steps)

    def update_state(self, args: Any, state: MixingState, rounds: list[dict[str, float | None]]) -> None:
        """Fold the queued rounds (global means ``policy`` / ``anchor``, ``None`` where a round had none)."""
        for r in rounds:
            state.generation_rounds += 1
            if r.get("policy") is not None:
                state.prg_policy_ema = update_ema(state.prg_policy_ema, r["policy"], args.prg_ema_decay)
            if r.get("anchor") is not None:
                state.anchor_rounds += 1
                state.prg_anchor_ema = update_ema(state.prg_anchor_ema, r["anchor"], args.prg_ema_decay)

    def _set(self, args: Any, step: int, max_steps: int) -> None:
        trainer = self.trainer
        lam = float(self.compute_rd_weight(args, trainer.mixing_state, step, max_steps))
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"{type(self).__name__}.compute_rd_weight returned {lam}, outside [0, 1].")
        trainer.mixing_state.rd_weight = lam

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            return
        if not self.trainer._mixing_state_restored:
            self._set(args, state.global_step, state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is None:
            return
        rounds = self.trainer._pop_prg_rounds()
        self.update_state(args, self.trainer.mixing_state, rounds)
        self._set(args, state.global_step, state.max_steps)
        metrics = self.trainer._metrics["train"]
        ms = self.trainer.mixing_state
        if ms.prg_policy_ema is not None:
            metrics["hytuning/prg_policy_ema"].append(ms.prg_policy_ema)
        if ms.prg_anchor_ema is not None:
            metrics["hytuning/prg_anchor_ema"].append(ms.prg_anchor_ema)
        metrics["hytuning/rd_weight_next"].append(ms.rd_weight)
