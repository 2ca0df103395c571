"""Does HyTuning do what it claims? The arms at several seeds, on one budget, with intervals.

    python benchmarks/compare_baselines.py --preset cpu                  # SmolLM2-135M-Instruct, synthetic task
    python benchmarks/compare_baselines.py --preset cpu --budget_minutes 100 --jobs 2
    python benchmarks/compare_baselines.py --preset gpu --dry_run        # Qwen2.5-1.5B through its recipe
    python benchmarks/compare_baselines.py --preset cpu --train_file medqa_train.jsonl \\
        --eval_file medqa_test.jsonl --traces_file medqa_traces.jsonl -- --model_name_or_path MODEL

Arms (every arm: the same data, rewards, reward weights, steps and seeds; only the mixing differs):

* ``rl_only``: GRPO on self-certainty alone (INTUITOR-style), no RD;
* ``rd_only``: RD alone, rd_weight = 1;
* ``prg``: HyTuning, mixing v2 (rd_weight from the held-out anchor's normalised gain);
* ``constant``: rd_weight = the mean rd_weight of the ``prg`` runs (run after them);
* ``chord``: the CHORD-mu schedule;
* ``prg_gate``: ``prg`` with per-sample gating of positive advantages (``prg_gate=True``);
* ``prg_gap``: the turn-1 rule (policy PRG against anchor PRG).

Presets: ``cpu`` (rl_only, rd_only and prg at 3 seeds, the other four at 1), ``cpu-full`` (every arm at 3 seeds) and
``gpu`` (every arm at 3 seeds, Qwen2.5-1.5B-Instruct through ``examples/recipes/qwen2.5_1.5b_medqa.yaml``, a fixed
number of steps). On the CPU presets the number of steps is set from measurements taken at the start (one short
training run for the step time and overhead, the base model's evaluation for the seconds per question) so that the
whole preset fits ``--budget_minutes``; ``--jobs`` runs that many arms side by side, each with its share of the cores.

Order of work, all under ``--output_dir``:

1. ``data/``: the synthetic task (``synthetic_task.py``) unless files are given; the traces are split once into
   ``rd_traces.jsonl`` (trained on) and ``anchor_traces.jsonl`` (16, held out), the same for every arm and seed;
   ``probe.jsonl`` is the first 64 eval questions.
2. ``validity/``: ``hytuning-prg`` on the gold traces against corrupted ones under the base model (AUROC per
   corruption with intervals); ``base/``: ``hytuning-eval`` of the base model on the eval questions.
3. ``plan.json``: the measured step time and the number of steps (kept on a rerun, so resumed runs match).
4. ``runs/<arm>/seed<k>/``: each run (``examples/train_medqa.py``): final model, ``trainer_state.json`` (the
   learning curves, the probe every ``probe_steps``), ``calibration_after/`` (the eval report) and ``DONE.json``. A
   rerun skips every run with ``DONE.json`` and restarts the others from scratch.
5. ``results.json`` / ``results.md``: per-arm metrics with intervals, the differences against ``rl_only`` and
   ``rd_only`` (paired bootstrap over questions within a seed; a two-stage bootstrap, seeds then questions, where both
   arms have several seeds), the three primary comparisons named in advance (:data:`PRIMARY`), the check that the
   metrics move; ``curves.png`` and ``reliability_grid.png``.

Arguments after ``--`` go to every training run unchanged (e.g. ``--model_name_or_path``, ``--learning_rate``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "examples", "train_medqa.py")
GPU_RECIPE = os.path.join(ROOT, "examples", "recipes", "qwen2.5_1.5b_medqa.yaml")
sys.path.insert(0, HERE)

ARMS: dict[str, list[str]] = {
    "rl_only": ["--mixing", "rl_only"],
    "rd_only": ["--mixing", "rd_only"],
    "prg": ["--mixing", "prg"],
    "constant": ["--mixing", "constant"],  # --rd_weight: the prg runs' mean, added when it runs
    "chord": ["--mixing", "chord"],
    "prg_gate": ["--mixing", "prg", "--prg_gate", "true"],
    "prg_gap": ["--mixing", "prg_gap"],
}
# Fixed before any run: (arm, reference, metric). Every other interval in the output is exploratory.
PRIMARY = [("prg", "rl_only", "ece"), ("prg", "rl_only", "brier"), ("prg", "rd_only", "accuracy")]
METRICS = ["accuracy", "brier", "ece", "auroc"]
REFERENCES = ["rl_only", "rd_only"]
_NULL_HUB = ["--dataset_name", "", "--distill_dataset_name", "", "--eval_dataset_name", ""]
_CPU_TRAINING = [
    "--max_completion_length", "64",
    "--per_device_train_batch_size", "8",
    "--num_generations", "4",
    "--distill_per_device_batch_size", "4",
    "--learning_rate", "2e-4",
    "--prg_every", "2",
    "--rewards", "self_certainty",
    "--reward_weights", "1.0",
    "--eval_batch_size", "32",
    "--logging_steps", "1",
    "--save_strategy", "no",
]  # fmt: skip


def _with(args: list[str], **changes: str) -> list[str]:
    """``args`` (flag, value pairs) with the values of ``changes`` replaced."""
    out = list(args)
    for name, value in changes.items():
        out[out.index(f"--{name}") + 1] = value
    return out


# The regime where RD learns the synthetic task (issue 23's measurements: 'check' traces, lr 2e-5, 4 traces a step,
# completions long enough for the whole trace and its statement).
# Runs of hours save a checkpoint every 10 steps (the last one kept) and resume from it when restarted.
_LEARNING = _with(_CPU_TRAINING, max_completion_length="96", learning_rate="2e-5", prg_every="4")
_LEARNING = _with(_LEARNING, save_strategy="steps") + ["--save_steps", "10", "--save_total_limit", "1"]


@dataclass
class Preset:
    """What a preset runs. ``budget_minutes`` None: ``max_steps`` steps, no measurement."""

    seeds: dict[str, int]
    training: list[str]
    max_steps: int
    budget_minutes: float | None = None
    min_steps: int = 4
    probe_steps: int = 10
    jobs: int = 1
    n_eval: int = 400
    n_probe: int = 64
    max_new_tokens: int = 64
    eval_batch_size: int = 32
    anchor_size: int = 16
    n_traces: int = 64  # synthetic task: RD traces + anchor
    model: str | None = None  # None: the example's default (SmolLM2-135M-Instruct, converted once)
    notes: list[str] = field(default_factory=list)


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        seeds={"rl_only": 3, "rd_only": 3, "prg": 3, "constant": 1, "chord": 1, "prg_gate": 1, "prg_gap": 1},
        training=_CPU_TRAINING,
        max_steps=40,
        budget_minutes=120,
        jobs=2,
    ),
    # The gate of issue 23: does RD alone learn the task (>= +10 points over the base model)? rd_only, 1 seed.
    "gate": Preset(
        seeds={"rd_only": 1},
        training=_LEARNING,
        max_steps=60,
        probe_steps=20,
        max_new_tokens=96,
        n_traces=272,
    ),
    "cpu-full": Preset(
        seeds={arm: 3 for arm in ARMS}, training=_CPU_TRAINING, max_steps=40, budget_minutes=360, jobs=2
    ),
    "gpu": Preset(
        seeds={arm: 3 for arm in ARMS},
        training=[
            "--config",
            GPU_RECIPE,
            "--rewards",
            "self_certainty",
            "--reward_weights",
            "1.0",
            "--max_completion_length",
            "256",
            "--prg_every",
            "2",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--eval_batch_size",
            "64",
        ],  # fmt: skip
        max_steps=300,
        probe_steps=50,
        max_new_tokens=256,
        eval_batch_size=64,
        model="Qwen/Qwen2.5-1.5B-Instruct",
    ),
}

_print_lock = threading.Lock()


def say(message: str) -> None:
    with _print_lock:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------- data
def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def prepare_data(args: argparse.Namespace, preset: Preset) -> dict[str, str]:
    """The files every run reads; the traces split once into RD and anchor traces (fixed permutation, seed 0)."""
    data = os.path.join(args.output_dir, "data")
    os.makedirs(data, exist_ok=True)
    files = {"train": args.train_file, "eval": args.eval_file, "traces": args.traces_file}
    if not all(files.values()):
        import synthetic_task

        splits = synthetic_task.generate(args.data_seed, n_traces=preset.n_traces, n_eval=preset.n_eval)
        for name, key in (("unlabeled", "train"), ("eval", "eval"), ("traces", "traces")):
            if not files[key]:
                files[key] = os.path.join(data, f"{name}.jsonl")
                write_jsonl(files[key], splits[name])
    for key, path in files.items():
        if not os.path.exists(path):
            raise SystemExit(f"--{key}_file {path} does not exist.")
    traces = read_jsonl(files["traces"])
    n_anchor = min(preset.anchor_size, len(traces) // 4)
    if n_anchor < 1:
        raise SystemExit(f"--traces_file has {len(traces)} traces; the anchor needs at least 4 (one held out).")
    order = list(range(len(traces)))
    random.Random(0).shuffle(order)
    held = set(order[:n_anchor])
    files["rd_traces"] = os.path.join(data, "rd_traces.jsonl")
    files["anchor_traces"] = os.path.join(data, "anchor_traces.jsonl")
    write_jsonl(files["rd_traces"], [t for i, t in enumerate(traces) if i not in held])
    write_jsonl(files["anchor_traces"], [t for i, t in enumerate(traces) if i in held])
    eval_rows = read_jsonl(files["eval"])[: args.max_eval_samples or None]
    files["eval_used"] = os.path.join(data, "eval_used.jsonl")
    files["n_eval"] = str(len(eval_rows))
    write_jsonl(files["eval_used"], eval_rows)
    if args.probe_file:
        files["probe"] = args.probe_file
    else:
        files["probe"] = os.path.join(data, "probe.jsonl")
        write_jsonl(files["probe"], eval_rows[: preset.n_probe])
    say(
        f"data: {len(read_jsonl(files['train']))} unlabeled, {len(traces) - n_anchor} RD traces + {n_anchor} anchor, "
        f"{len(eval_rows)} eval, {len(read_jsonl(files['probe']))} probe questions"
    )
    return files


# ---------------------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    arm: str
    seed: int
    folder: str

    @property
    def done(self) -> bool:
        return os.path.exists(os.path.join(self.folder, "DONE.json"))


def plan_runs(preset: Preset, args: argparse.Namespace) -> list[Run]:
    """prg first (constant needs its mean rd_weight), the references next, constant last."""
    arms = [a for a in ARMS if a in preset.seeds and (not args.arms or a in args.arms)]
    arms.sort(key=lambda a: (a != "prg", a not in REFERENCES, a == "constant"))
    runs = []
    for arm in arms:
        n = args.seeds if args.seeds is not None else preset.seeds[arm]
        runs += [Run(arm, s, os.path.join(args.output_dir, "runs", arm, f"seed{s}")) for s in range(n)]
    return runs


def run_command(run: Run, preset: Preset, files: dict, plan: dict, extra: list[str], rd_weight: float | None):
    cmd = [sys.executable, SCRIPT, *preset.training, *_NULL_HUB]
    cmd += [
        "--train_file",
        files["train"],
        "--distill_file",
        files["rd_traces"],
        "--anchor_file",
        files["anchor_traces"],
    ]
    cmd += ["--eval_file", files["eval_used"], "--max_eval_samples", files["n_eval"], "--eval_before", "false"]
    cmd += ["--eval_max_new_tokens", str(preset.max_new_tokens), "--allow_sample_traces", "true"]
    cmd += ["--probe_file", files["probe"], "--probe_steps", str(plan["probe_steps"])]
    cmd += ["--max_steps", str(plan["max_steps"]), "--seed", str(run.seed), "--output_dir", run.folder]
    cmd += ARMS[run.arm] + (["--rd_weight", f"{rd_weight:.4f}"] if run.arm == "constant" else [])
    if preset.model:
        cmd += ["--model_name_or_path", preset.model]
    return cmd + extra


def thread_env(jobs: int) -> dict:
    threads = str(max(1, (os.cpu_count() or 1) // max(jobs, 1)))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}


def execute(cmd: list[str], log: str, jobs: int) -> float:
    """Run ``cmd`` with its output in ``log``; raise with the log's tail if it fails. Returns the wall seconds."""
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=thread_env(jobs), cwd=ROOT)
    if proc.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}); log {log}:\n{tail}")
    return time.time() - start


