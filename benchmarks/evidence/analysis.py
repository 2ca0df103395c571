"""The analysis of the evidence harness: per-arm metrics with bootstrap intervals (``_bootstrap.py``), raw and after
post-hoc temperature scaling, the gate, the primary comparisons fixed in :data:`~evidence.presets.PRIMARY`, every
other difference marked exploratory, and what an interval shows in words. It computes; :mod:`evidence.report`
writes."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import Counter

import numpy as np

from .presets import (
    ADAPTIVE,
    ARMS,
    BEST_ARM,
    BEST_CALIBRATION_ARM,
    BEST_LABEL_FREE,
    CALIBRATION_ARMS,
    CONSTANT,
    GATE_POINTS,
    METRICS,
    PILOT_WEIGHTS,
    PRIMARY,
    REFERENCES,
    TRAINED_ARMS,
    Comparison,
    Preset,
    resolve,
)
from .runner import Run, _done, git_commit, rd_weights, read_jsonl, run_commit, trainer_state


def records(path: str) -> list[dict]:
    return read_jsonl(os.path.join(path, "predictions.jsonl"))


def scaled(raw: list[dict], anchor: list[dict]) -> tuple[float, list[dict]]:
    """Post-hoc temperature scaling: T fitted on the model's anchor answers, applied to its eval answers. A T at a
    bound of the fit (no wrong anchor answer: 0.05) is kept, as a calibration engineer with these questions would
    get it, and flagged in the report (``temperatures_at_bound``) instead of warned about here."""
    import warnings

    from hytuning_trl import fit_records_temperature, temperature_scaled_records

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t = fit_records_temperature(anchor)
    return t, temperature_scaled_records(raw, t)


def analyse(
    args, runs: list[Run], plan: dict, timing: dict, files: dict, missing: list[str] | None = None
) -> tuple[dict, list[dict], dict[str, dict[int, list[dict]]]]:
    """Tables and comparisons of ``runs`` (finished) under ``--output_dir``; ``missing`` names the preset's runs left
    out (``--analyse`` before the preset has finished). Returns the result (``results.json``), and the base model's
    and each run's evaluation records that :func:`evidence.report.write` draws the figures from."""
    from _bootstrap import metric_interval, paired_bootstrap, two_stage_bootstrap

    from hytuning_trl import temperature_at_bound

    out = args.output_dir
    base = records(os.path.join(out, "base"))
    by_arm: dict[str, dict[int, list[dict]]] = {}
    for r in runs:
        by_arm.setdefault(r.arm, {})[r.seed] = records(os.path.join(r.folder, "calibration_after"))
    for arm, seeds in by_arm.items():
        for s, recs in seeds.items():
            if [x["question"] for x in recs] != [x["question"] for x in base]:
                raise RuntimeError(f"{arm} seed {s} was evaluated on other questions than the base model.")
    # the same models after post-hoc temperature scaling, each with its own T from its anchor answers
    temperatures = {}
    temperatures["base"], base_t = scaled(base, records(os.path.join(out, "base_anchor")))
    by_arm_t: dict[str, dict[int, list[dict]]] = {}
    for r in runs:
        t, recs = scaled(by_arm[r.arm][r.seed], records(os.path.join(r.folder, "calibration_anchor")))
        temperatures[f"{r.arm}/seed{r.seed}"] = t
        by_arm_t.setdefault(r.arm, {})[r.seed] = recs
    n_boot = args.n_bootstrap

    def summary(base_recs, arms) -> dict:
        table = {"base": {m: metric_interval(m, [base_recs], n_boot) for m in METRICS}}
        table["base"]["stated_rate"] = sum(x["stated"] for x in base_recs) / len(base_recs)
        for arm, seeds in arms.items():
            recs = [seeds[s] for s in sorted(seeds)]
            table[arm] = {m: metric_interval(m, recs, n_boot) for m in METRICS}
            table[arm]["stated_rate"] = statistics.mean(sum(x["stated"] for x in r) / len(r) for r in recs)
            table[arm]["seeds"] = sorted(seeds)
        return table

    table, table_scaled = summary(base, by_arm), summary(base_t, by_arm_t)

    def difference(metric: str, a: list[list[dict]], b: list[list[dict]]) -> dict:
        """``metric(b) - metric(a)`` on paired seeds: two-stage bootstrap with several, over questions with one."""
        if len(a) > 1:
            res = two_stage_bootstrap(metric, a, b, n_boot)
        else:
            res = {**paired_bootstrap(metric, a[0], b[0], n_boot), "n_seeds": 1}
        return {**res, "excludes_0": _excludes_zero(res)}

    preset = resolve(args)
    fixed = preset.primary or PRIMARY
    views = Views(runs, by_arm, by_arm_t, preset, plan)
    resolved = views.resolve_best() if preset.primary else {}

    def compare(c: Comparison) -> dict:
        arm, reference = resolved.get(c.arm, c.arm), resolved.get(c.reference, c.reference)
        ref_estimator = resolved.get(c.reference_estimator, c.reference_estimator) or c.estimator
        sampled = views.sampled_estimator(c.estimator) or views.sampled_estimator(ref_estimator)
        a = views.side(reference, ref_estimator, c.reference_scaled, c.reference_fitted, sampled)
        b = views.side(arm, c.estimator, c.arm_scaled, False, sampled)
        common = sorted(set(a) & set(b))
        res = difference(c.metric, [a[s] for s in common], [b[s] for s in common])
        row = {"name": c.name, "arm": arm, "reference": reference, "arm_scaled": c.arm_scaled}
        row.update(reference_scaled=c.reference_scaled, primary=c in fixed, **res)
        if c.estimator != "after_reasoning" or c.reference_estimator or c.reference_fitted:
            row.update(estimator=c.estimator, reference_estimator=ref_estimator, reference_fitted=c.reference_fitted)
        if sampled:
            row["questions"] = "sampled"
        row["reading"] = reading(row, c.margin)
        if c.margin is not None:
            row.update(margin=c.margin, non_inferior=bool(res["ci95"][0] > c.margin))
        return row

    def available(c: Comparison) -> bool:
        names = [resolved.get(c.arm, c.arm), resolved.get(c.reference, c.reference)]
        return all(n in by_arm for n in names) and resolved.get(c.reference_estimator, "") is not None

    primary = [compare(c) for c in fixed if available(c)]
    pairs = [(arm, ref) for ref in REFERENCES if ref in by_arm for arm in by_arm if arm != ref]
    if ADAPTIVE in by_arm and CONSTANT in by_arm:
        pairs.append((ADAPTIVE, CONSTANT))  # is the adaptive weight worth anything, on every metric?
    exploratory = [Comparison(a, ref, m, scale, scale) for a, ref in pairs for scale in (False, True) for m in METRICS]
    named = {c.name for c in fixed}  # a primary comparison is bootstrapped and listed once, margin or not
    comparisons = [compare(c) for c in exploratory if c.name not in named]
    against_base = []
    for arm in by_arm:
        for scale, (base_recs, arms) in enumerate([(base, by_arm), (base_t, by_arm_t)]):
            recs = [arms[arm][s] for s in sorted(arms[arm])]
            for m in METRICS:
                res = difference(m, [base_recs] * len(recs), recs)
                against_base.append({"arm": arm, "reference": "base", "scaled": bool(scale), **res})

    adaptive = [w for r in runs if r.arm == ADAPTIVE for _, w in rd_weights(r)]
    span = (max(adaptive) - min(adaptive)) if adaptive else None
    rd_moves = [c for c in against_base if c["arm"] == "rd_only" and not c["scaled"] and c["excludes_0"]]
    move = {
        "adaptive_rd_weight_span": span,
        "rd_only_vs_base_excluding_0": [c["metric"] for c in rd_moves],
        # None: not measured yet (no hytuning run finished); the two halves are read apart in the report
        "metrics_move": None if span is None else bool(span >= 0.1 and rd_moves),
    }
    seconds = {f"{r.arm}/seed{r.seed}": _done(r).get("seconds") for r in runs}
    steps = {f"{r.arm}/seed{r.seed}": trainer_state(r)["global_step"] for r in runs}
    result = {
        "commit": git_commit(),
        "runs_commits": sorted({run_commit(r) for r in runs}),
        "partial": bool(missing),
        "runs_missing": missing or [],
        "gate": gate(base, by_arm.get("rd_only"), against_base),
        "plan": plan,
        "timing": timing,
        "n_questions": len(base),
        "n_anchor_questions": len(read_jsonl(files["anchor_traces"])),
        "table": table,
        "table_scaled": table_scaled,
        "temperatures": temperatures,
        "temperatures_at_bound": [k for k, t in temperatures.items() if temperature_at_bound(t)],
        "primary": primary,
        "comparisons": comparisons,
        "against_base": against_base,
        "metrics_move": move,
        "run_seconds": seconds,
        "run_steps": steps,
        "runs_off_plan": [k for k, n in steps.items() if n != plan["max_steps"]],
        "wall_s": None if args.analyse else round(time.time() - args.started, 1),  # --analyse: the runs' is unknown
        "validity": _validity(out),
        "files": files,
    }
    if preset.primary:
        result["primary_resolved"] = resolved
        result["table_estimators"], result["estimator_fits"] = views.estimator_tables(n_boot)
        result["default_recipe"] = default_recipe(result)
    if preset.checkpoint_steps:
        result["premise"] = premise(runs, preset, plan, n_boot)
    return result, base, by_arm


