"""One no-grad pass per batch: the completion's token statistics and its PRG trajectory.

For each rollout the pass yields

* ``self_certainty`` (INTUITOR): mean over completion tokens of ``KL(U || p) = logsumexp(z) - mean(z) - log V``,
* ``entropy``: mean over completion tokens of ``-sum_v p_v log p_v``,
* ``answer_logprobs``: ``lp_k = log P(a | x, s_1..s_k, t)`` for ``k = 0..K`` (see :mod:`hytuning_trl.prg`),

from raw (untempered) logits, with the vocabulary projected in fp32 chunks. The trajectory and the statistics come
from the same packed forward (:mod:`hytuning_trl.packing`); where a model rejects the packed 4D mask the naive
``K + 1`` forwards are used instead, detected once per model, with one warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .constants import DEFAULT_VOCAB_CHUNK_ELEMS
from .estimators import prg_gated, reasoning_likelihood, weakest_token
from .packing import Row, build_naive_rows, build_packed_row, get_backbone_and_head, run_rows, unwrap_model
from .prg import join_steps, normalised_gain

__all__ = ["RolloutStats", "answer_logprob_trajectory", "score_rollouts", "to_id_lists"]

_PACKED_OK_ATTR = "_hytuning_packed_mask_ok"


@dataclass
class RolloutStats:
    """The policy's own view of one completion, handed to reward functions as ``hytuning_stats``.

    Attributes:
        self_certainty: mean ``KL(U || p)`` over the completion's tokens (nan for an empty completion).
        entropy: mean token entropy over the completion's tokens (nan for an empty completion).
        answer_logprobs: the PRG trajectory ``[lp_0, ..., lp_K]`` of the final answer, or ``None`` when the
            completion has no answer to score.
        option_logprobs: in multiple-choice mode, the option-renormalised log-probabilities at every ``k``
            (``K + 1`` lists of ``n_options``), else ``None``.
        answer_index: in multiple-choice mode, the index of the scored option among the options.
        num_steps: ``K``, the number of reasoning steps.
        prg: the PRG score (filled in by the trainer with the configured aggregation).
        answer: the extracted (or, for multiple choice, forced) answer text.
        answer_forced: ``True`` when the answer was not stated and the model's forced choice was scored.
        answer_num_tokens: the number of answer tokens scored (1 in multiple-choice mode).
        completion_ids: the completion's token ids.
        text: the completion's text.
        token_logprobs: ``log p(y_t | x, y_<t)`` of each completion token under the untempered policy (``None`` when
            the pass ran without ``compute_stats``).
        reasoning_end: the reasoning is ``completion_ids[:reasoning_end]`` (the answer statement and EOS excluded;
            filled in from the answer contract).
        statement: the token span ``[start, end)`` of the stated answer's statement in the completion (``None`` when
            nothing was stated).
        answer_position: the completion token that states the option letter (``None`` without one).
        statement_option_ids: the options' tokens in the form the statement wrote its letter (``" B"`` or ``"B"``):
            the policy's probability of its stated answer at ``answer_position`` is renormalised over them.
    """

    self_certainty: float = math.nan
    entropy: float = math.nan
    answer_logprobs: list[float] | None = None
    option_logprobs: list[list[float]] | None = None
    answer_index: int | None = None
    num_steps: int = 0
    prg: float | None = None
    answer: str | None = None
    answer_forced: bool = False
    answer_num_tokens: int = 1
    completion_ids: list[int] = field(default_factory=list)
    text: str = ""
    token_logprobs: list[float] | None = None
    reasoning_end: int | None = None
    statement: tuple[int, int] | None = None
    answer_position: int | None = None
    statement_option_ids: list[int] | None = None

    @property
    def has_prg(self) -> bool:
        """Whether this rollout's PRG measures its reasoning: a trajectory over at least one step, to an answer it
        stated (a forced choice is picked by its final probability, which guarantees it a gain)."""
        return self.answer_logprobs is not None and self.num_steps > 0 and not self.answer_forced

    def answer_usable(self, use_forced: bool = False) -> bool:
        """Whether the answer may be scored: there is one, and it was stated (or ``use_forced``)."""
        return self.answer is not None and (use_forced or not self.answer_forced)

    @property
    def answer_confidence(self) -> float | None:
        """``p_K``: the probability of the final answer after the whole reasoning."""
        if not self.answer_logprobs:
            return None
        return math.exp(self.answer_logprobs[-1])

    def statement_mask(self, length: int) -> list[int]:
        """0 on the stated answer's statement tokens (trigger and answer, as read), 1 elsewhere, over ``length``."""
        mask = [1] * length
        if self.statement is not None:
            for t in range(self.statement[0], min(self.statement[1], length)):
                mask[t] = 0
        return mask

    @property
    def reasoning_logprobs(self) -> list[float] | None:
        """The log-probabilities of the reasoning's own tokens (the answer statement excluded); ``None`` without
        token statistics."""
        if self.token_logprobs is None:
            return None
        end = len(self.token_logprobs) if self.reasoning_end is None else self.reasoning_end
        return self.token_logprobs[:end]

    @property
    def weakest_token(self) -> float | None:
        """The lowest probability the policy gave a token of its own reasoning
        (:func:`hytuning_trl.estimators.weakest_token`)."""
        lps = self.reasoning_logprobs
        return None if lps is None else weakest_token(lps)

    @property
    def reasoning_likelihood(self) -> float | None:
        """The geometric mean of the reasoning tokens' probabilities
        (:func:`hytuning_trl.estimators.reasoning_likelihood`)."""
        lps = self.reasoning_logprobs
        return None if lps is None else reasoning_likelihood(lps)

    @property
    def prg_gated_confidence(self) -> float | None:
        """``p_K * clip(G, 0, 1)`` (:func:`hytuning_trl.estimators.prg_gated`)."""
        confidence, gain = self.answer_confidence, self.gain
        return None if confidence is None or gain is None else prg_gated(confidence, gain)

    @property
    def endpoint_probabilities(self) -> tuple[float, float] | None:
        """``(p_0, p_K)`` with ``p_k = exp(lp_k / answer_num_tokens)`` (the per-token probability in raw mode, the
        option's probability in options mode); ``None`` without a trajectory."""
        if not self.answer_logprobs:
            return None
        return tuple(math.exp(self.answer_logprobs[i] / self.answer_num_tokens) for i in (0, -1))

    @property
    def gain(self) -> float | None:
        """``G``, the normalised gain of the answer along the reasoning (:func:`hytuning_trl.prg.normalised_gain`),
        with ``p_k = exp(lp_k / answer_num_tokens)`` (the per-token probability in raw mode); ``None`` without a
        trajectory."""
        ends = self.endpoint_probabilities
        if ends is None:
            return None
        p0, pk = ends
        return normalised_gain(p0, pk)