def train(run: Run, preset: Preset, files: dict, plan: dict, extra: list[str], jobs: int, rd_weight=None) -> None:
    if run.done:
        say(f"{run.arm} seed {run.seed}: done before, skipped")
        return
    checkpoint = last_checkpoint(run.folder)
    if os.path.exists(run.folder) and checkpoint is None:  # unfinished, nothing saved: start again
        shutil.rmtree(run.folder)
    os.makedirs(run.folder, exist_ok=True)
    cmd = run_command(run, preset, files, plan, extra, rd_weight)
    if checkpoint is not None:  # unfinished with a checkpoint: the example resumes from it (mixing state included)
        cmd += ["--resume_from_checkpoint", "true"]
    say(f"{run.arm} seed {run.seed}: " + (f"resumed from {os.path.basename(checkpoint)}" if checkpoint else "started"))
    seconds = execute(cmd, os.path.join(run.folder, "train.log"), jobs)
    with open(os.path.join(run.folder, "DONE.json"), "w") as f:
        json.dump({"arm": run.arm, "seed": run.seed, "seconds": round(seconds, 1), "command": cmd}, f, indent=2)
    say(f"{run.arm} seed {run.seed}: finished in {seconds:.0f} s")


def last_checkpoint(folder: str) -> str | None:
    """The newest ``checkpoint-<step>`` folder of an unfinished run, if any."""
    if not os.path.isdir(folder):
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(folder)