class Views:
    """Each run's answers read through a confidence estimator (:mod:`hytuning_trl.estimators`), raw or after its
    post-hoc fit on the model's own anchor answers, on all eval questions or on the sampled ones (the questions the
    sampled estimators are measured on: the last checkpoint's ``premise/step<N>/sampled``)."""

    def __init__(self, runs: list[Run], by_arm: dict, by_arm_t: dict, preset: Preset, plan: dict):
        self.runs = {(r.arm, r.seed): r for r in runs}
        self.by_arm, self.by_arm_t, self.preset, self.plan = by_arm, by_arm_t, preset, plan
        self._anchor: dict = {}
        self._sampled: dict = {}
        self.fits: dict[str, dict] = {}

    @staticmethod
    def sampled_estimator(name: str | None) -> bool:
        from hytuning_trl.estimators import SAMPLED_ESTIMATORS

        return name in SAMPLED_ESTIMATORS

    def anchor(self, arm: str, seed: int) -> list[dict]:
        if (arm, seed) not in self._anchor:
            self._anchor[arm, seed] = records(os.path.join(self.runs[arm, seed].folder, "calibration_anchor"))
        return self._anchor[arm, seed]

    def sampled(self, arm: str, seed: int) -> list[dict] | None:
        """The run's answers with samples at its last step, or None where it has none."""
        if (arm, seed) not in self._sampled:
            last = max(self.preset.checkpoint_steps, default=None)
            path = os.path.join(self.runs[arm, seed].folder, "premise", f"step{last}", "sampled")
            recs = (
                records(path) if last is not None and os.path.exists(os.path.join(path, "predictions.jsonl")) else None
            )
            if recs is not None:
                full = self.by_arm[arm][seed][: len(recs)]
                if [r["question"] for r in recs] != [r["question"] for r in full]:
                    raise RuntimeError(f"{path}: not the first {len(recs)} eval questions of {arm} seed {seed}.")
            self._sampled[arm, seed] = recs
        return self._sampled[arm, seed]

    def side(self, arm: str, estimator: str, scaled: bool, fitted: bool, on_sampled: bool) -> dict[int, list[dict]]:
        """``{seed: records}`` of ``arm`` with ``confidence`` read through ``estimator``: T-scaled (``scaled``,
        ``after_reasoning``), fitted on the anchor answers (``fitted``: ``fit_estimator``), else raw; on the sampled
        questions only with ``on_sampled`` (a sampled estimator's are the sampled answers' greedy records; any other
        estimator's, the first of the eval questions, the same ones)."""
        from hytuning_trl.estimators import calibrated_confidences, fit_estimator

        out = {}
        for seed, full in (self.by_arm_t if scaled else self.by_arm)[arm].items():
            if self.sampled_estimator(estimator):
                recs = self.sampled(arm, seed)
                if recs is None:
                    raise RuntimeError(f"{arm} seed {seed} has no sampled answers for {estimator}.")
            else:
                recs = full[: len(self.sampled(arm, seed))] if on_sampled else full
            if fitted and estimator != "after_reasoning":
                fit = fit_estimator(self.anchor(arm, seed), estimator)
                self.fits[f"{arm}/seed{seed}/{estimator}"] = fit
                conf = calibrated_confidences(recs, estimator, fit)
                out[seed] = [{**r, "confidence": c} for r, c in zip(recs, conf)]
            else:
                out[seed] = as_estimator(recs, estimator) if not scaled else recs
        return out

    def mean_metric(self, arm: str, estimator: str, metric: str) -> float:
        """Mean over seeds of ``metric`` of ``arm`` read through ``estimator`` (raw), on the questions it is measured
        on (a sampled estimator: the sampled ones)."""
        from _bootstrap import METRICS as POINT

        values = []
        for recs in self.side(arm, estimator, False, False, self.sampled_estimator(estimator)).values():
            conf = np.asarray([r["confidence"] for r in recs], float)
            values.append(POINT[metric](conf, np.asarray([r["correct"] for r in recs], float)))
        return float(statistics.mean(values))

    def resolve_best(self) -> dict[str, str | None]:
        """The names of :data:`~evidence.presets.PRIMARY_V3` resolved by the rules fixed in ``presets`` (None where
        no finished run has them); the values that decided are kept beside them."""
        from hytuning_trl.estimators import ESTIMATORS

        cal = {a: self.mean_metric(a, "after_reasoning", "auroc") for a in CALIBRATION_ARMS if a in self.by_arm}
        trained = {a: self.mean_metric(a, "after_reasoning", "brier") for a in TRAINED_ARMS if a in self.by_arm}
        label_free = {}
        if "rd_only" in self.by_arm:
            for name in ESTIMATORS[1:]:
                if self.sampled_estimator(name) and any(
                    self.sampled("rd_only", s) is None for s in self.by_arm["rd_only"]
                ):
                    continue
                label_free[name] = self.mean_metric("rd_only", name, "auroc")
        return {
            BEST_CALIBRATION_ARM: max(cal, key=cal.get) if cal else None,
            BEST_ARM: min(trained, key=trained.get) if trained else None,
            BEST_LABEL_FREE: max(label_free, key=label_free.get) if label_free else None,
            "values": {"calibration_arms_auroc": cal, "trained_arms_brier": trained, "rd_only_auroc": label_free},
        }

    def estimator_tables(self, n_boot: int) -> tuple[dict, dict]:
        """Per arm and estimator, every metric with its interval over seeds and questions, raw and fitted on the
        anchor answers (sampled estimators: raw only, on the sampled questions; their anchor answers have no
        samples); and the fits, with those at a bound of their range flagged."""
        from _bootstrap import metric_interval

        from hytuning_trl.estimators import ESTIMATORS

        tables: dict[str, dict] = {}
        for arm, seeds in self.by_arm.items():
            for name in ESTIMATORS:
                sampled = self.sampled_estimator(name)
                if sampled and any(self.sampled(arm, s) is None for s in seeds):
                    continue
                row = {}
                for kind, fitted in (("raw", False), ("fitted", True)):
                    if fitted and sampled:
                        continue
                    scaled = fitted and name == "after_reasoning"
                    by_seed = self.side(arm, name, scaled, fitted, sampled)
                    row[kind] = {m: metric_interval(m, [by_seed[s] for s in sorted(by_seed)], n_boot) for m in METRICS}
                tables.setdefault(arm, {})[name] = row
        at_bound = [
            k for k, f in self.fits.items() if f["kind"] == "power" and not 1e-3 * 1.001 < f["value"] < 1e3 * 0.999
        ]
        return tables, {"fits": self.fits, "at_bound": at_bound}


