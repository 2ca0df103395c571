"""What each confidence estimator costs per question, relative to the greedy evaluation of 0.3.0.

    python benchmarks/estimator_cost.py                       # tiny Llama trained on scripted traces
    python benchmarks/estimator_cost.py --model ~/.cache/hytuning-trl/SmolLM2-135M-Instruct --questions 16

Times, on the same questions and model, in one process, alternating over ``--repeats``:

* ``greedy_0.3.0``: greedy generation plus the scoring pass without token statistics (what 0.3.0 ran: the
  ``after_reasoning`` and ``prg_gated`` estimators);
* ``single_pass``: ``evaluate_mcq(num_samples=0)``: greedy generation plus the scoring pass with the reasoning's token
  log-probabilities (every single-pass estimator);
* ``k_samples``: ``evaluate_mcq(num_samples=k)``: the same plus ``k`` sampled completions per question and their
  scoring pass (``marginal``, ``consistency``, maj@k).

Seconds per question (median over repeats) and the ratio to ``greedy_0.3.0``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hytuning_trl import evaluate_mcq, load_mcq
from hytuning_trl._testing import scripted_examples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: a tiny Llama trained on scripted traces)")
    p.add_argument("--questions", type=int, default=24)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--num_samples", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model_path = args.model
    if model_path is None:
        from hytuning_trl._testing import save_trained_tiny_model

        model_path = save_trained_tiny_model(os.path.join(tempfile.mkdtemp(), "tiny"))
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    rows = [{k: e[k] for k in ("question", "options", "answer_idx")} for e in scripted_examples(args.questions, 5)]
    questions = load_mcq(rows)
    common = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=False)

    import hytuning_trl.evaluation as evaluation

    original = evaluation.score_rollouts

    def without_stats(*a, **kw):  # 0.3.0's evaluation: no token statistics in the scoring pass
        kw["compute_stats"] = False
        return original(*a, **kw)

    def run(setting: str) -> float:
        evaluation.score_rollouts = without_stats if setting == "greedy_0.3.0" else original
        k = args.num_samples if setting == "k_samples" else 0
        start = time.perf_counter()
        try:
            evaluate_mcq(model, tokenizer, questions, num_samples=k, **common)
        finally:
            evaluation.score_rollouts = original
        return (time.perf_counter() - start) / len(questions)

    settings = ["greedy_0.3.0", "single_pass", "k_samples"]
    run("single_pass")  # warm-up
    times = {s: [] for s in settings}
    for _ in range(args.repeats):
        for s in settings:
            times[s].append(run(s))
    base = statistics.median(times["greedy_0.3.0"])
    print(
        f"model {model_path}; {len(questions)} questions, <= {args.max_new_tokens} new tokens, batch "
        f"{args.batch_size}, k = {args.num_samples}, {args.repeats} repeats, {args.threads} threads"
    )
    results = {}
    for s in settings:
        med = statistics.median(times[s])
        results[s] = {"s_per_question": med, "ratio": med / base, "all": times[s]}
        print(f"{s:<16}{med:>10.4f} s/question{med / base:>8.2f}x")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
