# Copyright 2026 The hytuning-trl developers. Licensed under the Apache License, Version 2.0.
"""Turn MedQA reasoning traces in chat format (dmis-lab/meerkat-instructions, config MedQA-CoT) into RD traces.

Source layout (as served by the Hub, cc-by-nc-4.0, ~9.3k rows of GPT-4 chain-of-thought over MedQA *train*
questions): one row per trace, ``{"id": str, "messages": [{"role": "system", ...}, {"role": "user", "content":
question with options "(A) ... (B) ..."}, {"role": "assistant", "content": reasoning ending in "the answer is (C)
..."}]}``. Output: MedQA-style jsonl rows ``{"question", "options", "answer_idx", "reasoning"}`` with the reasoning cut
into blank-line steps (its own paragraphs, else its sentences, at most ``--max_steps``) and the final-answer sentence
removed, which ``examples/train_medqa.py --distill_file`` and ``hytuning-prg`` read unchanged. Rows whose answer the
answer contract cannot read, or whose options cannot be parsed, are skipped and counted.

    python examples/convert_meerkat_medqa_cot.py --output data/medqa_cot_traces.jsonl
    python examples/convert_meerkat_medqa_cot.py --input medqa-cot.jsonl --output traces.jsonl   # a local copy

The MedQA-CoT questions come from MedQA's train split; decontaminate against the test split you report on.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable

from hytuning_trl import read_answer
from hytuning_trl.constants import DEFAULT_ANSWER_PATTERN
from hytuning_trl.mcq import read_jsonl

OPTION = re.compile(r"\(([A-J])\)\s*")
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def split_question(text: str) -> tuple[str, dict[str, str]] | None:
    """``"question (A) x (B) y"`` -> ``("question", {"A": "x", "B": "y"})``; None without at least two options."""
    marks = list(OPTION.finditer(text))
    letters = [m.group(1) for m in marks]
    if len(marks) < 2 or letters != [chr(ord("A") + i) for i in range(len(marks))]:
        return None
    options = {}
    for m, nxt in zip(marks, marks[1:] + [None]):
        options[m.group(1)] = text[m.end() : nxt.start() if nxt else len(text)].strip()
    question = text[: marks[0].start()].strip()
    return (question, options) if question and all(options.values()) else None


def reasoning_steps(text: str, max_steps: int = 8) -> list[str]:
    """The reasoning before the final-answer statement, as steps: its paragraphs, else its sentences, merged evenly
    into at most ``max_steps``."""
    statement = list(re.finditer(DEFAULT_ANSWER_PATTERN, text))
    body = text[: statement[-1].start()] if statement else text
    body = body.rstrip()
    body = re.sub(r"(?:Therefore|Thus|So|Hence),?\s*$", "", body).rstrip()  # a dangling lead-in to the statement
    parts = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
    if len(parts) < 2:
        parts = [s.strip() for s in SENTENCE.split(" ".join(body.split())) if s.strip()]
    if len(parts) > max_steps:
        size = -(-len(parts) // max_steps)
        parts = [" ".join(parts[i : i + size]) for i in range(0, len(parts), size)]
    return parts


class Unreadable(Exception):
    """A row the converter skips, with the reason."""


def convert_row(row: dict, max_steps: int = 8) -> dict:
    """One chat-format row -> one MedQA-style trace; :class:`Unreadable` (with the reason) when it cannot be read."""
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise ValueError(
            f"Row {row.get('id', '?')!r} has no 'messages' list (fields: {sorted(row)}); expected the "
            "dmis-lab/meerkat-instructions layout {'id', 'messages': [system, user, assistant]}."
        )
    user = next((m["content"] for m in messages if m.get("role") == "user"), None)
    assistant = next((m["content"] for m in reversed(messages) if m.get("role") == "assistant"), None)
    if not user or not assistant:
        raise Unreadable(f"no {'user' if not user else 'assistant'} message")
    parsed = split_question(user)
    if parsed is None:
        raise Unreadable("no options '(A) ... (B) ...' in the user message")
    question, options = parsed
    answer, _ = read_answer(assistant, DEFAULT_ANSWER_PATTERN, sorted(options))
    if answer is None:
        raise Unreadable(f"the answer states no option of {sorted(options)} ('The answer is B.' expected)")
    steps = reasoning_steps(assistant, max_steps)
    if not steps:
        raise Unreadable("no reasoning before the answer statement")
    return {"question": question, "options": options, "answer_idx": answer, "reasoning": "\n\n".join(steps)}


def convert(rows: Iterable[dict], max_steps: int = 8) -> tuple[list[dict], list[str]]:
    """Converted traces, and one line per skipped row naming its id (or position) and why."""
    out, skipped = [], []
    for i, row in enumerate(rows):
        row = dict(row)
        try:
            out.append(convert_row(row, max_steps))
        except Unreadable as why:
            skipped.append(f"row {row.get('id', f'#{i}')!r}: {why}")
    return out, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="Where the MedQA-style trace jsonl goes.")
    p.add_argument("--input", default=None, help="A local jsonl in the meerkat layout (default: the hub dataset).")
    p.add_argument("--dataset", default="dmis-lab/meerkat-instructions", help="Hub dataset (with --config).")
    p.add_argument("--config", default="MedQA-CoT", help="Config of the hub dataset.")
    p.add_argument("--max_steps", type=int, default=8, help="Most reasoning steps per trace.")
    p.add_argument("--max_samples", type=int, default=None, help="Convert at most this many rows.")
    args = p.parse_args(argv)
    try:
        if args.input:
            rows = read_jsonl(args.input)
        else:
            from datasets import load_dataset

            rows = load_dataset(args.dataset, args.config, split="train")
        if args.max_samples:
            rows = list(rows)[: args.max_samples]
        traces, skipped = convert(rows, args.max_steps)
    except (OSError, ValueError) as exc:
        print(f"convert_meerkat_medqa_cot: error: {exc}", file=sys.stderr)
        return 2
    with open(args.output, "w") as f:
        for t in traces:
            f.write(json.dumps(t) + "\n")
    print(f"Wrote {len(traces)} traces to {args.output}; {len(skipped)} rows skipped" + (":" if skipped else "."))
    for line in skipped[:20]:
        print(f"  {line}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
