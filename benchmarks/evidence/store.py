"""What the evidence harness keeps: ``--collect`` copies a preset's small outputs (never weights) to commit,
``--restore`` copies them back onto a fresh machine, and every start checks that kept evaluations answer the data
files' questions in order."""

from __future__ import annotations

import filecmp
import os
import shutil

from .runner import PREMISE_KINDS, read_jsonl

#: What ``--collect`` copies: the figures, the learning curves and the per-question predictions; never weights.
SMALL_OUTPUTS = [
    "plan.json", "measurements.json", "results.json", "results.md", "curves.png", "reliability_grid.png",
    "auroc_curves.png", "reliability_estimators.png",
    "validity/validity.json", "base/calibration.json", "base/predictions.jsonl", "base_anchor/calibration.json",
    "base_anchor/predictions.jsonl",
]  # fmt: skip


RUN_OUTPUTS = [
    "DONE.json", "trainer_state.json", "calibration_after/calibration.json", "calibration_after/predictions.jsonl",
    "calibration_anchor/calibration.json", "calibration_anchor/predictions.jsonl",
    "calibration_anchor_sampled/calibration.json", "calibration_anchor_sampled/predictions.jsonl",  # the pilot's
]  # fmt: skip


#: The premise's checkpoint evaluations under a run folder: ``premise/step<N>/{full,sampled,extra}/``.
PREMISE_OUTPUTS = ["calibration.json", "predictions.jsonl"]


def premise_folders(root: str, rel: str) -> list[str]:
    """``rel/premise/step<N>/<kind>`` of every premise evaluation folder of the run ``rel`` under ``root``."""
    base = os.path.join(root, rel, "premise")
    if not os.path.isdir(base):
        return []
    return [
        os.path.join(rel, "premise", step, kind)
        for step in sorted(os.listdir(base))
        for kind in sorted(os.listdir(os.path.join(base, step)))
    ]


def run_folders(root: str) -> list[str]:
    """``runs/<arm>/<seed>`` of every run folder under ``root``, relative to it."""
    runs_dir = os.path.join(root, "runs")
    arms = sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []
    return [os.path.join("runs", a, seed) for a in arms for seed in sorted(os.listdir(os.path.join(runs_dir, a)))]


def _same(a: str, b: str) -> bool:
    return os.path.exists(b) and filecmp.cmp(a, b, shallow=False)


def collect(out: str, dest: str, restored_from: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Copy the preset's small outputs and those of every finished run (``DONE.json`` and its anchor evaluation
    there) from ``out`` to ``dest``, under the same relative paths; unfinished runs are left out, and so is a file
    byte for byte the same as the one at its path in a folder of ``restored_from`` (what ``--restore`` brought from
    another collection, e.g. the premise's ``rd_only`` runs in ``evidence-v3``: committed once, restored from both).
    Returns the paths copied (relative)."""
    paths = [p for p in SMALL_OUTPUTS if os.path.exists(os.path.join(out, p))]
    for rel in run_folders(out):
        if os.path.exists(os.path.join(out, rel, "calibration_anchor", "predictions.jsonl")):
            paths += [os.path.join(rel, p) for p in RUN_OUTPUTS if os.path.exists(os.path.join(out, rel, p))]
            for folder in premise_folders(out, rel):
                paths += [
                    os.path.join(folder, p) for p in PREMISE_OUTPUTS if os.path.exists(os.path.join(out, folder, p))
                ]
    paths = [
        rel for rel in paths if not any(_same(os.path.join(out, rel), os.path.join(src, rel)) for src in restored_from)
    ]
    for rel in paths:
        os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
        shutil.copyfile(os.path.join(out, rel), os.path.join(dest, rel))
    return paths


#: Analysis outputs: made anew by every analysis, so ``--restore`` leaves them behind.
ANALYSIS_OUTPUTS = {"results.json", "results.md", "curves.png", "reliability_grid.png", "auroc_curves.png",
                    "reliability_estimators.png"}  # fmt: skip


def restore(sources: str | list[str], out: str) -> list[str]:
    """The inverse of :func:`collect`: copy the small outputs committed under each of ``sources`` back into ``out``
    where a file is missing (never over one; the first source holding a file gives it), so that a run on a fresh
    machine skips the finished runs and reuses the base model's evaluation, the validity check and the plan instead
    of redoing hours of work. Several sources: a run restored from two collections (the premise's ``rd_only`` runs
    are the evidence run's). Returns the paths copied (relative). What the copies hold is checked against the data
    files by :func:`check_reused`."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    for src in sources:
        if not os.path.isdir(src):
            raise SystemExit(f"--restore {src}: no such folder (the one --collect wrote, e.g. docs/data/evidence).")
    copied = []
    for src in sources:
        wanted = [p for p in SMALL_OUTPUTS if p not in ANALYSIS_OUTPUTS]
        wanted += [os.path.join(rel, p) for rel in run_folders(src) for p in RUN_OUTPUTS]
        wanted += [
            os.path.join(f, p) for rel in run_folders(src) for f in premise_folders(src, rel) for p in PREMISE_OUTPUTS
        ]
        for rel in wanted:
            source, target = os.path.join(src, rel), os.path.join(out, rel)
            if os.path.exists(source) and not os.path.exists(target):
                os.makedirs(os.path.dirname(target) or out, exist_ok=True)
                shutil.copyfile(source, target)
                copied.append(rel)
    return copied


def check_reused(out: str, files: dict) -> None:
    """Evaluations kept from an earlier start (or ``--restore``) must be of the questions the data files hold now,
    in order: a run reused on other questions would enter the comparisons unpaired. Raises ``SystemExit`` naming the
    file that differs."""
    from hytuning_trl.mcq import load_mcq

    sources = [("base", "eval_used"), ("base_anchor", "anchor_traces")]
    for rel in run_folders(out):
        sources += [(os.path.join(rel, "calibration_after"), "eval_used")]
        sources += [
            (os.path.join(rel, d), "anchor_traces") for d in ("calibration_anchor", "calibration_anchor_sampled")
        ]
        for folder in premise_folders(out, rel):
            sources += [(folder, PREMISE_KINDS[os.path.basename(folder)][0])]
    sources = [(folder, key) for folder, key in sources if key in files]  # extra: only where the preset asks for it
    asked = {  # as the evaluation read them; each data file once, not once per evaluation kept
        key: [(q["question"], q["answer_idx"]) for q in load_mcq(files[key])] for key in {key for _, key in sources}
    }
    for folder, key in sources:
        path = os.path.join(out, folder, "predictions.jsonl")
        if not os.path.exists(path):
            continue
        kept = [(r["question"], r["gold"]) for r in read_jsonl(path)]
        questions = asked[key]
        if kept != questions:
            same = [a == b for a, b in zip(kept, questions)]
            first = same.index(False) if False in same else len(same)
            raise SystemExit(
                f"{path} holds answers to other questions than {files[key]} ({len(kept)} against {len(questions)}, "
                f"first difference at question {first}): it was made with other data (--data_seed, the data files, "
                "--max_eval_samples). Use a fresh --output_dir, or the data it was made with."
            )
