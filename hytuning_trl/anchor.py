"""The held-out anchor of the ``prg`` rule: its questions, how they are sharded, and what one anchor round measures.

An anchor question is a prompt with a gold answer (an option letter, or a text in raw mode), optionally with an
expert trace. Two signals (config ``anchor_signal``):

* ``"own"`` (v3, default): the policy writes its own reasoning (greedy) for the question; the scoring pass then
  scores the GOLD answer along the policy's own steps, and ``G`` is its normalised gain from ``p_0`` (right after the
  prompt) to ``p_K`` (after the policy's steps and the trigger)::

      G = (p_K - p_0) / (1 - p_0)  if p_K >= p_0,   else  (p_K - p_0) / p_0          (G = 0 when K = 0)

  Per question an anchor round also reads the policy's answer under the answer contract (a forced choice, the top
  option after the trigger, when it states none), its correctness, and the Brier term ``(c - correct)^2`` of ``c``,
  the option-renormalised probability of the chosen answer after the reasoning.
* ``"trace"`` (v2): ``G`` along the expert trace's steps, teacher-forced. It measures whether the model trusts a
  trace's conclusion, not whether it can reach it: a model that learned the format scores ``G ~ 1`` on any trace.
  Under ``"own"`` it is still logged as a diagnostic (``hytuning/anchor_trace_gain``) where the anchor has traces.

Questions are sharded across processes and each shard is padded to the same length, so every process runs the same
number of generation and forward calls (ZeRO-3 would hang otherwise); padded entries are left out of every sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .answers import ParsedCompletion, _normalise_text, option_letters
from .distill import DistillExample

__all__ = [
    "AnchorQuestion",
    "AnchorSums",
    "anchor_fingerprint",
    "anchor_questions_from_rows",
    "check_anchor_dataset",
    "gold_view",
    "has_traces",
]


@dataclass
class AnchorQuestion:
    """One held-out anchor question.

    Attributes:
        prompt_ids: the prompt's token ids, rendered as the rollouts' prompts are.
        gold: the gold answer: an option letter (options mode) or the answer's text (raw mode).
        options: the row's ``options`` value (dict keyed by letter, or list), or ``None``.
        trace: the expert trace, when the anchor row has one (diagnostic of ``"own"``, the signal of ``"trace"``).
    """

    prompt_ids: list[int]
    gold: str
    options: Any = None
    trace: DistillExample | None = None


def _columns(dataset: Any) -> set[str]:
    return set(dataset.column_names if hasattr(dataset, "column_names") else dataset[0])


def has_traces(dataset: Any) -> bool:
    """Whether ``anchor_dataset`` holds traces (a ``completion`` column) rather than questions only."""
    return "completion" in _columns(dataset)


def check_anchor_dataset(dataset: Any, signal: str) -> None:
    """Fail before training, naming the column and the fix. Under ``"trace"`` the rows must be prompt-completion
    traces; under ``"own"`` any row with a gold answer does: a trace, a MedQA-style row (``question``, ``options``,
    ``answer_idx`` or ``answer``) or ``prompt`` with ``answer``."""
    if dataset is None:
        return
    if not hasattr(dataset, "column_names") and not isinstance(dataset, list):
        raise ValueError("`anchor_dataset` must be a datasets.Dataset (or a list of dicts).")
    if len(dataset) == 0:
        raise ValueError("`anchor_dataset` is empty: the prg rule needs at least one anchor question.")
    columns = _columns(dataset)
    trace = {"prompt", "completion"} <= columns
    if signal == "trace" and not trace:
        raise ValueError(
            f"anchor_signal='trace' scores the gold answer along expert traces, but `anchor_dataset` has no "
            f"'prompt' and 'completion' columns (it has {sorted(columns)}). Give traces, or use anchor_signal='own', "
            "which needs only questions with a gold answer."
        )
    mcq = {"question", "options"} <= columns and bool({"answer_idx", "answer"} & columns)
    prompt_answer = {"prompt", "answer"} <= columns
    if not (trace or mcq or prompt_answer):
        raise ValueError(
            f"`anchor_dataset` rows need a gold answer (columns: {sorted(columns)}): give 'question', 'options' and "
            "'answer_idx' (MedQA style), 'prompt' and 'answer' (the gold option letter or text), or prompt-completion "
            "traces whose completion states the answer."
        )


def _tokenize_prompt(prompt: Any, tokenizer: Any, chat_template_kwargs: dict | None) -> list[int]:
    """A prompt's ids the way GRPO tokenizes prompts (chat template for conversational prompts)."""
    from trl.data_utils import apply_chat_template, is_conversational

    if is_conversational({"prompt": prompt}):
        text = apply_chat_template({"prompt": prompt}, tokenizer, **(chat_template_kwargs or {}))["prompt"]
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def anchor_questions_from_rows(
    rows: Any,
    tokenizer: Any,
    *,
    instruction: str | None = None,
    chat_template_kwargs: dict | None = None,
    answer_options: list[str] | None = None,
) -> list[AnchorQuestion]:
    """Anchor questions from rows without traces: MedQA-style (``question``, ``options``, ``answer_idx``/``answer``;
    the prompt is :func:`~hytuning_trl.mcq.format_mcq_prompt` with ``instruction``, as a user message when the
    tokenizer has a chat template) or ``prompt`` + ``answer`` (+ optional ``options``)."""
    from .mcq import format_mcq_prompt, load_mcq

    out = []
    chat = getattr(tokenizer, "chat_template", None) is not None
    for i, row in enumerate(rows):
        row = dict(row)
        if "question" in row and "options" in row:
            q = load_mcq([row])[0]
            text = format_mcq_prompt(q["question"], q["options"], instruction)
            prompt = [{"role": "user", "content": text}] if chat else text
            out.append(
                AnchorQuestion(
                    _tokenize_prompt(prompt, tokenizer, chat_template_kwargs), q["answer_idx"], q["options"]
                )
            )
            continue
        gold, options = row.get("answer"), row.get("options")
        if gold is None or "prompt" not in row:
            raise ValueError(f"Anchor row {i} has no gold answer (fields: {sorted(row)}).")
        gold = str(gold).strip()
        letters = option_letters(options, answer_options)
        if letters is not None and gold not in letters:
            raise ValueError(
                f"Anchor row {i}: gold answer {gold!r} is not one of its option letters {letters}; give the letter."
            )
        out.append(AnchorQuestion(_tokenize_prompt(row["prompt"], tokenizer, chat_template_kwargs), gold, options))
    return out


