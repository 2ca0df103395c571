"""Where a training step of a preset goes: generation, scoring pass, anchor round, losses, backward, optimizer.

    python benchmarks/profile_step.py --preset gate --steps 3                     # SmolLM2, the preset's settings
    python benchmarks/profile_step.py --model path/to/tiny --steps 2 --data_dir d # any model, a synthetic-task dir
    python benchmarks/profile_step.py --preset evidence-v3 --arm rd_cal --calibration share 0.1  # at another value

One process runs the preset's training arguments (``benchmarks/compare_baselines.py``) for ``--steps`` steps through
``examples/train_medqa.py``'s own trainer builder, with timers around the parts (seconds summed per step, the first
step dropped as warm-up):

* ``rollout generation``: TRL's one-turn generation for the rollouts;
* ``scoring pass``: the no-grad pass behind the rewards (rollouts only);
* ``anchor round``: the own-reasoning round (its generation and its scoring);
* ``GRPO loss (forward)``: ``GRPOTrainer.compute_loss``;
* ``RD loss (forward)``: the RD head's forward;
* ``backward``: one backward of ``(1 - w) GRPO + w RD`` (the two are summed before it, so not separable);
* ``optimizer``: the optimizer step;
* ``other``: the rest of TRL's step (rewards, advantages, reference and old log-probabilities, logging).

Every part of the package's own (scoring pass, anchor round, RD forward) above 15% of a step is flagged as a target.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

OWN = ("scoring pass", "anchor round", "RD loss (forward)")
TIMERS: dict[str, float] = collections.defaultdict(float)
_ACTIVE: list[str] = []


def _timed(owner, name: str, key: str | None = None, pick=None):
    """Wrap ``owner.name`` so that its time goes to ``key`` (or ``pick(args) -> key``), outermost timer only."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        label = pick(args, kwargs) if pick else key
        if label is None or label in _ACTIVE:
            return original(*args, **kwargs)
        _ACTIVE.append(label)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMERS[label] += time.perf_counter() - start
            _ACTIVE.remove(label)

    setattr(owner, name, wrapper)


def instrument() -> None:
    import torch
    from trl import GRPOTrainer

    from hytuning_trl import trainer as trainer_module

    cls = trainer_module.HyTuningTrainer
    _timed(cls, "_anchor_round", "anchor round")
    _timed(
        GRPOTrainer,
        "_generate_single_turn",
        pick=lambda a, k: None if "anchor round" in _ACTIVE else "rollout generation",
    )
    _timed(trainer_module, "score_rollouts", pick=lambda a, k: None if "anchor round" in _ACTIVE else "scoring pass")
    _timed(GRPOTrainer, "compute_loss", "GRPO loss (forward)")
    _timed(trainer_module, "rd_loss", "RD loss (forward)")
    _timed(torch.optim.AdamW, "step", "optimizer")
    from accelerate import Accelerator

    _timed(Accelerator, "backward", "backward")


def arm_flags(arm: str, calibration: list[str] | None = None) -> list[str]:
    """The arm's flags (``compare_baselines.py``'s ``ARMS``), with ``calibration`` (target, weight) in place of its
    calibration flags, or added: a calibration arm profiled at another value than the pilot's, or one whose own are
    still pending (``presets.PENDING``), which needs a value."""
    from evidence import presets

    flags = list(presets.ARMS[arm])
    if not calibration:
        if not presets.runnable(arm):
            raise SystemExit(
                f"--arm {arm}: its calibration target and weight are pending; give them: --calibration T W"
            )
        return flags
    for name in ("--calibration_target", "--calibration_weight"):
        if name in flags:
            at = flags.index(name)
            del flags[at : at + 2]
    return flags + presets.calibration(*calibration)


def build(args, out: str):
    import train_medqa
    from evidence import presets, runner

    preset = presets.PRESETS[args.preset]
    data = args.data_dir
    if data is None:
        import synthetic_task

        data = tempfile.mkdtemp(prefix="profile_data_")
        splits = synthetic_task.generate(0, n_traces=preset.n_traces, n_eval=64)
        for name in ("unlabeled", "traces"):
            runner.write_jsonl(os.path.join(data, f"{name}.jsonl"), splits[name])
    argv = [*preset.training, "--dataset_name", "", "--distill_dataset_name", "", "--eval_dataset_name", ""]
    argv += [
        "--train_file",
        os.path.join(data, "unlabeled.jsonl"),
        "--distill_file",
        os.path.join(data, "traces.jsonl"),
    ]
    argv += ["--allow_sample_traces", "true", "--skip_eval", "true", "--max_steps", str(args.steps)]
    argv += ["--output_dir", out, "--save_strategy", "no", *args.flags, "--prg_every", str(args.prg_every)]
    if args.model:
        argv += ["--model_name_or_path", args.model]
    script_args, training_args, model_args = train_medqa.parse(argv)
    model_path = model_args.model_name_or_path or train_medqa.default_model_path(script_args.model_cache_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return train_medqa.build_trainer(script_args, training_args, model_args, model_path, tokenizer)


def main(argv: list[str] | None = None) -> dict:
    from evidence import presets

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gate", help="A preset of benchmarks/compare_baselines.py.")
    p.add_argument("--arm", default="hytuning", choices=list(presets.ARMS), metavar="ARM",
                   help="The arm of compare_baselines.py (hytuning: every part runs).")  # fmt: skip
    p.add_argument("--prg_every", type=int, default=1, help="Anchor round every N steps (1: measured every step).")
    p.add_argument("--model", default=None, help="Model folder (default: the preset's, SmolLM2-135M-Instruct).")
    p.add_argument("--data_dir", default=None, help="A folder with unlabeled.jsonl and traces.jsonl.")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--output", default=None, help="Also write the table as JSON here.")
    p.add_argument(
        "--calibration",
        nargs=2,
        metavar=("TARGET", "WEIGHT"),
        help="The calibration loss's target and weight for the arm (in place of rd_cal's and hytuning_blind_cal's "
        "own, needed while those are pending; added to any other arm).",
    )
    args = p.parse_args(argv)
    args.flags = arm_flags(args.arm, args.calibration)  # a pending arm without it stops here, before a model loads

    from transformers import TrainerCallback

    instrument()
    per_step: list[dict[str, float]] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            TIMERS.clear()
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            per_step.append({**TIMERS, "step": time.perf_counter() - self.start})

    with tempfile.TemporaryDirectory() as out:
        trainer = build(args, out)
        trainer.add_callback(StepTimer())
        trainer.train()
    measured = per_step[1:] or per_step
    parts = sorted({k for s in measured for k in s} - {"step"})
    step = statistics.median(s["step"] for s in measured)
    table = {k: statistics.median(s.get(k, 0.0) for s in measured) for k in parts}
    table["other"] = max(step - sum(table.values()), 0.0)
    print(
        f"preset {args.preset}, arm {args.arm}, an anchor round every {args.prg_every} step(s) (at 1, divide its row "
        f"by the preset's prg_every), {len(measured)} measured step(s): median {step:.2f} s"
    )
    print(f"{'part':<24}{'s per step':>12}{'share':>8}")
    for key, value in sorted(table.items(), key=lambda kv: -kv[1]):
        flag = "  <- target (> 15%, the package's own)" if key in OWN and value > 0.15 * step else ""
        print(f"{key:<24}{value:>12.3f}{value / step:>8.1%}{flag}")
    result = {"preset": args.preset, "arm": args.arm, "prg_every": args.prg_every, "median_step_s": step,
              "parts_s": table, "steps": per_step, "calibration": args.calibration}  # fmt: skip
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
