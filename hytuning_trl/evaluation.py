"""Multiple-choice evaluation of confidence faithfulness, and the callback that runs it during training.

For each question the model writes its reasoning (greedy); confidence is the option-renormalised probability of the
chosen option after the reasoning and the answer trigger (``p_K`` of :mod:`hytuning_trl.prg`); the chosen option is
the stated one (the answer contract of :mod:`hytuning_trl.answers`), or the model's forced choice when it states none;
correctness comes from the gold label. The headline metrics keep forced answers; ``stated_only`` repeats them over
the stated answers alone. Data: :mod:`hytuning_trl.mcq`; reports: :mod:`hytuning_trl.report`; the command:
:mod:`hytuning_trl.cli`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from .answers import AnswerExtractor, whitespace_token_ids
from .calibration import calibration_metrics, fit_temperature, temperature_scale
from .constants import DEFAULT_ANSWER_PATTERN, DEFAULT_ANSWER_TRIGGER, DEFAULT_STEP_SEPARATOR
from .mcq import MCQ_INSTRUCTION, load_mcq, render_prompts
from .scoring import score_rollouts
from .sharding import gather_in_order, shard_indices

__all__ = [
    "CalibrationEvalCallback",
    "MCQEvaluation",
    "evaluate_mcq",
    "fit_records_temperature",
    "summarise",
    "temperature_scaled_records",
]

DEFAULT_TRIGGER = DEFAULT_ANSWER_TRIGGER
DEFAULT_PATTERN = DEFAULT_ANSWER_PATTERN


@dataclass
class MCQEvaluation:
    """Per-question records, the metrics, and the settings they were measured with."""

    records: list[dict]
    metrics: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def evaluate_mcq(
    model: Any,
    tokenizer: Any,
    questions: Sequence[dict],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    answer_trigger: str = DEFAULT_TRIGGER,
    answer_pattern: str = DEFAULT_PATTERN,
    step_separator: str = DEFAULT_STEP_SEPARATOR,
    use_chat_template: bool | None = None,
    n_bins: int = 15,
    progress: bool = True,
    generate_model: Any = None,
    sync_num_batches: Callable[[int], int] | None = None,
    instruction: str | None = None,
) -> MCQEvaluation:
    """Answer every question greedily and measure how well the confidence tracks correctness.

    Args:
        model: the model to score with (and to generate with, unless ``generate_model`` is given).
        tokenizer: its tokenizer (the chat template is used when it has one, unless ``use_chat_template=False``).
        questions: normalised questions (:func:`load_mcq`).
        batch_size, max_new_tokens: generation settings.
        answer_trigger, answer_pattern, step_separator: as in :class:`HyTuningConfig`.
        n_bins: bins of the ECE.
        progress: show a progress bar.
        generate_model: an unwrapped model for ``generate`` (e.g. under ZeRO-3, gathered).
        sync_num_batches: passed to the scoring pass (ZeRO-3).
        instruction: the instruction closing each prompt (default :data:`~hytuning_trl.mcq.MCQ_INSTRUCTION`).

    Returns:
        :class:`MCQEvaluation` with one record per question (``chosen``, ``gold``, ``correct``, ``confidence``,
        ``stated``, ``prg``, ``num_steps``, ``completion``, ``option_letters`` and ``option_logprobs``: the
        option-renormalised log-probabilities after the reasoning, for post-hoc calibration) and
        :func:`calibration_metrics` plus ``stated_rate``, ``mean_prg`` and ``mean_steps``.
    """
    from tqdm.auto import tqdm

    questions = list(questions)
    gen_model = generate_model if generate_model is not None else model
    extractor = AnswerExtractor(
        tokenizer,
        answer_pattern=answer_pattern,
        step_separator=step_separator,
        answer_probability="options",
        answer_options=None,
        special_ids=[tokenizer.eos_token_id, tokenizer.pad_token_id],
    )
    whitespace = whitespace_token_ids(tokenizer)
    trigger_ids = tokenizer(answer_trigger, add_special_tokens=False)["input_ids"]
    prompts = render_prompts(tokenizer, questions, use_chat_template, instruction)
    device = next(gen_model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = getattr(gen_model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    eos_set = set(eos if isinstance(eos, list) else [eos])
    records = []
    was_training = gen_model.training
    gen_model.eval()
    bar = tqdm(total=len(questions), desc="Evaluating", unit="question", disable=not progress)
    try:
        for start in range(0, len(questions), batch_size):
            batch_q = questions[start : start + batch_size]
            batch_p = prompts[start : start + batch_size]
            width = max(map(len, batch_p))
            input_ids = torch.full((len(batch_p), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(batch_p), width), dtype=torch.long)
            for i, p in enumerate(batch_p):
                input_ids[i, width - len(p) :] = torch.tensor(p)
                attention_mask[i, width - len(p) :] = 1
            out = gen_model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            completions = []
            for row in out[:, width:].tolist():
                cut = next((j + 1 for j, t in enumerate(row) if t in eos_set), len(row))
                completions.append(row[:cut])
            parsed = [extractor.parse(c, q["options"]) for c, q in zip(completions, batch_q)]
            stats = score_rollouts(
                model,
                batch_p,
                completions,
                step_spans=[p.spans for p in parsed],
                trigger_ids=trigger_ids,
                answer_ids=[p.answer_ids for p in parsed],
                option_ids=[p.option_ids for p in parsed],
                compute_stats=False,
                pad_token_id=pad,
                sync_num_batches=sync_num_batches,
                whitespace_ids=whitespace,
            )
            for q, p, s in zip(batch_q, parsed, stats):
                p.fill(s)
                chosen = s.answer
                records.append(
                    {
                        "question": q["question"],
                        "gold": q["answer_idx"],
                        "chosen": chosen,
                        "stated": not s.answer_forced,
                        "correct": chosen == q["answer_idx"],
                        "confidence": float(min(max(s.answer_confidence, 0.0), 1.0)),
                        "prg": s.prg,
                        "num_steps": s.num_steps,
                        "completion": p.text,
                        "option_letters": p.letters,
                        "option_logprobs": s.option_logprobs[-1] if s.option_logprobs else None,
                    }
                )
            bar.update(len(batch_q))
    finally:
        bar.close()
        gen_model.train(was_training)
    metrics = summarise(records, n_bins)
    settings = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "answer_trigger": answer_trigger,
        "answer_pattern": answer_pattern,
        "n_bins": n_bins,
        "decoding": "greedy",
        "instruction": MCQ_INSTRUCTION if instruction is None else instruction,
    }
    return MCQEvaluation(records=records, metrics=metrics, settings=settings)


def summarise(records: list[dict], n_bins: int = 15) -> dict[str, Any]:
    """:func:`calibration_metrics` over all questions (forced answers included: the headline figures), the share of
    stated answers, the mean PRG, the mean number of reasoning steps, and the same metrics over the stated answers
    alone (``stated_only``, ``None`` when no answer was stated)."""
    metrics = calibration_metrics([r["confidence"] for r in records], [r["correct"] for r in records], n_bins)
    metrics["stated_rate"] = sum(r["stated"] for r in records) / len(records)
    metrics["mean_prg"] = sum(r["prg"] for r in records) / len(records)
    if all("num_steps" in r for r in records):  # records written before 0.3.0 lack it
        metrics["mean_steps"] = sum(r["num_steps"] for r in records) / len(records)
    stated = [r for r in records if r["stated"]]
    metrics["stated_only"] = (
        calibration_metrics([r["confidence"] for r in stated], [r["correct"] for r in stated], n_bins)
        if stated
        else None
    )
    return metrics


def _option_rows(records: Sequence[dict], what: str) -> tuple[list[list[float]], list[list[str]]]:
    logprobs, letters = [], []
    for i, r in enumerate(records):
        if r.get("option_logprobs") is None or r.get("option_letters") is None:
            raise ValueError(
                f"{what}: record {i} has no 'option_logprobs' / 'option_letters' (predictions.jsonl written before "
                "0.3.0, or a question whose options could not be scored); evaluate again with `hytuning-eval`."
            )
        logprobs.append([float(x) for x in r["option_logprobs"]])
        letters.append(list(r["option_letters"]))
    return logprobs, letters


def _padded(rows: list[list[float]]) -> Any:
    """Rows of option scores as one array, questions with fewer options padded with -inf (probability 0)."""
    import numpy as np

    out = np.full((len(rows), max(map(len, rows))), -np.inf)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def fit_records_temperature(records: Sequence[dict]) -> float:
    """Post-hoc temperature scaling fitted on evaluated, labelled questions (``predictions.jsonl`` records): the
    temperature ``T`` minimising the mean NLL of the gold option under ``softmax(option_logprobs / T)``
    (:func:`~hytuning_trl.calibration.fit_temperature`). No second generation: the option log-probabilities after
    the model's own reasoning are in the records."""
    if not records:
        raise ValueError("fit_records_temperature needs at least one evaluated question.")
    logprobs, letters = _option_rows(records, "fit_records_temperature")
    labels = []
    for i, (r, row) in enumerate(zip(records, letters)):
        if r["gold"] not in row:
            raise ValueError(f"fit_records_temperature: record {i}'s gold {r['gold']!r} is not among its {row}.")
        labels.append(row.index(r["gold"]))
    return fit_temperature(_padded(logprobs), labels)


def temperature_scaled_records(records: Sequence[dict], temperature: float) -> list[dict]:
    """The records with ``confidence`` = the chosen option's probability under ``softmax(option_logprobs / T)``
    (answers and correctness unchanged: one temperature does not reorder the options), the raw one kept as
    ``confidence_raw``."""
    logprobs, letters = _option_rows(records, "temperature_scaled_records")
    probs = temperature_scale(_padded(logprobs), temperature)
    out = []
    for i, (r, row, p) in enumerate(zip(records, letters, probs)):
        if r["chosen"] not in row:
            raise ValueError(f"temperature_scaled_records: record {i}'s answer {r['chosen']!r} is not among {row}.")
        confidence = float(p[row.index(r["chosen"])])
        out.append({**r, "confidence": confidence, "confidence_raw": r["confidence"], "temperature": temperature})
    return out


class CalibrationEvalCallback(TrainerCallback):
    """Runs :func:`evaluate_mcq` on a held-out set every ``eval_steps`` (default: the config's ``eval_steps``, else
    ``logging_steps``) and logs ``eval_calibration/*`` next to the training metrics. GRPOTrainer has no
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
        for key, value in metrics.items():
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
