"""A multiple-choice task a small model can learn on a CPU, whose reasoning has real steps: 2-digit addition.

Every question "What is a + b?" has 4 options: the sum S and three distractors, each ruled out by a specific step of
the gold trace, so that the gold answer's probability can rise step by step (PRG has something to measure):

* a wrong ones digit (S + 1 or S - 1), ruled out by the ones step;
* a tens slip in each direction (S + 10, and S - 10, the no-carry slip when the ones carry), ruled out by the tens
  step.

Gold traces (the ``reasoning`` field; the loaders append "The answer is X."), style ``check`` (the default since
0.3.0): compute first, then look the value up among the options in their order, as a step of its own::

    Ones: 7+8=15, write 5, carry 1.

    Tens: 4+3+1=8, so the sum is 85.

    Check: A 95 no, B 85 yes, C 84 no, D 75 no.

Measured (issue 23): with traces that rule options out by letter inside the steps (style ``rule_out``, 0.2.0, kept
to reproduce its results: "Ones: 7+8=15, carry 1, not C (84).", "Tens: 4+3+1=8, not A (95) or D (75).", "So B
(85).") SmolLM2-135M copied the format and mapped values to letters wrongly for 80 steps; with the lookup as a step
in the options' order, RD alone learned the task. Digits are one token each in SmolLM2's tokenizer; a ``check``
trace with its answer is at most ~70 tokens.

Files (MedQA-style jsonl: ``question``, ``options``, ``answer_idx``; traces add ``reasoning``), deterministic from the
seed, with no question in two files: ``traces.jsonl`` (64: 48 for RD and 16 held out as the anchor by the trainer),
``unlabeled.jsonl`` (training questions), ``eval.jsonl`` (400), ``probe.jsonl`` (64 of the eval questions, for
learning curves). The example, ``hytuning-eval`` and ``hytuning-prg`` read them unchanged.

    python benchmarks/synthetic_task.py --output_dir data/addition --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re

LETTERS = "ABCD"


STYLES = ("check", "rule_out")


def make_question(a: int, b: int, rng: random.Random, style: str = "check") -> dict:
    """One question with shuffled options and its gold trace (``style``: ``check`` or ``rule_out``)."""
    if style not in STYLES:
        raise ValueError(f"Unknown trace style {style!r}; choose from {STYLES}.")
    s = a + b
    ones_wrong = s + rng.choice([-1, 1])
    values = {"sum": s, "ones": ones_wrong, "tens_up": s + 10, "tens_down": s - 10}
    order = list(values)
    rng.shuffle(order)
    letter_of = {kind: LETTERS[i] for i, kind in enumerate(order)}
    options = {LETTERS[i]: str(values[kind]) for i, kind in enumerate(order)}
    a1, a2, b1, b2 = a % 10, a // 10, b % 10, b // 10
    carry = (a1 + b1) // 10
    question = {"question": f"What is {a} + {b}?", "options": options, "answer_idx": letter_of["sum"]}
    if style == "check":
        steps = [
            f"Ones: {a1}+{b1}={a1 + b1}, write {s % 10}" + (", carry 1." if carry else "."),
            f"Tens: {a2}+{b2}" + ("+1" if carry else "") + f"={a2 + b2 + carry}, so the sum is {s}.",
            "Check: "
            + ", ".join(
                f"{letter} {options[letter]} {'yes' if letter == letter_of['sum'] else 'no'}" for letter in LETTERS
            )
            + ".",
        ]
        return {**question, "reasoning": "\n\n".join(steps)}
    up, down = sorted(["tens_up", "tens_down"], key=lambda kind: letter_of[kind])
    ones_step = (
        f"Ones: {a1}+{b1}={a1 + b1}, "
        + ("carry 1" if carry else "no carry")
        + f", not {letter_of['ones']} ({values['ones']})."
    )
    tens_step = (
        f"Tens: {a2}+{b2}" + ("+1" if carry else "") + f"={a2 + b2 + carry},"
        f" not {letter_of[up]} ({values[up]}) or {letter_of[down]} ({values[down]})."
    )
    conclusion = f"So {letter_of['sum']} ({s})."
    return {**question, "reasoning": "\n\n".join([ones_step, tens_step, conclusion])}


_CHECKED = re.compile(r"\b([ABCD]) -?\d+ yes\b")


def checked_letters(completion: str) -> list[str]:
    """The letters a completion's ``check`` step marks "yes" ("Check: A 95 no, B 85 yes, ..." -> ``["B"]``), in
    order; empty when it has no such step. Its stated answer either follows its own check (one of these) or
    contradicts it: the two kinds of error that the confidence estimators see differently (docs/results.md, 0.4.0)."""
    return _CHECKED.findall(completion)


def generate(
    seed: int, n_traces: int = 64, n_unlabeled: int = 256, n_eval: int = 400, style: str = "check"
) -> dict[str, list[dict]]:
    """The splits, with no (a, b) pair in two of them. The questions depend on the seed only, not on ``style``."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(10, 90) for b in range(10, 90) if a + b < 100 and (a + b) - 10 >= 10]
    rng.shuffle(pairs)
    needed = n_traces + n_unlabeled + n_eval
    if needed > len(pairs):
        raise ValueError(f"{needed} questions asked for, {len(pairs)} distinct ones exist.")
    questions = [make_question(a, b, rng, style) for a, b in pairs[:needed]]
    traces = questions[:n_traces]
    unlabeled = [{k: q[k] for k in ("question", "options", "answer_idx")} for q in questions[n_traces:-n_eval]]
    eval_set = [{k: q[k] for k in ("question", "options", "answer_idx")} for q in questions[-n_eval:]]
    return {"traces": traces, "unlabeled": unlabeled, "eval": eval_set, "probe": eval_set[:64]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_traces", type=int, default=64)
    p.add_argument("--n_unlabeled", type=int, default=256)
    p.add_argument("--n_eval", type=int, default=400)
    p.add_argument("--style", default="check", choices=STYLES, help="trace style (rule_out: 0.2.0's traces)")
    args = p.parse_args()
    splits = generate(args.seed, args.n_traces, args.n_unlabeled, args.n_eval, args.style)
    os.makedirs(args.output_dir, exist_ok=True)
    for name, rows in splits.items():
        with open(os.path.join(args.output_dir, f"{name}.jsonl"), "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"{name}.jsonl: {len(rows)} questions")


if __name__ == "__main__":
    main()
