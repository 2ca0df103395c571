"""PRG analysis of any model's reasoning on expert traces, and the ``hytuning-prg`` command.

For each trace (a prompt, reasoning steps, a gold option) it computes, in one packed no-grad pass per batch, the
option-renormalised probability ``p_k`` of every option after ``k`` steps, ``k = 0..K``, and reports:

* per-trace trajectories of the gold answer and of the model's own top answer at ``K`` (``trajectories.jsonl``);
* a plot of ``p_k`` against the step fraction ``k / K`` (mean and interquartile band) for both
  (``prg_curve.png``). The top answer at ``K`` is chosen by ``p_K``, so its curve is biased upward at the end;
* a validity table (``validity.json``): for each corruption of the traces (steps shuffled, steps taken from another
  question, last step removed), the AUROC with which the gold answer's PRG separates real traces (positives) from
  corrupted ones, with a paired bootstrap 95% interval over traces. AUROC 0.5 means PRG cannot tell them apart.

    hytuning-prg --model_name_or_path MODEL --traces_file traces.jsonl --output_dir prg_report   (hytuning_trl.cli)

Trace files: MedQA-style jsonl (``question``, ``options``, ``answer_idx``, ``reasoning`` with blank-line steps) or
prompt/completion rows (``prompt``, ``completion`` ending in a statement such as "The answer is B.", ``options`` or
``--answer_options``).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .answers import AnswerExtractor, whitespace_token_ids
from .calibration import auroc
from .constants import DEFAULT_ANSWER_PATTERN, DEFAULT_ANSWER_TRIGGER, DEFAULT_STEP_SEPARATOR, PRG_AGGREGATIONS
from .mcq import check_max_samples, load_mcq, read_jsonl, render_prompts, render_text
from .prg import join_steps, normalised_gain, prg_score
from .scoring import score_rollouts

__all__ = [
    "CORRUPTIONS",
    "PRGAnalysis",
    "analyse_prg",
    "format_validity",
    "load_traces",
    "plot_curves",
    "write_analysis",
]

CORRUPTIONS = ("steps_shuffled", "steps_from_other_question", "last_step_removed")


@dataclass
class Trace:
    prompt_ids: list[int]
    steps: list[list[int]]
    gold: str
    letters: list[str]


def read_trace_rows(
    source: str | Sequence[dict], *, answer_options: Sequence[str] | None = None, max_samples: int | None = None
) -> list[dict]:
    """The rows of a trace file (or list), checked without a model: the file exists and is JSON lines, ``max_samples``
    is valid, there are rows, and each is MedQA style (question, options, answer_idx, reasoning) or a
    prompt/completion pair with ``options`` or ``answer_options``. Raises ``ValueError`` / ``FileNotFoundError``
    naming the trace and the fix, so that a command fails on bad traces before it loads a model."""
    if isinstance(source, str):
        if not os.path.exists(source):
            raise FileNotFoundError(f"No such trace file: {source}")
        rows = read_jsonl(source)
    else:
        rows = list(source)
    check_max_samples(max_samples)
    rows = rows[:max_samples] if max_samples is not None else rows
    if not rows:
        raise ValueError(f"No traces in {source!r}.")
    for i, row in enumerate(rows):
        if "reasoning" in row:
            load_mcq([row])  # the MedQA fields, checked as the evaluation checks them
        elif not ("prompt" in row and "completion" in row):
            raise ValueError(
                f"Trace {i} has neither 'reasoning' (MedQA style: question, options, answer_idx, reasoning) nor "
                f"'prompt' and 'completion' (fields: {sorted(row)})."
            )
        elif row.get("options") is None and not answer_options:
            raise ValueError(f"Trace {i} has no 'options'; give the option letters with --answer_options A,B,C,D.")
    return rows


def load_traces(
    source: str | Sequence[dict],
    tokenizer: Any,
    *,
    answer_options: Sequence[str] | None = None,
    answer_pattern: str = DEFAULT_ANSWER_PATTERN,
    step_separator: str = DEFAULT_STEP_SEPARATOR,
    use_chat_template: bool | None = None,
    max_samples: int | None = None,
    instruction: str | None = None,
) -> list[Trace]:
    """Read traces into prompt ids, reasoning steps (token lists, as the tokenizer cuts them) and gold letters.
    MedQA-style rows are rendered with ``instruction`` (default :data:`~hytuning_trl.mcq.MCQ_INSTRUCTION`). The rows
    are checked first by :func:`read_trace_rows`."""
    rows = read_trace_rows(source, answer_options=answer_options, max_samples=max_samples)
    chat = getattr(tokenizer, "chat_template", None) is not None if use_chat_template is None else use_chat_template
    extractor = AnswerExtractor(
        tokenizer,
        answer_pattern=answer_pattern,
        step_separator=step_separator,
        answer_options=answer_options,
        answer_probability="options",
        special_ids=[tokenizer.eos_token_id],
    )
    traces = []
    for i, row in enumerate(rows):
        if "reasoning" in row:
            q = load_mcq([row])[0]
            prompt_ids = render_prompts(tokenizer, [q], chat, instruction)[0]
            completion = f"{str(row['reasoning']).strip()}\nThe answer is {q['answer_idx']}."
            options: Any = q["options"]
        else:
            prompt_ids = render_text(tokenizer, str(row["prompt"]), chat)
            completion, options = str(row["completion"]), row.get("options")
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        parsed = extractor.parse(ids, options)
        if parsed.answer is None:
            raise ValueError(f"Trace {i} states no option the answer contract reads ({completion[-80:]!r}).")
        traces.append(Trace(prompt_ids, [ids[s:e] for s, e in parsed.spans or []], parsed.answer, parsed.letters))
    return traces


@dataclass
class PRGAnalysis:
    """Per-trace records, the validity table and a summary."""

    records: list[dict]
    validity: list[dict]
    summary: dict[str, Any] = field(default_factory=dict)


def _option_trajectories(model, tokenizer, prompts, step_lists, letters, trigger_ids, whitespace, extractor):
    """``(K+1, n_options)`` option probabilities per sample."""
    if not step_lists:
        return []
    completions, spans = zip(*(join_steps(steps) for steps in step_lists))
    stats = score_rollouts(
        model,
        prompts,
        completions,
        step_spans=spans,
        trigger_ids=trigger_ids,
        option_ids=[extractor.option_ids(lt) for lt in letters],
        answer_ids=[None] * len(prompts),
        compute_stats=False,
        pad_token_id=tokenizer.pad_token_id or 0,
        whitespace_ids=whitespace,
    )
    return [np.exp(np.array(s.option_logprobs)) for s in stats]


def _bootstrap_auroc(real: np.ndarray, corrupt: np.ndarray, n_boot: int, rng: np.random.Generator):
    """AUROC of PRG for real (1) vs corrupted (0) traces, and a paired percentile bootstrap 95% interval."""

    def auc(idx: np.ndarray) -> float | None:
        scores = np.concatenate([real[idx], corrupt[idx]])
        labels = np.concatenate([np.ones(len(idx)), np.zeros(len(idx))])
        return auroc((scores + 1.0) / 2.0, labels)  # PRG in [-1, 1] mapped monotonically into [0, 1]

    n = len(real)
    point = auc(np.arange(n))
    boots = [auc(rng.integers(0, n, n)) for _ in range(n_boot)]
    low, high = np.percentile(boots, [2.5, 97.5])
    return point, float(low), float(high)


def analyse_prg(
    model: Any,
    tokenizer: Any,
    traces: Sequence[Trace],
    *,
    answer_trigger: str = DEFAULT_ANSWER_TRIGGER,
    aggregation: str = "monotone",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> PRGAnalysis:
    """Trajectories, corruptions and the validity table for ``traces`` under ``model`` (see the module doc)."""
    if aggregation not in PRG_AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {aggregation!r}; choose one of {', '.join(PRG_AGGREGATIONS)}.")
    traces = [t for t in traces if t.steps]
    if len(traces) < 2:
        raise ValueError("PRG analysis needs at least two traces with reasoning steps.")
    rng = random.Random(seed)
    trigger_ids = tokenizer(answer_trigger, add_special_tokens=False)["input_ids"]
    whitespace = whitespace_token_ids(tokenizer)
    extractor = AnswerExtractor(tokenizer, answer_probability="options", answer_options=traces[0].letters)
    n = len(traces)

    variants: dict[str, list[list[list[int]] | None]] = {"real": [t.steps for t in traces]}
    shuffled: list[list[list[int]] | None] = []
    for t in traces:
        order = list(range(len(t.steps)))
        if len(order) < 2 or len({tuple(s) for s in t.steps}) < 2:
            shuffled.append(None)
            continue
        while order == sorted(order):
            rng.shuffle(order)
        shuffled.append([t.steps[j] for j in order])
    variants["steps_shuffled"] = shuffled
    variants["steps_from_other_question"] = [traces[(i + 1 + rng.randrange(n - 1)) % n].steps for i in range(n)]
    variants["last_step_removed"] = [t.steps[:-1] if len(t.steps) >= 2 else None for t in traces]

    probs: dict[str, list[np.ndarray | None]] = {}
    for name, step_lists in variants.items():
        keep = [i for i, s in enumerate(step_lists) if s is not None]
        out = _option_trajectories(
            model,
            tokenizer,
            [traces[i].prompt_ids for i in keep],
            [step_lists[i] for i in keep],
            [traces[i].letters for i in keep],
            trigger_ids,
            whitespace,
            extractor,
        )
        probs[name] = [None] * n
        for i, p in zip(keep, out):
            probs[name][i] = p

    def prg_of(p: np.ndarray, j: int) -> float:
        return prg_score(np.log(np.clip(p[:, j], 1e-300, None)), aggregation)

    records = []
    for i, t in enumerate(traces):
        p = probs["real"][i]
        gold = t.letters.index(t.gold)
        top = int(p[-1].argmax())
        rec = {
            "index": i,
            "gold": t.gold,
            "top_at_K": t.letters[top],
            "K": len(t.steps),
            "p_gold": p[:, gold].tolist(),
            "p_top": p[:, top].tolist(),
            "prg_gold": prg_of(p, gold),
            "prg_top": prg_of(p, top),
            "gain_gold": normalised_gain(float(p[0, gold]), float(p[-1, gold])),
            "corrupted": {},
        }
        for name in CORRUPTIONS:
            q = probs[name][i]
            if q is not None:
                rec["corrupted"][name] = {"p_gold": q[:, gold].tolist(), "prg_gold": prg_of(q, gold)}
        records.append(rec)

    np_rng = np.random.default_rng(seed)
    validity = []
    for name in CORRUPTIONS:
        pairs = [(r["prg_gold"], r["corrupted"][name]["prg_gold"]) for r in records if name in r["corrupted"]]
        if len(pairs) < 2:
            validity.append({"corruption": name, "n": len(pairs), "auroc": None, "ci95": None})
            continue
        real, corrupt = (np.array(x) for x in zip(*pairs))
        point, low, high = _bootstrap_auroc(real, corrupt, n_bootstrap, np_rng)
        validity.append(
            {
                "corruption": name,
                "n": len(pairs),
                "auroc": point,
                "ci95": [low, high],
                "mean_prg_real": float(real.mean()),
                "mean_prg_corrupted": float(corrupt.mean()),
            }
        )
    summary = {
        "n_traces": n,
        "aggregation": aggregation,
        "mean_K": float(np.mean([r["K"] for r in records])),
        "mean_p0_gold": float(np.mean([r["p_gold"][0] for r in records])),
        "mean_pK_gold": float(np.mean([r["p_gold"][-1] for r in records])),
        "mean_prg_gold": float(np.mean([r["prg_gold"] for r in records])),
        "mean_gain_gold": float(np.mean([r["gain_gold"] for r in records])),
        "top_at_K_is_gold": float(np.mean([r["top_at_K"] == r["gold"] for r in records])),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
    }
    return PRGAnalysis(records=records, validity=validity, summary=summary)


def plot_curves(analysis: PRGAnalysis, path: str, title: str = "") -> None:
    """``p_k`` against the step fraction ``k / K``: mean and interquartile band, gold answer and top answer at K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, 1, 11)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    for key, label, color in (("p_gold", "gold answer", "tab:blue"), ("p_top", "top answer at K", "tab:orange")):
        curves = np.array([np.interp(grid, np.linspace(0, 1, len(r[key])), r[key]) for r in analysis.records])
        low, mid, high = np.percentile(curves, [25, 50, 75], axis=0)
        ax.plot(grid, curves.mean(0), color=color, label=f"{label} (mean)")
        ax.plot(grid, mid, color=color, linestyle=":", label=f"{label} (median)")
        ax.fill_between(grid, low, high, color=color, alpha=0.2, label=f"{label} (25-75%)")
    ax.set_xlabel("step fraction k / K")
    ax.set_ylabel("p_k (renormalised over the options)")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"{title or 'PRG trajectories'} ({len(analysis.records)} traces)\n"
        "the top answer at K is chosen by p_K, so its curve is biased upward at the end",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_validity(analysis: PRGAnalysis) -> str:
    """The validity table as plain text."""
    lines = [f"  {'corruption':<28}{'n':>5}{'AUROC':>9}{'95% CI':>18}{'PRG real':>10}{'corrupted':>11}"]
    for row in analysis.validity:
        if row["auroc"] is None:
            lines.append(f"  {row['corruption']:<28}{row['n']:>5}{'undefined':>9}")
            continue
        ci = f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"
        lines.append(
            f"  {row['corruption']:<28}{row['n']:>5}{row['auroc']:>9.3f}{ci:>18}"
            f"{row['mean_prg_real']:>10.4f}{row['mean_prg_corrupted']:>11.4f}"
        )
    return "\n".join(lines)


def write_analysis(analysis: PRGAnalysis, output_dir: str, title: str = "") -> dict[str, str]:
    """Write ``trajectories.jsonl``, ``validity.json`` and ``prg_curve.png``."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "trajectories": os.path.join(output_dir, "trajectories.jsonl"),
        "validity": os.path.join(output_dir, "validity.json"),
        "curve": os.path.join(output_dir, "prg_curve.png"),
    }
    with open(paths["trajectories"], "w") as f:
        for r in analysis.records:
            f.write(json.dumps(r) + "\n")
    with open(paths["validity"], "w") as f:
        json.dump({"validity": analysis.validity, "summary": analysis.summary}, f, indent=2)
    plot_curves(analysis, paths["curve"], title)
    return paths
