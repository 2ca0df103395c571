"""Cost of the PRG scoring pass: one packed forward against K+1 naive forwards and against one plain forward.

    python benchmarks/prg_scoring.py                    # B=8, K=8 steps of 24 tokens, 4-layer hidden-256 Llama
    python benchmarks/prg_scoring.py --vocab 49152 --repeats 7

Times are medians over ``--repeats`` runs taken in one process, the three methods alternating, after a warm-up.
Peak memory is how far the process's RSS rises above its level before one call (sampled by a thread, Linux), each
method measured in a fresh child process after a warm-up call.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time

import torch
from _memory import peak_rss_growth_mib  # benchmarks/_memory.py
from transformers import LlamaConfig, LlamaForCausalLM

from hytuning_trl import score_rollouts


def build(args):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 4,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=4096,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).eval()
    rng = random.Random(0)
    prompts, completions, spans = [], [], []
    for _ in range(args.batch):
        prompts.append([rng.randrange(args.vocab) for _ in range(args.prompt_len)])
        completion, sample_spans = [], []
        for _ in range(args.steps):
            length = rng.randint(args.step_len - 4, args.step_len + 4)
            sample_spans.append((len(completion), len(completion) + length))
            completion += [rng.randrange(args.vocab) for _ in range(length)]
        completion += [rng.randrange(args.vocab) for _ in range(6)]  # the answer statement (tail)
        completions.append(completion)
        spans.append(sample_spans)
    trigger = [rng.randrange(args.vocab) for _ in range(4)]
    answers = [[rng.randrange(args.vocab)] for _ in range(args.batch)]
    return model, prompts, completions, spans, trigger, answers


def run(method, model, prompts, completions, spans, trigger, answers):
    if method == "plain":
        width = max(len(p) + len(c) for p, c in zip(prompts, completions))
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, c) in enumerate(zip(prompts, completions)):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            mask[i, : len(p) + len(c)] = 1
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits  # full (B, T, V) logits
    return score_rollouts(
        model, prompts, completions, step_spans=spans, trigger_ids=trigger, answer_ids=answers, method=method
    )


def child(method, args):
    model, *data = build(args)
    run(method, model, *data)  # warm-up: allocator pools and kernels are in place before measuring
    print(json.dumps({"peak_mib": peak_rss_growth_mib(lambda: run(method, model, *data))}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--step_len", type=int, default=24)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args)

    model, *data = build(args)
    methods = ["packed", "naive", "plain"]
    packed, naive = run("packed", model, *data), run("naive", model, *data)
    worst = max(abs(a - b) for x, y in zip(packed, naive) for a, b in zip(x.answer_logprobs, y.answer_logprobs))
    times = {m: [] for m in methods}
    for m in methods:  # warm-up
        run(m, model, *data)
    for _ in range(args.repeats):
        for m in methods:
            start = time.perf_counter()
            run(m, model, *data)
            times[m].append(time.perf_counter() - start)
    med = {m: statistics.median(t) for m, t in times.items()}
    argv = [a for a in sys.argv[1:]]
    memory = {}
    for m in methods:
        out = subprocess.run([sys.executable, __file__, *argv, "--child", m], capture_output=True, text=True)
        memory[m] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]

    print(
        f"B={args.batch}, K={args.steps} steps of ~{args.step_len} tokens, prompt {args.prompt_len}, "
        f"Llama {args.layers} layers x {args.hidden}, vocab {args.vocab}, {args.threads} threads, "
        f"median of {args.repeats}"
    )
    print(f"max |packed - naive| over all lp_k: {worst:.2e}")
    print(f"{'method':<34}{'time (s)':>10}{'peak RSS growth (MiB)':>24}")
    names = {
        "packed": "packed single pass (PRG + stats)",
        "naive": "naive K+1 passes (+1 for stats)",
        "plain": "one plain forward, full logits",
    }
    for m in methods:
        print(f"{names[m]:<34}{med[m]:>10.3f}{memory[m]:>24.1f}")
    print(f"packed / naive      = {med['packed'] / med['naive']:.3f}   (goal <= 0.35)")
    print(f"packed / plain      = {med['packed'] / med['plain']:.3f}   (goal <= 2.0)")
    print(f"memory packed/plain = {memory['packed'] / max(memory['plain'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
