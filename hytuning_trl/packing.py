"""The single no-grad forward behind PRG and the internal-feedback statistics.

A *row* is one sequence fed to the backbone. In the packed layout one row holds a whole completion with all its
answer branches:

    [x, branch_0, s_1, branch_1, ..., s_K, branch_K, tail]        branch_k = trigger (+ answer, when scored raw)

Every token carries a group id: -1 for the main path (prompt, steps, tail) and k for the tokens of branch k. Token i
may attend to token j iff ``j <= i and (group[j] == -1 or group[j] == group[i])``: a branch sees the main path up to
its step and itself, the main path never sees a branch. Position ids of a branch continue the main path, and the main
path continues as if no branch had been inserted, so every query sees exactly what a separate forward over
``x + s_1..s_k + branch_k`` would see. transformers accepts such a mask as a 4D ``(B, 1, Q, KV)`` additive tensor.

The same engine runs the naive reference: rows whose groups are ``None`` are plain causal sequences.

Only the hidden states of the positions that are queried are projected to the vocabulary, tile by tile (at most
``vocab_chunk_elems`` fp32 logits at a time, each vocabulary slice of the head cast to fp32 once), with the
reductions (log-sum-exp, entropy, self-certainty, the target's log-probability) accumulated online across slices:
no ``(batch, seq, vocab)`` tensor, no second tile of logits, and no whole fp32 copy of the head ever exists.
Option queries are projected on the options' rows of the head alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .constants import DEFAULT_VOCAB_CHUNK_ELEMS

__all__ = [
    "Row",
    "RowResult",
    "build_naive_rows",
    "build_packed_row",
    "finish_logits",
    "get_backbone_and_head",
    "lm_head_scaling",
    "run_rows",
]


@dataclass
class Row:
    """One sequence for the backbone and the positions whose next-token distribution is wanted.

    Attributes:
        input_ids: token ids of the row.
        position_ids: position id of each token (``None``: ``0..len-1``).
        groups: group id of each token for the packed mask (``None``: plain causal row).
        stat_positions: positions whose distribution yields self-certainty and entropy.
        stat_targets: the token each stat position predicts (the completion's own next token), scored as
            ``log p(target)``; empty: not scored.
        answer_queries: ``(position, target_id)`` pairs scored as ``log p(target)``.
        option_positions: positions at which the logits of the option tokens are read.
    """

    input_ids: list[int]
    position_ids: list[int] | None = None
    groups: list[int] | None = None
    stat_positions: list[int] = field(default_factory=list)
    stat_targets: list[int] = field(default_factory=list)
    answer_queries: list[tuple[int, int]] = field(default_factory=list)
    option_positions: list[int] = field(default_factory=list)
    option_ids: list[int] | None = None


@dataclass
class RowResult:
    """What the forward returned for one :class:`Row` (all float32, on CPU)."""

    self_certainty: torch.Tensor  # (len(stat_positions),): logsumexp(z) - mean(z) - log V
    entropy: torch.Tensor  # (len(stat_positions),)
    answer_logprobs: torch.Tensor  # (len(answer_queries),)
    option_logits: torch.Tensor  # (len(option_positions), n_options)
    token_logprobs: torch.Tensor | None = None  # (len(stat_positions),): log p(stat target), nan where none


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed / PEFT wrappers down to the transformers model (its layers, LoRA included, stay live)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def get_backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack (returns ``last_hidden_state``) and the LM head of a causal LM, through any wrapper."""
    base = unwrap_model(model)
    backbone = base.get_decoder() if hasattr(base, "get_decoder") else None
    if backbone is None or backbone is base:
        backbone = getattr(base, base.base_model_prefix)
    head = base.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(base).__name__} has no output embeddings (LM head); a causal LM is required.")
    return backbone, head


