"""How long the commands take to start, against what importing TRL's trainer alone takes, in one run.

    python benchmarks/command_startup.py                 # 5 repetitions, alternating
    python benchmarks/command_startup.py --repeats 3 --json startup.json

Each setting is a fresh interpreter, timed from start to exit, the settings alternating within a repetition so that a
busy machine slows them alike; the table gives the median and the range, and each median as a ratio of
``trl_trainer_import`` (``from trl import GRPOTrainer``: what every command paid before 0.4.0):

* ``python``: the interpreter alone (the floor);
* ``trl_trainer_import``: ``from trl import GRPOTrainer`` (TRL's trainer stack: transformers' ``Trainer``, peft,
  bitsandbytes when installed);
* ``import_hytuning_trl``: ``import hytuning_trl`` (its public names resolve on first use);
* ``eval_missing_file``: ``hytuning-eval`` on a file that does not exist (parse, check, one line on stderr);
* ``prg_missing_file``: the same for ``hytuning-prg``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

SETTINGS = {
    "python": "pass",
    "trl_trainer_import": "from trl import GRPOTrainer",
    "import_hytuning_trl": "import hytuning_trl",
    "eval_missing_file": "import sys; from hytuning_trl.cli import main; sys.exit(main(['--model_name_or_path', 'x', "
    "'--dataset_name', '{missing}']))",
    "prg_missing_file": "import sys; from hytuning_trl.cli import prg_main; "
    "sys.exit(prg_main(['--model_name_or_path', 'x', '--traces_file', '{missing}', '--output_dir', '{out}']))",
}


def time_once(code: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"{code!r} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="Also write the figures here.")
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        fill = {"missing": f"{tmp}/missing.jsonl", "out": f"{tmp}/out"}
        for r in range(args.repeats):
            for name, code in SETTINGS.items():
                times[name].append(time_once(code.format(**fill)))
            print(f"repetition {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    reference = statistics.median(times["trl_trainer_import"])
    rows = {
        name: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
            "ratio_to_trl_trainer_import": statistics.median(t) / reference,
        }
        for name, t in times.items()
    }
    print(f"{'setting':<22} {'median s':>9} {'range s':>13} {'x TRL import':>13}")
    for name, row in rows.items():
        span = f"{row['min_s']:.1f}-{row['max_s']:.1f}"
        print(f"{name:<22} {row['median_s']:>9.2f} {span:>13} {row['ratio_to_trl_trainer_import']:>13.2f}")
    result = {"repeats": args.repeats, "python": sys.version.split()[0], "settings": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
