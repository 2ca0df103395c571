"""Multiple-choice evaluation of confidence faithfulness, the eval callback, and the ``hytuning-eval`` command.

For each question the model writes its reasoning (greedy); confidence is the option-renormalised probability of the
chosen option after the reasoning and the answer trigger (``p_K`` of :mod:`hytuning_trl.prg`); the chosen option is
the stated one, or the model's forced choice when it states none; correctness comes from the gold label. Input: MedQA's
jsonl (``question``, ``options`` keyed A-D or A-E, ``answer_idx``), or a ``datasets.Dataset`` / hub dataset with
the same fields.

    hytuning-eval --model_name_or_path outputs/medqa-hytuning --dataset_name data/heldout.jsonl --output_dir report
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from .answers import AnswerExtractor
from .calibration import calibration_bins, calibration_metrics, reliability_diagram
from .scoring import score_rollouts

__all__ = [
    "CalibrationEvalCallback",
    "EvalArguments",
    "MCQEvaluation",
    "evaluate_mcq",
    "format_mcq_prompt",
    "load_mcq",
    "main",
    "run_evaluation",
    "summarise",
    "write_report",
]

DEFAULT_TRIGGER = "\nThe answer is"
DEFAULT_PATTERN = r"[Tt]he (?:final )?answer is[:\s]*\(?\s*([A-Za-z0-9][A-Za-z0-9_\-]*)"
MCQ_INSTRUCTION = (
    "Think step by step, one short paragraph per step separated by blank lines, then finish with "
    '"The answer is X." where X is the letter of the best option.'
)


def format_mcq_prompt(question: str, options: dict[str, str]) -> str:
    """The prompt used for multiple-choice training and evaluation alike."""
    lines = [f"Question: {question.strip()}", "Options:"]
    lines += [f"{letter}. {text}" for letter, text in sorted(options.items())]
    lines.append(MCQ_INSTRUCTION)
    return "\n".join(lines)


def _normalise_row(row: dict, i: int) -> dict:
    for column in ("question", "options"):
        if column not in row or row[column] is None:
            raise ValueError(
                f"Question {i} has no {column!r} field (fields: {sorted(row)}). Multiple-choice data needs "
                "'question', 'options' (a dict keyed by letter, or a list) and 'answer_idx' (the gold letter)."
            )
    options = row["options"]
    if isinstance(options, list):
        if options and isinstance(options[0], dict) and "key" in options[0]:
            options = {str(o["key"]): str(o["value"]) for o in options}
        else:
            options = {chr(ord("A") + j): str(t) for j, t in enumerate(options)}
    options = {str(k): str(v) for k, v in options.items() if v is not None}
    gold = row.get("answer_idx")
    if gold is None and row.get("answer") is not None:
        answer = str(row["answer"]).strip()
        gold = answer if answer in options else next((k for k, v in options.items() if v.strip() == answer), None)
    if isinstance(gold, int):
        gold = chr(ord("A") + gold)
    if gold is None or str(gold) not in options:
        raise ValueError(
            f"Question {i}: gold answer {gold!r} is not one of its options {sorted(options)}; give 'answer_idx' as an "
            "option letter (or 'answer' as the option's text)."
        )
    return {"question": str(row["question"]), "options": options, "answer_idx": str(gold)}


def load_mcq(source: Any, split: str = "test", max_samples: int | None = None) -> list[dict]:
    """Questions as ``{"question", "options", "answer_idx"}`` from a jsonl path, a ``datasets.Dataset``, a list of
    dicts, or a hub dataset name (``split`` applies)."""
    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        with open(source) as f:
            if str(source).endswith(".json"):
                rows = json.load(f)
            else:
                rows = [json.loads(line) for line in f if line.strip()]
    elif isinstance(source, str):
        from datasets import load_dataset

        rows = load_dataset(source, split=split)
    else:
        rows = source
    out = []
    for i, row in enumerate(rows):
        if max_samples is not None and i >= max_samples:
            break
        out.append(_normalise_row(dict(row), i))
    if not out:
        raise ValueError(f"No questions in {source!r}.")
    return out


@dataclass
class MCQEvaluation:
    """Per-question records, the metrics, and the settings they were measured with."""

    records: list[dict]
    metrics: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)


def _render_prompts(tokenizer: Any, questions: list[dict], use_chat_template: bool | None) -> list[list[int]]:
    chat = getattr(tokenizer, "chat_template", None) is not None if use_chat_template is None else use_chat_template
    out = []
    for q in questions:
        text = format_mcq_prompt(q["question"], q["options"])
        if chat:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        else:
            ids = tokenizer(text)["input_ids"]
        out.append(list(ids))
    return out


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
    step_separator: str = "\n\n",
    use_chat_template: bool | None = None,
    n_bins: int = 15,
    progress: bool = True,
    generate_model: Any = None,
    sync_num_batches: Callable[[int], int] | None = None,
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

    Returns:
        :class:`MCQEvaluation` with one record per question (``chosen``, ``gold``, ``correct``, ``confidence``,
        ``stated``, ``prg``, ``num_steps``, ``completion``) and :func:`calibration_metrics` plus ``stated_rate`` and
        ``mean_prg``.
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
    trigger_ids = tokenizer(answer_trigger, add_special_tokens=False)["input_ids"]
    prompts = _render_prompts(tokenizer, questions, use_chat_template)
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
                        "confidence": float(min(max(math.exp(s.answer_logprobs[-1]), 0.0), 1.0)),
                        "prg": s.prg,
                        "num_steps": s.num_steps,
                        "completion": p.text,
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
    }
    return MCQEvaluation(records=records, metrics=metrics, settings=settings)


def summarise(records: list[dict], n_bins: int = 15) -> dict[str, Any]:
    """:func:`calibration_metrics` of evaluation records, plus the share of stated answers and the mean PRG."""
    metrics = calibration_metrics([r["confidence"] for r in records], [r["correct"] for r in records], n_bins)
    metrics["stated_rate"] = sum(r["stated"] for r in records) / len(records)
    metrics["mean_prg"] = sum(r["prg"] for r in records) / len(records)
    return metrics


def format_table(metrics: dict[str, Any], title: str = "") -> str:
    """A short plain-text table of the metrics."""
    rows = [
        ("n", metrics.get("n")),
        ("accuracy", metrics.get("accuracy")),
        ("ECE (15 equal-width bins)", metrics.get("ece")),
        ("ECE (equal-mass bins)", metrics.get("ece_quantile")),
        ("Brier", metrics.get("brier")),
        ("AUROC", metrics.get("auroc")),
        ("AURC", metrics.get("aurc")),
        ("overconfidence rate", metrics.get("overconfidence_rate")),
        ("answers stated", metrics.get("stated_rate")),
    ]
    lines = [title] if title else []
    for name, value in rows:
        shown = "undefined" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(f"  {name:<28}{shown:>10}")
    return "\n".join(lines)


def write_report(
    evaluation: MCQEvaluation, output_dir: str | os.PathLike, title: str | None = None, extra: dict | None = None
) -> dict[str, str]:
    """Write ``calibration.json`` (metrics, n, settings, bins), ``predictions.jsonl`` and ``reliability.png``."""
    os.makedirs(output_dir, exist_ok=True)
    conf = [r["confidence"] for r in evaluation.records]
    correct = [r["correct"] for r in evaluation.records]
    n_bins = evaluation.settings.get("n_bins", 15)
    report = {
        "metrics": evaluation.metrics,
        "n": len(evaluation.records),
        "settings": {**evaluation.settings, **(extra or {})},
        "bins": calibration_bins(conf, correct, n_bins),
    }
    paths = {
        "calibration": os.path.join(output_dir, "calibration.json"),
        "predictions": os.path.join(output_dir, "predictions.jsonl"),
        "reliability": os.path.join(output_dir, "reliability.png"),
    }
    with open(paths["calibration"], "w") as f:
        json.dump(report, f, indent=2)
    with open(paths["predictions"], "w") as f:
        for r in evaluation.records:
            f.write(json.dumps(r) + "\n")
    reliability_diagram(conf, correct, paths["reliability"], n_bins=n_bins, title=title)
    return paths


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
        self.trainer = trainer

    def _every(self, args: Any) -> int:
        return int(self.eval_steps or args.eval_steps or args.logging_steps or 1)

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is None or state.global_step % self._every(args) != 0:
            return
        metrics = self.evaluate()
        self.history.append({"step": state.global_step, **metrics})
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and value is not None:
                self.trainer._metrics["train"][f"eval_calibration/{key}"].append(float(value))

    def evaluate(self) -> dict[str, Any]:
        from trl.models.utils import unwrap_model_for_generation

        trainer = self.trainer
        acc = trainer.accelerator
        world, rank = acc.num_processes, acc.process_index
        per_rank = math.ceil(len(self.questions) / world)
        indices = list(range(rank, len(self.questions), world))
        indices += indices[-1:] * (per_rank - len(indices)) if indices else [0] * per_rank
        mine = [self.questions[i] for i in indices]
        tokenizer = trainer.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        with unwrap_model_for_generation(trainer.model_wrapped, acc) as unwrapped:
            result = evaluate_mcq(
                trainer.model,
                tokenizer,
                mine,
                generate_model=unwrapped,
                sync_num_batches=trainer._sync_num_batches if hasattr(trainer, "_sync_num_batches") else None,
                **self.eval_kwargs,
            )
        from accelerate.utils import gather_object

        tagged = gather_object([(i, r) for i, r in zip(indices, result.records)])
        by_index = dict(tagged)
        records = [by_index[i] for i in sorted(by_index)]
        return summarise(records, self.eval_kwargs.get("n_bins", 15))


@dataclass
class EvalArguments:
    """Arguments of ``hytuning-eval``."""

    model_name_or_path: str = field(metadata={"help": "Model folder or hub name."})
    dataset_name: str = field(
        metadata={"help": "MedQA-style jsonl path, or a hub dataset with question / options / answer_idx."}
    )
    output_dir: str = field(
        default="outputs/eval", metadata={"help": "Where calibration.json and reliability.png go."}
    )
    dataset_split: str = field(default="test", metadata={"help": "Split of a hub dataset."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first this many questions."})
    batch_size: int = field(default=8, metadata={"help": "Questions per generation batch."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens of reasoning per question."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside the model folder, if any."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    device: str = field(default="cpu", metadata={"help": "Device to run on, e.g. cpu or cuda."})
    answer_trigger: str = field(default=DEFAULT_TRIGGER, metadata={"help": "Text that asks for the answer."})
    answer_pattern: str = field(default=DEFAULT_PATTERN, metadata={"help": "Regex of the final-answer statement."})
    n_bins: int = field(default=15, metadata={"help": "Bins of the ECE and the reliability diagram."})
    use_chat_template: bool = field(default=True, metadata={"help": "Render prompts with the chat template."})


def run_evaluation(args: EvalArguments, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Load (unless given), evaluate, write the report and print the table; returns the written paths and metrics."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, **load_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(
            args.model_name_or_path, dtype=getattr(torch, args.dtype), **load_kwargs
        ).to(args.device)
    questions = load_mcq(args.dataset_name, args.dataset_split, args.max_samples)
    result = evaluate_mcq(
        model,
        tokenizer,
        questions,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        answer_trigger=args.answer_trigger,
        answer_pattern=args.answer_pattern,
        n_bins=args.n_bins,
        use_chat_template=args.use_chat_template,
    )
    paths = write_report(
        result, args.output_dir, title=os.path.basename(os.path.normpath(args.model_name_or_path)), extra=asdict(args)
    )
    print(format_table(result.metrics, f"Confidence faithfulness of {args.model_name_or_path} on {args.dataset_name}"))
    print(f"Wrote {paths['calibration']} and {paths['reliability']}")
    return {"paths": paths, "metrics": result.metrics}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``hytuning-eval``."""
    from trl import TrlParser

    parser = TrlParser(EvalArguments)
    (args,) = parser.parse_args_and_config(args=argv if argv is not None else sys.argv[1:])
    return run_evaluation(args)


if __name__ == "__main__":  # pragma: no cover
    main()
