"""Does HyTuning do what it claims? Five settings, same model, data, seed and budget, before and after training.

    python benchmarks/compare_baselines.py                      # SmolLM2-135M-Instruct, shipped sample, CPU
    python benchmarks/compare_baselines.py --max_steps 20 -- --config examples/recipes/qwen2.5_1.5b_medqa.yaml

Settings (all with the self-certainty reward, so that only the mixing differs):

* ``rlif_only``: GRPO on self-certainty alone (INTUITOR-style), no RD;
* ``rd_only``: RD alone (SFT on the traces), rd_weight = 1;
* ``constant``: rd_weight = 0.5;
* ``chord``: the CHORD-mu schedule (warm-up to 0.9, cosine decay to 0.05);
* ``hytuning``: rd_weight from the anchor's gain (mixing v2).

Each setting trains with ``examples/train_medqa.py`` in its own process; arguments after ``--`` go to it unchanged.
Output, in ``--output_dir``: ``results.md`` and ``results.json`` (accuracy, ECE, Brier, AUROC, AURC, overconfidence
per setting, and the model before training), ``training_curves.png`` (rd_weight and the policy's PRG per step) and
``reliability_grid.png`` (every reliability diagram side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_medqa.py")
RECIPE = os.path.join(ROOT, "examples", "recipes", "cpu_default.yaml")
SETTINGS = {
    "rlif_only": ["--mixing", "rl_only"],
    "rd_only": ["--mixing", "rd_only"],
    "constant": ["--mixing", "constant", "--rd_weight", "0.5"],
    "chord": ["--mixing", "chord"],
    "hytuning": ["--mixing", "prg"],
}
METRICS = ["accuracy", "ece", "ece_quantile", "brier", "auroc", "aurc", "overconfidence_rate", "stated_rate"]


def run_setting(name, extra, args, out):
    cmd = [
        sys.executable,
        SCRIPT,
        *(["--config", RECIPE] if "--config" not in extra else []),
        *extra,
        *SETTINGS[name],
        "--output_dir",
        out,
        "--max_steps",
        str(args.max_steps),
        "--seed",
        str(args.seed),
        "--rewards",
        "self_certainty",
        "--max_eval_samples",
        str(args.max_eval_samples),
        "--eval_before",
        "true" if name == "rlif_only" else "false",
    ]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - start


def curves(output_dir, names):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lam, ax_prg) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name in names:
        with open(os.path.join(output_dir, name, "trainer_state.json")) as f:
            logs = [h for h in json.load(f)["log_history"] if "hytuning/rd_weight" in h]
        steps = [h["step"] for h in logs]
        ax_lam.plot(steps, [h["hytuning/rd_weight"] for h in logs], marker="o", label=name)
        prg = [(h["step"], h["hytuning/prg_policy"]) for h in logs if "hytuning/prg_policy" in h]
        if prg:
            ax_prg.plot(*zip(*prg), marker="o", label=name)
    ax_lam.set_title("rd_weight per step")
    ax_prg.set_title("policy PRG per step")
    for ax in (ax_lam, ax_prg):
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.savefig(os.path.join(output_dir, "training_curves.png"), dpi=120)
    plt.close(fig)


def grid(output_dir, panels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 5), constrained_layout=True)
    for ax, (title, png) in zip(axes, panels):
        ax.imshow(plt.imread(png))
        ax.set_title(title)
        ax.axis("off")
    fig.savefig(os.path.join(output_dir, "reliability_grid.png"), dpi=110)
    plt.close(fig)


def fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="outputs/baselines")
    p.add_argument("--max_steps", type=int, default=6)
    p.add_argument("--max_eval_samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = p.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    seconds = {}
    for name in args.settings:
        seconds[name] = run_setting(name, extra, args, os.path.join(args.output_dir, name))

    def report(name, stage):
        with open(os.path.join(args.output_dir, name, stage, "calibration.json")) as f:
            return json.load(f)["metrics"]

    before_owner = "rlif_only" if "rlif_only" in args.settings else None
    rows = {}
    if before_owner:
        rows["before training"] = report(before_owner, "calibration_before")
    for name in args.settings:
        rows[name] = report(name, "calibration_after")
    lines = [
        "| setting | " + " | ".join(METRICS) + " | train+eval (s) |",
        "|---" * (len(METRICS) + 2) + "|",
    ]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(m.get(k)) for k in METRICS) + f" | {seconds.get(name, 0):.0f} |")
    table = "\n".join(lines)
    command = "python benchmarks/compare_baselines.py " + " ".join(sys.argv[1:])
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(f"Command: `{command}`\n\n{table}\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"metrics": rows, "seconds": seconds, "command": command}, f, indent=2)
    curves(args.output_dir, args.settings)
    panels = []
    if before_owner:
        panels.append(("before", os.path.join(args.output_dir, before_owner, "calibration_before", "reliability.png")))
    panels += [(n, os.path.join(args.output_dir, n, "calibration_after", "reliability.png")) for n in args.settings]
    grid(args.output_dir, panels)
    print(table)


if __name__ == "__main__":
    main()
