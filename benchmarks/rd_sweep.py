"""RD alone, fast: which traces, learning rate and schedule let SmolLM2 learn the synthetic task?

The gate of issue 23 (``compare_baselines.py --preset gate``) runs RD through the whole trainer: rollouts, scoring
pass and anchor rounds, ~75 s a step on one core. Under ``mixing="rd_only"`` none of that reaches the gradient (the
GRPO term is weighted 0), so the weights follow plain supervised steps on the RD traces. This script takes the same
kind of steps (the traces drawn in another order) and nothing else, ~12 s a step, so settings can be searched in
tens of minutes:

* traces rendered and tokenized as the example and the trainer do (``examples/train_medqa.py``'s
  ``traces_dataset``, :func:`hytuning_trl.distill.tokenize_distill_dataset`, ``collate_distill``, ``rd_loss``);
* AdamW with the trainer's defaults (betas 0.9 / 0.999, eps 1e-8, no weight decay, gradient norm clipped at 1),
  ``--batch`` traces a step drawn in shuffled epochs, ``--scheduler`` ``constant`` or ``linear`` (to 0 at
  ``--steps``);
* every ``--probe_every`` steps, :func:`hytuning_trl.evaluation.evaluate_mcq` (greedy, own reasoning) on the probe
  questions: accuracy, share stated, mean confidence, ECE.

It is a search tool, not the evidence: the settings it finds are confirmed by the gate preset itself. ::

    python benchmarks/rd_sweep.py --output runs/sweep/const2e-5.json --lr 2e-5 --scheduler constant
    python benchmarks/rd_sweep.py --output runs/sweep/value.json --statement value --n_traces 128
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="json file of the settings and the probe curve")
    p.add_argument("--model", help="default: the example's SmolLM2-135M-Instruct")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--scheduler", choices=["constant", "linear"], default="constant")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=4, help="RD traces a step")
    p.add_argument("--n_traces", type=int, default=256, help="RD traces (the synthetic task's first ones)")
    p.add_argument("--style", default="check", help="synthetic_task trace style")
    p.add_argument("--probe_every", type=int, default=10)
    p.add_argument("--n_probe", type=int, default=64, help="probe: the first N eval questions")
    p.add_argument("--max_new_tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_seed", type=int, default=0)
    args = p.parse_args(argv)

    import synthetic_task
    import torch
    from medqa_helpers import default_model_path
    from train_medqa import traces_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hytuning_trl.distill import collate_distill, rd_loss, tokenize_distill_dataset
    from hytuning_trl.evaluation import evaluate_mcq

    torch.manual_seed(args.seed)
    model_path = args.model or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    # The gate preset's split: n_traces + 16 traces, 16 held out (fixed permutation, seed 0), the rest for RD.
    splits = synthetic_task.generate(args.data_seed, n_traces=args.n_traces + 16, n_eval=400, style=args.style)
    order = list(range(len(splits["traces"])))
    random.Random(0).shuffle(order)
    held = set(order[:16])
    rows = [t for i, t in enumerate(splits["traces"]) if i not in held]
    dataset = traces_dataset(rows, argparse.Namespace())
    examples = tokenize_distill_dataset(dataset, tokenizer, max_length=1024)
    probe = splits["eval"][: args.n_probe]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    if args.scheduler == "linear":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / args.steps))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    rng = random.Random(args.seed)
    queue: list[int] = []
    curve = []

    def probe_at(step: int) -> None:
        t = time.time()
        ev = evaluate_mcq(model, tokenizer, probe, batch_size=32, max_new_tokens=args.max_new_tokens, progress=False)
        m = ev.metrics
        conf = sum(r["confidence"] for r in ev.records) / len(ev.records)
        curve.append(
            {
                "step": step,
                "accuracy": m["accuracy"],
                "stated": m["stated_rate"],
                "confidence": conf,
                "ece": m["ece"],
                "example": ev.records[0]["completion"],
            }
        )
        print(
            f"step {step}: accuracy {m['accuracy']:.3f} stated {m['stated_rate']:.2f} confidence {conf:.2f} "
            f"ECE {m['ece']:.3f} ({time.time() - t:.0f} s)",
            flush=True,
        )

    losses = []
    start = time.time()
    model.train()
    for step in range(1, args.steps + 1):
        if len(queue) < args.batch:
            epoch = list(range(len(examples)))
            rng.shuffle(epoch)
            queue += epoch
        batch = collate_distill([examples[i] for i in queue[: args.batch]], pad)
        del queue[: args.batch]
        out = rd_loss(model, batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(out.nll_sum / max(out.num_tokens, 1))
        if step % args.probe_every == 0 or step == args.steps:
            print(f"step {step}: RD NLL {sum(losses[-10:]) / len(losses[-10:]):.3f}", flush=True)
            probe_at(step)
    result = {"settings": vars(args), "curve": curve, "rd_nll": losses, "wall_s": round(time.time() - start, 1)}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
