"""Multiple-choice data: MedQA-style questions, their normalised form, and the prompt used for training and evaluation.

Input: MedQA's jsonl (``question``, ``options`` keyed A-D or A-E, ``answer_idx``), a list of options, an ``answer``
given as the option's text, a ``datasets.Dataset`` or a hub dataset with the same fields. Every question becomes
``{"question", "options": {letter: text}, "answer_idx": letter}``; a missing field or a gold answer that is not one
of the options is a ``ValueError`` naming the question and the fix.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .constants import DEFAULT_MCQ_INSTRUCTION

__all__ = ["MCQ_INSTRUCTION", "format_mcq_prompt", "load_mcq", "read_jsonl", "render_prompts", "render_text"]

#: The default instruction (config ``mcq_instruction``, ``--mcq_instruction`` of the commands and the example).
MCQ_INSTRUCTION = DEFAULT_MCQ_INSTRUCTION


def format_mcq_prompt(question: str, options: dict[str, str], instruction: str | None = None) -> str:
    """The prompt used for multiple-choice training and evaluation alike: the question, the lettered options, then
    ``instruction`` (default :data:`MCQ_INSTRUCTION`)."""
    lines = [f"Question: {question.strip()}", "Options:"]
    lines += [f"{letter}. {text}" for letter, text in sorted(options.items())]
    lines.append(MCQ_INSTRUCTION if instruction is None else instruction)
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


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a jsonl file (blank lines skipped). A line that is not JSON is a ``ValueError`` naming the file and
    its line number as an editor shows it."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line.rstrip("\r\n")))  # without the newline, the column is the line's
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: not valid JSON ({exc.msg}, column {exc.colno}).") from None
    return rows


def check_max_samples(max_samples: int | None) -> None:
    """``max_samples`` is a positive count or ``None`` (all): 0 is refused, not read as 'all' or as 'none'."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"--max_samples must be at least 1 (or left out for all), got {max_samples}.")


def _looks_like_path(source: str) -> bool:
    return source.endswith((".json", ".jsonl")) or source.startswith((".", "/", "~")) or source.count("/") > 1


def load_mcq(source: Any, split: str = "test", max_samples: int | None = None) -> list[dict]:
    """Questions as ``{"question", "options", "answer_idx"}`` from a jsonl path, a ``datasets.Dataset``, a list of
    dicts, or a hub dataset name (``split`` applies)."""
    check_max_samples(max_samples)
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source) and _looks_like_path(str(source)):
        raise FileNotFoundError(f"No such question file: {source}")
    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        if str(source).endswith(".json"):
            with open(source) as f:
                rows = json.load(f)
        else:
            rows = read_jsonl(source)
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


def render_prompts(
    tokenizer: Any, questions: list[dict], use_chat_template: bool | None, instruction: str | None = None
) -> list[list[int]]:
    """Token ids of each question's prompt (:func:`format_mcq_prompt` with ``instruction``), through the chat
    template when the tokenizer has one (unless ``use_chat_template=False``)."""
    chat = getattr(tokenizer, "chat_template", None) is not None if use_chat_template is None else use_chat_template
    return [
        render_text(tokenizer, format_mcq_prompt(q["question"], q["options"], instruction), chat) for q in questions
    ]


def render_text(tokenizer: Any, text: str, chat: bool) -> list[int]:
    """Token ids of one user prompt: as a user message through the chat template (``chat``), else plain text."""
    if chat:
        return list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
    return list(tokenizer(text)["input_ids"])
