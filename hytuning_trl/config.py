"""HyTuningConfig: GRPOConfig plus the options of the RD head, PRG and the mixing rule."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from trl import GRPOConfig

from .constants import (
    ANCHOR_SIGNALS,
    ANSWER_PROBABILITIES,
    CALIBRATION_TARGETS,
    DEFAULT_ANSWER_PATTERN,
    DEFAULT_ANSWER_TRIGGER,
    DEFAULT_MCQ_INSTRUCTION,
    DEFAULT_STEP_SEPARATOR,
    MIXING_RULES,
    PRG_AGGREGATIONS,
    SCORING_METHODS,
    split_options,
)

__all__ = ["ANSWER_PROBABILITIES", "HyTuningConfig", "MIXING_RULES"]


@dataclass
class HyTuningConfig(GRPOConfig):
    r"""
    Configuration class for the [`HyTuningTrainer`].

    HyTuning (arXiv 2604.08454) trains with `loss = (1 - rd_weight) * L_GRPO + rd_weight * L_RD`: GRPO on the
    policy's own internal-feedback rewards (RLIF) over unlabeled prompts, plus reasoning distillation (RD, NLL on a
    few supervised traces). `rd_weight` is set by the `mixing` rule; the default `"prg"` reads the normalised gain
    of the gold answer along held-out expert traces (the anchor). The paper publishes no formulas: every choice
    below is this package's instantiation, kept configurable. All fields of [`~trl.GRPOConfig`] apply too;
    `temperature` is GRPO's sampling temperature, and the scoring pass and the RD loss always use untempered logits.

    Parameters:
        > Mixing rule

        mixing (`str`, *optional*, defaults to `'prg'`):
            How the RD weight is set: 'prg' (HyTuning: from the normalised gain G of the gold answer on held-out
            anchor questions, along the policy's own reasoning by default (`anchor_signal`), rd_weight = min +
            (max - min) * (1 - clip(EMA(G), 0, 1))), 'prg_gap'
            (the turn-1 rule: policy PRG against anchor PRG), 'constant' (`rd_weight`), 'chord' (CHORD-mu warm-up
            then cosine decay), 'rl_only' (0, no distill dataset needed) or 'rd_only' (1).
        rd_weight (`float`, *optional*, defaults to `0.5`):
            The RD weight throughout under mixing='constant'; under 'prg' and 'prg_gap' its initial value, kept
            until the rule's averages have a value.
        rd_weight_min (`float`, *optional*, defaults to `0.05`):
            Smallest RD weight of mixing='prg' / 'prg_gap': reached when the model follows the expert reasoning to
            the gold answer (G_hat >= 1).
        rd_weight_max (`float`, *optional*, defaults to `0.9`):
            Largest RD weight of mixing='prg' / 'prg_gap': reached when the expert steps do not raise the gold
            answer's probability (G_hat <= 0).
        anchor_signal (`str`, *optional*, defaults to `'own'`):
            What the anchor of mixing='prg' measures. 'own' (v3): at each anchor round the policy writes its own
            reasoning (greedy, at most `max_completion_length` tokens, through the rollouts' generation path) for
            every anchor question, and G is the gold answer's normalised gain from p_0 (after the prompt) to p_K
            (after its own steps and the trigger); a completion without reasoning gives G = 0. 'trace' (v2): the gold
            answer's gain along the anchor's expert traces, teacher-forced (it measures trust in a trace's
            conclusion, not the ability to reach it). Under 'own' the anchor needs only questions with a gold answer.
        anchor_holdout (`int`, *optional*, defaults to `16`):
            Without an `anchor_dataset`, min(anchor_holdout, n // 4) traces are split off the distill dataset with
            the seed as the held-out anchor (every rule but 'rl_only'), never trained on.
        anchor_ema_decay (`float`, *optional*, defaults to `0.5`):
            Decay of the EMA of the anchor gain G under mixing='prg', once per anchor round (the anchor set is
            fixed, so little smoothing is needed).
        prg_tau (`float`, *optional*, defaults to `0.1`):
            Temperature of the 'prg_gap' rule: rd_weight = min + (max - min) * tanh(max(anchor - policy, 0) /
            prg_tau).
        prg_ema_decay (`float`, *optional*, defaults to `0.9`):
            Decay of the 'prg_gap' moving averages: ema = decay * ema + (1 - decay) * x, once per round.
        prg_every (`int`, *optional*, defaults to `4`):
            Run an anchor round every this many generation rounds (the first round always has one). The policy's PRG
            is computed on every rollout. The default keeps the own-reasoning anchor round at or below about a quarter
            of a step when the anchor has as many questions as a round has rollouts (docs/configuration.md).
        prg_gate (`bool`, *optional*, defaults to `False`):
            Per-sample gating: in training, a positive advantage of a rollout whose own PRG is <= 0, missing or non-
            finite, or whose answer is forced, is multiplied by `prg_gate_floor` (TRL's group baseline is computed
            before gating).
        prg_gate_floor (`float`, *optional*, defaults to `0.0`):
            The factor applied to the gated positive advantages of `prg_gate`.

        mcq_instruction (`str`, *optional*, defaults to the measured default, see docs/benchmarks.md):
            Instruction closing each multiple-choice prompt the package writes (anchor questions given as
            question/options rows, the calibration evaluation, the example's datasets). It has no placeholder to
            copy: small models copy "The answer is X." verbatim.

        > PRG and the answer contract

        prg_aggregation (`str`, *optional*, defaults to `'monotone'`):
            How a trajectory p_0..p_K becomes one PRG value: 'monotone' ((p_K - p_0) * share of steps whose gain has
            the sign of p_K - p_0), 'net' (p_K - p_0), 'positive' (mean positive gain, never negative) or 'auc'
            (mean of p_k - p_0).
        prg_max_steps (`int`, *optional*, defaults to `16`):
            Most reasoning steps per completion; more are merged evenly into this many.
        step_separator (`str`, *optional*, defaults to `'\n\n'`):
            A step ends after each token whose text contains this separator. With the default blank line, a
            reasoning without one is cut at single newlines instead.
        answer_trigger (`str`, *optional*, defaults to `'\nThe answer is'`):
            Text placed after the reasoning to ask for the answer when scoring (conditioned on, not scored).
        answer_pattern (`str`, *optional*, defaults to `'[Tt]he (?:final |correct |best )?answer is'`):
            Regular expression of the final-answer statement. The answer is read from the end of the match (or the
            start of group 1) to the end of its sentence: one standalone option letter in options mode, the text in
            raw mode; the last statement with a valid answer wins, and the reasoning ends where it starts.
        answer_options (`list[str] | None`, *optional*, defaults to `None`):
            Multiple-choice option letters, e.g. A B C D (or 'A,B,C,D'). Rows with an `options` column use their own
            letters. With options, a completion that states no option is scored on the model's forced choice,
            flagged `answer_forced`.
        answer_probability (`str | None`, *optional*, defaults to `None`):
            'options': p_k renormalised over the options' first tokens; 'raw': the answer's own probability; 'auto':
            options mode for rows with an `options` column, raw for the others. Default: 'options' when
            `answer_options` is set, else 'auto'.

        > RD head

        distill_per_device_batch_size (`int`, *optional*, defaults to `2`):
            RD traces per process per micro-step (and per anchor-PRG pass).
        distill_max_length (`int`, *optional*, defaults to `1024`):
            Most tokens of prompt + completion of an RD trace; longer ones lose the end of the completion.
        chord_phi (`bool`, *optional*, defaults to `False`):
            Weight each RD token by phi(p) = p (1 - p), p detached (CHORD-phi, arXiv 2508.11408).
        chord_mu_peak (`float`, *optional*, defaults to `0.9`):
            Peak RD weight of mixing='chord'.
        chord_mu_valley (`float`, *optional*, defaults to `0.05`):
            Final RD weight of mixing='chord'.
        chord_mu_warmup_ratio (`float`, *optional*, defaults to `0.1`):
            Fraction of the training steps of mixing='chord' spent warming up to the peak.

        > Confidence that follows the reasoning

        answer_blind_rl (`bool`, *optional*, defaults to `False`):
            Take the answer statement's tokens (the trigger and the answer, as the answer contract reads them) out of
            the policy-gradient loss (and its KL and entropy terms), so that RL shapes the reasoning and the answer's
            probability is learned only from what supports it (the RD traces, the calibration loss). Loss types that
            normalise by token counts count the remaining tokens.
        calibration_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the label-free calibration loss: for each rollout that states an answer,
            (p(a_i | x, r_i) - t_i)^2, p the policy's option-renormalised probability of its own stated answer at the
            statement (read from the GRPO forward: no second forward), t_i a target held constant. 0: off.
        calibration_target (`str`, *optional*, defaults to `'share'`):
            t_i of the calibration loss: 'share' (the share of the group's stated answers equal to a_i; groups with at
            least two stated answers) or 'weakest_token' (the rollout's own weakest reasoning token probability under
            the policy that sampled it).

        > Scoring pass

        scoring_method (`str`, *optional*, defaults to `'auto'`):
            'packed' (one forward per batch, 4D mask), 'naive' (K+1 forwards, reference) or 'auto' (packed where the
            model takes a 4D mask, checked once).
        scoring_token_budget (`int`, *optional*, defaults to `16384`):
            Padded tokens per forward of the scoring pass (bounds its memory).
    """

    # Mixing rule
    mixing: str = field(
        default="prg",
        metadata={
            "help": "How the RD weight is set: 'prg' (HyTuning: from the normalised gain G of the gold answer on "
            "held-out anchor questions, see `anchor_signal`, rd_weight = min + (max - min) * (1 - clip(EMA(G), 0, "
            "1))), "
            "'prg_gap' (the turn-1 rule: policy PRG against anchor PRG), 'constant' (`rd_weight`), 'chord' "
            "(CHORD-mu warm-up then cosine decay), 'rl_only' (0, no distill dataset needed) or 'rd_only' (1).",
            "choices": list(MIXING_RULES),
        },
    )
    rd_weight: float = field(
        default=0.5,
        metadata={
            "help": "The RD weight throughout under mixing='constant'; under 'prg' and 'prg_gap' its initial value, "
            "kept until the rule's averages have a value."
        },
    )
    rd_weight_min: float = field(
        default=0.05,
        metadata={
            "help": "Smallest RD weight of mixing='prg' / 'prg_gap': reached when the model follows the expert "
            "reasoning to the gold answer (G_hat >= 1)."
        },
    )
    rd_weight_max: float = field(
        default=0.9,
        metadata={
            "help": "Largest RD weight of mixing='prg' / 'prg_gap': reached when the expert steps do not raise the "
            "gold answer's probability (G_hat <= 0)."
        },
    )
    prg_tau: float = field(
        default=0.1,
        metadata={
            "help": "Temperature of the 'prg_gap' rule: rd_weight = min + (max - min) * "
            "tanh(max(anchor - policy, 0) / prg_tau)."
        },
    )
    prg_ema_decay: float = field(
        default=0.9,
        metadata={
            "help": "Decay of the 'prg_gap' moving averages: ema = decay * ema + (1 - decay) * x, once per round."
        },
    )
    anchor_ema_decay: float = field(
        default=0.5,
        metadata={
            "help": "Decay of the EMA of the anchor gain G under mixing='prg', once per anchor round (the anchor set "
            "is fixed, so little smoothing is needed)."
        },
    )
    anchor_holdout: int = field(
        default=16,
        metadata={
            "help": "Without an `anchor_dataset`, min(anchor_holdout, n // 4) traces are split off the distill "
            "dataset with the seed as the held-out anchor (every rule but 'rl_only'), never trained on."
        },
    )
    prg_gate: bool = field(
        default=False,
        metadata={
            "help": "Per-sample gating: in training, a positive advantage of a rollout whose own PRG is <= 0, missing "
            "or non-finite, or whose answer is forced, is multiplied by `prg_gate_floor` (TRL's group baseline is "
            "computed before gating)."
        },
    )
    prg_gate_floor: float = field(
        default=0.0, metadata={"help": "The factor applied to the gated positive advantages of `prg_gate`."}
    )
    prg_every: int = field(
        default=4,
        metadata={
            "help": "Run an anchor round every this many generation rounds (the first round always has one). The "
            "policy's PRG is computed on every rollout. The default keeps the own-reasoning anchor round at or below "
            "about a quarter of a step when the anchor has as many questions as a round has rollouts."
        },
    )
    anchor_signal: str = field(
        default="own",
        metadata={
            "help": "What the anchor of mixing='prg' measures. 'own' (v3): the policy writes its own reasoning "
            "(greedy) for each anchor question, and G is the gold answer's normalised gain along it (0 without "
            "reasoning). 'trace' (v2): the gold answer's gain along the anchor's expert traces (teacher-forced).",
            "choices": list(ANCHOR_SIGNALS),
        },
    )
    mcq_instruction: str = field(
        default=DEFAULT_MCQ_INSTRUCTION,
        metadata={
            "help": "Instruction closing each multiple-choice prompt the package writes (anchor questions given as "
            "question/options rows, the calibration evaluation, the example's datasets)."
        },
    )
    # PRG
    prg_aggregation: str = field(
        default="monotone",
        metadata={
            "help": "How a trajectory p_0..p_K becomes one PRG value: 'monotone' ((p_K - p_0) * share of steps whose "
            "gain has the sign of p_K - p_0), 'net' (p_K - p_0), 'positive' (mean positive gain, never negative) or "
            "'auc' (mean of p_k - p_0).",
            "choices": list(PRG_AGGREGATIONS),
        },
    )
    prg_max_steps: int = field(
        default=16, metadata={"help": "Most reasoning steps per completion; more are merged evenly into this many."}
    )
    step_separator: str = field(
        default=DEFAULT_STEP_SEPARATOR,
        metadata={
            "help": "A step ends after each token whose text contains this separator. With the default blank line, a "
            "reasoning without one is cut at single newlines instead."
        },
    )
    answer_trigger: str = field(
        default=DEFAULT_ANSWER_TRIGGER,
        metadata={
            "help": "Text placed after the reasoning to ask for the answer when scoring (conditioned on, not scored)."
        },
    )
    answer_pattern: str = field(
        default=DEFAULT_ANSWER_PATTERN,
        metadata={
            "help": "Regular expression of the final-answer statement. The answer is read from the end of the match "
            "(or the start of group 1) to the end of its sentence: one standalone option letter in options mode, the "
            "text in raw mode; the last statement with a valid answer wins, and the reasoning ends where it starts."
        },
    )
    answer_options: list[str] | None = field(
        default=None,
        metadata={
            "help": "Multiple-choice option letters, e.g. A B C D (or 'A,B,C,D'). Rows with an `options` column use "
            "their own letters. With options, a completion that states no option is scored on the model's forced "
            "choice, flagged `answer_forced`."
        },
    )
    answer_probability: str | None = field(
        default=None,
        metadata={
            "help": "'options': p_k renormalised over the options' first tokens; 'raw': the answer's own probability; "
            "'auto': options mode for rows with an `options` column, raw for the others. Default: 'options' when "
            "`answer_options` is set, else 'auto'.",
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
    # Confidence that follows the reasoning
    answer_blind_rl: bool = field(
        default=False,
        metadata={
            "help": "Take the answer statement's tokens (trigger and answer, as the answer contract reads them) out "
            "of the policy-gradient loss, so that RL shapes the reasoning and the answer's probability is learned "
            "only from what supports it. Loss types that normalise by token counts count the remaining tokens."
        },
    )
    calibration_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the label-free calibration loss (p(a_i | x, r_i) - t_i)^2 over rollouts that state an "
            "answer, t_i held constant (`calibration_target`). 0: off."
        },
    )
    calibration_target: str = field(
        default="share",
        metadata={
            "help": "Target of the calibration loss: 'share' (the share of the group's stated answers equal to this "
            "one; groups with >= 2 stated answers) or 'weakest_token' (the rollout's lowest reasoning-token "
            "probability when it was sampled).",
            "choices": list(CALIBRATION_TARGETS),
        },
    )
    # Scoring pass
    scoring_method: str = field(
        default="auto",
        metadata={
            "help": "'packed' (one forward per batch, 4D mask), 'naive' (K+1 forwards, reference) or 'auto' "
            "(packed where the model takes a 4D mask, checked once).",
            "choices": list(SCORING_METHODS),
        },
    )
    scoring_token_budget: int = field(
        default=16384, metadata={"help": "Padded tokens per forward of the scoring pass (bounds its memory)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.answer_options is not None:
            self.answer_options = split_options(self.answer_options)
        self._check_choice("mixing", MIXING_RULES)
        self._check_choice("prg_aggregation", PRG_AGGREGATIONS)
        self._check_choice("scoring_method", SCORING_METHODS)
        if self.answer_probability is None:
            self.answer_probability = "options" if self.answer_options else "auto"
        self._check_choice("answer_probability", ANSWER_PROBABILITIES)
        self._check_choice("anchor_signal", ANCHOR_SIGNALS)
        self._check_choice("calibration_target", CALIBRATION_TARGETS)
        if not (self.calibration_weight >= 0 and math.isfinite(self.calibration_weight)):
            raise ValueError(
                f"`calibration_weight` must be a finite number >= 0 (0: off), got {self.calibration_weight}."
            )
        if self.calibration_weight > 0 and self.calibration_target == "share" and self.num_generations < 2:
            raise ValueError(
                "calibration_target='share' compares each answer with its group's: it needs num_generations >= 2 "
                f"(got {self.num_generations}); raise it, or use calibration_target='weakest_token'."
            )
        bounded = ("rd_weight", "rd_weight_min", "rd_weight_max", "chord_mu_peak", "chord_mu_valley", "prg_gate_floor")
        for name in bounded:
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
        for name in ("prg_ema_decay", "anchor_ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1), got {getattr(self, name)}.")
        if self.anchor_holdout < 0:
            raise ValueError(f"`anchor_holdout` must be >= 0, got {self.anchor_holdout}.")
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
            re.compile(self.answer_pattern)
        except re.error as exc:
            raise ValueError(f"`answer_pattern` is not a valid regular expression: {exc}") from exc

    def _check_choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise ValueError(f"Unknown `{name}`={value!r}; allowed values: {', '.join(map(repr, allowed))}.")
