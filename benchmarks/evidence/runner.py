"""The runner of the evidence harness: the data files every run reads, the plan (steps that fit a budget), the runs as
real ``examples/train_medqa.py`` processes with their checkpoints and resume, the anchor evaluations, and what a run
left behind (its state, its commit)."""

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
from dataclasses import dataclass

from .presets import _NULL_HUB, ADAPTIVE, ARMS, CONSTANT, REFERENCES, ROOT, SCRIPT, Preset, resolve

_print_lock = threading.Lock()


def say(message: str) -> None:
    with _print_lock:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` whole or not at all: a temporary file beside it, then ``os.replace``. Every start
    rewrites the data files, and two processes may share an output folder (one per lane, each with its own
    ``--arms`` or ``--seeds``): a reader beside a start then sees the old file or the new one, never half of one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def derived_files(args: argparse.Namespace) -> dict[str, str]:
    """Where :func:`prepare_data` writes the files every run reads (the probe: ``--probe_file`` when given;
    ``sampled``: the eval questions the sampled estimators are measured on, for presets with ``checkpoint_steps``;
    ``eval_extra``: the questions after them the last checkpoint is also evaluated on, for presets with
    ``extra_eval``)."""
    data = os.path.join(args.output_dir, "data")
    preset = resolve(args)
    names = ("rd_traces", "anchor_traces", "eval_used", "probe") + (("sampled",) if preset.checkpoint_steps else ())
    names += ("eval_extra",) if preset.checkpoint_steps and preset.extra_eval else ()
    files = {k: os.path.join(data, f"{k}.jsonl") for k in names}
    if args.probe_file:
        files["probe"] = args.probe_file
    return files


def prepare_data(args: argparse.Namespace, preset: Preset) -> dict[str, str]:
    """The files every run reads; the traces split once into RD and anchor traces (fixed permutation, seed 0)."""
    data = os.path.join(args.output_dir, "data")
    os.makedirs(data, exist_ok=True)
    files = {"train": args.train_file, "eval": args.eval_file, "traces": args.traces_file}
    extra_rows = None
    if not all(files.values()):
        import synthetic_task

        # the task grows at its end: the first n_eval eval questions, and every other split, are the same whatever
        # is asked beyond them, so the extra questions are the next ones and an older output keeps its questions
        n_eval = preset.n_eval + preset.extra_eval
        splits = synthetic_task.generate(args.data_seed, n_traces=preset.n_traces, n_eval=n_eval)
        splits["eval"], beyond = splits["eval"][: preset.n_eval], splits["eval"][preset.n_eval :]
        extra_rows = None if args.eval_file else beyond
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
    files.update(derived_files(args))
    write_jsonl(files["rd_traces"], [t for i, t in enumerate(traces) if i not in held])
    write_jsonl(files["anchor_traces"], [t for i, t in enumerate(traces) if i in held])
    all_eval = read_jsonl(files["eval"])
    eval_rows = all_eval[: args.max_eval_samples or None]
    files["n_eval"] = str(len(eval_rows))
    write_jsonl(files["eval_used"], eval_rows)
    if "eval_extra" in files:
        if extra_rows is None:  # a given --eval_file: its rows after those evaluated
            extra_rows = all_eval[len(eval_rows) : len(eval_rows) + preset.extra_eval]
        if len(extra_rows) < preset.extra_eval:
            raise SystemExit(
                f"--eval_file {files['eval']} has {len(all_eval)} questions: the last checkpoint's extra evaluation "
                f"asks for {preset.extra_eval} after the {len(eval_rows)} evaluated. Give a longer file, lower "
                "--max_eval_samples, or set --extra_eval 0."
            )
        write_jsonl(files["eval_extra"], extra_rows)
    if not args.probe_file:
        write_jsonl(files["probe"], eval_rows[: preset.n_probe])
    if "sampled" in files:
        write_jsonl(files["sampled"], eval_rows[: preset.n_sampled])
    say(
        f"data: {len(read_jsonl(files['train']))} unlabeled, {len(traces) - n_anchor} RD traces + {n_anchor} anchor, "
        f"{len(eval_rows)} eval"
        + (f" (+{len(extra_rows)} for the last checkpoint)" if "eval_extra" in files else "")
        + f", {len(read_jsonl(files['probe']))} probe questions"
    )
    return files


@dataclass
class Run:
    arm: str
    seed: int
    folder: str

    @property
    def done(self) -> bool:
        return os.path.exists(os.path.join(self.folder, "DONE.json"))


def plan_runs(preset: Preset, args: argparse.Namespace) -> list[Run]:
    """The adaptive arm first (the constant arm copies its mean rd_weight), the references next, the constant arm
    last; within an arm, the lowest seed first (``--first_seed``, 0 by default)."""
    arms = [a for a in ARMS if a in preset.seeds and (not args.arms or a in args.arms)]
    arms.sort(key=lambda a: (a != ADAPTIVE, a not in REFERENCES, a == CONSTANT))
    first = getattr(args, "first_seed", 0) or 0
    runs = []
    for arm in arms:
        n = args.seeds if args.seeds is not None else preset.seeds[arm]
        runs += [Run(arm, s, os.path.join(args.output_dir, "runs", arm, f"seed{s}")) for s in range(first, first + n)]
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
    if preset.pilot:  # judged on the anchor questions only (evaluate_anchor, evaluate_pilot): no eval question seen
        cmd += ["--skip_eval", "true"]
    else:
        cmd += ["--eval_file", files["eval_used"], "--max_eval_samples", files["n_eval"], "--eval_before", "false"]
        cmd += ["--anchor_eval", "true"]  # calibration_anchor/ in the same process (evaluate_anchor finds it there)
        cmd += ["--probe_file", files["probe"], "--probe_steps", str(plan["probe_steps"])]
    cmd += ["--eval_max_new_tokens", str(preset.max_new_tokens), "--allow_sample_traces", "true"]
    cmd += ["--max_steps", str(plan["max_steps"]), "--seed", str(run.seed), "--output_dir", run.folder]
    cmd += ARMS[run.arm] + (["--rd_weight", f"{rd_weight:.4f}"] if run.arm == CONSTANT else [])
    if preset.model:
        cmd += ["--model_name_or_path", preset.model]
    return cmd + extra


def lane_threads(jobs: int) -> str:
    """The threads of one lane: the cores shared among ``jobs`` lanes, or ``OMP_NUM_THREADS`` as the caller set it
    (to leave cores free). The lanes' threads must add up to the cores at most: PyTorch's threads spin while they
    wait, so three processes of two threads on two cores run several times slower than two of one."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // max(jobs, 1)))


def thread_env(jobs: int, threads: str | None = None) -> dict:
    """The environment of a lane's process: :func:`lane_threads`, or ``threads`` when given (a retrain reuses the
    threads its run was trained with: they set the order of floating-point sums)."""
    threads = threads or lane_threads(jobs)
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}


def execute(cmd: list[str], log: str, jobs: int, append: bool = False, threads: str | None = None) -> float:
    """Run ``cmd`` with its output in ``log`` (after what is there with ``append``, as a resumed run does, so the log
    of the steps before the interruption is kept) at ``threads`` threads (default: :func:`lane_threads`); raise with
    the log's tail if it fails. Returns the wall seconds."""
    start = time.time()
    with open(log, "a" if append else "w") as f:
        if append and f.tell():  # the interrupted process may have stopped mid-line (a progress bar)
            f.write(f"\n[{time.strftime('%Y-%m-%d %H:%M:%S')}] resumed\n")
            f.flush()
        env = thread_env(jobs, threads)
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}); log {log}:\n{tail}")
    return time.time() - start


def evaluate_command(model: str, questions: str, folder: str, preset: Preset, samples: bool = False) -> list[str]:
    """``hytuning-eval`` of ``model`` on ``questions`` into ``folder`` (greedy, the preset's length and batch; with
    ``samples``, also the preset's ``num_samples`` sampled completions per question at ``sample_temperature``)."""
    cmd = cli_command("main") + ["--model_name_or_path", model, "--dataset_name", questions, "--output_dir", folder]
    cmd += ["--max_new_tokens", str(preset.max_new_tokens), "--batch_size", str(preset.eval_batch_size)]
    if samples:
        cmd += ["--num_samples", str(preset.num_samples), "--sample_temperature", str(preset.sample_temperature)]
    return cmd


#: The premise's evaluations of a checkpoint: folder under ``premise/step<N>/`` -> (questions file, with samples).
PREMISE_KINDS = {"full": ("eval_used", False), "sampled": ("sampled", True), "extra": ("eval_extra", False)}


def checkpoint_evaluations(run: Run, preset: Preset, plan: dict) -> list[tuple[int, str, str]]:
    """``(step, model folder, output folder)`` of each evaluation the premise asks of ``run``: every
    ``checkpoint_steps`` checkpoint on all eval questions (``full``, single pass; the last step's is the run's own
    ``calibration_after``, not repeated) and on the ``sampled`` questions with samples; the last one also single pass
    on the ``extra_eval`` questions after the eval questions (``extra``). The output folder's name is its kind
    (:data:`PREMISE_KINDS`). The last checkpoint comes first: the premise's question is asked there."""
    out = []
    last = max(preset.checkpoint_steps, default=None)
    for step in sorted(preset.checkpoint_steps, reverse=True):
        model = os.path.join(run.folder, f"checkpoint-{step}")
        folder = os.path.join(run.folder, "premise", f"step{step}")
        if step != plan["max_steps"]:
            out.append((step, model, os.path.join(folder, "full")))
        out.append((step, model, os.path.join(folder, "sampled")))
        if step == last and preset.extra_eval:
            out.append((step, model, os.path.join(folder, "extra")))
    return out


def evaluate_checkpoints(run: Run, preset: Preset, files: dict, plan: dict, jobs: int) -> None:
    """The premise's evaluations of ``run`` (:func:`checkpoint_evaluations`), each skipped when already there, so an
    interrupted preset resumes where it stopped."""
    for step, model, folder in checkpoint_evaluations(run, preset, plan):
        if os.path.exists(os.path.join(folder, "predictions.jsonl")):
            continue
        if not os.path.isdir(model):
            raise RuntimeError(f"{run.arm} seed {run.seed}: {model} is gone; the premise needs it (save_total_limit).")
        os.makedirs(folder, exist_ok=True)
        key, sampled = PREMISE_KINDS[os.path.basename(folder)]
        cmd = evaluate_command(model, files[key], folder, preset, sampled)
        execute(cmd, os.path.join(folder, "eval.log"), jobs)
        kind = "sampled" if sampled else "single pass" + (", extra questions" if key == "eval_extra" else "")
        say(f"{run.arm} seed {run.seed}: checkpoint {step} evaluated ({kind})")


def evaluate_anchor(model: str, folder: str, files: dict, preset: Preset, jobs: int) -> None:
    """The model's own-reasoning answers to the held-out anchor questions, the only labelled questions besides the
    traces: post-hoc temperature scaling is fitted on them (``analyse``). Skipped when already there (a run writes
    them itself with ``--anchor_eval``; the base model's and older runs' are evaluated here)."""
    if os.path.exists(os.path.join(folder, "predictions.jsonl")):
        return
    os.makedirs(folder, exist_ok=True)
    execute(evaluate_command(model, files["anchor_traces"], folder, preset), os.path.join(folder, "eval.log"), jobs)


def evaluate_pilot(run: Run, preset: Preset, files: dict, jobs: int) -> None:
    """The pilot's second look at the anchor questions: ``num_samples`` answers per question at
    ``sample_temperature`` (``calibration_anchor_sampled/``), where a model that answers the 16 greedily without error
    still makes errors for its confidence to see. Skipped when already there, or outside the pilot."""
    folder = os.path.join(run.folder, "calibration_anchor_sampled")
    if not preset.pilot or os.path.exists(os.path.join(folder, "predictions.jsonl")):
        return
    os.makedirs(folder, exist_ok=True)
    cmd = evaluate_command(run.folder, files["anchor_traces"], folder, preset, samples=True)
    execute(cmd, os.path.join(folder, "eval.log"), jobs)


def train(run: Run, preset: Preset, files: dict, plan: dict, extra: list[str], jobs: int, rd_weight=None) -> None:
    anchor_eval = os.path.join(run.folder, "calibration_anchor")
    if run.done and orphaned(run, preset, plan):
        retrain(run, preset, files, plan, extra, jobs, rd_weight)
    if run.done:
        evaluate_anchor(run.folder, anchor_eval, files, preset, jobs)
        evaluate_pilot(run, preset, files, jobs)
        evaluate_checkpoints(run, preset, files, plan, jobs)
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
    threads = lane_threads(jobs)
    seconds = execute(cmd, os.path.join(run.folder, "train.log"), jobs, append=checkpoint is not None, threads=threads)
    with open(os.path.join(run.folder, "DONE.json"), "w") as f:
        done = {"arm": run.arm, "seed": run.seed, "seconds": round(seconds, 1), "command": cmd, "commit": git_commit()}
        done["threads"] = threads  # a retrain (``retrain``) reuses them
        if checkpoint is not None:  # the seconds are those of the last process only
            done["resumed_from"] = os.path.basename(checkpoint)
        json.dump(done, f, indent=2)
    evaluate_anchor(run.folder, anchor_eval, files, preset, jobs)
    evaluate_pilot(run, preset, files, jobs)
    evaluate_checkpoints(run, preset, files, plan, jobs)
    say(f"{run.arm} seed {run.seed}: finished in {seconds:.0f} s (anchor questions evaluated)")


#: A retrained run keeps the evaluations of its first training when every figure it logs differs from the first
#: log's by at most this much (:func:`log_difference`). Training here repeats itself up to the order of
#: floating-point sums: the premise's rd_only seed 0, trained once at one thread and once at two, logged figures
#: within 7e-4 of each other over its 50 steps; a different seed or learning rate moves them by far more.
SAME_RUN_RTOL = 1e-3

#: Logged figures that measure time, not the model: left out of :func:`log_difference`.
TIMING_KEYS = ("step_time", "seconds", "runtime", "_per_second")


def log_difference(new: list[dict], old: list[dict]) -> float:
    """The largest difference between two ``log_history`` lists, entry by entry and figure by figure,
    ``|a - b| / max(|a|, |b|, 1)`` (relative above 1, absolute below, so figures near 0 do not blow it up), timings
    (:data:`TIMING_KEYS`) left out. ``inf`` when the two logged different steps or different figures."""
    if len(new) != len(old):
        return math.inf
    worst = 0.0
    for a, b in zip(new, old):
        keys = {k for k in a if not any(t in k for t in TIMING_KEYS)}
        if keys != {k for k in b if not any(t in k for t in TIMING_KEYS)}:
            return math.inf
        for k in keys:
            x, y = a[k], b[k]
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                if not (math.isfinite(x) and math.isfinite(y)):
                    if not (x == y or (math.isnan(x) and math.isnan(y))):
                        return math.inf
                    continue
                worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1.0))
            elif x != y:
                return math.inf
    return worst


def orphaned(run: Run, preset: Preset, plan: dict) -> bool:
    """A finished run that still owes a checkpoint evaluation (:func:`checkpoint_evaluations`) whose checkpoint is
    gone: a run restored onto a fresh machine (``--restore``) before all of them were made. Weights are never
    committed, so only training again brings the checkpoint back (:func:`retrain`)."""
    return any(
        not os.path.exists(os.path.join(folder, "predictions.jsonl")) and not os.path.isdir(model)
        for _, model, folder in checkpoint_evaluations(run, preset, plan)
    )


def retrain(run: Run, preset: Preset, files: dict, plan: dict, extra: list[str], jobs: int, rd_weight=None) -> bool:
    """Train the :func:`orphaned` ``run`` again, without its final evaluation (``--skip_eval true``: the one it has
    stands), at the threads its ``DONE.json`` records, to bring back its checkpoints. If what the new training logs
    matches the first training's log (:func:`log_difference` at most :data:`SAME_RUN_RTOL`), it is the same model:
    its evaluations are kept, the first log is put back and the retrain recorded in ``DONE.json``; returns True.
    Otherwise the kept evaluations belong to a model that cannot be had again: the run folder is removed (the run is
    then trained and evaluated whole) and False returned. A retrain interrupted after a checkpoint resumes from it;
    the first log waits in ``trainer_state.first.json`` meanwhile."""
    done = _done(run)
    first = os.path.join(run.folder, "trainer_state.first.json")
    if not os.path.exists(first):
        shutil.copyfile(os.path.join(run.folder, "trainer_state.json"), first)
    with open(first) as f:
        before = json.load(f)["log_history"]
    checkpoint = last_checkpoint(run.folder)
    cmd = run_command(run, preset, files, plan, extra, rd_weight) + ["--skip_eval", "true"]
    if checkpoint is not None:
        cmd += ["--resume_from_checkpoint", "true"]
    threads = str(done.get("threads") or lane_threads(jobs))
    say(
        f"{run.arm} seed {run.seed}: trained again at {threads} thread(s) for its missing checkpoint evaluations"
        + (f" (resumed from {os.path.basename(checkpoint)})" if checkpoint else "")
    )
    execute(cmd, os.path.join(run.folder, "train.log"), jobs, append=True, threads=threads)
    with open(os.path.join(run.folder, "trainer_state.json")) as f:
        after = json.load(f)["log_history"]
    difference = log_difference(after, before)
    if difference > SAME_RUN_RTOL:
        say(
            f"{run.arm} seed {run.seed}: the new training logged other figures than the first (largest difference "
            f"{difference:.2e} > {SAME_RUN_RTOL:g}); its evaluations are dropped and the run is redone whole"
        )
        shutil.rmtree(run.folder)
        return False
    shutil.move(first, os.path.join(run.folder, "trainer_state.json"))
    done["retrained"] = [*done.get("retrained", []), {"log_difference": difference, "commit": git_commit()}]
    with open(os.path.join(run.folder, "DONE.json"), "w") as f:
        json.dump(done, f, indent=2)
    say(f"{run.arm} seed {run.seed}: trained again, the same run (largest log difference {difference:.2e})")
    return True


def last_checkpoint(folder: str) -> str | None:
    """The newest ``checkpoint-<step>`` folder of an unfinished run, if any."""
    if not os.path.isdir(folder):
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(folder)


def git_commit(cwd: str = ROOT) -> str | None:
    """The commit of the checkout at ``cwd`` (this one by default: the preset is meant to run from a worktree at a
    fixed commit), ``+uncommitted`` when its tree has changes; ``None`` outside a git checkout."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True).stdout.strip()
    return (proc.stdout.strip() + ("+uncommitted" if dirty else "")) if proc.returncode == 0 else None


def run_commit(run: Run) -> str:
    """The commit ``run`` was made at: its ``DONE.json``'s. A run from before ``DONE.json`` recorded it gets the
    commit of the checkout its training script lives in, if that checkout still exists, marked as read at analysis
    (the worktree is meant to stay at one commit, but nothing here can prove it did); else ``"not recorded"``."""
    done = _done(run)
    if done.get("commit"):
        return done["commit"]
    script = next((c for c in done.get("command", []) if c.endswith(".py")), None)
    checkout = os.path.dirname(script) if script else None
    commit = git_commit(checkout) if checkout and os.path.isdir(checkout) else None
    return f"{commit} (read from {checkout} at analysis, not recorded by the run)" if commit else "not recorded"


def trainer_state(run: Run) -> dict:
    """The run's ``trainer_state.json``: its ``log_history`` and ``global_step`` (the optimizer steps it trained; a
    resume at the final checkpoint before the trainer's fix of a40c8da trained one more)."""
    with open(os.path.join(run.folder, "trainer_state.json")) as f:
        return json.load(f)


def log_history(run: Run) -> list[dict]:
    return trainer_state(run)["log_history"]


def rd_weights(run: Run) -> list[tuple[int, float]]:
    """``(step, rd_weight)`` as the run logged them."""
    return [(h["step"], h["hytuning/rd_weight"]) for h in log_history(run) if "hytuning/rd_weight" in h]


def mean_rd_weight(runs: list[Run]) -> float:
    values = [w for r in runs for _, w in rd_weights(r)]
    if not values:
        raise RuntimeError(f"The {ADAPTIVE} runs logged no rd_weight; {CONSTANT} has no weight to copy.")
    return sum(values) / len(values)


def _done(run: Run) -> dict:
    with open(os.path.join(run.folder, "DONE.json")) as f:
        return json.load(f)


def cli_command(entry: str) -> list[str]:
    """``hytuning-eval`` (``main``) or ``hytuning-prg`` (``prg_main``) under this interpreter, whatever is on PATH."""
    return [sys.executable, "-c", f"import sys; from hytuning_trl.cli import {entry}; sys.exit({entry}())"]


def measure(args, preset: Preset, files: dict, extra: list[str], model: str, calibrate: bool = True) -> dict:
    """Validity check and base evaluation (both needed anyway), side by side with a short prg training run whose
    step time and overhead set the number of steps that fit the budget."""
    out = args.output_dir
    base, validity, calib = (os.path.join(out, d) for d in ("base", "validity", "_calibration"))
    evaluate = evaluate_command(model, files["eval_used"], base, preset)
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
        evaluate_anchor(model, os.path.join(out, "base_anchor"), files, preset, args.jobs)

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
        calib_run = Run(ADAPTIVE, 0, calib)
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
