"""What HyTuning costs over plain GRPO: median step time and peak memory, and where the extra time goes.

    python benchmarks/overhead.py                                   # tiny Llama trained on scripted traces (~3 min)
    python benchmarks/overhead.py --model ~/.cache/hytuning-trl/SmolLM2-135M-Instruct --steps 3 --repeats 1

Settings, all on the same model, prompts, rollout count and lengths, with real generation:

* ``grpo``: ``trl.GRPOTrainer`` with an ordinary (format) reward;
* ``hytuning_own_every1`` / ``hytuning_own_every4``: ``HyTuningTrainer`` (self-certainty reward, RD head, PRG mixing)
  with the own-reasoning anchor (v3, the default: greedy generation for the anchor questions, then the scoring pass
  and the v2 trace diagnostic) every generation round / every 4 rounds;
* ``hytuning_trace_every1``: the same with the v2 anchor (teacher-forced traces only) every round;
* ``hytuning_rl_only``: ``HyTuningTrainer`` without RD (RLIF only);
* ``hytuning_rd_only``: ``mixing="rd_only"`` (no rollout generated: an RD step plus the anchor round, default
  ``prg_every``); ``hytuning_rd_only_noanchor``: the same without an anchor (``anchor_holdout=0``);
* ``sft``: ``trl.SFTTrainer`` on the same traces, ``distill_per_device_batch_size`` (2) per step: the reference of
  the two ``rd_only`` settings (goal: ``hytuning_rd_only_noanchor`` <= 1.1x SFT).

The anchor is ``min(anchor_holdout, n // 4)`` = 4 of the 16 scripted traces (``--anchor_holdout`` changes it).

Step times (wall time from ``on_step_begin`` to ``on_step_end``: generation, scoring, loss, backward, optimizer; the
same clock for TRL's SFT and GRPO trainers) are collected in ONE process, the settings alternating in each repetition,
the first step of every run dropped as warm-up; the table gives the median
and the interquartile range. Peak memory is the rise of
RSS above its level before ``train()`` (sampled by a thread), each setting in a fresh child process.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from _memory import peak_rss_growth_mib  # benchmarks/_memory.py
from _run_config import MEASUREMENT_ARGS  # benchmarks/_run_config.py
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

SETTINGS = [
    "grpo",
    "hytuning_own_every1",
    "hytuning_own_every2",
    "hytuning_own_every4",
    "hytuning_trace_every1",
    "hytuning_rl_only",
    "sft",
    "hytuning_rd_only",
    "hytuning_rd_only_noanchor",
]
TIMERS: dict[str, float] = collections.defaultdict(float)


def format_reward(completions, **kwargs):
    """An ordinary TRL reward: 1 if the completion states an answer."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float("answer is" in t) for t in texts]


