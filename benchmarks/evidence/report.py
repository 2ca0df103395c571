"""The report of the evidence harness: ``results.json``, ``results.md``, ``curves.png``, ``reliability_grid.png`` and,
for runs that log every confidence estimator (0.4.0), ``auroc_curves.png`` and ``reliability_estimators.png``, from
what :func:`evidence.analysis.analyse` computed."""

from __future__ import annotations

import json
import math
import os

from .analysis import ERROR_KINDS, NEAR_TIE, PRODUCT, least_answered, reading
from .presets import ADAPTIVE, ARMS, METRICS
from .runner import Run, log_history, read_jsonl


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.{digits}f}"


def _ci(res: dict) -> str:
    return f"[{_fmt(res['ci95'][0])}, {_fmt(res['ci95'][1])}]"


def markdown(result: dict, args) -> str:
    plan, lines = result["plan"], []
    lines.append(f"Command: `python benchmarks/compare_baselines.py {' '.join(args.argv)}`\n")
    if result["partial"]:
        lines.append(
            f"**Partial**: {len(result['runs_missing'])} of the preset's runs not finished and left out "
            f"({', '.join(result['runs_missing'])}); arms with fewer seeds than planned, intervals to match.\n"
        )
    lines.append(f"Runs made at commit(s) {', '.join(result['runs_commits'])}; analysed at {result['commit']}.\n")
    if result["runs_off_plan"]:
        off = ", ".join(f"{k} ({result['run_steps'][k]})" for k in result["runs_off_plan"])
        lines.append(f"**Steps off the plan** ({plan['max_steps']} planned): {off}.\n")
    wall = "n/a (analysed afterwards)" if result["wall_s"] is None else f"{result['wall_s'] / 60:.1f} min"
    lines.append(
        f"{result['n_questions']} eval questions; {plan['max_steps']} steps per run, probe every "
        f"{plan['probe_steps']}; wall {wall}. Better: accuracy and AUROC up, Brier and ECE "
        "down. Intervals: 95% bootstrap (questions; seeds then questions for several seeds). With 3 seeds the seed "
        "stage has only 10 distinct resamples.\n"
    )
    if result["gate"]:
        g = result["gate"]
        lines.append(
            f"Gate (rd_only against the base model on accuracy, needs >= +{g['threshold']:.2f} with the interval "
            f"above 0): base {_fmt(g['base'])}, rd_only {_fmt(g['rd_only'])}, difference {_fmt(g['difference'])} "
            f"[{_fmt(g['interval'][0])}, {_fmt(g['interval'][1])}] -> {'PASSED' if g['passed'] else 'NOT PASSED'}.\n"
        )
    for key, title in (("table", "Raw"), ("table_scaled", "Temperature-scaled")):
        n_anchor = result["n_anchor_questions"]
        note = f" (one T per model, fitted on its answers to the {n_anchor} anchor questions)"
        note = note if key == "table_scaled" else ""
        lines.append(f"{title}{note}:\n")
        lines.append("| arm | seeds | " + " | ".join(METRICS) + " | stated |")
        lines.append("|---" * (len(METRICS) + 3) + "|")
        for arm, row in result[key].items():
            cells = [f"{_fmt(row[m]['value'])} {_ci(row[m])}" for m in METRICS]
            seeds, stated = len(row.get("seeds", [0])), _fmt(row["stated_rate"], 2)
            lines.append(f"| {arm} | {seeds} | " + " | ".join(cells) + f" | {stated} |")
        lines.append("")
    temps = ", ".join(f"{k} {v:.2f}" for k, v in result["temperatures"].items())
    lines.append(f"Temperatures: {temps}.\n")
    if result.get("temperatures_at_bound"):
        lines.append(
            f"At a bound of the fit: {', '.join(result['temperatures_at_bound'])} (every anchor answer right, or none "
            "informative: the NLL has no minimum inside the bounds, so the scaled confidences say more about the "
            "bound than about the model; 16 questions are few).\n"
        )
    lines.append("Primary comparisons (fixed in the script before the run; difference = arm - reference):\n")
    if result["primary"]:
        lines += _comparison_table(result["primary"])
    else:
        lines.append("None yet: the arms they compare have not both finished a run.")
    if result.get("default_recipe"):
        lines += default_recipe_markdown(result["default_recipe"])
    lines.append("\nEverything below is exploratory: many intervals, none named in advance.\n")
    lines.append("Against the base model:\n")
    lines += _comparison_table(result["against_base"])
    refs = ", ".join(dict.fromkeys(c["reference"] for c in result["comparisons"])) or "none finished"
    lines.append(f"\nAgainst the references ({refs}; raw against raw, scaled against scaled):\n")
    lines += _comparison_table(result["comparisons"])
    move = result["metrics_move"]
    verdict = metrics_move_verdict(move)
    lines.append(
        f"\nDo the metrics move? {ADAPTIVE} rd_weight span {_fmt(move['adaptive_rd_weight_span'])} (needs >= 0.1); "
        f"rd_only against base excludes 0 on: {', '.join(move['rd_only_vs_base_excluding_0']) or 'nothing'} -> "
        f"{verdict}."
    )
    if result.get("table_estimators"):
        lines += estimators_markdown(result)
    if result.get("premise"):
        lines += premise_markdown(result["premise"])
    if result["validity"]:
        lines.append("\nPRG validity under the base model (gold traces against corrupted ones):\n")
        lines.append("| corruption | n | AUROC | 95% CI |\n|---|---|---|---|")
        for row in result["validity"]["validity"]:
            ci = _ci(row) if row.get("ci95") else "n/a"
            lines.append(f"| {row['corruption']} | {row['n']} | {_fmt(row['auroc'])} | {ci} |")
    return "\n".join(lines) + "\n"


