"""Mixing: the RD weight, its rules as pure functions, and the controller the trainer owns.

``loss = (1 - rd_weight) * L_GRPO + rd_weight * L_RD``. The rules (config ``mixing``):

* ``prg`` (HyTuning, default): on a fixed held-out anchor, each question's gold answer has the normalised gain
  (:func:`hytuning_trl.prg.normalised_gain`) along the policy's own reasoning (``anchor_signal="own"``, v3) or along
  the expert steps of the anchor traces (``"trace"``, v2; see :mod:`hytuning_trl.anchor`)::

      G = (p_K - p_0) / (1 - p_0)   if p_K >= p_0        (the share of the possible rise that the steps achieved)
      G = (p_K - p_0) / p_0         otherwise            (the share of the support that the steps destroyed)

  with ``G = 0`` when ``|p_K - p_0| < 1e-6``, so ``G`` lies in ``[-1, 1]``. ``G_hat`` is the EMA over anchor rounds
  of the mean ``G`` (decay ``anchor_ema_decay``) and::

      rd_weight = rd_weight_min + (rd_weight_max - rd_weight_min) * (1 - clip(G_hat, 0, 1))

  A model that cannot yet follow expert reasoning to the right answer leans on RD; as it absorbs the reasoning,
  RLIF takes over; if RLIF erodes it, the weight rises again. A model that answers before it reasons (``p_0 ~ p_K``)
  is pushed back toward RD: by design, PRG rewards confidence built by reasoning.
* ``prg_gap`` (the turn-1 rule, for comparison): ``r`` the EMA of the policy's PRG over stated answers, ``a`` the EMA
  of the anchor's PRG, ``rd_weight = lo + (hi - lo) * tanh(max(a - r, 0) / prg_tau)``.
* ``constant``: ``rd_weight``. ``chord`` (CHORD-mu): linear warm-up to ``chord_mu_peak`` over
  ``chord_mu_warmup_ratio`` of training, then cosine decay to ``chord_mu_valley``. ``rl_only``: 0. ``rd_only``: 1.

Under ``prg`` and ``prg_gap`` the weight stays at the config's ``rd_weight`` until the rule's averages have a value.
The :class:`MixingController` folds each round's globally reduced means at the optimizer-step boundary, asks the
hook (:class:`~hytuning_trl.callbacks.PRGCallback`) for the next weight, and is saved in ``hytuning_state.json``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

__all__ = [
    "MixingController",
    "MixingState",
    "chord_weight",
    "compute_rd_weight",
    "prg_gap_weight",
    "prg_weight",
    "update_ema",
]


@dataclass
class MixingState:
    """Everything the mixing rules need to continue exactly after a resume.

    Attributes:
        rd_weight: the RD weight of the step about to run.
        anchor_gain_ema: ``G_hat``, the EMA of the anchor's mean normalised gain (rule ``prg``).
        prg_policy_ema: EMA of the policy's mean PRG over stated answers (rule ``prg_gap``).
        prg_anchor_ema: EMA of the anchor traces' mean PRG (rule ``prg_gap``).
        generation_rounds: generation rounds folded so far.
        anchor_rounds: anchor rounds folded so far.
        anchor_indices: the distill-dataset indices held out as the anchor (empty with an ``anchor_dataset``).
        anchor_fingerprint: a hash of the anchor's content (prompts, gold answers, traces), checked on resume.
    """

    rd_weight: float = 0.5
    anchor_gain_ema: float | None = None
    prg_policy_ema: float | None = None
    prg_anchor_ema: float | None = None
    generation_rounds: int = 0
    anchor_rounds: int = 0
    anchor_indices: list[int] = field(default_factory=list)
    anchor_fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixingState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def update_ema(ema: float | None, value: float, decay: float) -> float:
    """``decay * ema + (1 - decay) * value``; the first value starts the average."""
    if ema is None:
        return float(value)
    return decay * ema + (1.0 - decay) * float(value)


def prg_weight(gain_ema: float, lo: float, hi: float) -> float:
    """HyTuning's rule (mixing v2): ``lo + (hi - lo) * (1 - clip(G_hat, 0, 1))``."""
    return lo + (hi - lo) * (1.0 - min(max(gain_ema, 0.0), 1.0))


def prg_gap_weight(policy: float, anchor: float, lo: float, hi: float, tau: float) -> float:
    """The turn-1 rule: ``lo + (hi - lo) * tanh(max(anchor - policy, 0) / tau)``."""
    return lo + (hi - lo) * math.tanh(max(anchor - policy, 0.0) / tau)