class StepClock(TrainerCallback):
    """Wall time of every optimizer step, the same for every trainer."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def _timed(owner, name, key):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMERS[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def instrument():
    from hytuning_trl import trainer as trainer_module

    _timed(trainer_module, "score_rollouts", "scoring pass (policy + anchor)")
    _timed(trainer_module, "rd_loss", "RD forward")
    _timed(trainer_module.HyTuningTrainer, "_anchor_round", "anchor round (all of it)")
    _timed(trainer_module.HyTuningTrainer, "_generate_greedy", "anchor generation (within the round)")


def make_trainer(setting, args, model_path, out):
    from trl import GRPOConfig, GRPOTrainer

    from hytuning_trl import HyTuningConfig, HyTuningTrainer, SelfCertaintyReward
    from hytuning_trl._testing import scripted_examples

    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    questions = scripted_examples(64, seed=31)
    train = Dataset.from_list([{"prompt": q["prompt"], "options": q["options"]} for q in questions])
    traces = Dataset.from_list(
        [
            {"prompt": q["prompt"], "completion": q["completion"], "options": q["options"]}
            for q in scripted_examples(16)
        ]
    )
    common = dict(
        output_dir=out,
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=args.generations,
        num_generations=args.generations,
        max_completion_length=args.max_completion_length,
        max_steps=args.steps,
        **MEASUREMENT_ARGS,
        # every completion (and anchor answer) runs to max_completion_length: sampled lengths vary from step to
        # step far more than HyTuning's cost does, and would drown the ratio (the worst case, and a stable one)
        generation_kwargs={"min_new_tokens": args.max_completion_length} if args.fixed_length else None,
    )
    if setting == "sft":
        from trl import SFTConfig, SFTTrainer

        sft_args = {k: v for k, v in common.items() if k not in ("num_generations", "max_completion_length")}
        sft_args.pop("generation_kwargs")
        sft_args["per_device_train_batch_size"] = 2  # HyTuningConfig.distill_per_device_batch_size
        return SFTTrainer(
            model=model,
            args=SFTConfig(**sft_args, max_length=1024, completion_only_loss=True),
            train_dataset=traces.remove_columns("options"),
            processing_class=tokenizer,
        )
    if setting == "grpo":
        return GRPOTrainer(
            model=model,
            reward_funcs=[format_reward],
            args=GRPOConfig(**common),
            train_dataset=train,
            processing_class=tokenizer,
        )
    mixing = {"hytuning_rl_only": "rl_only", "hytuning_rd_only": "rd_only", "hytuning_rd_only_noanchor": "rd_only"}
    mixing = mixing.get(setting, "prg")
    every = {"every1": 1, "every2": 2, "every4": 4}
    prg_every = next((v for k, v in every.items() if setting.endswith(k)), None)
    config = HyTuningConfig(
        **common,
        mixing=mixing,
        **({"prg_every": prg_every} if prg_every else {}),  # else the config's default
        anchor_signal="trace" if "trace" in setting else "own",
        anchor_holdout=0 if setting.endswith("noanchor") else args.anchor_holdout,
        answer_options=["A", "B", "C", "D"],
    )
    return HyTuningTrainer(
        model=model,
        reward_funcs=[SelfCertaintyReward()],
        args=config,
        train_dataset=train,
        distill_dataset=None if mixing == "rl_only" else traces,
        processing_class=tokenizer,
    )


def child(setting, args, model_path):
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(setting, args, model_path, out)
        peak = peak_rss_growth_mib(trainer.train, interval_s=0.001)
    print(json.dumps({"peak_mib": peak}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: a tiny Llama trained on scripted traces)")
    p.add_argument("--steps", type=int, default=4, help="steps per run (the first is warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repetitions of every setting")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--max_completion_length", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--fixed_length",
        type=int,
        default=1,
        help="1: every completion runs to max_completion_length (stable ratios); 0: sampled lengths",
    )
    p.add_argument("--anchor_holdout", type=int, default=16, help="anchor size: min(this, 16 // 4)")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of: " + ", ".join(SETTINGS))
    p.add_argument("--memory", type=int, default=1, help="1: also measure peak memory per setting (child processes)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model_path", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args, args.model_path)

    tmp = tempfile.mkdtemp()
    model_path = args.model
    if model_path is None:
        from hytuning_trl._testing import save_trained_tiny_model

        model_path = save_trained_tiny_model(os.path.join(tmp, "tiny"))
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or not settings or settings[0] != "grpo" and "grpo" not in settings:
        p.error(f"--settings: unknown {unknown} (known: {', '.join(SETTINGS)}); 'grpo' must be among them")
    instrument()
    step_times = {s: [] for s in settings}
    breakdown = {s: collections.defaultdict(float) for s in settings}
    for rep in range(args.repeats):
        for setting in settings:
            trainer = make_trainer(setting, args, model_path, os.path.join(tmp, f"{setting}-{rep}"))
            clock = StepClock()
            trainer.add_callback(clock)
            TIMERS.clear()
            trainer.train()
            times = clock.times
            print(f"  {setting} rep {rep}: {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
            step_times[setting] += times[1:]
            for key, value in TIMERS.items():
                breakdown[setting][key] += value / max(len(times), 1) / args.repeats  # mean over repeats
            del trainer
            gc.collect()
    memory = {s: float("nan") for s in settings}
    for setting in settings if args.memory else []:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            setting,
            "--model_path",
            model_path,
            "--steps",
            "2",
            "--generations",
            str(args.generations),
            "--max_completion_length",
            str(args.max_completion_length),
            "--threads",
            str(args.threads),
            "--fixed_length",
            str(args.fixed_length),
            "--anchor_holdout",
            str(args.anchor_holdout),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        memory[setting] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]

    base = statistics.median(step_times["grpo"])
    print(
        f"model {model_path}; {args.generations} rollouts of "
        f"{'exactly' if args.fixed_length else '<='} {args.max_completion_length} tokens; "
        f"{args.repeats} x {args.steps} steps per setting, first step of each run dropped; {args.threads} threads"
    )
    print(
        f"{'setting':<24}{'median step (s)':>16}{'IQR (s)':>16}{'x GRPO':>8}{'peak RSS rise (MiB)':>21}{'x GRPO':>8}"
    )
    results = {}
    for setting in settings:
        times = step_times[setting]
        med = statistics.median(times)
        q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (med, med, med)
        results[setting] = {
            "median_step_s": med,
            "iqr_s": [q1, q3],
            "n_steps": len(times),
            "ratio": med / base,
            "peak_mib": memory[setting],
            "breakdown_s_per_step": dict(breakdown[setting]),
        }
        print(
            f"{setting:<24}{med:>16.3f}{f'{q1:.2f}-{q3:.2f}':>16}{med / base:>8.2f}{memory[setting]:>21.1f}"
            f"{memory[setting] / max(memory['grpo'], 1e-9):>8.2f}"
        )
    print("where the extra time goes (seconds per step, measured inside the runs):")
    for setting in settings[1:]:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(breakdown[setting].items()))
        print(f"  {setting}: {parts}")
    print("goal: the own-reasoning anchor at prg_every=4 <= 1.35x GRPO")
    if "sft" in settings:
        sft = statistics.median(step_times["sft"])
        for setting in ("hytuning_rd_only", "hytuning_rd_only_noanchor"):
            if setting in settings:
                ratio = statistics.median(step_times[setting]) / sft
                results[setting]["ratio_to_sft"] = ratio
                print(f"{setting}: {ratio:.2f}x an SFT step on the same traces (goal without the anchor: <= 1.1)")
    for setting in settings:  # the anchor round's share of a step, to size prg_every by
        anchor = breakdown[setting].get("anchor round (all of it)")
        if anchor:
            share = anchor / results[setting]["median_step_s"]
            results[setting]["anchor_share"] = share
            print(f"{setting}: the anchor round is {share:.0%} of a step (goal for the default: <= 25%)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