def git_commit() -> str | None:
    """The commit the runs were made from (the preset is meant to run from a worktree at a fixed commit)."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (proc.stdout.strip() + ("+uncommitted" if dirty else "")) if proc.returncode == 0 else None


def log_history(run: Run) -> list[dict]:
    with open(os.path.join(run.folder, "trainer_state.json")) as f:
        return json.load(f)["log_history"]


def rd_weights(run: Run) -> list[tuple[int, float]]:
    """``(step, rd_weight)`` as the run logged them."""
    return [(h["step"], h["hytuning/rd_weight"]) for h in log_history(run) if "hytuning/rd_weight" in h]


def mean_rd_weight(runs: list[Run]) -> float:
    values = [w for r in runs for _, w in rd_weights(r)]
    if not values:
        raise RuntimeError("The prg runs logged no rd_weight; the constant arm has no weight to copy.")
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------------------ measurements
def cli_command(entry: str) -> list[str]:
    """``hytuning-eval`` (``main``) or ``hytuning-prg`` (``prg_main``) under this interpreter, whatever is on PATH."""
    return [sys.executable, "-c", f"import sys; from hytuning_trl.cli import {entry}; sys.exit({entry}())"]


def measure(args, preset: Preset, files: dict, extra: list[str], model: str, calibrate: bool = True) -> dict:
    """Validity check and base evaluation (both needed anyway), side by side with a short prg training run whose
    step time and overhead set the number of steps that fit the budget."""
    out = args.output_dir
    base, validity, calib = (os.path.join(out, d) for d in ("base", "validity", "_calibration"))
    evaluate = cli_command("main") + [
        "--model_name_or_path",
        model,
        "--dataset_name",
        files["eval_used"],
        "--output_dir",
        base,
    ]
    evaluate += ["--max_new_tokens", str(preset.max_new_tokens), "--batch_size", str(preset.eval_batch_size)]
    prg = cli_command("prg_main") + [
        "--model_name_or_path",
        model,
        "--traces_file",
        files["traces"],
        "--output_dir",
        validity,
    ]
    n_calib = args.calibration_steps
    saved = os.path.join(out, "measurements.json")  # kept as measured, so an interrupted start resumes
    timing = {}
    if os.path.exists(saved):
        with open(saved) as f:
            timing = json.load(f)
    timing["n_eval"] = int(files["n_eval"])
    lock = threading.Lock()

    def record(**values):
        with lock:
            timing.update(values)
            with open(saved, "w") as f:
                json.dump(timing, f, indent=2)

    def run_eval():
        if not os.path.exists(os.path.join(base, "calibration.json")) or "base_eval_s" not in timing:
            os.makedirs(base, exist_ok=True)
            record(base_eval_s=execute(evaluate, os.path.join(out, "base_eval.log"), args.jobs))
            say(f"base model evaluated in {timing['base_eval_s']:.0f} s")

    def run_validity():
        if not os.path.exists(os.path.join(validity, "validity.json")):
            os.makedirs(validity, exist_ok=True)
            record(validity_s=execute(prg, os.path.join(out, "validity.log"), args.jobs))
            say(f"PRG validity check done in {timing['validity_s']:.0f} s")

    def run_calibration():
        if not calibrate or preset.budget_minutes is None or args.max_steps:
            return
        shutil.rmtree(calib, ignore_errors=True)
        os.makedirs(calib)
        plan = {"max_steps": n_calib, "probe_steps": n_calib}  # one probe at the end: a trained model's eval time
        calib_run = Run("prg", 0, calib)
        cmd = run_command(calib_run, preset, files, plan, extra, None) + ["--skip_eval", "true"]
        seconds = execute(cmd, os.path.join(calib, "train.log"), args.jobs)
        history = log_history(calib_run)
        times = [h["step_time"] for h in history if "step_time" in h]
        probe_s = sum(h.get("eval_calibration/seconds", 0.0) for h in history)
        record(
            calibration_s=seconds,
            step_time_s=statistics.median(times[1:] or times),
            probe_s_per_question=probe_s / len(read_jsonl(files["probe"])),
            run_overhead_s=max(seconds - sum(times) - probe_s, 0.0),
        )
        say(
            f"step time {timing['step_time_s']:.1f} s, run overhead {timing['run_overhead_s']:.0f} s, evaluation "
            f"{timing['probe_s_per_question']:.2f} s per question after {n_calib} steps"
        )

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for f in [pool.submit(run_calibration), pool.submit(run_eval), pool.submit(run_validity)]:
            f.result()
    return timing


def probe_interval(steps: int, every: int) -> int:
    """Probe every ``every`` steps, but at least once inside a short run, and not at its last step when that can be
    avoided (the final evaluation covers the probe questions there)."""
    p = min(every, max(steps // 2, 1))
    while steps % p == 0 and p < steps and steps // p <= 2:
        p += 1
    return p


def steps_for_budget(timing: dict, preset: Preset, args, n_runs: int, elapsed_s: float) -> dict:
    """The most steps (capped at ``max_steps``) whose runs fit what is left of the budget on ``jobs`` lanes::

        per run = overhead + q * n_eval + S * step + floor(S / P) * q * n_probe

    with ``q`` the seconds per evaluated question: 1.15 x the larger of the base model's and the calibration run's
    (after a few steps; a base model that stops early, e.g. by copying "The answer is X.", evaluates much faster than
    one that writes the whole trace), ``P`` the probe interval (:func:`probe_interval`)."""
    if preset.budget_minutes is None or args.max_steps:
        steps = args.max_steps or preset.max_steps
        return {"max_steps": steps, "probe_steps": probe_interval(steps, preset.probe_steps), "fitted": False}
    budget = (args.budget_minutes or preset.budget_minutes) * 60
    per_q = 1.15 * max(timing["base_eval_s"] / timing["n_eval"], timing.get("probe_s_per_question", 0.0))
    lanes = args.jobs * args.safety
    capacity = (budget - elapsed_s) * lanes
    best = None
    for steps in range(preset.max_steps, 0, -1):
        probe = probe_interval(steps, preset.probe_steps)
        per_run = timing["run_overhead_s"] + per_q * timing["n_eval"] + steps * timing["step_time_s"]
        per_run += (steps // probe) * per_q * preset.n_probe
        # runs are whole: the slowest lane carries ceil(n_runs / jobs) of them
        if per_run * math.ceil(n_runs / args.jobs) * args.jobs <= capacity:
            best = {"max_steps": steps, "probe_steps": probe, "per_run_s": round(per_run, 1)}
            break
    if best is None or best["max_steps"] < preset.min_steps:
        need = n_runs * (
            timing["run_overhead_s"] + per_q * timing["n_eval"] + preset.min_steps * timing["step_time_s"]
        )
        raise SystemExit(
            f"{n_runs} runs do not fit the budget with {preset.min_steps} steps each (about "
            f"{(need / lanes + elapsed_s) / 60:.0f} minutes needed on {args.jobs} lanes); raise --budget_minutes, "
            "lower --max_eval_samples, or run fewer --arms / --seeds."
        )
    best.update(fitted=True, budget_s=budget, elapsed_at_plan_s=round(elapsed_s, 1), lanes=args.jobs)
    return best


# ---------------------------------------------------------------------------------------------------------- analysis
def records(path: str) -> list[dict]:
    return read_jsonl(os.path.join(path, "predictions.jsonl"))


def analyse(args, runs: list[Run], plan: dict, timing: dict, files: dict) -> dict:
    from _bootstrap import metric_interval, paired_bootstrap, two_stage_bootstrap

    out = args.output_dir
    base = records(os.path.join(out, "base"))
    by_arm: dict[str, dict[int, list[dict]]] = {}
    for r in runs:
        by_arm.setdefault(r.arm, {})[r.seed] = records(os.path.join(r.folder, "calibration_after"))
    for arm, seeds in by_arm.items():
        for s, recs in seeds.items():
            if [x["question"] for x in recs] != [x["question"] for x in base]:
                raise RuntimeError(f"{arm} seed {s} was evaluated on other questions than the base model.")
    n_boot = args.n_bootstrap
    table = {"base": {m: metric_interval(m, [base], n_boot) for m in METRICS}}
    table["base"]["stated_rate"] = sum(x["stated"] for x in base) / len(base)
    for arm, seeds in by_arm.items():
        recs = [seeds[s] for s in sorted(seeds)]
        table[arm] = {m: metric_interval(m, recs, n_boot) for m in METRICS}
        table[arm]["stated_rate"] = statistics.mean(sum(x["stated"] for x in r) / len(r) for r in recs)
        table[arm]["seeds"] = sorted(seeds)

    def difference(metric: str, a: list[list[dict]], b: list[list[dict]]) -> dict:
        """``metric(b) - metric(a)`` on paired seeds: two-stage bootstrap with several, over questions with one."""
        if len(a) > 1:
            res = two_stage_bootstrap(metric, a, b, n_boot)
        else:
            res = {**paired_bootstrap(metric, a[0], b[0], n_boot), "n_seeds": 1}
        return {**res, "excludes_0": _excludes_zero(res)}

    def compare(arm: str, ref: str, metric: str) -> dict:
        a, b = by_arm[ref], by_arm[arm]
        common = sorted(set(a) & set(b))
        res = difference(metric, [a[s] for s in common], [b[s] for s in common])
        return {"arm": arm, "reference": ref, **res, "primary": (arm, ref, metric) in PRIMARY}

    comparisons = []
    for ref in [r for r in REFERENCES if r in by_arm]:
        for arm in [a for a in by_arm if a != ref]:
            comparisons += [compare(arm, ref, m) for m in METRICS]
    against_base = []
    for arm, seeds in by_arm.items():
        recs = [seeds[s] for s in sorted(seeds)]
        against_base += [{"arm": arm, "reference": "base", **difference(m, [base] * len(recs), recs)} for m in METRICS]

    prg_lams = [w for r in runs if r.arm == "prg" for _, w in rd_weights(r)]
    span = (max(prg_lams) - min(prg_lams)) if prg_lams else None
    rd_moves = [c for c in against_base if c["arm"] == "rd_only" and c["excludes_0"]]
    move = {
        "prg_rd_weight_span": span,
        "rd_only_vs_base_excluding_0": [c["metric"] for c in rd_moves],
        "metrics_move": bool(span is not None and span >= 0.1 and rd_moves),
    }
    seconds = {f"{r.arm}/seed{r.seed}": _done(r).get("seconds") for r in runs}
    result_gate = gate(base, by_arm.get("rd_only"), against_base)
    result = {
        "commit": git_commit(),
        "gate": result_gate,
        "plan": plan,
        "timing": timing,
        "n_questions": len(base),
        "table": table,
        "primary": [c for c in comparisons if c["primary"]],
        "comparisons": comparisons,
        "against_base": against_base,
        "metrics_move": move,
        "run_seconds": seconds,
        "wall_s": round(time.time() - args.started, 1),
        "validity": _validity(out),
        "files": files,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(result, args))
    curves(out, runs, base, by_arm, files)
    grid(out, runs)
    return result


#: The gate (issue 23): RD alone must lift accuracy by at least this much over the base model, with a paired
#: interval that excludes 0, before any comparison of the arms means anything.
GATE_POINTS = 0.10


def gate(base: list[dict], rd_only: dict | None, against_base: list[dict]) -> dict | None:
    """``{base, rd_only, difference, interval, passed}`` on accuracy: the base model's, rd_only's (mean over its
    seeds), their paired difference and its 95% interval; passed = difference >= GATE_POINTS and interval above 0."""
    if not rd_only:
        return None
    [diff] = [c for c in against_base if c["arm"] == "rd_only" and c["metric"] == "accuracy"]
    accuracy = [sum(r["correct"] for r in recs) / len(recs) for recs in rd_only.values()]
    return {
        "base": sum(r["correct"] for r in base) / len(base),
        "rd_only": sum(accuracy) / len(accuracy),
        "difference": diff["diff"],
        "interval": diff["ci95"],
        "n_seeds": len(accuracy),
        "threshold": GATE_POINTS,
        "passed": bool(diff["diff"] >= GATE_POINTS and diff["ci95"][0] > 0),
    }


def _done(run: Run) -> dict:
    with open(os.path.join(run.folder, "DONE.json")) as f:
        return json.load(f)


def _validity(out: str) -> dict | None:
    path = os.path.join(out, "validity", "validity.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _excludes_zero(res: dict) -> bool:
    low, high = res["ci95"]
    return bool(low == low and high == high and (low > 0 or high < 0))


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.{digits}f}"


def _ci(res: dict) -> str:
    return f"[{_fmt(res['ci95'][0])}, {_fmt(res['ci95'][1])}]"


def markdown(result: dict, args) -> str:
    plan, lines = result["plan"], []
    lines.append(f"Command: `python benchmarks/compare_baselines.py {' '.join(args.argv)}`\n")
    lines.append(
        f"{result['n_questions']} eval questions; {plan['max_steps']} steps per run, probe every "
        f"{plan['probe_steps']}; wall {result['wall_s'] / 60:.1f} min. Better: accuracy and AUROC up, Brier and ECE "
        "down. Intervals: 95% bootstrap (questions; seeds then questions for several seeds). With 3 seeds the seed "
        "stage has only 10 distinct resamples.\n"
    )
    lines.append("| arm | seeds | " + " | ".join(METRICS) + " | stated |")
    lines.append("|---" * (len(METRICS) + 3) + "|")
    for arm, row in result["table"].items():
        cells = [f"{_fmt(row[m]['value'])} {_ci(row[m])}" for m in METRICS]
        seeds, stated = len(row.get("seeds", [0])), _fmt(row["stated_rate"], 2)
        lines.append(f"| {arm} | {seeds} | " + " | ".join(cells) + f" | {stated} |")
    lines.append("\nPrimary comparisons (fixed in advance; difference = arm - reference):\n")
    lines += _comparison_table(result["primary"])
    lines.append("\nAgainst the base model (exploratory):\n")
    lines += _comparison_table(result["against_base"])
    lines.append("\nEvery other comparison (exploratory):\n")
    lines += _comparison_table([c for c in result["comparisons"] if not c["primary"]])
    move = result["metrics_move"]
    lines.append(
        f"\nDo the metrics move? prg rd_weight span {_fmt(move['prg_rd_weight_span'])} (needs >= 0.1); rd_only "
        f"against base excludes 0 on: {', '.join(move['rd_only_vs_base_excluding_0']) or 'nothing'} -> "
        f"{'yes' if move['metrics_move'] else 'NO: raise the learning rate or the steps before reading anything'}."
    )
    if result["validity"]:
        lines.append("\nPRG validity under the base model (gold traces against corrupted ones):\n")
        lines.append("| corruption | n | AUROC | 95% CI |\n|---|---|---|---|")
        for row in result["validity"]["validity"]:
            ci = _ci(row) if row.get("ci95") else "n/a"
            lines.append(f"| {row['corruption']} | {row['n']} | {_fmt(row['auroc'])} | {ci} |")
    return "\n".join(lines) + "\n"


def _comparison_table(rows: list[dict]) -> list[str]:
    out = ["| arm | reference | metric | difference | 95% CI | seeds | excludes 0 |", "|---|---|---|---|---|---|---|"]
    for c in rows:
        out.append(
            f"| {c['arm']} | {c['reference']} | {c['metric']} | {_fmt(c['diff'])} | {_ci(c)} | {c['n_seeds']} | "
            f"{'yes' if c['excludes_0'] else 'no'} |"
        )
    return out


def curves(out: str, runs: list[Run], base: list[dict], by_arm: dict[str, dict[int, list[dict]]], files: dict) -> None:
    """rd_weight and anchor gain per step; probe accuracy and ECE at step 0 (base), at each probe, and at the end (the
    final evaluation restricted to the probe questions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hytuning_trl.calibration import expected_calibration_error

    probe = {q["question"] for q in read_jsonl(files["probe"])}

    def on_probe(recs):
        sub = [r for r in recs if r["question"] in probe]
        if not sub:
            return None, None
        acc = sum(r["correct"] for r in sub) / len(sub)
        return acc, expected_calibration_error([r["confidence"] for r in sub], [r["correct"] for r in sub])

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    colours = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
    base_acc, base_ece = on_probe(base)
    for r in runs:
        hist, c = log_history(r), colours[r.arm]
        label = r.arm if r.seed == 0 else None
        lam = rd_weights(r)
        gain = [(h["step"], h["hytuning/anchor_gain"]) for h in hist if "hytuning/anchor_gain" in h]
        if lam:
            axes[0][0].plot(*zip(*lam), color=c, alpha=0.8, label=label)
        if gain:
            axes[0][1].plot(*zip(*gain), color=c, marker=".", alpha=0.8, label=label)
        probes = [(h["step"], h["eval_calibration/accuracy"], h.get("eval_calibration/ece")) for h in hist
                  if "eval_calibration/accuracy" in h]  # fmt: skip
        end = on_probe(by_arm[r.arm][r.seed])
        last = max([h["step"] for h in hist if "step" in h], default=0)
        pts = [(0, base_acc, base_ece), *probes]
        if not probes or probes[-1][0] != last:  # a probe at the last step saw the same model on the same questions
            pts.append((last, *end))
        axes[1][0].plot([p[0] for p in pts], [p[1] for p in pts], color=c, marker="o", alpha=0.8, label=label)
        axes[1][1].plot([p[0] for p in pts], [p[2] for p in pts], color=c, marker="o", alpha=0.8, label=label)
    titles = ["rd_weight", "anchor gain G (held-out traces)", "probe accuracy", "probe ECE"]
    for ax, title in zip(axes.flat, titles):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.savefig(os.path.join(out, "curves.png"), dpi=110)
    plt.close(fig)


def grid(out: str, runs: list[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("base model", os.path.join(out, "base", "reliability.png"))]
    panels += [(f"{r.arm} (seed 0)", os.path.join(r.folder, "calibration_after", "reliability.png")) for r in runs
               if r.seed == 0]  # fmt: skip
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.5 * rows), constrained_layout=True, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, png) in zip(axes.flat, panels):
        ax.imshow(plt.imread(png))
        ax.set_title(title)
    fig.savefig(os.path.join(out, "reliability_grid.png"), dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------- main
def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--output_dir", default="outputs/compare")
    p.add_argument("--train_file", help="Unlabeled questions (MedQA jsonl). Default: the synthetic task.")
    p.add_argument("--eval_file", help="Eval questions with answer_idx. Default: the synthetic task's 400.")
    p.add_argument("--traces_file", help="Traces with 'reasoning' (RD + anchor). Default: the synthetic task's 64.")
    p.add_argument("--probe_file", help="Probe questions. Default: the first 64 eval questions.")
    p.add_argument("--data_seed", type=int, default=0, help="Seed of the synthetic task.")
    p.add_argument("--max_eval_samples", type=int, default=None, help="Evaluate on the first N eval questions.")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), help="Run only these arms.")
    p.add_argument("--seeds", type=int, help="Seeds per arm (overrides the preset's).")
    p.add_argument("--max_steps", type=int, help="Steps per run (skips the budget measurement).")
    p.add_argument("--budget_minutes", type=float, help="Wall budget of the whole preset (CPU presets).")
    p.add_argument("--jobs", type=int, help="Runs side by side (default: the preset's).")
    p.add_argument("--safety", type=float, default=0.9, help="Share of the budget the plan may fill.")
    p.add_argument("--calibration_steps", type=int, default=3, help="Steps of the step-time measurement.")
    p.add_argument("--n_bootstrap", type=int, default=2000)
    p.add_argument("--replan", action="store_true", help="Measure and plan again although plan.json exists.")
    p.add_argument("--dry_run", action="store_true", help="Print the plan and the commands; run nothing.")
    args = p.parse_args(own)
    args.argv = own + (["--", *extra] if extra else [])
    return args, extra