def _packed_mask(groups: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4D mask ``(B, 1, L, L)``: 0 where attention is allowed, the dtype's minimum elsewhere."""
    length = groups.size(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=groups.device).tril()
    g_q = groups.unsqueeze(2)  # (B, L, 1)
    g_k = groups.unsqueeze(1)  # (B, 1, L)
    allowed = causal & ((g_k == -1) | (g_k == g_q)) & valid.unsqueeze(1)
    # padding queries attend to themselves only, so no row of the softmax is empty
    allowed |= torch.eye(length, dtype=torch.bool, device=groups.device).unsqueeze(0) & ~valid.unsqueeze(2)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=groups.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def _plan_batches(rows: Sequence[Row], token_budget: int) -> list[list[int]]:
    """Group rows (longest first) so that each batch's padded size ``n_rows * max_len`` stays within the budget."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
    batches: list[list[int]] = []
    current: list[int] = []
    current_max = 0
    for i in order:
        length = len(rows[i].input_ids)
        new_max = max(current_max, length)
        if current and new_max * (len(current) + 1) > token_budget:
            batches.append(current)
            current, current_max = [], 0
            new_max = length
        current.append(i)
        current_max = new_max
    if current:
        batches.append(current)
    return batches


def lm_head_scaling(config: Any) -> tuple[float, float | None]:
    """``(logit_scale, final_logit_softcapping)`` of a model's LM head, read as TRL 1.16's fused LM head reads them
    (``trl.trainer.utils.add_fused_lm_head``), so the scoring pass and TRL's loss see the same logits::

        z = softcap * tanh(logit_scale * (h W^T + b) / softcap)      (softcap only where the config sets one)

    ``logit_scale`` is the config's ``logit_scale``, else ``output_multiplier``, else ``lm_head_multiplier``
    (Falcon-H1), else ``1 / logits_scaling`` (Granite, MiniCPM; ``logits_scaling`` itself for HyperCLOVA X), else 1.
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = getattr(text_config, "logit_scale", None)
    if scale is None:
        scale = getattr(text_config, "output_multiplier", None)
    if scale is None:
        scale = getattr(text_config, "lm_head_multiplier", None)
    if scale is None and getattr(text_config, "logits_scaling", None) is not None:
        scaling = text_config.logits_scaling
        scale = scaling if getattr(text_config, "model_type", None) == "hyperclovax" else 1 / scaling
    return (1.0 if scale is None else float(scale)), (float(softcap) if softcap else None)


def finish_logits(logits: torch.Tensor, logit_scale: float, softcap: float | None) -> torch.Tensor:
    """The head's scaling and soft-capping (:func:`lm_head_scaling`) applied to raw ``h W^T + b`` logits."""
    if logit_scale != 1.0:
        logits = logits * logit_scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


@dataclass
class _Head:
    """The LM head as the projection uses it: weight (possibly low precision), bias, scale and softcap."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    logit_scale: float
    softcap: float | None

    @property
    def vocab(self) -> int:
        return self.weight.size(0)

    def _finish(self, logits: torch.Tensor) -> torch.Tensor:
        return finish_logits(logits, self.logit_scale, self.softcap)

    def project(self, hidden32: torch.Tensor, v0: int, v1: int, weight32: torch.Tensor) -> torch.Tensor:
        """fp32 logits of ``hidden32`` rows over the vocabulary slice ``[v0, v1)`` (``weight32``: that slice, fp32)."""
        bias = None if self.bias is None else self.bias[v0:v1].float()
        return self._finish(F.linear(hidden32, weight32, bias))

    def project_ids(self, hidden32: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
        """fp32 logits of ``hidden32`` rows for the vocabulary entries ``ids`` only."""
        index = torch.tensor(list(ids), dtype=torch.long, device=self.weight.device)
        bias = None if self.bias is None else self.bias[index].float()
        return self._finish(F.linear(hidden32, self.weight[index].float(), bias))


class _Reductions:
    """Per-query statistics of the logits ``z``, accumulated over vocabulary slices so that no more than one tile of
    logits exists at a time. Per slice ``j``: ``L_j = logsumexp(z_j)`` and ``T_j = sum softmax(z_j) z_j`` (fused
    kernels); across slices::

        L = logaddexp_j L_j,   T = sum_j e^(L_j - L) T_j   (= sum_v p_v z_v),   U = sum_v z_v
        entropy = L - T,   self-certainty = L - U / V - log V,   log p(target) = z_target - L
    """

    def __init__(self, n: int, device: torch.device):
        self.lse = torch.full((n,), -math.inf, device=device)
        self.t = torch.zeros(n, device=device)
        self.u = torch.zeros(n, device=device)
        self.target = torch.zeros(n, device=device)

    def update(self, r0: int, logits: torch.Tensor, targets: torch.Tensor, v0: int) -> None:
        """Fold the tile ``logits`` (rows ``r0..``, vocabulary ``v0..``) into the statistics."""
        rows = slice(r0, r0 + logits.size(0))
        local = targets[rows] - v0
        inside = torch.nonzero((local >= 0) & (local < logits.size(-1))).squeeze(-1)
        if inside.numel():
            self.target[r0 + inside] = logits[inside, local[inside]]
        self.u[rows] += logits.sum(-1)
        lse_tile = torch.logsumexp(logits, dim=-1)
        probs = torch.softmax(logits, dim=-1)
        t_tile = torch.bmm(probs.unsqueeze(1), logits.unsqueeze(2)).view(-1)
        del probs
        if v0 == 0:  # the first slice starts the sums
            self.lse[rows], self.t[rows] = lse_tile, t_tile
        else:
            lse_old = self.lse[rows]
            lse_new = torch.logaddexp(lse_old, lse_tile)
            self.t[rows] = self.t[rows] * torch.exp(lse_old - lse_new) + t_tile * torch.exp(lse_tile - lse_new)
            self.lse[rows] = lse_new

    def logsumexp(self) -> torch.Tensor:
        return self.lse


def _head_params(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = getattr(head, "weight", None)
    if weight is None:
        raise ValueError(f"The LM head {type(head).__name__} has no `weight`; it cannot be projected in chunks.")
    return weight, getattr(head, "bias", None)


def _full_tensor(t: torch.Tensor | None) -> torch.Tensor | None:
    """An FSDP2 DTensor gathered whole (in its own dtype); any other tensor as it is."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return t
    return t.full_tensor() if isinstance(t, DTensor) else t


def _gather_ctx(weight: torch.Tensor, bias: torch.Tensor | None):
    """Gather a ZeRO-3 partitioned LM head for direct use (TRL's helper). A head that is not partitioned (a model
    loaded whole, e.g. for evaluation, while a ZeRO-3 config is registered globally) is used as it is."""
    if not hasattr(weight, "ds_status"):
        return contextlib.nullcontext()
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    return maybe_gather_lm_head_ctx(weight, bias)


@torch.no_grad()
def run_rows(
    model: nn.Module,
    rows: Sequence[Row],
    *,
    token_budget: int = 16384,
    vocab_chunk_elems: int = DEFAULT_VOCAB_CHUNK_ELEMS,
    pad_token_id: int = 0,
    sync_num_batches: Callable[[int], int] | None = None,
) -> list[RowResult]:
    """Run the rows through the model's backbone in batches of at most ``token_budget`` padded tokens.

    Args:
        model: a causal LM (plain, PEFT, DDP or DeepSpeed wrapped).
        rows: the rows; packed rows (``groups`` set) and plain rows may be mixed.
        token_budget: the most ``batch * max_len`` tokens one forward gets. A single longer row runs alone.
        vocab_chunk_elems: the most fp32 logits held at once by the vocabulary projection.
        pad_token_id: id used for padding (masked out, never scored).
        sync_num_batches: maps the local number of forwards to the number every process runs (all-reduce max).
            Processes with fewer run one-token dummy forwards, so under ZeRO-3 the collectives of every process
            match.

    Returns:
        One :class:`RowResult` per row, in the order given.
    """
    backbone, head = get_backbone_and_head(model)
    weight, bias = _head_params(head)
    logit_scale, softcap = lm_head_scaling(unwrap_model(model).config)
    try:
        device = next(backbone.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        device = torch.device("cpu")
    dtype = next((p.dtype for p in backbone.parameters() if p.is_floating_point()), torch.float32)

    batches = _plan_batches(rows, token_budget)
    n_forwards = sync_num_batches(len(batches)) if sync_num_batches is not None else len(batches)
    results: list[RowResult | None] = [None] * len(rows)

    with _gather_ctx(weight, bias):
        weight, bias = _full_tensor(weight), _full_tensor(bias)
        lm_head = _Head(weight, bias, logit_scale, softcap)
        for b in range(n_forwards):
            if b >= len(batches):
                dummy = torch.full((1, 1), pad_token_id, dtype=torch.long, device=device)
                backbone(input_ids=dummy, use_cache=False)
                continue
            batch_rows = [rows[i] for i in batches[b]]
            hidden = _forward_batch(backbone, batch_rows, device, dtype, pad_token_id)
            _score_batch(hidden, batch_rows, batches[b], results, lm_head, vocab_chunk_elems)
            del hidden
    return results  # type: ignore[return-value]


def _forward_batch(
    backbone: nn.Module, batch_rows: list[Row], device: torch.device, dtype: torch.dtype, pad_token_id: int
) -> torch.Tensor:
    length = max(len(r.input_ids) for r in batch_rows)
    n = len(batch_rows)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n, length), dtype=torch.long)
    valid = torch.zeros((n, length), dtype=torch.bool)
    groups = torch.full((n, length), -2, dtype=torch.long)
    packed = any(r.groups is not None for r in batch_rows)
    for i, r in enumerate(batch_rows):
        m = len(r.input_ids)
        input_ids[i, :m] = torch.tensor(r.input_ids)
        position_ids[i, :m] = torch.tensor(r.position_ids) if r.position_ids is not None else torch.arange(m)
        valid[i, :m] = True
        groups[i, :m] = torch.tensor(r.groups) if r.groups is not None else -1
    input_ids, position_ids, valid, groups = (t.to(device) for t in (input_ids, position_ids, valid, groups))
    if packed:
        attention_mask = _packed_mask(groups, valid, dtype)
    else:
        attention_mask = valid.long()
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _score_batch(
    hidden: torch.Tensor,
    batch_rows: list[Row],
    indices: list[int],
    results: list[RowResult | None],
    head: _Head,
    vocab_chunk_elems: int,
) -> None:
    """Project the queried hidden states tile by tile (one tile of at most ``vocab_chunk_elems`` fp32 logits at a
    time, each vocabulary slice of the head cast to fp32 once) and fill one RowResult per row. Option queries need
    only the options' logits, so they are projected on those rows of the head alone."""
    device = hidden.device
    row_idx, pos_idx, targets = [], [], []
    opt_row, opt_pos = [], []
    for i, r in enumerate(batch_rows):
        stat_targets = r.stat_targets or [-1] * len(r.stat_positions)
        for p, t in zip(r.stat_positions, stat_targets):
            row_idx.append(i), pos_idx.append(p), targets.append(t)
        for p, t in r.answer_queries:
            row_idx.append(i), pos_idx.append(p), targets.append(t)
        for p in r.option_positions:
            opt_row.append(i), opt_pos.append(p)
    n = len(row_idx)
    vocab = head.vocab
    red = _Reductions(n, device)
    if n:
        h = hidden[torch.tensor(row_idx, device=device), torch.tensor(pos_idx, device=device)].float()
        target_t = torch.tensor(targets, dtype=torch.long, device=device)
        width = min(vocab, max(vocab_chunk_elems // n, min(1024, vocab_chunk_elems)))
        rows_per_tile = max(1, vocab_chunk_elems // width)
        for v0 in range(0, vocab, width):
            v1 = min(vocab, v0 + width)
            weight32 = head.weight[v0:v1].float()  # a view when the head is fp32; a slice-sized copy otherwise
            for r0 in range(0, n, rows_per_tile):
                logits = head.project(h[r0 : r0 + rows_per_tile], v0, v1, weight32)
                red.update(r0, logits, target_t, v0)
                del logits
            del weight32
        lse = red.logsumexp()
        sc = (lse - red.u / vocab - math.log(vocab)).cpu()
        ent = (lse - red.t).cpu()
        lp = torch.where(target_t >= 0, red.target - lse, torch.nan).cpu()
    else:
        sc = ent = lp = torch.zeros(0)
    option_logits: list[torch.Tensor] = []
    for i, p in zip(opt_row, opt_pos):
        ids = batch_rows[i].option_ids or []
        option_logits.append(head.project_ids(hidden[i, p].float().unsqueeze(0), ids)[0].cpu())
    cursor = opt_cursor = 0
    for i, r in enumerate(batch_rows):
        n_stat, n_ans, n_opt = len(r.stat_positions), len(r.answer_queries), len(r.option_positions)
        opts = option_logits[opt_cursor : opt_cursor + n_opt]
        results[indices[i]] = RowResult(
            self_certainty=sc[cursor : cursor + n_stat],
            entropy=ent[cursor : cursor + n_stat],
            answer_logprobs=lp[cursor + n_stat : cursor + n_stat + n_ans],
            option_logits=torch.stack(opts) if opts else torch.zeros(0, len(r.option_ids or [])),
            token_logprobs=lp[cursor : cursor + n_stat],
        )
        cursor += n_stat + n_ans
        opt_cursor += n_opt


def build_packed_row(
    prompt: Sequence[int],
    completion: Sequence[int],
    cuts: Sequence[int] | None,
    branch: Sequence[int],
    answer: Sequence[int] | None,
    option_ids: Sequence[int] | None,
    with_stats: bool,
) -> Row:
    """One packed row: the main path ``prompt + completion`` with ``branch`` inserted before ``main[cut_k]``.

    ``cuts`` index the main path ``prompt + completion`` (``None``: no trajectory); each is at least 1 and they do
    not decrease. In raw mode (``answer`` given) the branch is ``branch + answer`` and each answer token is queried;
    in options mode the logits of ``option_ids`` are read where the branch ends. ``with_stats`` adds the completion's
    self-certainty, entropy and token log-probability queries and keeps the main path to its end.
    """
    if not prompt:
        raise ValueError("Every sample needs a non-empty prompt: its last token predicts the first completion token.")
    main = list(prompt) + list(completion)
    ids: list[int] = []
    pos: list[int] = []
    groups: list[int] = []
    main_order: list[int] = []
    row = Row(input_ids=ids, position_ids=pos, groups=groups, option_ids=list(option_ids) if option_ids else None)

    def add_main(upto: int) -> None:
        while len(main_order) < upto:
            pos.append(len(main_order))
            main_order.append(len(ids))
            ids.append(main[len(main_order) - 1])
            groups.append(-1)

    for k, cut in enumerate(cuts or []):
        add_main(cut)
        _add_branch(row, main_order, branch, answer, group=k, base_pos=len(main_order))
    add_main(len(main) if with_stats else len(prompt))
    if with_stats:
        n_prompt = len(prompt)
        row.stat_positions = [main_order[n_prompt - 1 + t] for t in range(len(completion))]
        row.stat_targets = list(completion)
    return row


def _add_branch(
    row: Row, main_order: list[int], branch: Sequence[int], answer: Sequence[int] | None, group: int, base_pos: int
) -> None:
    """Append ``branch (+ answer)`` to the row and register its queries."""
    tokens = list(branch) + list(answer or [])
    start = len(row.input_ids)

    def predictor(j: int) -> int:  # position whose output predicts branch token j
        return main_order[-1] if j == 0 else start + j - 1

    for j, tok in enumerate(tokens):
        row.input_ids.append(tok)
        if row.position_ids is not None:
            row.position_ids.append(base_pos + j)
        if row.groups is not None:
            row.groups.append(group)
    if answer is not None:
        row.answer_queries.extend((predictor(len(branch) + j), tok) for j, tok in enumerate(answer))
    else:
        row.option_positions.append(predictor(len(branch)))


def build_naive_rows(
    prompt: Sequence[int],
    completion: Sequence[int],
    cuts: Sequence[int] | None,
    branch: Sequence[int],
    answer: Sequence[int] | None,
    option_ids: Sequence[int] | None,
    with_stats: bool,
) -> list[Row]:
    """The reference layout: one plain row per prefix ``(prompt + completion)[:cut_k] + branch`` (K+1 forwards), plus
    one row ``prompt + completion`` for the statistics when ``with_stats``."""
    if not prompt:
        raise ValueError("Every sample needs a non-empty prompt: its last token predicts the first completion token.")
    rows = []
    full = list(prompt) + list(completion)
    for cut in cuts or []:
        main = full[:cut]
        row = Row(input_ids=list(main), option_ids=list(option_ids) if option_ids else None)
        _add_branch(row, list(range(len(main))), branch, answer, group=0, base_pos=len(main))
        rows.append(row)
    if with_stats:
        n_prompt = len(prompt)
        rows.append(
            Row(
                input_ids=list(prompt) + list(completion),
                stat_positions=[n_prompt - 1 + t for t in range(len(completion))],
                stat_targets=list(completion),
            )
        )
    return rows
