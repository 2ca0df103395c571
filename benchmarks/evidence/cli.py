"""The command line of the evidence harness (``python benchmarks/compare_baselines.py``).

Does HyTuning do what it claims? The arms at several seeds, on one budget, with intervals.

    python benchmarks/compare_baselines.py --preset cpu                  # SmolLM2-135M-Instruct, synthetic task
    python benchmarks/compare_baselines.py --preset cpu --budget_minutes 100 --jobs 2
    python benchmarks/compare_baselines.py --preset gpu --dry_run        # Qwen2.5-1.5B through its recipe
    python benchmarks/compare_baselines.py --preset evidence --output_dir DIR --analyse  # the finished runs so far
    python benchmarks/compare_baselines.py --preset evidence --output_dir DIR --restore docs/data/evidence  # lost DIR
    python benchmarks/compare_baselines.py --preset cpu --train_file medqa_train.jsonl \\
        --eval_file medqa_test.jsonl --traces_file medqa_traces.jsonl -- --model_name_or_path MODEL

Arms (issue 23; every arm: the same data, seeds, steps and learning rate; only what is named differs):

* ``rd_only``: RD alone, rd_weight = 1;
* ``rl_only``: GRPO on self-certainty alone (INTUITOR), no RD;
* ``hytuning``: mixing ``prg`` (the own-reasoning anchor) with the recipe's rewards: self-certainty 0.1, PRG-gated
  confidence 1, agreement Brier 1 (:data:`evidence.presets.HY_REWARDS`);
* ``hytuning_const``: the same rewards at a constant rd_weight, the mean of the ``hytuning`` runs (run after them);
* ``rl_hyrewards``: rl_only with the recipe's rewards (separates the rewards from the mixing);
* ``hytuning_gate``: ``hytuning`` with per-sample gating of positive advantages (``prg_gate=True``);
* ``chord``: the CHORD-mu schedule with the recipe's rewards;
* ``hytuning_blind``: ``hytuning`` with the answer statement taken out of the RL loss (``answer_blind_rl=True``).

An arm is one entry of :data:`evidence.presets.ARMS` (its flags to ``examples/train_medqa.py``) and of a preset's
``seeds``; nothing else names it.

Presets: ``gate`` (rd_only alone: does RD learn the task?), ``evidence`` (issue 23: rd_only, rl_only, hytuning and
hytuning_const at 3 seeds, the other three at 1, in the regime where the gate passed; fixed steps, 2 lanes), ``cpu``
and ``cpu-full`` (0.2.0's budgeted presets: the number of steps is set from measurements taken at the start, one
short training run for the step time and the base model's evaluation for the seconds per question, so that the whole
preset fits ``--budget_minutes``) and ``gpu`` (every arm at 3 seeds, Qwen2.5-1.5B-Instruct through
``examples/recipes/qwen2.5_1.5b_medqa.yaml``). ``--jobs`` runs that many arms side by side, each with its share of
the cores.

Order of work, all under ``--output_dir``:

1. ``data/``: the synthetic task (``synthetic_task.py``) unless files are given; the traces are split once into
   ``rd_traces.jsonl`` (trained on) and ``anchor_traces.jsonl`` (16, held out), the same for every arm and seed;
   ``probe.jsonl`` is the first 64 eval questions.
2. ``validity/``: ``hytuning-prg`` on the gold traces against corrupted ones under the base model (AUROC per
   corruption with intervals); ``base/`` and ``base_anchor/``: ``hytuning-eval`` of the base model on the eval and
   the anchor questions.
3. ``plan.json``: the number of steps (kept on a rerun, so resumed runs match).
4. ``runs/<arm>/seed<k>/``: each run (``examples/train_medqa.py``): final model, ``trainer_state.json`` (the
   learning curves, the probe every ``probe_steps``), ``calibration_after/`` (the eval questions),
   ``calibration_anchor/`` (the anchor questions) and ``DONE.json``. A rerun skips every run with ``DONE.json``,
   resumes one with a checkpoint (presets that save every 10 steps) and restarts the others.
5. ``results.json`` / ``results.md``: the gate; per-arm metrics with intervals, raw and after post-hoc temperature
   scaling (one T per model fitted by NLL on its own answers to the anchor questions, the only labelled questions
   besides the traces); the primary comparisons named in advance (:data:`PRIMARY`); every other difference
   (against the base model and the references: paired bootstrap over questions within a seed, a two-stage bootstrap,
   seeds then questions, where both arms have several seeds), marked exploratory; ``curves.png`` and
   ``reliability_grid.png``.

Arguments after ``--`` go to every training run unchanged (e.g. ``--model_name_or_path``, ``--learning_rate``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import report
from .analysis import analyse, calibration_choice, pilot, read_pilot
from .presets import ADAPTIVE, ARMS, CONSTANT, PRESETS, SCRIPT, resolve, runnable
from .runner import (
    Run,
    derived_files,
    mean_rd_weight,
    measure,
    plan_runs,
    prepare_data,
    probe_interval,
    read_jsonl,
    run_command,
    say,
    steps_for_budget,
    train,
)
from .store import check_reused, collect, restore


def analyse_and_write(args, runs: list[Run], plan: dict, timing: dict, files: dict, missing=None) -> dict:
    """:func:`evidence.analysis.analyse`, then :func:`evidence.report.write` into ``--output_dir`` (the pilot:
    :func:`evidence.analysis.pilot` and :func:`evidence.report.write_pilot`)."""
    if resolve(args).pilot:
        return report.write_pilot(args.output_dir, pilot(runs), args, plan, missing)
    result, base, by_arm = analyse(args, runs, plan, timing, files, missing)
    return report.write(args.output_dir, result, args, runs, base, by_arm, files)


def analyse_finished(args, runs: list[Run]) -> dict:
    """``--analyse``: :func:`analyse` on the runs finished so far under ``--output_dir``, with this checkout's code,
    training and evaluating nothing and writing no data file, so a preset still running there is left undisturbed
    (interim figures while it runs; the analysis of a finished run again after a fix to the analysis)."""
    out = args.output_dir
    plan_path = os.path.join(out, "plan.json")
    if not os.path.exists(plan_path):
        raise SystemExit(f"--analyse: {plan_path} does not exist; run the preset into --output_dir first.")
    with open(plan_path) as f:
        saved = json.load(f)
    files = derived_files(args)
    base = [] if resolve(args).pilot else [os.path.join(out, "base", "predictions.jsonl")]  # the pilot has none
    for need in [*files.values(), *base]:
        if not os.path.exists(need):
            raise SystemExit(f"--analyse: {need} does not exist; run the preset into --output_dir first.")
    files["n_eval"] = str(len(read_jsonl(files["eval_used"])))
    done = [r for r in runs if r.done]
    if not done:
        raise SystemExit(f"--analyse: no finished run (DONE.json) under {os.path.join(out, 'runs')}.")
    missing = [f"{r.arm}/seed{r.seed}" for r in runs if not r.done]
    say(f"analysing {len(done)} finished run(s); not finished: {', '.join(missing) or 'none'}")
    return analyse_and_write(args, done, saved["plan"], saved["timing"], files, missing)


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
    p.add_argument(
        "--first_seed",
        type=int,
        default=0,
        help="The first seed of each arm (with --seeds 1: that seed alone, e.g. in a process of its own beside "
        "another; the lanes' threads must add up to the cores at most, set OMP_NUM_THREADS).",
    )
    p.add_argument("--max_steps", type=int, help="Steps per run (skips the budget measurement).")
    p.add_argument("--budget_minutes", type=float, help="Wall budget of the whole preset (CPU presets).")
    p.add_argument("--jobs", type=int, help="Runs side by side (default: the preset's).")
    p.add_argument("--safety", type=float, default=0.9, help="Share of the budget the plan may fill.")
    p.add_argument("--calibration_steps", type=int, default=3, help="Steps of the step-time measurement.")
    p.add_argument("--n_bootstrap", type=int, default=2000)
    p.add_argument(
        "--checkpoint_steps",
        type=int,
        nargs="+",
        help="Evaluate these checkpoints of every run with every confidence estimator (the premise; default: the "
        "preset's, e.g. 30 40 50 for --preset premise).",
    )
    p.add_argument(
        "--extra_eval",
        type=int,
        help="Evaluate the last checkpoint single pass on this many more eval questions too (the premise; default: "
        "the preset's, 800 for --preset premise).",
    )
    p.add_argument("--replan", action="store_true", help="Measure and plan again although plan.json exists.")
    p.add_argument("--dry_run", action="store_true", help="Print the plan and the commands; run nothing.")
    p.add_argument(
        "--collect",
        metavar="DIR",
        help="Copy the small outputs of --output_dir's finished runs (no weights) to DIR, to commit; run nothing. "
        "With --restore, a file the same as in a restored folder is left out (it is committed there).",
    )
    p.add_argument(
        "--restore",
        metavar="DIR",
        nargs="+",
        help="Before anything else, copy the small outputs that --collect wrote to each DIR back into --output_dir "
        "where missing (the first DIR holding a file gives it; a fresh machine: finished runs are skipped, the base "
        "evaluation and the plan reused; checked against the data files), then go on as without it. A finished run "
        "restored before all its checkpoint evaluations were made is trained again for its checkpoints, and keeps its "
        "evaluations if it logs the same figures (else it is redone whole).",
    )
    p.add_argument(
        "--analyse",
        action="store_true",
        help="Analyse the runs finished so far under --output_dir (results.json, results.md, figures there, marked "
        "partial while runs are missing); train and evaluate nothing. Safe beside a preset still running there.",
    )
    p.add_argument(
        "--calibration_choice",
        nargs=2,
        metavar=("PILOT", "PILOT_SHARE"),
        help="Print the calibration arms' target and weight that the pilots' outputs (the folders --collect wrote for "
        "--preset pilot and pilot-share; a missing one is a pilot not run) choose by the rule fixed in "
        "evidence.analysis.calibration_choice, to set in evidence.presets.V3_CALIBRATION; run nothing.",
    )
    args = p.parse_args(own)
    args.argv = own + (["--", *extra] if extra else [])
    return args, extra


def show(result: dict, out: str) -> dict:
    """Print the ``results.md`` that :func:`analyse` wrote; return its result."""
    with open(os.path.join(out, "results.md")) as f:
        print(f.read())
    return result


def main(argv: list[str] | None = None) -> dict | None:
    args, extra = parse(list(sys.argv[1:] if argv is None else argv))
    args.started = time.time()
    if args.calibration_choice:
        choice = calibration_choice(*(read_pilot(d) for d in args.calibration_choice))
        print(json.dumps(choice, indent=2))
        return choice
    preset = resolve(args)
    args.jobs = args.jobs or preset.jobs
    runs = plan_runs(preset, args)
    waiting = sorted({r.arm for r in runs if not runnable(r.arm)})
    if waiting and not (args.dry_run or args.analyse or args.collect):
        ready = [a for a in dict.fromkeys(r.arm for r in runs) if runnable(a)]
        raise SystemExit(
            f"{', '.join(waiting)}: calibration_target and calibration_weight are still pending "
            "(evidence.presets.V3_CALIBRATION, set from the pilot: --calibration_choice). Run the others meanwhile: "
            f"--arms {' '.join(ready)}"
        )
    os.makedirs(args.output_dir, exist_ok=True)
    if args.restore:
        copied = restore(args.restore, args.output_dir)
        say(f"{len(copied)} files restored from {', '.join(args.restore)} into {args.output_dir}")
    if args.analyse:
        return show(analyse_finished(args, runs), args.output_dir)
    if args.collect:
        copied = collect(args.output_dir, args.collect, args.restore or ())
        kept = f" (the same files in {', '.join(args.restore)} left out)" if args.restore else ""
        say(f"{len(copied)} files copied to {args.collect}{kept}")
        return None
    if args.dry_run:
        files = {k: f"<{k}>" for k in ("train", "rd_traces", "anchor_traces", "eval_used", "probe", "n_eval")}
        steps = args.max_steps or preset.max_steps
        plan = {"max_steps": steps, "probe_steps": probe_interval(steps, preset.probe_steps)}
        for r in runs:
            rd = 0.5 if r.arm == CONSTANT else None
            print(f"{r.arm} seed {r.seed}: {' '.join(run_command(r, preset, files, plan, extra, rd)[1:])}")
        note = "" if preset.budget_minutes is None or args.max_steps else " (set from a measured step time)"
        wait = f" Pending, not runnable yet: {', '.join(waiting)} (V3_CALIBRATION)." if waiting else ""
        print(f"{len(runs)} runs, up to {steps} steps each{note}, {args.jobs} at a time.{wait}")
        return None
    files = prepare_data(args, preset)
    check_reused(args.output_dir, files)
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
        if not preset.pilot:
            measure(args, preset, files, extra, model, calibrate=False)  # base / validity only if missing
        say(f"plan.json kept: {plan['max_steps']} steps per run")
    else:  # the pilot evaluates no eval question, not even the base model's answers
        timing = {} if preset.pilot else measure(args, preset, files, extra, model)
        plan = steps_for_budget(timing, preset, args, len(runs), time.time() - args.started)
        with open(plan_path, "w") as f:
            json.dump({"plan": plan, "timing": timing, "runs": len(runs)}, f, indent=2)
        say(
            f"plan: {len(runs)} runs x {plan['max_steps']} steps (probe every {plan['probe_steps']}), "
            f"{args.jobs} lanes"
        )
    late = [s for s in preset.checkpoint_steps if s > plan["max_steps"]]
    if late:
        raise SystemExit(f"--checkpoint_steps {late} lie beyond the {plan['max_steps']} steps of a run.")
    prg_runs = [r for r in runs if r.arm == ADAPTIVE]
    prg_done = threading.Event()
    if not prg_runs:
        prg_done.set()

    def task(run: Run):
        rd = None
        if run.arm == CONSTANT:
            prg_done.wait()
            rd = mean_rd_weight(prg_runs) if prg_runs else 0.5
            say(f"{CONSTANT}: rd_weight {rd:.4f} (mean of the {ADAPTIVE} runs)")
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
    return show(analyse_and_write(args, runs, plan, timing, files), args.output_dir)
