"""Progressive Reasoning Gain (PRG): does the reasoning progressively raise the probability of its own answer?

For a prompt ``x``, reasoning steps ``s_1..s_K``, answer trigger ``t`` and final answer ``a``::

    lp_k = log P(a | x, s_1..s_k, t)      k = 0..K   (t is conditioned on, not scored)
    p_k  = exp(lp_k)
    g_k  = p_k - p_{k-1}                  k = 1..K

and an aggregation of the trajectory into one number in ``[-1, 1]`` (:func:`prg_score`). Everything works on token
ids: steps are token spans of the completion as generated, never re-tokenised. The paper (arXiv 2604.08454)
publishes no formula; this is the package's own instantiation, each choice a config option.

The formulas need no model; the trajectory itself comes from the scoring engine
(:func:`hytuning_trl.scoring.answer_logprob_trajectory`, also importable from ``hytuning_trl``). Usable without the
trainer, to analyse any model's reasoning::

    spans = split_steps(completion_ids, tokenizer, "\\n\\n")
    steps = [completion_ids[s:e] for s, e in spans]
    [lp] = answer_logprob_trajectory(model, [prompt_ids], [steps], trigger_ids, [answer_ids])
    prg_score(lp)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .constants import DEFAULT_STEP_SEPARATOR, PRG_AGGREGATIONS

__all__ = ["PRG_AGGREGATIONS", "prg_score", "split_steps", "token_texts"]


def normalised_gain(p0: float, pk: float, eps: float = 1e-6) -> float:
    """``G``: ``(p_K - p_0) / (1 - p_0)`` for a rise, ``(p_K - p_0) / p_0`` for a fall, 0 within ``eps``."""
    delta = pk - p0
    if abs(delta) < eps:
        return 0.0
    return delta / (1.0 - p0) if delta > 0 else delta / p0


def token_texts(token_ids: Sequence[int], tokenizer: Any, cache: dict[int, str] | None = None) -> list[str]:
    """The text of each token on its own (cached per id)."""
    cache = {} if cache is None else cache
    out = []
    for t in token_ids:
        t = int(t)
        if t not in cache:
            cache[t] = tokenizer.decode([t])
        out.append(cache[t])
    return out


def _cut_spans(texts: list[str], separator: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for i, text in enumerate(texts):
        if separator in text:
            spans.append((start, i + 1))
            start = i + 1
    if start < len(texts):
        spans.append((start, len(texts)))
    return spans


def _merge_blank(spans: list[tuple[int, int]], texts: list[str]) -> list[tuple[int, int]]:
    """Fold spans that hold only whitespace into their neighbour, so the spans still tile the reasoning."""
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if "".join(texts[s:e]).strip() == "":
            if merged:
                merged[-1] = (merged[-1][0], e)
                continue
            if (s, e) != spans[-1]:  # leading blank span: glue it to the next one
                merged.append((s, e))
                continue
        if merged and "".join(texts[merged[-1][0] : merged[-1][1]]).strip() == "":
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def _merge_evenly(spans: list[tuple[int, int]], max_steps: int) -> list[tuple[int, int]]:
    if len(spans) <= max_steps:
        return spans
    groups = np.array_split(np.arange(len(spans)), max_steps)
    return [(spans[g[0]][0], spans[g[-1]][1]) for g in groups]


def split_steps(
    completion_ids: Sequence[int],
    tokenizer: Any,
    separator: str = DEFAULT_STEP_SEPARATOR,
    *,
    reasoning_end: int | None = None,
    max_steps: int | None = 16,
    fallback_separator: str | None = "\n",
    cache: dict[int, str] | None = None,
) -> list[tuple[int, int]]:
    """Cut the reasoning ``completion_ids[:reasoning_end]`` into steps, as ``[start, end)`` token spans.

    A step ends after each token whose text contains ``separator``. If no token contains it, ``fallback_separator``
    (default: a single newline) is tried; with neither, the whole reasoning is one step. Spans of whitespace only are
    folded into a neighbour, so the spans tile ``[0, reasoning_end)`` exactly; more than ``max_steps`` spans are
    merged evenly into ``max_steps``. An empty reasoning has no step (``[]``, K = 0).

    Args:
        completion_ids: the completion's token ids as generated.
        tokenizer: decodes single tokens.
        separator: the step separator (default a blank line).
        reasoning_end: where the reasoning ends (the start of the final-answer statement); default: the end.
        max_steps: the most steps kept (``None``: no limit).
        fallback_separator: tried when ``separator`` occurs nowhere (``None``: no fallback).
        cache: a token-id-to-text cache shared across calls.
    """
    end = len(completion_ids) if reasoning_end is None else reasoning_end
    if not 0 <= end <= len(completion_ids):
        raise ValueError(f"reasoning_end={reasoning_end} is outside the completion of {len(completion_ids)} tokens.")
    texts = token_texts(completion_ids[:end], tokenizer, cache)
    if "".join(texts).strip() == "":
        return []
    spans = _cut_spans(texts, separator)
    if len(spans) == 1 and fallback_separator and fallback_separator != separator:
        spans = _cut_spans(texts, fallback_separator)
    spans = _merge_blank(spans, texts)
    return _merge_evenly(spans, max_steps) if max_steps else spans


def prg_score(logprobs: Sequence[float] | torch.Tensor, aggregation: str = "monotone") -> float:
    """Aggregate a trajectory ``[lp_0, ..., lp_K]`` of answer log-probabilities into one PRG value in ``[-1, 1]``.

    With ``p_k = exp(lp_k)`` and ``g_k = p_k - p_{k-1}``:

    * ``monotone`` (default): ``(p_K - p_0) * (share of steps whose gain has the sign of p_K - p_0)``, a zero gain
      counting as consistent: a steady rise scores ``p_K - p_0``, a rise with setbacks less, a steady decline
      ``p_K - p_0 < 0``.
    * ``net``: ``p_K - p_0``
    * ``positive``: mean over k of ``max(g_k, 0)``: gain only, never negative by definition.
    * ``auc``: mean over k = 1..K of ``p_k - p_0``

    Every aggregation lies in ``[-1, 1]`` (``positive`` in ``[0, 1]``) and is 0 when ``K = 0``. An answer already
    certain before any reasoning scores ~0 ("decide first, explain later"); under ``monotone``, ``net`` and ``auc``
    reasoning that drags support down scores below 0. Non-finite input gives ``nan``.
    """
    if aggregation not in PRG_AGGREGATIONS:
        raise ValueError(f"Unknown PRG aggregation {aggregation!r}; choose one of {', '.join(PRG_AGGREGATIONS)}.")
    lp = torch.as_tensor(logprobs, dtype=torch.float64).flatten()
    if lp.numel() == 0:
        raise ValueError("A PRG trajectory needs at least lp_0.")
    if torch.isnan(lp).any() or (lp == math.inf).any():
        return math.nan
    p = lp.exp()
    if p.numel() == 1:
        return 0.0
    gains = p[1:] - p[:-1]
    if aggregation == "monotone":
        net = p[-1] - p[0]
        consistent = (gains * torch.sign(net) >= 0) if net != 0 else torch.ones_like(gains, dtype=torch.bool)
        value = net * consistent.double().mean()
    elif aggregation == "net":
        value = p[-1] - p[0]
    elif aggregation == "positive":
        value = gains.clamp(min=0).mean()
    else:
        value = (p[1:] - p[0]).mean()
    return float(value)


def join_steps(steps: Sequence[Sequence[int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Steps (token lists) joined into one completion, with each step's ``[start, end)`` span in it."""
    completion: list[int] = []
    spans = []
    for step in steps:
        if len(step) == 0:
            raise ValueError("A step must hold at least one token.")
        spans.append((len(completion), len(completion) + len(step)))
        completion.extend(int(t) for t in step)
    return completion, spans