def estimators_markdown(result: dict) -> list[str]:
    """How the primary comparisons' "best" names were resolved, then every arm read through every estimator (AUROC
    and Brier with intervals, raw and after the estimator's post-hoc fit on the anchor answers)."""
    from .presets import BEST_ARM, BEST_CALIBRATION_ARM, BEST_LABEL_FREE

    resolved = result["primary_resolved"]
    lines = [
        f"\nResolved by the rules fixed before the run (a choice after seeing them; the intervals do not account for "
        f"it): {BEST_CALIBRATION_ARM} = {resolved[BEST_CALIBRATION_ARM]}, {BEST_ARM} = {resolved[BEST_ARM]}, "
        f"{BEST_LABEL_FREE} of rd_only = {resolved[BEST_LABEL_FREE]}.\n",
        "Every arm through every estimator (exploratory; sampled estimators on the sampled questions, raw only):\n",
        "| arm | estimator | AUROC raw | AUROC fitted | Brier raw | Brier fitted |",
        "|---|---|---|---|---|---|",
    ]
    for arm, by_name in result["table_estimators"].items():
        for name, row in by_name.items():
            cells = []
            for metric in ("auroc", "brier"):
                for kind in ("raw", "fitted"):
                    res = row.get(kind, {}).get(metric)
                    cells.append(f"{_fmt(res['value'])} {_ci(res)}" if res else "n/a")
            lines.append(f"| {arm} | {name} | " + " | ".join(cells) + " |")
    bound = result["estimator_fits"]["at_bound"]
    if bound:
        names = ", ".join(bound)
        lines.append(f"\nPower fits at a bound of their range (the anchor answers do not inform them): {names}.")
    return lines