def to_id_lists(ids: Any, mask: Any = None, pad_token_id: int | None = None) -> list[list[int]]:
    """Lists of token ids from lists or a (left- or right-) padded tensor, dropping padding by ``mask``."""
    if isinstance(ids, torch.Tensor):
        if mask is not None:
            mask = torch.as_tensor(mask).bool()
            return [row[m].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
        if pad_token_id is not None:
            return [[t for t in row.tolist() if t != pad_token_id] for row in ids.cpu()]
        return ids.cpu().tolist()
    out = [list(map(int, row)) for row in ids]
    if mask is not None:
        out = [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(out, mask)]
    return out


def _per_sample(value: Any, n: int, name: str) -> list[Any]:
    """Broadcast one token list (shared by all samples) or check a per-sample list."""
    if value is None:
        return [None] * n
    if len(value) == 0 or isinstance(value[0], int):
        return [list(value)] * n
    if len(value) != n:
        raise ValueError(f"`{name}` has {len(value)} entries but there are {n} samples.")
    return [None if v is None else list(v) for v in value]


def _layouts(
    prompts: list[list[int]],
    completions: list[list[int]],
    spans: list[Any],
    triggers: list[Any],
    answers: list[Any],
    options: list[Any],
    whitespace: Collection[int],
) -> list[tuple[list[int] | None, list[int], list[int] | None, list[int] | None]]:
    """For each sample: the branch points on the main path ``prompt + completion`` (or None), the branch tokens, the
    raw answer, the option ids."""
    out = []
    for i, completion in enumerate(completions):
        span = spans[i]
        trigger = triggers[i] or []
        opt = options[i]
        answer = answers[i]
        wants_trajectory = span is not None and (opt is not None or answer is not None)
        if not wants_trajectory:
            out.append((None, [], None, None))
            continue
        cuts = [span[0][0]] + [end for _, end in span] if span else [0]
        if any(not 0 <= c <= len(completion) for c in cuts):
            raise ValueError(f"Sample {i}: step spans {span} fall outside its completion of {len(completion)} tokens.")
        cuts = _branch_points(prompts[i] + completion, [len(prompts[i]) + c for c in cuts], whitespace)
        if opt is not None:
            out.append((cuts, trigger, None, opt))
        else:
            if not answer:
                raise ValueError(f"Sample {i}: `answer_ids` is empty; an answer needs at least one token.")
            out.append((cuts, trigger, answer, None))
    return out


def _branch_points(main: list[int], cuts: list[int], whitespace: Collection[int]) -> list[int]:
    """Move each cut back before the whitespace-only tokens that end what precedes it, so that branch k sees the
    model's own context followed directly by the trigger (no doubled newline). Cuts stay >= 1 and non-decreasing."""
    out: list[int] = []
    for cut in cuts:
        floor = out[-1] if out else 1
        while cut > floor and main[cut - 1] in whitespace:
            cut -= 1
        out.append(max(cut, floor))
    return out


def _rows(layouts, prompts, completions, compute_stats: bool, packed: bool) -> tuple[list[Row], list[slice]]:
    rows: list[Row] = []
    owner: list[slice] = []
    for (cuts, branch, answer, opt), prompt, completion in zip(layouts, prompts, completions):
        start = len(rows)
        if cuts is None and not compute_stats:
            owner.append(slice(start, start))
            continue
        if packed:
            rows.append(build_packed_row(prompt, completion, cuts, branch, answer, opt, compute_stats))
        else:
            rows.extend(build_naive_rows(prompt, completion, cuts, branch, answer, opt, compute_stats))
        owner.append(slice(start, len(rows)))
    return rows, owner


def probe_tolerance(dtype: torch.dtype) -> float:
    """How far the packed layout may differ from separate forwards before the mask counts as refused: rounding, not a
    wrong mask, separates the two in low precision (1e-3 in fp32, 5e-2 in bf16 / fp16)."""
    return 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2


#: What a model (its attention implementation or kernel) raises when it refuses a custom 4D mask. A TypeError,
#: IndexError, KeyError or AttributeError is a bug in the packed path and is not taken for a refusal.
MASK_REFUSALS = (ValueError, NotImplementedError, RuntimeError)


def packed_scoring_verdict(model: nn.Module) -> bool | None:
    """Whether the probe found that ``model`` takes the packed 4D mask (``None`` until it has run)."""
    return getattr(unwrap_model(model), _PACKED_OK_ATTR, None)


def _packed_mask_works(model: nn.Module, run: Callable[[list[Row]], list]) -> bool:
    """Check once per model that the packed 4D mask gives what separate forwards give (it may raise, or be ignored
    silently by an attention kernel that does not take custom masks)."""
    base = unwrap_model(model)
    cached = getattr(base, _PACKED_OK_ATTR, None)
    if cached is not None:
        return cached
    weight = get_backbone_and_head(model)[1].weight
    vocab = int(getattr(weight, "ds_shape", weight.shape)[0])  # ZeRO-3 partitions leave the local tensor empty
    prompt, completion, branch, answer = ([t % vocab for t in ids] for ids in ([1, 2, 3], [4, 5, 6, 7], [8], [9]))
    cuts = [3, 5, 7]  # on the main path prompt + completion
    ok = True
    try:
        packed = run([build_packed_row(prompt, completion, cuts, branch, answer, None, True)])[0]
        naive = run(build_naive_rows(prompt, completion, cuts, branch, answer, None, True))
        ref_lp = torch.cat([r.answer_logprobs for r in naive[:-1]])
        tol = probe_tolerance(next((p.dtype for p in base.parameters() if p.is_floating_point()), torch.float32))
        ok = torch.allclose(packed.answer_logprobs, ref_lp, atol=tol) and torch.allclose(
            packed.self_certainty, naive[-1].self_certainty, atol=tol
        )
        reason = "its results differ from separate forwards"
    except MASK_REFUSALS as exc:  # what a model raises when it refuses the mask; anything else is a bug: it raises
        ok = False
        reason = f"it raised {type(exc).__name__}: {exc}"
    if not ok:
        warnings.warn(
            f"{type(base).__name__} (attention: {getattr(base.config, '_attn_implementation', '?')}) does not take "
            f"the packed 4D attention mask ({reason}); PRG falls back to K+1 separate forwards per completion, which "
            "is slower. Use attn_implementation='sdpa' or 'eager' for the single-pass scoring.",
            stacklevel=3,
        )
    setattr(base, _PACKED_OK_ATTR, ok)
    return ok


@torch.no_grad()
def score_rollouts(
    model: nn.Module,
    prompt_ids: Any,
    completion_ids: Any,
    *,
    step_spans: Sequence[Sequence[tuple[int, int]] | None] | None = None,
    trigger_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
    answer_ids: Sequence[Sequence[int] | None] | None = None,
    option_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
    prompt_mask: Any = None,
    completion_mask: Any = None,
    compute_stats: bool = True,
    method: str = "auto",
    token_budget: int = 16384,
    vocab_chunk_elems: int = DEFAULT_VOCAB_CHUNK_ELEMS,
    pad_token_id: int = 0,
    sync_num_batches: Callable[[int], int] | None = None,
    whitespace_ids: Collection[int] = (),
) -> list[RolloutStats]:
    """Score rollouts in one no-grad pass: token statistics and, where steps and an answer are given, the trajectory.

    Args:
        model: the policy (plain, PEFT, DDP or DeepSpeed wrapped).
        prompt_ids: per-sample prompt token ids (lists, or a padded tensor with ``prompt_mask``).
        completion_ids: per-sample completion token ids (lists, or a padded tensor with ``completion_mask``).
        step_spans: per sample, the ``[start, end)`` token spans of the reasoning steps in the completion
            (:func:`hytuning_trl.prg.split_steps`), ``[]`` for no reasoning, ``None`` for no trajectory.
        trigger_ids: the answer trigger's token ids, shared or per sample.
        answer_ids: per sample, the answer's token ids (raw mode), or ``None`` (options mode: forced choice).
        option_ids: the option letters' first token ids, shared or per sample. When given, ``lp_k`` is the option-
            renormalised log-probability of the answer's option: ``log softmax(z_options)[answer]``.
        prompt_mask, completion_mask: masks of padded tensor inputs (padding on either side).
        compute_stats: also compute self-certainty, entropy and each token's log-probability over every completion
            token.
        method: ``"packed"`` (one forward per row batch), ``"naive"`` (K+1 forwards), or ``"auto"`` (packed where
            the model takes the 4D mask, checked once).
        token_budget: padded tokens per forward; longer inputs are split over several forwards.
        vocab_chunk_elems: fp32 logits held at once by the vocabulary projection.
        pad_token_id: padding id for the batched forwards.
        sync_num_batches: maps the local number of forwards to the global one (ZeRO-3 needs equal counts).
        whitespace_ids: ids of whitespace-only tokens (:func:`hytuning_trl.answers.whitespace_token_ids`): each branch
            is inserted before those that end what precedes it (the prompt's, for branch 0), so it sees the model's
            own context followed by the trigger.

    Returns:
        One :class:`RolloutStats` per sample with ``self_certainty``, ``entropy``, ``token_logprobs`` (with
        ``compute_stats``), ``answer_logprobs`` (``None``
        without a trajectory), ``num_steps`` and, in options mode, ``option_logprobs`` and ``answer_index``.
    """
    prompts = to_id_lists(prompt_ids, prompt_mask)
    completions = to_id_lists(completion_ids, completion_mask)
    n = len(prompts)
    if len(completions) != n:
        raise ValueError(f"Got {n} prompts but {len(completions)} completions.")
    spans = [None] * n if step_spans is None else [None if s is None else list(s) for s in step_spans]
    if len(spans) != n:
        raise ValueError(f"`step_spans` has {len(spans)} entries but there are {n} samples.")
    triggers = _per_sample(trigger_ids, n, "trigger_ids")
    options = _per_sample(option_ids, n, "option_ids")
    answers = [None] * n if answer_ids is None else [None if a is None else list(a) for a in answer_ids]
    if len(answers) != n:
        raise ValueError(f"`answer_ids` has {len(answers)} entries but there are {n} samples.")
    if method not in ("auto", "packed", "naive"):
        raise ValueError(f"`method` must be 'auto', 'packed' or 'naive', got {method!r}.")
    for i, (opt, ans) in enumerate(zip(options, answers)):
        if opt is not None and ans is not None and ans[0] not in opt:
            raise ValueError(f"Sample {i}: the answer's first token {ans[0]} is not among the option ids {opt}.")

    def run(rows: list[Row]) -> list:
        return run_rows(
            model,
            rows,
            token_budget=token_budget,
            vocab_chunk_elems=vocab_chunk_elems,
            pad_token_id=pad_token_id,
            sync_num_batches=sync_num_batches,
        )

    packed = method == "packed" or (method == "auto" and _packed_mask_works(model, run))
    layouts = _layouts(prompts, completions, spans, triggers, answers, options, frozenset(whitespace_ids))
    rows, owner = _rows(layouts, prompts, completions, compute_stats, packed)
    results = run(rows)

    out = []
    for i, ((cuts, _, answer, opt), own) in enumerate(zip(layouts, owner)):
        res = results[own]
        stats = RolloutStats(completion_ids=completions[i], num_steps=len(cuts) - 1 if cuts else 0)
        if compute_stats and completions[i]:
            stat_res = res[0] if packed else res[-1]
            stats.self_certainty = stat_res.self_certainty.mean().item()
            stats.entropy = stat_res.entropy.mean().item()
            stats.token_logprobs = stat_res.token_logprobs.double().tolist()
        if cuts is not None:
            traj_res = res[:1] if packed else res[: len(cuts)]
            if opt is not None:
                logits = torch.cat([r.option_logits for r in traj_res], dim=0)  # (K+1, n_options)
                logprobs = torch.log_softmax(logits.double(), dim=-1)
                given = answers[i]
                index = opt.index(given[0]) if given is not None else int(logprobs[-1].argmax())
                stats.option_logprobs = logprobs.tolist()
                stats.answer_index = index
                stats.answer_logprobs = logprobs[:, index].tolist()
            else:
                lp = torch.cat([r.answer_logprobs for r in traj_res]).view(len(cuts), len(answer))
                stats.answer_logprobs = lp.double().sum(dim=-1).tolist()
                stats.answer_num_tokens = len(answer)
        out.append(stats)
    return out


def answer_logprob_trajectory(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    step_ids: Sequence[Sequence[Sequence[int]]],
    trigger_ids: Sequence[int] | Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int] | None],
    *,
    option_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
    method: str = "auto",
    token_budget: int = 16384,
    vocab_chunk_elems: int = DEFAULT_VOCAB_CHUNK_ELEMS,
    pad_token_id: int = 0,
    sync_num_batches: Callable[[int], int] | None = None,
    whitespace_ids: Collection[int] = (),
) -> list[torch.Tensor]:
    """``lp_k = log P(answer | prompt, step_1..step_k, trigger)`` for ``k = 0..K_b``, for every sample ``b``.

    All samples are packed (one row each: ``[prompt, branch_0, step_1, branch_1, ..., step_K, branch_K]`` with a 4D
    mask) and run in batched no-grad forwards of at most ``token_budget`` padded tokens. ``method="naive"`` runs the
    ``K + 1`` prefixes separately (the reference); ``"auto"`` uses the packed pass where the model takes the mask.

    Args:
        model: a causal LM.
        prompt_ids: per sample, the prompt's token ids (non-empty).
        step_ids: per sample, the token ids of each step (``[]`` for K = 0).
        trigger_ids: the answer trigger's ids (conditioned on, not scored), shared or per sample.
        answer_ids: per sample, the answer's ids. In options mode ``None`` scores the model's forced choice.
        option_ids: the options' first token ids; when given, each ``lp_k`` is renormalised over the options.
        whitespace_ids: ids of whitespace-only tokens; each branch is inserted before those that end what precedes
            it (:func:`hytuning_trl.answers.whitespace_token_ids`).

    Returns:
        One float32 tensor of ``K_b + 1`` log-probabilities per sample.
    """
    if len(step_ids) != len(prompt_ids):
        raise ValueError(f"Got {len(prompt_ids)} prompts but {len(step_ids)} step lists.")
    completions, spans = map(list, zip(*(join_steps(steps) for steps in step_ids))) if step_ids else ([], [])
    stats = score_rollouts(
        model,
        [list(p) for p in prompt_ids],
        completions,
        step_spans=spans,
        trigger_ids=trigger_ids,
        answer_ids=answer_ids,
        option_ids=option_ids,
        compute_stats=False,
        method=method,
        token_budget=token_budget,
        vocab_chunk_elems=vocab_chunk_elems,
        pad_token_id=pad_token_id,
        sync_num_batches=sync_num_batches,
        whitespace_ids=whitespace_ids,
    )
    return [torch.tensor(s.answer_logprobs, dtype=torch.float32) for s in stats]
