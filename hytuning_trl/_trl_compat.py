"""Every use of TRL's private API, in one place, checked against the TRL version once.

The trainer overrides private ``GRPOTrainer`` methods and reads private attributes; this module is the only place that
names them, so moving to another TRL release touches this file (and the overrides' signatures) only:

* ``GRPOTrainer._generate(prompts)`` returns the 8-tuple :data:`GENERATE_FIELDS` (:func:`unpack_generate`); its
  ``extra_fields`` are merged by TRL into the batch's rows, which reach ``_calculate_rewards(inputs, ...)``;
* ``GRPOTrainer._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations)`` is the one-turn
  generation path (plain ``generate``, ZeRO-3, vLLM) the anchor round reuses (:func:`generate_one_turn`);
* ``_generate_and_score_completions`` returns a dict with the local :data:`ADVANTAGES` tensor, ``completion_mask``,
  ``prompt_ids``, ``num_items_in_batch`` and (where some tokens are not the policy's to train on) ``tool_mask``, which
  ``_compute_loss`` multiplies into its loss mask;
* ``_prepare_inputs(generation_batch)`` generates every ``steps_per_generation * num_iterations`` micro-steps (counted
  by ``_step``) into ``_buffered_inputs``, or when that is ``None`` (:func:`generation_due`, :func:`drop_rollouts`);
* ``_metrics[mode]`` (logged means, :func:`metrics`), ``_log_completion_extra`` (completions table columns),
  ``_get_output_dir`` (checkpoint folders), ``_tokenizer``, ``_tag_names`` (model card tags).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "ADVANTAGES",
    "GENERATE_FIELDS",
    "TESTED_TRL",
    "Generated",
    "advantages",
    "check_trl_version",
    "drop_rollouts",
    "generation_due",
    "generate_one_turn",
    "metrics",
    "output_dir",
    "unpack_generate",
]

TESTED_TRL = ("1.16", "1.17")  # [tested, first untested): the dependency is capped the same way
GENERATE_FIELDS = (
    "prompt_ids",
    "completion_ids",
    "tool_mask",
    "completions",
    "logprobs",
    "extra_fields",
    "images",
    "tool_images",
)
ADVANTAGES = "advantages"


class Generated(NamedTuple):
    """``GRPOTrainer._generate``'s return value, by name."""

    prompt_ids: Any
    completion_ids: Any
    tool_mask: Any
    completions: Any
    logprobs: Any
    extra_fields: dict
    images: Any
    tool_images: Any


def check_trl_version() -> None:
    """Refuse a TRL outside the tested range, naming the fix (pip enforces it too, unless forced past it)."""
    import trl
    from packaging.version import Version

    low, high = TESTED_TRL
    if not Version(low) <= Version(trl.__version__) < Version(high):
        raise ImportError(
            f"hytuning-trl overrides private GRPOTrainer methods and was tested with TRL {low}.x; TRL "
            f"{trl.__version__} is installed. Install a supported version: pip install 'trl>={low},<{high}'."
        )


def unpack_generate(output: tuple) -> Generated:
    """Name the fields of ``_generate``'s tuple; a tuple of another length is a clear error, not a silent shift."""
    if len(output) != len(GENERATE_FIELDS):
        raise RuntimeError(
            f"GRPOTrainer._generate returned {len(output)} values; hytuning-trl was written against the "
            f"{len(GENERATE_FIELDS)} of TRL {TESTED_TRL[0]} ({', '.join(GENERATE_FIELDS)}). Install a TRL version "
            f"the package supports (trl>={TESTED_TRL[0]},<{TESTED_TRL[1]})."
        )
    return Generated(*output)


def advantages(output: dict) -> Any:
    """The local advantages in ``_generate_and_score_completions``'s output."""
    if ADVANTAGES not in output:
        raise KeyError(
            f"GRPOTrainer._generate_and_score_completions returned no {ADVANTAGES!r} (keys: {sorted(output)}); "
            f"prg_gate was written against TRL {TESTED_TRL[0]}."
        )
    return output[ADVANTAGES]


def generate_one_turn(trainer: Any, prompt_ids: list[list[int]]) -> list[list[int]]:
    """One completion per prompt through TRL's one-turn generation path, as token ids."""
    completion_ids, _ = trainer._generate_single_turn(prompt_ids, None, {}, 1)
    return [list(c) for c in completion_ids]


def metrics(trainer: Any, mode: str) -> Any:
    """The trainer's metrics of ``mode`` ("train" / "eval"): lists whose means TRL logs."""
    return trainer._metrics[mode]


def output_dir(trainer: Any, trial: Any) -> str:
    """Where the trainer writes this trial's checkpoints."""
    return trainer._get_output_dir(trial=trial)


def generation_due(trainer: Any) -> bool:
    """Whether TRL's ``_prepare_inputs`` would generate a new round at this micro-step."""
    return trainer._step % (trainer.args.steps_per_generation * trainer.num_iterations) == 0


def drop_rollouts(trainer: Any) -> None:
    """Forget the buffered rollouts, so that the next micro-step that uses rollouts generates its own."""
    trainer._buffered_inputs = None