def reading(row: dict, margin: float | None = None) -> str:
    """What an interval shows, in words: which side it favours (accuracy and AUROC up, Brier and ECE down are
    better), or, with a margin, whether non-inferiority is shown."""
    low, high = row["ci95"]
    if low != low or high != high:
        return "no interval (a resample had one class only)"
    if margin is not None:
        return "non-inferior" if low > margin else f"non-inferiority not shown (lower bound {low:.3f} <= {margin})"
    higher_better = row["metric"] in ("accuracy", "auroc")
    if _excludes_zero(row):
        arm_better = (low > 0) == higher_better
        return f"{row['arm']} better" if arm_better else f"{row['reference']} better"
    return "no difference shown"


def gate(base: list[dict], rd_only: dict | None, against_base: list[dict]) -> dict | None:
    """``{base, rd_only, difference, interval, passed}`` on accuracy: the base model's, rd_only's (mean over its
    seeds), their paired difference and its 95% interval; passed = difference >= GATE_POINTS and interval above 0."""
    if not rd_only:
        return None
    [diff] = [c for c in against_base if c["arm"] == "rd_only" and c["metric"] == "accuracy" and not c["scaled"]]
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


def _validity(out: str) -> dict | None:
    path = os.path.join(out, "validity", "validity.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _excludes_zero(res: dict) -> bool:
    low, high = res["ci95"]
    return bool(low == low and high == high and (low > 0 or high < 0))


#: The premise's bar (issue 34): an estimator sees what ``after_reasoning`` misses when its AUROC is higher by at
#: least this much at the last checkpoint, with the interval of the difference above 0.
PREMISE_MARGIN = 0.05


#: Exploratory, named after the premise's first checkpoints were seen (so no test on them): the product of two
#: single-pass estimators, ``after_reasoning * weakest_token``. Each sees one kind of error (answers that contradict
#: their reasoning; faithful answers to wrong reasoning), and the product is low when either is. The evidence run's
#: arms are models it was not chosen on.
PRODUCT = ("after_reasoning", "weakest_token")


def confidence_table(recs: list[dict]) -> list[dict[str, float]]:
    """Per record, every estimator's confidence (:func:`~hytuning_trl.estimators.estimator_confidences`) and the
    exploratory :data:`PRODUCT`'s (``"product"``), computed once: :func:`as_estimator` and :func:`error_kinds` read
    them from here rather than recomputing them per estimator."""
    from hytuning_trl.estimators import estimator_confidences

    out = []
    for r in recs:
        conf = estimator_confidences(r)
        conf["product"] = math.prod(conf[name] for name in PRODUCT)
        out.append(conf)
    return out


#: Exploratory, named after rd_cal seed 1's errors were seen: two options are near-tied when their option-renormalised
#: probabilities lie within this of each other (:func:`near_tie_share`).
NEAR_TIE = 0.1


def near_tie_share(recs: list[dict]) -> float | None:
    """The share of ``recs`` whose two most probable options (``option_logprobs`` renormalised over the options, the
    distribution ``after_reasoning`` reads) lie within :data:`NEAR_TIE` of each other; None where no record has two
    scored options. A loss that lowers the answer's confidence by spreading it over the options raises this share, and
    a near-tie is where the greedy answer can flip away from the reasoning."""
    from hytuning_trl.calibration import temperature_scale

    ties = []
    for r in recs:
        logprobs = r.get("option_logprobs") or []
        if len(logprobs) < 2:
            continue
        first, second = sorted(temperature_scale([logprobs], 1.0)[0], reverse=True)[:2]
        ties.append(first - second < NEAR_TIE)
    return sum(ties) / len(ties) if ties else None


def least_answered(shares: dict[str, dict[str, float | None]]) -> str | None:
    """Exploratory, named after the arms' errors were seen to pile up on one gold letter: the letter of
    :func:`hytuning_trl.evaluation.letter_shares` given least often against how often it is the gold answer (the
    lowest ``answered / gold``, gold letters only; a tie to the first); None where no letter is a gold answer."""
    golds = [letter for letter, v in shares.items() if v["gold"]]
    if not golds:
        return None
    return min(golds, key=lambda letter: (shares[letter]["answered"] / shares[letter]["gold"], letter))


#: The kinds of error :func:`error_kinds` tells apart, after the right answers.
ERROR_KINDS = ("contradicts", "follows", "no_check")


def error_kinds(recs: list[dict], table: list[dict[str, float]] | None = None) -> dict[str, dict]:
    """Exploratory, for the synthetic task's ``check`` traces: the greedy errors split by what the stated answer does
    with the completion's own check step (:func:`synthetic_task.checked_letters`): ``contradicts`` it (states a
    letter the check did not mark), ``follows`` it (states the letter the check marked, on a wrong check), or
    ``no_check`` (the completion has none). Per kind: its count, and each :data:`PRODUCT` estimator's mean and AUROC
    for telling the right answers from that kind's errors (None with fewer than one of either); for the errors that
    contradict their check, also which letter was stated for which gold one (``"gold->stated"``: count). The
    answer's probability is meant to see the first kind, the reasoning's own the second. ``table``: ``recs``'
    :func:`confidence_table`, where the caller has it."""
    from _bootstrap import METRICS as POINT
    from synthetic_task import checked_letters

    def kind(r: dict) -> str:
        if r["correct"]:
            return "right"
        letters = checked_letters(r.get("completion") or "")
        return "no_check" if not letters else "follows" if r["chosen"] in letters else "contradicts"

    conf = confidence_table(recs) if table is None else table
    kinds = [kind(r) for r in recs]
    right = [c for c, k in zip(conf, kinds) if k == "right"]
    out = {}
    for name in ("right", *ERROR_KINDS):
        group = [c for c, k in zip(conf, kinds) if k == name]
        row: dict = {"n": len(group)}
        for est in PRODUCT:
            row[est] = float(np.mean([c[est] for c in group])) if group else None
            if name != "right":
                scores = np.asarray([c[est] for c in right + group], float)
                labels = np.asarray([1.0] * len(right) + [0.0] * len(group))
                row[f"{est}_auroc"] = float(POINT["auroc"](scores, labels)) if group and right else None
        out[name] = row
    swaps = Counter(f"{r['gold']}->{r['chosen']}" for r, k in zip(recs, kinds) if k == "contradicts")
    out["contradicts"]["gold_to_stated"] = dict(swaps.most_common())
    return out


def as_estimator(recs: list[dict], name: str, table: list[dict[str, float]] | None = None) -> list[dict]:
    """The records with ``confidence`` replaced by estimator ``name``'s (:mod:`hytuning_trl.estimators`, or
    ``"product"``), for the bootstrap, which reads ``confidence``. ``table``: ``recs``' :func:`confidence_table`,
    where the caller has it."""
    table = confidence_table(recs) if table is None else table
    return [{**r, "confidence": conf[name]} for r, conf in zip(recs, table)]


def premise_records(run: Run, step: int, plan: dict, preset: Preset) -> tuple[list[dict], list[dict]]:
    """``(all eval questions, single pass; the sampled questions, with samples)`` of ``run``'s checkpoint ``step``
    (:func:`evidence.runner.checkpoint_evaluations`: the last step's single pass is the run's own
    ``calibration_after``; at the last checkpoint the single pass includes the ``extra_eval`` questions after the
    eval questions where the preset asks for them)."""
    folder = os.path.join(run.folder, "premise", f"step{step}")
    full = os.path.join(run.folder, "calibration_after") if step == plan["max_steps"] else os.path.join(folder, "full")
    single = records(full)
    if preset.extra_eval and step == max(preset.checkpoint_steps):
        single += records(os.path.join(folder, "extra"))
    return single, records(os.path.join(folder, "sampled"))


def premise(runs: list[Run], preset: Preset, plan: dict, n_boot: int) -> dict:
    """Issue 34's premise: once RD has converged, does any label-free estimator still see the errors?

    Per run and checkpoint: accuracy (greedy, all eval questions), errors, maj@k and accuracy on the sampled
    questions, and every estimator's AUROC for greedy correctness with its 95% bootstrap interval over questions
    (single-pass estimators on all eval questions, sampled ones on the sampled questions), and the exploratory
    :data:`PRODUCT`'s (``product_auroc``, all eval questions), the errors by kind (``error_kinds``, the same
    questions), the share of near-tied answers (``near_ties``, :func:`near_tie_share`) and each letter's gold and
    answered shares with the accuracy on it (``letters``, :func:`hytuning_trl.evaluation.letter_shares`). At the last
    checkpoint, over the seeds: each estimator's AUROC minus ``after_reasoning``'s on the same questions (two-stage
    bootstrap, seeds then questions), and whether any beats it by :data:`PREMISE_MARGIN` with the interval above 0:
    over the ``rd_only`` runs (the premise asks it of RD alone; other arms, as in ``evidence-v3``, get the per-run
    rows only).

    A checkpoint whose evaluations are not all there yet (a run in progress, ``--analyse``) is left out and named in
    ``missing``; the last-checkpoint comparison is over the runs that have it."""
    from _bootstrap import metric_interval, paired_bootstrap, two_stage_bootstrap

    from hytuning_trl.estimators import ESTIMATORS, SAMPLED_ESTIMATORS
    from hytuning_trl.evaluation import letter_shares

    per_run: dict[str, dict[str, dict]] = {}
    # (run folder, step) -> ((all eval questions, their confidence_table), (the sampled ones, theirs))
    found: dict[tuple[str, int], tuple[tuple[list[dict], list[dict]], ...]] = {}

    def on(name: str, key: tuple[str, int], questions_of: str | None = None) -> list[dict]:
        """The checkpoint's records read through estimator ``name``, on the questions estimator ``questions_of``
        (default ``name``) is measured on: the sampled ones for a sampled estimator, else all."""
        recs, table = found[key][1 if (questions_of or name) in SAMPLED_ESTIMATORS else 0]
        return as_estimator(recs, name, table)

    missing = []
    for r in runs:
        rows = per_run.setdefault(f"{r.arm}/seed{r.seed}", {})
        for step in preset.checkpoint_steps:
            key = (r.folder, step)
            try:
                full, sampled = premise_records(r, step, plan, preset)
            except FileNotFoundError:
                missing.append(f"{r.arm}/seed{r.seed}/step{step}")
                continue
            found[key] = ((full, confidence_table(full)), (sampled, confidence_table(sampled)))
            rows[str(step)] = {
                "accuracy": sum(x["correct"] for x in full) / len(full),
                "errors": sum(not x["correct"] for x in full),
                "n_questions": len(full),
                "n_sampled": len(sampled),
                "accuracy_sampled": sum(x["correct"] for x in sampled) / len(sampled),
                "maj_at_k": sum(x["majority"] == x["gold"] for x in sampled) / len(sampled),
                "auroc": {name: metric_interval("auroc", [on(name, key)], n_boot) for name in ESTIMATORS},
                "product_auroc": metric_interval("auroc", [on("product", key)], n_boot),
                "error_kinds": error_kinds(full, found[key][0][1]),
                "near_ties": near_tie_share(full),
                "letters": letter_shares(full),
            }
    last = max(preset.checkpoint_steps)
    against = {}
    for name in ESTIMATORS[1:]:
        pairs = []
        for r in runs:
            key = (r.folder, last)
            if r.arm != "rd_only" or key not in found:
                continue
            pairs.append((on("after_reasoning", key, questions_of=name), on(name, key)))
        if not pairs:
            break
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        res = (
            two_stage_bootstrap("auroc", a, b, n_boot)
            if len(a) > 1
            else {**paired_bootstrap("auroc", a[0], b[0], n_boot), "n_seeds": 1}
        )
        sees = bool(res["diff"] >= PREMISE_MARGIN and res["ci95"][0] > 0)
        against[name] = {**res, "sees_more": sees}
    return {
        "checkpoint_steps": list(preset.checkpoint_steps),
        "num_samples": preset.num_samples,
        "sample_temperature": preset.sample_temperature,
        "per_run": per_run,
        "missing": missing,
        "extra_eval": preset.extra_eval,
        "last_step": last,
        "margin": PREMISE_MARGIN,
        "against_after_reasoning": against,
        # None: not measured yet (no rd_only run has all its last-checkpoint evaluations)
        "some_estimator_sees_more": any(v["sees_more"] for v in against.values()) if against else None,
    }


def sampled_answers(recs: list[dict]) -> list[dict]:
    """Each sampled answer of ``recs`` (``samples``) as a record of its own: ``confidence`` the option-renormalised
    probability of the answer it states after its own reasoning (``after_reasoning``), ``correct`` against the
    question's gold answer."""
    from hytuning_trl.calibration import temperature_scale

    out = []
    for r in recs:
        for s in r["samples"]:
            if s["answer"] is None or not s["option_logprobs"]:  # no answer read: no confidence in one
                out.append({"confidence": 0.0, "correct": False, "stated": False})
                continue
            p = float(temperature_scale([s["option_logprobs"]], 1.0)[0][s["option_letters"].index(s["answer"])])
            out.append({"confidence": p, "correct": s["answer"] == r["gold"], "stated": s["stated"]})
    return out


def pilot(runs: list[Run]) -> dict:
    """Issue 34's pilot: which ``calibration_weight``, judged on the anchor questions only (the eval questions stay
    unseen by the choice).

    Per run: the greedy answers to the anchor questions (``calibration_anchor``: accuracy) and the sampled ones
    (``calibration_anchor_sampled``: k answers per question at temperature 1, where a model that answers the 16
    greedily without error still errs): their accuracy, and the Brier score and AUROC of the ``after_reasoning``
    confidence for the sampled answers' correctness. A Brier score over greedy answers that are all right would
    reward confidence itself, the failure the loss is meant to cure; over sampled answers it rewards confidence that
    is high on right answers and low on wrong ones.

    The rule, fixed here before the pilot ran: among the calibration runs whose greedy anchor accuracy is not below
    ``rd_only``'s (if none is, those with the highest), the lowest sampled-answer Brier; ties go to the smaller
    weight. 16 questions rank coarsely; the choice is a pilot's, not a result."""
    from hytuning_trl import calibration_metrics

    def flag(arm: str, name: str, default: str | None = None) -> str | None:
        args = ARMS[arm]
        return args[args.index(name) + 1] if name in args else default

    rows: dict[str, dict] = {}
    for r in runs:
        greedy = records(os.path.join(r.folder, "calibration_anchor"))
        sampled = sampled_answers(records(os.path.join(r.folder, "calibration_anchor_sampled")))
        conf, correct = [x["confidence"] for x in sampled], [x["correct"] for x in sampled]
        m = calibration_metrics(conf, correct)
        rows[r.arm] = {
            "seed": r.seed,
            "weight": float(flag(r.arm, "--calibration_weight", "0")),
            "anchor_accuracy": sum(x["correct"] for x in greedy) / len(greedy),
            "n_anchor": len(greedy),
            "n_sampled": len(sampled),
            "sampled_accuracy": m["accuracy"],
            "sampled_errors": sum(not c for c in correct),
            "sampled_brier": m["brier"],
            "sampled_auroc": m["auroc"],
        }
    candidates = {a: row for a, row in rows.items() if a != "rd_only"}
    if "rd_only" not in rows or not candidates:
        return {"per_arm": rows, "chosen": None, "rule": "needs rd_only and at least one calibration run"}
    floor = rows["rd_only"]["anchor_accuracy"]
    eligible = {a: row for a, row in candidates.items() if row["anchor_accuracy"] >= floor}
    fallback = not eligible
    if fallback:
        best = max(row["anchor_accuracy"] for row in candidates.values())
        eligible = {a: row for a, row in candidates.items() if row["anchor_accuracy"] == best}
    chosen = min(eligible, key=lambda a: (eligible[a]["sampled_brier"], eligible[a]["weight"]))
    return {
        "per_arm": rows,
        "rd_only_anchor_accuracy": floor,
        "eligible": sorted(eligible),
        "no_arm_kept_rd_only_accuracy": fallback,
        "chosen": chosen,
        "chosen_weight": rows[chosen]["weight"],
        "chosen_target": flag(chosen, "--calibration_target"),
    }


def read_pilot(folder: str) -> dict | None:
    """The ``pilot`` entry of a pilot preset's ``results.json`` under ``folder``; None when the pilot has not run
    (no such file)."""
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    return result.get("pilot", result)


def calibration_choice(weakest_token: dict | None, share: dict | None) -> dict:
    """The calibration arms' ``calibration_target`` and ``calibration_weight`` (issue 34, point 2), from the pilots'
    results (:func:`pilot`; None: not run), by a rule fixed before the pilots' last runs:

    1. the ``weakest_token`` pilot's choice, if one of its runs kept ``rd_only``'s greedy anchor accuracy (the
       premise says the weakest token is the estimator worth teaching toward);
    2. else the ``share`` pilot's choice, if one of its runs did;
    3. else none: the calibration arms are dropped rather than run at 3 seeds with a loss that costs RD its answers.

    ``status`` is ``pending`` while a pilot the rule needs has not run every weight of
    :data:`~evidence.presets.PILOT_WEIGHTS` and rd_only (``missing`` names the runs), ``chosen`` or ``dropped``
    after."""

    def kept(result: dict) -> bool:
        return result.get("chosen") is not None and not result.get("no_arm_kept_rd_only_accuracy", True)

    for result, target, pilot_name in ((weakest_token, "weakest_token", "pilot"), (share, "share", "pilot-share")):
        wanted = {"rd_only", *(f"rd_cal_{target}_{w}" for w in PILOT_WEIGHTS)}
        missing = sorted(wanted - set((result or {}).get("per_arm", {})))
        if result is None or missing:
            return {"status": "pending", "waiting_for": pilot_name, "missing": missing}
        if kept(result):
            return {
                "status": "chosen",
                "calibration_target": result["chosen_target"],
                "calibration_weight": result["chosen_weight"],
                "from": pilot_name,
                "arm": result["chosen"],
                "why": f"the lowest sampled-answer Brier among the {pilot_name} runs that kept rd_only's anchor "
                f"accuracy ({result['rd_only_anchor_accuracy']:.3f})",
            }
    return {
        "status": "dropped",
        "why": "no run of either pilot kept rd_only's anchor accuracy: the calibration arms are dropped",
    }


#: Issue 34, point 6: an arm's accuracy is not lost when the lower bound of its difference from ``rd_only`` is above
#: this (the non-inferiority margin of the primary comparisons).
DEFAULT_MARGIN = -0.03


def default_recipe(result: dict) -> dict:
    """Which arm becomes the default recipe (issue 34, point 6), by a rule written down with 3 of the evidence run's
    12 trained runs seen (``rd_cal`` seeds 0 and 1, ``hytuning`` seed 0) and 9 to come.

    An arm of :data:`~evidence.presets.TRAINED_ARMS` *beats* ``rd_only`` when, on the single-pass confidence
    (``after_reasoning``) as a user reads it (raw, against ``rd_only`` raw), the interval of its AUROC difference
    lies above 0 or that of its Brier difference below 0, *without losing accuracy*: the lower bound of its accuracy
    difference above :data:`DEFAULT_MARGIN`. The rows are ``result``'s ``primary`` and ``comparisons`` (the same
    paired bootstrap, seeds then questions). Of the arms that beat it, the lowest mean Brier becomes the default;
    none: ``rd_only`` stays the advice, read through ``rd_only``'s best label-free estimator (``primary_resolved``).
    Arms with a row missing are named ``unmeasured``; with ``partial`` set the verdict is not the run's."""
    rows = {}
    for row in result["primary"] + result["comparisons"]:
        plain = not (row["arm_scaled"] or row["reference_scaled"] or "estimator" in row)
        if plain and row["reference"] == "rd_only" and row["arm"] in TRAINED_ARMS:
            rows.setdefault(row["arm"], {}).setdefault(row["metric"], row)
    per_arm, unmeasured = {}, []
    for arm in TRAINED_ARMS:
        got = rows.get(arm, {})
        if not all(m in got for m in ("accuracy", "auroc", "brier")):
            if arm in result["table"]:
                unmeasured.append(arm)
            continue
        better = [m for m in ("auroc", "brier") if got[m]["excludes_0"] and (got[m]["diff"] > 0) == (m == "auroc")]
        keeps = bool(got["accuracy"]["ci95"][0] > DEFAULT_MARGIN)
        per_arm[arm] = {
            **{m: {"diff": got[m]["diff"], "ci95": got[m]["ci95"]} for m in ("accuracy", "auroc", "brier")},
            "n_seeds": got["accuracy"].get("n_seeds"),
            "better_on": better,
            "keeps_accuracy": keeps,
            "beats_rd_only": bool(better and keeps),
        }
    winners = [a for a, v in per_arm.items() if v["beats_rd_only"]]
    default = min(winners, key=lambda a: result["table"][a]["brier"]["value"]) if winners else None
    return {
        "partial": result["partial"],
        "margin": DEFAULT_MARGIN,
        "per_arm": per_arm,
        "unmeasured": unmeasured,
        "default": default,
        "read_instead": None if default else (result.get("primary_resolved") or {}).get(BEST_LABEL_FREE),
    }
