"""HyTuningConfig: GRPOConfig plus the options of the RD head, PRG and the mixing rule."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from trl import GRPOConfig

from .prg import PRG_AGGREGATIONS

__all__ = ["ANSWER_PROBABILITIES", "HyTuningConfig", "MIXING_RULES"]

MIXING_RULES = ("prg", "constant", "chord", "rl_only", "rd_only")
ANSWER_PROBABILITIES = ("options", "raw")
_SCORING_METHODS = ("auto", "packed", "naive")


@dataclass
class HyTuningConfig(GRPOConfig):
    r"""
    Configuration class for the [`HyTuningTrainer`].

    HyTuning (arXiv 2604.08454) trains with `loss = (1 - lam) * L_GRPO + lam * L_RD`: GRPO on the policy's own
    internal-feedback rewards (RLIF) over unlabeled prompts, plus reasoning distillation (RD, NLL on a few supervised
    traces). `lam` is set by the `mixing` rule; the default `"prg"` compares the Progressive Reasoning Gain of the
    policy's rollouts with that of the RD traces. The paper publishes no formulas: every choice below is this
    package's instantiation, kept configurable. All fields of [`~trl.GRPOConfig`] apply too; `temperature` is
    GRPO's sampling temperature, and the scoring pass and the RD loss always use untempered logits.
    """

    # Mixing rule
    mixing: str = field(
        default="prg",
        metadata={
            "help": "How the RD weight `lam` is set: 'prg' (HyTuning: from the PRG gap between the RD traces and the "
            "policy), 'constant' (`rd_weight`), 'chord' (CHORD-mu warm-up then cosine decay), 'rl_only' (lam = 0, "
            "no distill dataset needed) or 'rd_only' (lam = 1).",
            "choices": list(MIXING_RULES),
        },
    )
    rd_weight: float = field(
        default=0.5,
        metadata={
            "help": "The RD weight for mixing='constant', and the starting value of lam for mixing='prg' until both "
            "PRG averages have a value."
        },
    )
    rd_weight_min: float = field(
        default=0.05,
        metadata={"help": "Smallest RD weight of mixing='prg': used when the policy is as progressive as the traces."},
    )
    rd_weight_max: float = field(
        default=0.9,
        metadata={"help": "Largest RD weight of mixing='prg', approached as the policy falls behind the traces."},
    )
    prg_tau: float = field(
        default=0.1,
        metadata={
            "help": "Temperature of the 'prg' rule: lam = min + (max - min) * tanh(max(anchor - policy, 0) / prg_tau)."
        },
    )
    prg_ema_decay: float = field(
        default=0.9,
        metadata={"help": "Decay of the PRG moving averages: ema = decay * ema + (1 - decay) * x, once per round."},
    )
    prg_every: int = field(
        default=1,
        metadata={
            "help": "Compute the anchor PRG (on a sample of RD traces) every this many generation rounds. The "
            "policy's PRG is computed on every rollout."
        },
    )
    # PRG
    prg_aggregation: str = field(
        default="monotone",
        metadata={
            "help": "How a trajectory p_0..p_K becomes one PRG value: 'monotone' ((p_K - p_0) * fraction of "
            "non-negative gains), 'net' (p_K - p_0), 'positive' (mean positive gain) or 'auc' (mean of p_k - p_0).",
            "choices": list(PRG_AGGREGATIONS),
        },
    )
    prg_max_steps: int = field(
        default=16, metadata={"help": "Most reasoning steps per completion; more are merged evenly into this many."}
    )
    step_separator: str = field(
        default="\n\n",
        metadata={
            "help": "A step ends after each token whose text contains this separator. With the default blank line, a "
            "reasoning without one is cut at single newlines instead."
        },
    )
    answer_trigger: str = field(
        default="\nThe answer is",
        metadata={
            "help": "Text placed after the reasoning to ask for the answer when scoring (conditioned on, not scored)."
        },
    )
    answer_pattern: str = field(
        default=r"[Tt]he (?:final )?answer is[:\s]*\(?\s*([A-Za-z0-9][A-Za-z0-9_\-]*)",
        metadata={
            "help": "Regular expression whose last match is the final-answer statement; group 1 is the answer. The "
            "reasoning is everything before the match."
        },
    )
    answer_options: list[str] | None = field(
        default=None,
        metadata={
            "help": "Multiple-choice option letters, e.g. A B C D. Rows with an `options` column use their own "
            "letters. With options, an answer that cannot be extracted is replaced by the model's forced choice."
        },
    )
    answer_probability: str | None = field(
        default=None,
        metadata={
            "help": "'options': p_k renormalised over the options' first tokens; 'raw': the answer's own probability. "
            "Default: 'options' when `answer_options` is set, else 'raw'.",
            "choices": [*ANSWER_PROBABILITIES, None],
        },
    )
    # RD head
    distill_per_device_batch_size: int = field(
        default=2, metadata={"help": "RD traces per process per micro-step (and per anchor-PRG pass)."}
    )
    distill_max_length: int = field(
        default=1024,
        metadata={
            "help": "Most tokens of prompt + completion of an RD trace; longer ones lose the end of the completion."
        },
    )
    chord_phi: bool = field(
        default=False,
        metadata={"help": "Weight each RD token by phi(p) = p (1 - p), p detached (CHORD-phi, arXiv 2508.11408)."},
    )
    chord_mu_peak: float = field(default=0.9, metadata={"help": "Peak RD weight of mixing='chord'."})
    chord_mu_valley: float = field(default=0.05, metadata={"help": "Final RD weight of mixing='chord'."})
    chord_mu_warmup_ratio: float = field(
        default=0.1,
        metadata={"help": "Fraction of the training steps of mixing='chord' spent warming up to the peak."},
    )
    # Scoring pass
    scoring_method: str = field(
        default="auto",
        metadata={
            "help": "'packed' (one forward per batch, 4D mask), 'naive' (K+1 forwards, reference) or 'auto' "
            "(packed where the model takes a 4D mask, checked once).",
            "choices": list(_SCORING_METHODS),
        },
    )
    scoring_token_budget: int = field(
        default=16384, metadata={"help": "Padded tokens per forward of the scoring pass (bounds its memory)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.answer_options, str):
            self.answer_options = [o.strip() for o in self.answer_options.replace(",", " ").split() if o.strip()]
        self._check_choice("mixing", MIXING_RULES)
        self._check_choice("prg_aggregation", PRG_AGGREGATIONS)
        self._check_choice("scoring_method", _SCORING_METHODS)
        if self.answer_probability is None:
            self.answer_probability = "options" if self.answer_options else "raw"
        self._check_choice("answer_probability", ANSWER_PROBABILITIES)
        if self.answer_probability == "options" and not self.answer_options:
            raise ValueError(
                "answer_probability='options' needs `answer_options` (e.g. answer_options=['A', 'B', 'C', 'D'])."
            )
        for name in ("rd_weight", "rd_weight_min", "rd_weight_max", "chord_mu_peak", "chord_mu_valley"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1], got {value}.")
        if self.rd_weight_min > self.rd_weight_max:
            raise ValueError(
                f"`rd_weight_min` ({self.rd_weight_min}) must not exceed `rd_weight_max` ({self.rd_weight_max}); "
                "swap them."
            )
        if self.chord_mu_valley > self.chord_mu_peak:
            raise ValueError(
                f"`chord_mu_valley` ({self.chord_mu_valley}) must not exceed `chord_mu_peak` ({self.chord_mu_peak})."
            )
        if not 0.0 <= self.chord_mu_warmup_ratio <= 1.0:
            raise ValueError(f"`chord_mu_warmup_ratio` must lie in [0, 1], got {self.chord_mu_warmup_ratio}.")
        if self.prg_tau <= 0:
            raise ValueError(f"`prg_tau` must be > 0, got {self.prg_tau}.")
        if not 0.0 <= self.prg_ema_decay < 1.0:
            raise ValueError(f"`prg_ema_decay` must lie in [0, 1), got {self.prg_ema_decay}.")
        for name in (
            "prg_every",
            "prg_max_steps",
            "distill_per_device_batch_size",
            "distill_max_length",
            "scoring_token_budget",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if not self.step_separator:
            raise ValueError("`step_separator` must not be empty (the default is a blank line, '\\n\\n').")
        try:
            pattern = re.compile(self.answer_pattern)
        except re.error as exc:
            raise ValueError(f"`answer_pattern` is not a valid regular expression: {exc}") from exc
        if pattern.groups < 1:
            raise ValueError("`answer_pattern` must have a capturing group for the answer, e.g. 'answer is ([A-E])'.")

    def _check_choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise ValueError(f"Unknown `{name}`={value!r}; allowed values: {', '.join(map(repr, allowed))}.")
