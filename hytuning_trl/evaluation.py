"""Multiple-choice evaluation of confidence faithfulness (the callback that runs it during training:
:class:`hytuning_trl.callbacks.CalibrationEvalCallback`).

For each question the model writes its reasoning (greedy); confidence is the option-renormalised probability of the
chosen option after the reasoning and the answer trigger (``p_K`` of :mod:`hytuning_trl.prg`); the chosen option is
the stated one (the answer contract of :mod:`hytuning_trl.answers`), or the model's forced choice when it states none;
correctness comes from the gold label. The headline metrics keep forced answers; ``stated_only`` repeats them over
the stated answers alone. Data: :mod:`hytuning_trl.mcq`; reports: :mod:`hytuning_trl.report`; the command:
:mod:`hytuning_trl.cli`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .answers import AnswerExtractor, whitespace_token_ids
from .calibration import calibration_metrics
from .constants import DEFAULT_ANSWER_PATTERN, DEFAULT_ANSWER_TRIGGER, DEFAULT_STEP_SEPARATOR
from .estimators import (
    ESTIMATORS,
    estimator_confidences,
    fit_records_temperature,
    majority_vote,
    marginal,
    temperature_scaled_records,
)
from .mcq import MCQ_INSTRUCTION, render_prompts
from .scoring import score_rollouts

__all__ = [
    "MCQEvaluation",
    "SamplingOutOfMemory",
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


def _left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p)
        attention_mask[i, width - len(p) :] = 1
    return input_ids, attention_mask


class SamplingOutOfMemory(RuntimeError):
    """The ``k`` samples of a batch did not fit in memory (the message names ``--batch_size``)."""


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


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
    num_samples: int = 0,
    sample_temperature: float = 1.0,
) -> MCQEvaluation:
    """Answer every question greedily and measure how well each confidence estimator tracks correctness.

    Args:
        model: the model to score with (and to generate with, unless ``generate_model`` is given).
        tokenizer: its tokenizer (the chat template is used when it has one, unless ``use_chat_template=False``).
        questions: normalised questions (:func:`load_mcq`).
        batch_size, max_new_tokens: generation settings (a batch of ``batch_size`` questions also samples its
            ``batch_size * num_samples`` completions in one ``generate`` call).
        answer_trigger, answer_pattern, step_separator: as in :class:`HyTuningConfig`.
        n_bins: bins of the ECE.
        progress: show progress bars (questions, and samples when ``num_samples > 0``).
        generate_model: an unwrapped model for ``generate`` (e.g. under ZeRO-3, gathered).
        sync_num_batches: passed to the scoring pass (ZeRO-3).
        instruction: the instruction closing each prompt (default :data:`~hytuning_trl.mcq.MCQ_INSTRUCTION`).
        num_samples: ``k``, completions sampled per question for the ``marginal`` and ``consistency`` estimators and
            maj@k; 0 (default) computes the single-pass estimators only, at the cost of the greedy pass alone.
        sample_temperature: the sampling temperature of those completions.

    Returns:
        :class:`MCQEvaluation` with one record per question (``chosen``, ``gold``, ``correct``, ``confidence`` (the
        ``after_reasoning`` estimator), ``estimators`` (every estimator's confidence in the greedy answer),
        ``stated``, ``prg``, ``gain``, ``num_steps``, ``completion``, ``option_letters``, ``option_logprobs`` (after
        the reasoning, for temperature scaling), ``reasoning_logprobs`` (the reasoning tokens' log-probabilities) and,
        with samples, ``samples`` (each sample's ``answer``, ``stated`` and ``option_logprobs``) and ``majority``) and
        the metrics of :func:`summarise`.
    """
    from tqdm.auto import tqdm

    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}.")
    if num_samples and not sample_temperature > 0:
        raise ValueError(f"sample_temperature must be > 0 to sample, got {sample_temperature}.")
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

    def generate(batch_p: list[list[int]], sample: bool) -> list[list[int]]:
        input_ids, attention_mask = _left_padded(batch_p, pad)
        kwargs = {"do_sample": False}
        if sample:
            kwargs = {"do_sample": True, "temperature": sample_temperature, "top_p": 1.0, "top_k": 0}
            kwargs["num_return_sequences"] = num_samples
        try:
            out = gen_model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                **kwargs,
            )
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not (sample and _out_of_memory(exc)):
                raise
            raise SamplingOutOfMemory(
                f"Sampling {num_samples} completions for each of {len(batch_p)} questions at once "
                f"({num_samples * len(batch_p)} sequences) ran out of memory: lower --batch_size (now {batch_size}) "
                f"or --num_samples."
            ) from exc
        completions = []
        for row in out[:, input_ids.size(1) :].tolist():
            cut = next((j + 1 for j, t in enumerate(row) if t in eos_set), len(row))
            completions.append(row[:cut])
        return completions

    def score(batch_q, batch_p, completions, stats: bool):
        parsed = [extractor.parse(c, q["options"]) for c, q in zip(completions, batch_q)]
        scored = score_rollouts(
            model,
            batch_p,
            completions,
            step_spans=[p.spans for p in parsed],
            trigger_ids=trigger_ids,
            answer_ids=[p.answer_ids for p in parsed],
            option_ids=[p.option_ids for p in parsed],
            compute_stats=stats,
            pad_token_id=pad,
            sync_num_batches=sync_num_batches,
            whitespace_ids=whitespace,
        )
        return parsed, [p.fill(s) for p, s in zip(parsed, scored)]

    records = []
    was_training = gen_model.training
    gen_model.eval()
    bar = tqdm(total=len(questions), desc="Evaluating", unit="question", disable=not progress)
    sample_bar = tqdm(
        total=len(questions) * num_samples, desc="Sampling", unit="sample", disable=not progress or not num_samples
    )
    try:
        for start in range(0, len(questions), batch_size):
            batch_q = questions[start : start + batch_size]
            batch_p = prompts[start : start + batch_size]
            parsed, stats = score(batch_q, batch_p, generate(batch_p, sample=False), stats=True)
            samples: list[list[dict]] = [[] for _ in batch_q]
            if num_samples:
                repeat = lambda xs: [x for x in xs for _ in range(num_samples)]  # noqa: E731
                sampled_parsed, sampled = score(
                    repeat(batch_q), repeat(batch_p), generate(batch_p, sample=True), stats=False
                )
                for j, (sp, s) in enumerate(zip(sampled_parsed, sampled)):
                    samples[j // num_samples].append(
                        {
                            "answer": s.answer,
                            "stated": not s.answer_forced and s.answer is not None,
                            "option_letters": sp.letters,
                            "option_logprobs": s.option_logprobs[-1] if s.option_logprobs else None,
                        }
                    )
                sample_bar.update(len(sampled))
            for q, p, s, own in zip(batch_q, parsed, stats, samples):
                record = {
                    "question": q["question"],
                    "gold": q["answer_idx"],
                    "chosen": s.answer,
                    "stated": not s.answer_forced,
                    "correct": s.answer == q["answer_idx"],
                    "confidence": float(min(max(s.answer_confidence, 0.0), 1.0)),
                    "prg": s.prg,
                    "gain": s.gain,
                    "num_steps": s.num_steps,
                    "completion": p.text,
                    "option_letters": p.letters,
                    "option_logprobs": s.option_logprobs[-1] if s.option_logprobs else None,
                    "reasoning_logprobs": [round(x, 6) for x in s.reasoning_logprobs or []],
                }
                if own:
                    record["samples"] = own
                    weights = [marginal([x], x["answer"]) for x in own]
                    record["majority"] = majority_vote([x["answer"] for x in own], weights)
                record["estimators"] = estimator_confidences(record)
                records.append(record)
            bar.update(len(batch_q))
    finally:
        bar.close()
        sample_bar.close()
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
        "num_samples": num_samples,
        "sample_temperature": sample_temperature,
    }
    return MCQEvaluation(records=records, metrics=metrics, settings=settings)


def letter_shares(records: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per option letter (the gold answers' and the greedy answers'): the share of questions whose gold answer it is
    (``gold``), the share of greedy answers that give it, stated or forced (``answered``), and the accuracy on the
    questions whose gold answer it is (``accuracy``, None where none is).

    A model that has stopped giving a letter answers every question of that letter wrong, however sure it is: RL from
    internal feedback and a stalled distillation both did it in 0.4.0's run (docs/results.md), and the answer's
    confidence did not flag it (0.96 on those questions at one seed). ``answered`` needs no label, so the same
    shares over unlabeled questions show it."""
    n = len(records)
    letters = sorted({r["gold"] for r in records} | {r["chosen"] for r in records if r.get("chosen")})
    out: dict[str, dict[str, float | None]] = {}
    for letter in letters:
        golds = [r for r in records if r["gold"] == letter]
        out[letter] = {
            "gold": len(golds) / n,
            "answered": sum(r.get("chosen") == letter for r in records) / n,
            "accuracy": sum(r["correct"] for r in golds) / len(golds) if golds else None,
        }
    return out


def summarise(records: list[dict], n_bins: int = 15) -> dict[str, Any]:
    """:func:`calibration_metrics` over all questions of the ``after_reasoning`` confidence (forced answers included:
    the headline figures), the share of stated answers, the mean PRG, the mean number of reasoning steps, the same
    metrics over the stated answers alone (``stated_only``, ``None`` when no answer was stated), and ``estimators``:
    the metrics of every estimator the records carry (accuracy is the greedy answer's throughout), with
    ``maj_at_k`` and ``num_samples`` when they carry samples, and ``letters`` (:func:`letter_shares`) when they
    carry the gold answer."""
    correct = [r["correct"] for r in records]
    metrics = calibration_metrics([r["confidence"] for r in records], correct, n_bins)
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
    if all("reasoning_logprobs" in r for r in records):  # records written before 0.4.0 lack it
        per_record = [estimator_confidences(r) for r in records]
        metrics["estimators"] = {
            name: calibration_metrics([c[name] for c in per_record], correct, n_bins)
            for name in ESTIMATORS
            if all(name in c for c in per_record)
        }
        if all(r.get("samples") for r in records):
            metrics["num_samples"] = len(records[0]["samples"])
            metrics["maj_at_k"] = sum(r["majority"] == r["gold"] for r in records) / len(records)
    if all("gold" in r for r in records):
        metrics["letters"] = letter_shares(records)
    return metrics
