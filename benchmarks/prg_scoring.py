"""Cost of the PRG scoring pass: one packed forward against K+1 naive forwards and against one plain forward.

    python benchmarks/prg_scoring.py                    # B=8, K=8 steps of 24 tokens, 4-layer hidden-256 Llama
    python benchmarks/prg_scoring.py --vocab 49152 --repeats 7
    python benchmarks/prg_scoring.py --memory_sweep     # peak memory against vocabulary size (32k ... 256k)

Times are medians over ``--repeats`` runs taken in one process, the three methods alternating, after a warm-up. The
token-ratio floor is what packed/naive would be if time were proportional to the tokens fed to the model: the packed
rows' tokens over the naive rows' tokens. Peak memory is how far the process's RSS rises above its level before one
call (sampled by a thread, Linux), each method measured in a fresh child process after a warm-up call.

``--memory_sweep``: for each vocabulary size, a fresh process builds a 1-layer, hidden-64 Llama and scores 4
completions of 384 tokens (self-certainty and entropy on every token, a trajectory of 8 steps) with no warm-up, then
a plain forward over the same sequences; both peaks are reported against the full fp32 logits of the completions
(4 x 384 x V x 4 bytes). The goal is a scoring pass at most 0.25x those logits at V = 152,064.
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
from hytuning_trl.packing import build_naive_rows, build_packed_row

SWEEP_VOCABS = (32000, 50257, 152064, 256000)


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


def token_floor(prompts, completions, spans, trigger, answers) -> float:
    """Tokens of the packed rows over tokens of the naive rows (one plain row per k, plus one for the statistics)."""
    packed = naive = 0
    for p, c, sp, a in zip(prompts, completions, spans, answers):
        cuts = [len(p) + sp[0][0]] + [len(p) + e for _, e in sp]
        packed += len(build_packed_row(p, c, cuts, trigger, a, None, True).input_ids)
        naive += sum(len(r.input_ids) for r in build_naive_rows(p, c, cuts, trigger, a, None, True))
    return packed / naive


def sweep_child(vocab: int) -> None:
    args = argparse.Namespace(
        batch=4, steps=8, step_len=46, prompt_len=16, layers=1, hidden=64, vocab=vocab
    )  # 8 steps of ~46 tokens + a 6-token tail: ~374-384 tokens per completion
    model, prompts, completions, spans, trigger, answers = build(args)
    scoring = peak_rss_growth_mib(lambda: run("packed", model, prompts, completions, spans, trigger, answers))
    plain = peak_rss_growth_mib(lambda: run("plain", model, prompts, completions, spans, trigger, answers))
    logits_mib = sum(len(c) for c in completions) * vocab * 4 / 2**20
    print(json.dumps({"vocab": vocab, "scoring_mib": scoring, "plain_mib": plain, "logits_mib": logits_mib}))


def memory_sweep(threads: int) -> None:
    print("peak RSS growth above the loaded model, fresh process per vocabulary, no warm-up; 1-layer hidden-64 Llama,")
    print("4 completions of ~384 tokens; 'full logits' = fp32 logits of the completions")
    print(f"{'vocab':>8}{'full logits (MiB)':>20}{'scoring pass (MiB)':>20}{'ratio':>8}{'plain forward (MiB)':>22}")
    for vocab in SWEEP_VOCABS:
        cmd = [sys.executable, __file__, "--threads", str(threads), "--sweep_child", str(vocab)]
        out = json.loads(subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        ratio = out["scoring_mib"] / out["logits_mib"]
        print(f"{vocab:>8}{out['logits_mib']:>20.1f}{out['scoring_mib']:>20.1f}{ratio:>8.3f}{out['plain_mib']:>22.1f}")


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
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory_sweep", action="store_true", help="peak memory against vocabulary size")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--sweep_child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args)
    if args.sweep_child:
        return sweep_child(args.sweep_child)
    if args.memory_sweep:
        return memory_sweep(args.threads)

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
    floor = token_floor(*data)
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
    print(f"token-ratio floor   = {floor:.3f}   (packed tokens / naive tokens)")
    print(f"packed / naive      = {med['packed'] / med['naive']:.3f}   (goal <= 0.24)")
    print(f"packed / plain      = {med['packed'] / med['plain']:.3f}   (goal <= 1.35)")
    print(f"memory packed/plain = {memory['packed'] / max(memory['plain'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