def default_recipe_markdown(verdict: dict) -> list[str]:
    """The table and the verdict of :func:`evidence.analysis.default_recipe`."""
    lines = [
        "\nThe default recipe (issue 34, point 6; rule in `analysis.default_recipe`): an arm beats rd_only when the "
        "interval of its after_reasoning AUROC or Brier difference (raw against raw) favours it and its accuracy's "
        f"lower bound is above {verdict['margin']}; of those, the lowest Brier becomes the default.\n",
        "| arm | seeds | accuracy | AUROC | Brier | better on | keeps accuracy | beats rd_only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in verdict["per_arm"].items():
        cells = [f"{_fmt(row[m]['diff'])} {_ci(row[m])}" for m in ("accuracy", "auroc", "brier")]
        better = ", ".join(row["better_on"]) or "neither"
        lines.append(
            f"| {arm} | {row['n_seeds']} | " + " | ".join(cells) + f" | {better} | {row['keeps_accuracy']} | "
            f"{row['beats_rd_only']} |"
        )
    if verdict["unmeasured"]:
        lines.append(f"\nNot compared (a row missing): {', '.join(verdict['unmeasured'])}.")
    if verdict["default"]:
        said = f"-> the default recipe: {verdict['default']}."
    else:
        said = (
            '-> no arm beats rd_only: the advice stays RD alone (`mixing="rd_only"`), its confidence read through '
            f"{verdict['read_instead'] or 'its best label-free estimator (not resolved yet)'}."
        )
    if verdict["partial"]:
        said += " Partial: some runs have not finished, so this is not the run's verdict."
    lines.append("\n" + said)
    return lines


def metrics_move_verdict(move: dict) -> str:
    """The reading of ``metrics_move``: each way it can fail named apart, and not measured until a ``hytuning`` run
    has finished (its PRG weight's span is one half of the check)."""
    if move["metrics_move"] is None:
        return f"not measured yet (no {ADAPTIVE} run finished)"
    if move["metrics_move"]:
        return "yes"
    if not move["rd_only_vs_base_excluding_0"]:
        return "NO: rd_only does not move from the base model; raise the learning rate or the steps"
    return f"NO: {ADAPTIVE}'s PRG weight stayed within 0.1, so its mixing did not act in these runs"


def error_kinds_markdown(premise: dict) -> list[str]:
    """The premise's exploratory table of errors by kind (:func:`evidence.analysis.error_kinds`), per run and
    checkpoint; nothing where no row has them."""
    lines: list[str] = []
    kinds = [(run, step, row) for run, steps in premise["per_run"].items()
             for step, row in steps.items() if "error_kinds" in row]  # fmt: skip
    if kinds:
        a, b = PRODUCT
        lines.append(
            "\nExploratory: the errors by what the stated answer does with the completion's own check step; per kind, "
            f"its count and the AUROC of {a} / {b} for telling the right answers from it (mean {a} / {b} of the "
            "right answers in their column; the contradicting ones' gold->stated letters); near ties: the share of "
            f"questions whose two most probable options lie within {NEAR_TIE} (where the greedy answer can flip); "
            "least given: the letter the greedy answers give least often against how often it is the gold answer, "
            "its answered / gold share and the accuracy on the questions it is the gold answer of:\n"
        )
        lines.append(
            "| run | step | right | "
            + " | ".join(ERROR_KINDS)
            + " | near ties | least given |\n|---|---|---|"
            + "---|" * (len(ERROR_KINDS) + 2)
        )
        for run, step, row in kinds:
            k = row["error_kinds"]
            cells = [f"{k['right']['n']} ({_fmt(k['right'][a])} / {_fmt(k['right'][b])})"]
            for n in ERROR_KINDS:
                cell = f"{k[n]['n']}: {_fmt(k[n][a + '_auroc'])} / {_fmt(k[n][b + '_auroc'])}"
                swaps = k[n].get("gold_to_stated")
                if swaps:
                    cell += " (" + ", ".join(f"{pair} {count}" for pair, count in swaps.items()) + ")"
                cells.append(cell)
            cells.append(_fmt(row.get("near_ties")))
            shares = row.get("letters") or {}
            letter = least_answered(shares)
            if letter is None:
                cells.append("n/a")
            else:
                v = shares[letter]
                cells.append(f"{letter} {_fmt(v['answered'], 2)} / {_fmt(v['gold'], 2)} ({_fmt(v['accuracy'], 2)})")
            lines.append(f"| {run} | {step} | " + " | ".join(cells) + " |")
    return lines


def premise_markdown(premise: dict) -> list[str]:
    """The premise's tables: per run and checkpoint, accuracy, maj@k and each estimator's AUROC with its interval;
    then, at the last checkpoint, each estimator against ``after_reasoning``."""
    from hytuning_trl.estimators import ESTIMATORS

    k = premise["num_samples"]
    lines = [
        "\nThe premise: every estimator at each checkpoint (AUROC for greedy correctness, 95% interval over "
        f"questions; sampled estimators and maj@{k} on the sampled questions, {k} samples at temperature "
        f"{premise['sample_temperature']}):\n",
        f"| run | step | accuracy | errors | maj@{k} | " + " | ".join(ESTIMATORS) + " |",
        "|---" * (len(ESTIMATORS) + 5) + "|",
    ]
    for run, steps in premise["per_run"].items():
        for step, row in steps.items():
            cells = [f"{_fmt(row['auroc'][n]['value'])} {_ci(row['auroc'][n])}" for n in ESTIMATORS]
            lines.append(
                f"| {run} | {step} | {_fmt(row['accuracy'])} | {row['errors']}/{row['n_questions']} | "
                f"{_fmt(row['maj_at_k'])} | " + " | ".join(cells) + " |"
            )
    products = [(run, step, row["product_auroc"]) for run, steps in premise["per_run"].items()
                for step, row in steps.items() if "product_auroc" in row]  # fmt: skip
    if products:
        lines.append(
            "\nExploratory, named after the premise's first checkpoints were seen: the AUROC of the product "
            f"{' x '.join(PRODUCT)} (single pass, the same questions):\n"
        )
        lines.append("| run | step | AUROC | 95% CI |\n|---|---|---|---|")
        lines += [f"| {run} | {step} | {_fmt(res['value'])} | {_ci(res)} |" for run, step, res in products]
    lines += error_kinds_markdown(premise)
    if premise.get("missing"):
        lines.append(f"\nNot evaluated yet (left out): {', '.join(premise['missing'])}.")
    if premise.get("extra_eval"):
        lines.append(
            f"\nAt step {premise['last_step']}, accuracy, errors and the single-pass estimators are measured on "
            f"{premise['extra_eval']} eval questions more than at the earlier steps (the next ones of the task), the "
            "sampled estimators on the same sampled questions."
        )
    lines.append(
        f"\nAt step {premise['last_step']}, each estimator's AUROC minus after_reasoning's on the same questions "
        f"(sees more: >= {premise['margin']} with the interval above 0):\n"
    )
    lines.append("| estimator | difference | 95% CI | seeds | sees more |\n|---|---|---|---|---|")
    for name, res in premise["against_after_reasoning"].items():
        lines.append(f"| {name} | {_fmt(res['diff'])} | {_ci(res)} | {res['n_seeds']} | {res['sees_more']} |")
    verdict = premise["some_estimator_sees_more"]
    if verdict is None:
        reading = "Not measured yet: no rd_only run has all its evaluations at the last checkpoint."
    elif verdict:
        reading = "A label-free estimator sees errors that after_reasoning misses."
    else:
        reading = (
            "No label-free estimator beats after_reasoning by the margin: the calibration loss has nothing to teach "
            "toward at this scale."
        )
    lines.append("\n" + reading)
    return lines


def _comparison_table(rows: list[dict]) -> list[str]:
    out = ["| arm | reference | metric | difference | 95% CI | seeds | reading |", "|---|---|---|---|---|---|---|"]
    for c in rows:
        arm = c["arm"] + (" (T)" if c.get("arm_scaled") or c.get("scaled") else "")
        ref = c["reference"] + (" (T)" if c.get("reference_scaled") or c.get("scaled") else "")
        if c.get("estimator"):  # read through another estimator than after_reasoning, on one side or both
            if c["estimator"] != "after_reasoning":
                arm += f" [{c['estimator']}]"
            if c["reference_estimator"] != "after_reasoning" or c["reference_fitted"]:
                ref += f" [{c['reference_estimator']}{', fitted' if c['reference_fitted'] else ''}]"
        if c.get("questions") == "sampled":
            ref += " (sampled questions)"
        text = c.get("reading") or reading(c)
        out.append(f"| {arm} | {ref} | {c['metric']} | {_fmt(c['diff'])} | {_ci(c)} | {c['n_seeds']} | {text} |")
    return out


def curves(out: str, runs: list[Run], base: list[dict], by_arm: dict[str, dict[int, list[dict]]], files: dict) -> None:
    """rd_weight, anchor gain and anchor accuracy per logged step; probe accuracy, ECE and mean confidence at step 0
    (base), at each probe, and at the end (the final evaluation restricted to the probe questions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hytuning_trl.calibration import expected_calibration_error

    probe = {q["question"] for q in read_jsonl(files["probe"])}

    def on_probe(recs):
        """Accuracy, ECE and mean confidence of ``recs`` on the probe questions."""
        sub = [r for r in recs if r["question"] in probe]
        if not sub:
            return None, None, None
        conf, correct = [r["confidence"] for r in sub], [r["correct"] for r in sub]
        return sum(correct) / len(sub), expected_calibration_error(conf, correct), sum(conf) / len(sub)

    fig, axes = plt.subplots(2, 3, figsize=(17, 8), constrained_layout=True)
    colours = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
    at_base = on_probe(base)
    probed = ("accuracy", "ece", "mean_confidence")
    for r in runs:
        hist, c = log_history(r), colours[r.arm]
        label = r.arm if r.seed == 0 else None
        logged = {
            key: [(h["step"], h[f"hytuning/{key}"]) for h in hist if f"hytuning/{key}" in h]
            for key in ("rd_weight", "anchor_gain", "anchor_accuracy")
        }
        for ax, key in zip(axes[0], logged):
            if logged[key]:
                ax.plot(*zip(*logged[key]), color=c, marker="." if key != "rd_weight" else None, alpha=0.8,
                        label=label)  # fmt: skip
        probes = [(h["step"], *(h.get(f"eval_calibration/{k}") for k in probed)) for h in hist
                  if "eval_calibration/accuracy" in h]  # fmt: skip
        last = max([h["step"] for h in hist if "step" in h], default=0)
        pts = [(0, *at_base), *probes]
        if not probes or probes[-1][0] != last:  # a probe at the last step saw the same model on the same questions
            pts.append((last, *on_probe(by_arm[r.arm][r.seed])))
        for i, ax in enumerate(axes[1], start=1):
            ax.plot([p[0] for p in pts], [p[i] for p in pts], color=c, marker="o", alpha=0.8, label=label)
    titles = ["rd_weight", "anchor gain G (own reasoning)", "anchor accuracy (own reasoning)", "probe accuracy",
              "probe ECE", "probe mean confidence"]  # fmt: skip
    for ax, title in zip(axes.flat, titles):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.savefig(os.path.join(out, "curves.png"), dpi=110)
    plt.close(fig)


def grid(out: str, runs: list[Run], base: list[dict], by_arm: dict[str, dict[int, list[dict]]]) -> None:
    """The reliability diagrams of the base model and of each arm's first seed, side by side: the evaluation's own
    PNGs, or drawn again from the predictions where they are missing (``--collect`` copies no PNG)."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hytuning_trl import reliability_diagram

    seed0 = {}
    for r in runs:
        if r.arm not in seed0 or r.seed < seed0[r.arm].seed:
            seed0[r.arm] = r
    entries = [("base model", os.path.join(out, "base"), base)]
    entries += [(f"{r.arm} (seed {r.seed})", os.path.join(r.folder, "calibration_after"), by_arm[r.arm][r.seed])
                for r in seed0.values()]  # fmt: skip
    cols = 4
    rows = math.ceil(len(entries) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.5 * rows), constrained_layout=True, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (ax, (title, folder, recs)) in enumerate(zip(axes.flat, entries)):
            png = os.path.join(folder, "reliability.png")
            if not os.path.exists(png):
                png = os.path.join(tmp, f"{i}.png")
                reliability_diagram([x["confidence"] for x in recs], [x["correct"] for x in recs], png, title=title)
            ax.imshow(plt.imread(png))
            ax.set_title(title)
    fig.savefig(os.path.join(out, "reliability_grid.png"), dpi=100)
    plt.close(fig)


def auroc_series(runs: list[Run], base: list[dict], by_arm: dict[str, dict[int, list[dict]]], files: dict) -> dict:
    """Per run (``"<arm>/seed<k>"``) and single-pass estimator, ``[(step, AUROC)]`` on the probe questions: step 0 from
    the base model's answers to them, each probe from the run's log (``eval_calibration/<estimator>/auroc``), the last
    step from the final evaluation restricted to them (unless a probe ran there); and ``accuracy`` the same way. A
    run whose probes logged no estimator (before 0.4.0) is left out; AUROC is None where the answers are all right or
    all wrong."""
    from hytuning_trl import calibration_metrics
    from hytuning_trl.estimators import SINGLE_PASS_ESTIMATORS, estimator_confidences

    probe = {q["question"] for q in read_jsonl(files["probe"])}

    def measured(recs: list[dict]) -> dict:
        sub = [r for r in recs if r["question"] in probe]
        if not sub:
            return {}
        correct = [r["correct"] for r in sub]
        conf = [estimator_confidences(r) for r in sub]
        out = {n: calibration_metrics([c[n] for c in conf], correct)["auroc"] for n in SINGLE_PASS_ESTIMATORS}
        return {**out, "accuracy": sum(correct) / len(sub)}

    at_base = measured(base)
    keys = {n: f"eval_calibration/{n}/auroc" for n in SINGLE_PASS_ESTIMATORS}
    keys["accuracy"] = "eval_calibration/accuracy"
    series = {}
    for r in runs:
        hist = log_history(r)
        probes = [h for h in hist if keys[SINGLE_PASS_ESTIMATORS[1]] in h]
        if not probes:
            continue
        points = {n: ([(0, at_base[n])] if n in at_base else []) + [(h["step"], h.get(k)) for h in probes]
                  for n, k in keys.items()}  # fmt: skip
        last = max([h["step"] for h in hist if "step" in h], default=0)
        if probes[-1]["step"] != last and by_arm.get(r.arm, {}).get(r.seed):
            final = measured(by_arm[r.arm][r.seed])
            for n in points:
                points[n].append((last, final.get(n)))
        series[f"{r.arm}/seed{r.seed}"] = points
    return series


def auroc_curves(out: str, series: dict) -> None:
    """``auroc_curves.png``: :func:`auroc_series` drawn, a panel per estimator and one for the probe accuracy, every
    seed of an arm in its colour (seed 0 labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(series.values())))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), constrained_layout=True, squeeze=False)
    colours = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
    for run, points in series.items():
        arm, seed = run.rsplit("/seed", 1)
        for ax, name in zip(axes[0], names):
            pts = [(s, v) for s, v in points[name] if v is not None]
            if pts:
                ax.plot(*zip(*pts), color=colours[arm], marker="o", alpha=0.8, label=arm if seed == "0" else None)
    for ax, name in zip(axes[0], names):
        ax.set_title(f"probe {name}" if name == "accuracy" else f"probe AUROC: {name}")
        ax.set_xlabel("step")
        if name != "accuracy":
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=7)
    fig.savefig(os.path.join(out, "auroc_curves.png"), dpi=100)
    plt.close(fig)


def estimator_grid(out: str, runs: list[Run], by_arm: dict[str, dict[int, list[dict]]]) -> list[tuple[str, str]]:
    """``reliability_estimators.png``: the reliability diagram of every single-pass estimator (columns) for each
    arm's lowest seed (rows), on the final evaluation. Returns the ``(row, estimator)`` panels drawn."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hytuning_trl import reliability_diagram
    from hytuning_trl.estimators import SINGLE_PASS_ESTIMATORS, estimator_confidences

    first = {}
    for r in runs:
        if r.arm not in first or r.seed < first[r.arm].seed:
            first[r.arm] = r
    rows = [(f"{r.arm} (seed {r.seed})", by_arm[r.arm][r.seed]) for r in first.values()]
    cols = len(SINGLE_PASS_ESTIMATORS)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.6 * cols, 4.1 * len(rows)), constrained_layout=True,
                             squeeze=False)  # fmt: skip
    drawn = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (title, recs) in enumerate(rows):
            conf = [estimator_confidences(x) for x in recs]
            correct = [x["correct"] for x in recs]
            for j, name in enumerate(SINGLE_PASS_ESTIMATORS):
                png = reliability_diagram([c[name] for c in conf], correct, os.path.join(tmp, f"{i}_{j}.png"),
                                          title=f"{title}: {name}")  # fmt: skip
                axes[i][j].imshow(plt.imread(png))
                axes[i][j].axis("off")
                drawn.append((title, name))
    fig.savefig(os.path.join(out, "reliability_estimators.png"), dpi=90)
    plt.close(fig)
    return drawn


