"""The trainer callbacks: :class:`PRGCallback`, the public hook that turns the mixing state into the RD weight of the
next step, and :class:`CalibrationEvalCallback`, the held-out calibration probe during training."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from .evaluation import evaluate_mcq, summarise
from .mcq import load_mcq
from .mixing import MixingState, compute_rd_weight
from .sharding import gather_in_order, shard_indices

__all__ = ["CalibrationEvalCallback", "PRGCallback"]


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


class CalibrationEvalCallback(TrainerCallback):
    """Runs :func:`evaluate_mcq` on a held-out set every ``eval_steps`` (default: the config's ``eval_steps``, else
    ``logging_steps``) and logs ``eval_calibration/*`` next to the training metrics: the headline figures of the
    ``after_reasoning`` confidence, and every estimator's as ``eval_calibration/<estimator>/<metric>`` (pass
    ``num_samples=k`` for the sampled ones and ``maj_at_k``). GRPOTrainer has no
    ``compute_metrics`` (TRL #2959), so this is the way to watch calibration during training.

    :class:`HyTuningTrainer` binds it itself; with a plain ``GRPOTrainer`` call ``callback.bind(trainer)``. The
    questions are split across processes (every process generates the same number of batches, so ZeRO-3 works) and
    the records gathered before the metrics are computed.
    """

    def __init__(self, questions: Any, eval_steps: int | None = None, **eval_kwargs: Any):
        self.questions = load_mcq(questions)
        self.eval_steps = eval_steps
        self.eval_kwargs = {"progress": False, **eval_kwargs}
        self.trainer = None
        self.history: list[dict[str, Any]] = []

    def bind(self, trainer: Any) -> None:
        """Evaluate ``trainer``'s model (with its config's ``mcq_instruction`` unless one was given)."""
        self.trainer = trainer
        instruction = getattr(trainer.args, "mcq_instruction", None)
        if instruction is not None:
            self.eval_kwargs.setdefault("instruction", instruction)

    def _every(self, args: Any) -> int:
        return int(self.eval_steps or args.eval_steps or args.logging_steps or 1)

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is None or state.global_step % self._every(args) != 0:
            return
        start = time.perf_counter()
        metrics = self.evaluate()
        metrics["seconds"] = time.perf_counter() - start  # what the probe costs, to budget runs by
        self.history.append({"step": state.global_step, **metrics})
        flat = {**metrics}
        for name, block in (metrics.get("estimators") or {}).items():
            flat.update({f"{name}/{key}": value for key, value in block.items() if key not in ("n", "accuracy")})
        for letter, shares in (metrics.get("letters") or {}).items():
            flat[f"letters/{letter}/answered"] = shares["answered"]
        for key, value in flat.items():
            if isinstance(value, (int, float)) and value is not None:
                self.trainer._metrics["train"][f"eval_calibration/{key}"].append(float(value))

    def evaluate(self) -> dict[str, Any]:
        from trl.models.utils import unwrap_model_for_generation

        trainer = self.trainer
        acc = trainer.accelerator
        world, rank = acc.num_processes, acc.process_index
        indices, real = shard_indices(len(self.questions), rank, world)
        mine = [self.questions[i] for i in indices]
        sync = getattr(type(trainer), "_sync_num_batches", None)
        if sync is None and world > 1 and getattr(trainer, "is_deepspeed_enabled", False):
            raise ValueError(
                f"CalibrationEvalCallback on {type(trainer).__name__} under DeepSpeed with {world} processes: the "
                "scoring pass must run the same number of forwards on every process (ZeRO-3 hangs otherwise), which "
                "needs the trainer's `_sync_num_batches`. Use hytuning_trl.HyTuningTrainer, or evaluate after "
                "training with `hytuning-eval`."
            )
        tokenizer = trainer.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        with unwrap_model_for_generation(trainer.model_wrapped, acc) as unwrapped:
            result = evaluate_mcq(
                trainer.model,
                tokenizer,
                mine,
                generate_model=unwrapped,
                sync_num_batches=trainer._sync_num_batches if sync is not None else None,
                **self.eval_kwargs,
            )
        records = gather_in_order(indices, result.records, real)
        return summarise(records, self.eval_kwargs.get("n_bins", 15))