def main(argv: list[str] | None = None) -> dict | None:
    args, extra = parse(list(sys.argv[1:] if argv is None else argv))
    args.started = time.time()
    preset = PRESETS[args.preset]
    args.jobs = args.jobs or preset.jobs
    os.makedirs(args.output_dir, exist_ok=True)
    runs = plan_runs(preset, args)
    if args.dry_run:
        files = {k: f"<{k}>" for k in ("train", "rd_traces", "anchor_traces", "eval_used", "probe", "n_eval")}
        steps = args.max_steps or preset.max_steps
        plan = {"max_steps": steps, "probe_steps": probe_interval(steps, preset.probe_steps)}
        for r in runs:
            rd = 0.5 if r.arm == "constant" else None
            print(f"{r.arm} seed {r.seed}: {' '.join(run_command(r, preset, files, plan, extra, rd)[1:])}")
        note = "" if preset.budget_minutes is None or args.max_steps else " (set from a measured step time)"
        print(f"{len(runs)} runs, up to {steps} steps each{note}, {args.jobs} at a time.")
        return None
    files = prepare_data(args, preset)
    model = preset.model or next((extra[i + 1] for i, a in enumerate(extra) if a == "--model_name_or_path"), None)
    if model is None:
        sys.path.insert(0, os.path.dirname(SCRIPT))
        from medqa_helpers import default_model_path

        model = default_model_path()
    plan_path = os.path.join(args.output_dir, "plan.json")
    if os.path.exists(plan_path) and not args.replan:
        with open(plan_path) as f:
            saved = json.load(f)
        plan, timing = saved["plan"], saved["timing"]
        measure(args, preset, files, extra, model, calibrate=False)  # base / validity only if missing
        say(f"plan.json kept: {plan['max_steps']} steps per run")
    else:
        timing = measure(args, preset, files, extra, model)
        plan = steps_for_budget(timing, preset, args, len(runs), time.time() - args.started)
        with open(plan_path, "w") as f:
            json.dump({"plan": plan, "timing": timing, "runs": len(runs)}, f, indent=2)
        say(
            f"plan: {len(runs)} runs x {plan['max_steps']} steps (probe every {plan['probe_steps']}), "
            f"{args.jobs} lanes"
        )
    prg_runs = [r for r in runs if r.arm == "prg"]
    prg_done = threading.Event()
    if not prg_runs:
        prg_done.set()

    def task(run: Run):
        rd = None
        if run.arm == "constant":
            prg_done.wait()
            rd = mean_rd_weight(prg_runs) if prg_runs else 0.5
            say(f"constant arm: rd_weight {rd:.4f} (mean of the prg runs)")
        train(run, preset, files, plan, extra, args.jobs, rd)
        if prg_runs and all(r.done for r in prg_runs):
            prg_done.set()

    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(task, r): r for r in runs}
        for fut, r in futures.items():
            try:
                fut.result()
            except Exception as e:  # one failed run must not hide the others' results
                failed.append(r)
                prg_done.set()
                say(f"{r.arm} seed {r.seed} FAILED: {e}")
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed; rerun the same command to redo only those.")
    result = analyse(args, runs, plan, timing, files)
    with open(os.path.join(args.output_dir, "results.md")) as f:
        print(f.read())
    return result


if __name__ == "__main__":
    main()