def write(out: str, result: dict, args, runs: list[Run], base: list[dict], by_arm: dict, files: dict) -> dict:
    """``results.json``, ``results.md``, ``curves.png`` and ``reliability_grid.png`` in ``out`` (with every estimator
    logged: ``auroc_curves.png`` and ``reliability_estimators.png`` too); returns ``result``."""
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(result, args))
    curves(out, runs, base, by_arm, files)
    grid(out, runs, base, by_arm)
    series = auroc_series(runs, base, by_arm, files)
    if series:
        auroc_curves(out, series)
        estimator_grid(out, [r for r in runs if f"{r.arm}/seed{r.seed}" in series], by_arm)
    return result


def write_pilot(out: str, result: dict, args, plan: dict, missing: list[str] | None = None) -> dict:
    """The pilot's ``results.json`` and ``results.md`` in ``out`` (:func:`evidence.analysis.pilot`); returns the
    result, with the command, the plan and the runs not finished."""
    result = {**result, "plan": plan, "partial": bool(missing), "runs_missing": missing or [], "argv": args.argv}
    lines = [f"Command: `python benchmarks/compare_baselines.py {' '.join(args.argv)}`\n"]
    if missing:
        lines.append(f"**Partial**: not finished: {', '.join(missing)}.\n")
    lines.append(
        f"The pilot: {plan['max_steps']} steps per run, judged on the anchor questions only (greedy answers, and "
        "sampled answers at temperature 1: the after_reasoning confidence's Brier score and AUROC for their "
        "correctness). Rule (fixed before the run): among the calibration runs whose greedy anchor accuracy is not "
        "below rd_only's, the lowest sampled-answer Brier; ties to the smaller weight.\n"
    )
    lines.append("| arm | weight | anchor accuracy | sampled answers | sampled accuracy | errors | Brier | AUROC |")
    lines.append("|---" * 8 + "|")
    for arm, row in result["per_arm"].items():
        lines.append(
            f"| {arm} | {row['weight']:g} | {_fmt(row['anchor_accuracy'])} ({row['n_anchor']}) | {row['n_sampled']} "
            f"| {_fmt(row['sampled_accuracy'])} | {row['sampled_errors']} | {_fmt(row['sampled_brier'])} "
            f"| {_fmt(row['sampled_auroc'])} |"
        )
    if result["chosen"]:
        fell = " (no calibration run kept rd_only's anchor accuracy: the most accurate ones compared)"
        lines.append(
            f"\nChosen: **{result['chosen']}** (calibration_target {result['chosen_target']}, calibration_weight "
            f"{result['chosen_weight']:g}){fell if result['no_arm_kept_rd_only_accuracy'] else ''}. "
            f"{result['per_arm'][result['chosen']]['n_anchor']} questions rank coarsely: a pilot's choice, not a "
            "result.\n"
        )
    else:
        lines.append(f"\nNo choice: {result['rule']}.\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines))
    return result