def anchor_fingerprint(questions: list[AnchorQuestion]) -> str:
    """A short hash of the anchor's content (prompt ids, gold answers, trace completion ids), so that a resume with
    another anchor of the same size is refused instead of mixing the two in one average."""
    import hashlib
    import json

    content = [[q.prompt_ids, q.gold, q.trace.completion_ids if q.trace else None] for q in questions]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]


def gold_view(parsed: ParsedCompletion, question: AnchorQuestion, tokenizer: Any) -> ParsedCompletion:
    """The policy's parsed completion, with the GOLD answer as what the scoring pass scores along its steps."""
    if parsed.letters is not None:
        return replace(
            parsed, answer=question.gold, answer_ids=[parsed.option_ids[parsed.letters.index(question.gold)]]
        )
    return replace(
        parsed, answer=question.gold, answer_ids=tokenizer(" " + question.gold, add_special_tokens=False)["input_ids"]
    )


#: Order of the values :class:`AnchorSums` reduces across processes.
SUM_FIELDS = ("gain", "p0", "pk", "prg", "count", "nonfinite", "correct", "stated", "brier", "brier_n")


@dataclass
class AnchorSums:
    """Per-process sums of one own-reasoning anchor round (reduced across processes by the trainer)."""

    gain: float = 0.0
    p0: float = 0.0
    pk: float = 0.0
    prg: float = 0.0
    count: float = 0.0
    nonfinite: float = 0.0
    correct: float = 0.0
    stated: float = 0.0
    brier: float = 0.0
    brier_n: float = 0.0

    def add(self, record: Any, own: ParsedCompletion, question: AnchorQuestion) -> None:
        """Fold one question: ``record`` is the gold answer scored along the policy's own steps, ``own`` the policy's
        reading of its completion."""
        values = [record.gain, *(record.endpoint_probabilities or (None, None)), record.prg]
        if not all(v is not None and math.isfinite(v) for v in values):
            self.nonfinite += 1
            return
        self.gain, self.p0, self.pk, self.prg = (
            a + b for a, b in zip((self.gain, self.p0, self.pk, self.prg), values)
        )
        self.count += 1
        self.stated += own.answer is not None
        if own.letters is None:  # raw mode: correct when the stated text is the gold text
            self.correct += own.answer is not None and _normalise_text(own.answer) == _normalise_text(question.gold)
            return
        final = record.option_logprobs[-1]
        index = (
            own.letters.index(own.answer) if own.answer is not None else max(range(len(final)), key=final.__getitem__)
        )
        correct = own.letters[index] == question.gold
        self.correct += correct
        self.brier += (math.exp(final[index]) - correct) ** 2
        self.brier_n += 1

    def as_list(self) -> list[float]:
        return [getattr(self, name) for name in SUM_FIELDS]

    @classmethod
    def from_list(cls, values: list[float]) -> AnchorSums:
        return cls(*values)
