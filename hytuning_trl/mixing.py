"""The mixing rules: pure functions of a small state that is saved in every checkpoint.

``loss = (1 - lam) * L_GRPO + lam * L_RD``. The rules (config ``mixing``):

* ``prg`` (HyTuning): with ``r`` the EMA of the policy's mean PRG and ``a`` the EMA of the RD traces' mean PRG,
  ``lam = rd_weight_min + (rd_weight_max - rd_weight_min) * tanh(max(a - r, 0) / prg_tau)``; ``lam = rd_weight``
  until both EMAs have a value. A policy as progressive as the anchor is trusted (lam = min); the further its
  reasoning falls behind, the more the anchor weighs.
* ``constant``: ``lam = rd_weight``.
* ``chord`` (CHORD-mu): linear warm-up from 0 to ``chord_mu_peak`` over ``chord_mu_warmup_ratio`` of training, then
  cosine decay to ``chord_mu_valley``.
* ``rl_only``: 0. ``rd_only``: 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["MixingState", "chord_weight", "compute_rd_weight", "prg_weight", "update_ema"]


@dataclass
class MixingState:
    """Everything the mixing rule and the RD iterator need to continue exactly after a resume."""

    rd_weight: float = 0.5
    prg_policy_ema: float | None = None
    prg_anchor_ema: float | None = None
    generation_rounds: int = 0
    anchor_rounds: int = 0
    rd_epoch: int = 0
    rd_position: int = 0

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


def prg_weight(policy: float, anchor: float, lo: float, hi: float, tau: float) -> float:
    """HyTuning's rule: ``lo + (hi - lo) * tanh(max(anchor - policy, 0) / tau)``."""
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
    """The RD weight for the next step under ``args.mixing`` (``args`` is a :class:`HyTuningConfig`)."""
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
        if state.prg_policy_ema is None or state.prg_anchor_ema is None:
            return float(args.rd_weight)
        return prg_weight(
            state.prg_policy_ema, state.prg_anchor_ema, args.rd_weight_min, args.rd_weight_max, args.prg_tau
        )
    raise ValueError(f"Unknown mixing rule {rule!r}.")