def chord_weight(step: int, max_steps: int, peak: float, valley: float, warmup_ratio: float) -> float:
    """CHORD-mu: linear warm-up to ``peak``, then cosine decay to ``valley`` at ``max_steps``."""
    max_steps = max(int(max_steps), 1)
    warmup = int(round(warmup_ratio * max_steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(max((step - warmup) / max(max_steps - warmup, 1), 0.0), 1.0)
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * progress))


def compute_rd_weight(args: Any, state: MixingState, step: int, max_steps: int) -> float:
    """The RD weight of step ``step`` under ``args.mixing`` (``args`` is a :class:`HyTuningConfig`)."""
    rule = args.mixing
    if rule == "rl_only":
        return 0.0
    if rule == "rd_only":
        return 1.0
    if rule == "constant":
        return float(args.rd_weight)
    if rule == "chord":
        return chord_weight(step, max_steps, args.chord_mu_peak, args.chord_mu_valley, args.chord_mu_warmup_ratio)
    if rule == "prg":
        if state.anchor_gain_ema is None:
            return float(args.rd_weight)
        return prg_weight(state.anchor_gain_ema, args.rd_weight_min, args.rd_weight_max)
    if rule == "prg_gap":
        if state.prg_policy_ema is None or state.prg_anchor_ema is None:
            return float(args.rd_weight)
        return prg_gap_weight(
            state.prg_policy_ema, state.prg_anchor_ema, args.rd_weight_min, args.rd_weight_max, args.prg_tau
        )
    raise ValueError(f"Unknown mixing rule {rule!r}.")


class RDWeightHook(Protocol):
    def compute_rd_weight(self, args: Any, state: MixingState, step: int, max_steps: int) -> float: ...


@dataclass
class RoundMeans:
    """One generation round's globally reduced means (``None`` where the round had none)."""

    policy_prg: float | None = None  # mean PRG of the policy's stated answers
    anchor_prg: float | None = None  # mean PRG of the anchor traces (anchor rounds only)
    anchor_gain: float | None = None  # mean normalised gain G of the anchor traces (anchor rounds only)


class MixingController:
    """Holds the :class:`MixingState`, folds round means at each optimizer step, and sets the RD weight.

    ``record`` queues a round's globally reduced means (every process queues the same); ``step`` (called once per
    optimizer step, after the backward of its last micro-step) folds them into the averages and asks ``hook`` for the
    weight of the next step, with a copy of the state. Every process computes the same weight.
    """

    def __init__(self, args: Any, hook: RDWeightHook):
        self.args = args
        self.hook = hook
        self.state = MixingState(rd_weight=compute_rd_weight(args, MixingState(), 0, max(args.max_steps, 1)))
        self.restored = False
        self._pending: list[RoundMeans] = []

    @property
    def rd_weight(self) -> float:
        return self.state.rd_weight

    def record(self, means: RoundMeans) -> None:
        self._pending.append(means)

    def _ask(self, step: int, max_steps: int) -> float:
        weight = float(self.hook.compute_rd_weight(self.args, copy.deepcopy(self.state), step, max_steps))
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"{type(self.hook).__name__}.compute_rd_weight returned {weight}, outside [0, 1].")
        return weight

    def start(self, step: int, max_steps: int) -> None:
        """At the start of training: the weight of the first step (kept as restored after a resume)."""
        if not self.restored:
            self.state.rd_weight = self._ask(step, max_steps)

    def step(self, next_step: int, max_steps: int) -> None:
        """Fold the queued rounds and set the weight of ``next_step``."""
        s, args = self.state, self.args
        for r in self._pending:
            s.generation_rounds += 1
            if r.policy_prg is not None:
                s.prg_policy_ema = update_ema(s.prg_policy_ema, r.policy_prg, args.prg_ema_decay)
            if r.anchor_gain is not None:
                s.anchor_rounds += 1
                s.anchor_gain_ema = update_ema(s.anchor_gain_ema, r.anchor_gain, args.anchor_ema_decay)
            if r.anchor_prg is not None:
                s.prg_anchor_ema = update_ema(s.prg_anchor_ema, r.anchor_prg, args.prg_ema_decay)
        self._pending = []
        s.rd_weight = self._ask(next_step, max_steps)

    @property
    def rounds_pending(self) -> int:
        return len(self._pending)

    def state_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.state = MixingState.from_dict(data)
        self._pending = []
        self.restored = True
