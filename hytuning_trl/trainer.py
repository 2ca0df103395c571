"""HyTuningTrainer: GRPO on internal feedback plus reasoning distillation, mixed by Progressive Reasoning Gain.

``loss = (1 - rd_weight) * L_GRPO + rd_weight * L_RD / gradient_accumulation_steps``, where ``L_GRPO`` is everything
``GRPOTrainer.compute_loss`` returns (its KL and entropy terms included) and ``rd_weight`` is set at every optimizer
step by the mixing controller (:mod:`hytuning_trl.mixing`).

Data flows through TRL's own channels, not through attributes set by one override for another: ``_generate`` adds
each completion's prompt ids to TRL's ``extra_fields``, which TRL merges into the batch's rows; ``_calculate_rewards``
scores the rows and puts ``hytuning_stats`` on each; ``_generate_and_score_completions`` reads them back from the rows
after TRL's round. The private TRL API used (overridden methods, private attributes) is named in one module,
:mod:`hytuning_trl._trl_compat`, and the TRL version is checked when the trainer is built.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
from typing import Any

import torch
from transformers import TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, get_last_checkpoint
from transformers.utils import logging
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

from . import _trl_compat as trl_compat
from .anchor import (
    AnchorQuestion,
    AnchorSums,
    anchor_fingerprint,
    anchor_questions_from_rows,
    check_anchor_dataset,
    gold_view,
    has_traces,
)
from .answers import AnswerExtractor, ParsedCompletion, whitespace_token_ids
from .callbacks import CalibrationEvalCallback, PRGCallback
from .config import HyTuningConfig
from .constants import PAPER
from .distill import (
    DistillExample,
    ShardedEndlessIterator,
    check_distill_dataset,
    collate_distill,
    rd_loss,
    split_anchor,
    tokenize_distill_dataset,
)
from .estimators import group_shares
from .mixing import MixingController, RoundMeans
from .model_card import write_model_card
from .packing import finish_logits, get_backbone_and_head, lm_head_scaling, unwrap_model
from .rewards import SelfCertaintyReward, normalise_answer
from .scoring import RolloutStats, packed_scoring_verdict, score_rollouts
from .sharding import gather_objects, shard_indices

__all__ = ["HyTuningTrainer", "STATE_FILE"]

STATE_FILE = "hytuning_state.json"
PROMPT_IDS = "hytuning_prompt_ids"  # the extra field that carries each completion's prompt ids to its row
# what the round hands compute_loss for the calibration loss: one entry per rollout, split and shuffled with the batch
CAL_TARGET, CAL_POSITION, CAL_OPTIONS, CAL_INDEX = (
    "hytuning_calibration_target",
    "hytuning_calibration_position",
    "hytuning_calibration_options",
    "hytuning_calibration_index",
)
RD_ONLY_STEP = "hytuning_rd_only_step"  # the inputs of a micro-step that uses no rollout
logger = logging.get_logger(__name__)


def _check_train_dataset(dataset: Any) -> None:
    if dataset is None:
        return
    columns = getattr(dataset, "column_names", None)
    if columns is None and hasattr(dataset, "features") and dataset.features is not None:
        columns = list(dataset.features)
    if columns is not None and "prompt" not in columns:
        raise ValueError(
            f"`train_dataset` lacks the 'prompt' column (it has {columns}). It must be in TRL's prompt-only format: "
            "rename your question column, e.g. dataset.rename_column('question', 'prompt')."
        )


def _check_peft_zero3(model: Any, args: HyTuningConfig, peft_config: Any) -> None:
    """PEFT under ZeRO-3 with gradient checkpointing: TRL forces reentrant checkpointing, with which DeepSpeed reduces
    the gradient of a LoRA weight once per forward that used it; the RD head's second forward per micro-step then
    trips ZeRO-3 (an assertion on duplicate parameters in a gradient bucket). Say so before training starts."""
    plugin = getattr(args, "deepspeed_plugin", None)
    is_peft = peft_config is not None or hasattr(model, "peft_config")
    if is_peft and plugin is not None and plugin.zero_stage == 3 and args.gradient_checkpointing:
        if args.mixing != "rl_only":
            raise ValueError(
                "PEFT under DeepSpeed ZeRO-3 with gradient_checkpointing=True cannot run the RD head: TRL forces "
                "reentrant checkpointing there, and ZeRO-3 then reduces each LoRA gradient once per forward (the RD "
                "head adds a second forward per micro-step). Set gradient_checkpointing=False (and a per-device batch "
                "whose activations fit: the frozen base's activations are still stored), use ZeRO-2, or train with "
                "mixing='rl_only'."
            )


def _check_unsupported(args: HyTuningConfig, processing_class: Any, kwargs: dict) -> None:
    """Refuse, before anything is built, what the scoring pass and the RD head have not been made to handle."""
    if kwargs.get("tools"):
        raise ValueError(
            "HyTuningTrainer does not support `tools`: the scoring pass reads the completion as the model's own "
            "reasoning, and tool responses inside it would be scored as steps. Use trl.GRPOTrainer for tool use, or "
            "drop `tools`."
        )
    if kwargs.get("environment_factory") is not None:
        raise ValueError(
            "HyTuningTrainer does not support `environment_factory` (environment feedback inside completions would "
            "be scored as reasoning steps). Use trl.GRPOTrainer for environments, or drop `environment_factory`."
        )
    if processing_class is not None and hasattr(processing_class, "image_processor"):
        raise ValueError(
            "HyTuningTrainer does not support vision inputs: the scoring pass and the RD head run text-only "
            "forwards. Pass a tokenizer (processing_class=AutoTokenizer.from_pretrained(...)) for a text model."
        )
    fsdp = bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    if fsdp:
        raise ValueError(
            "HyTuningTrainer does not support FSDP yet: the scoring pass calls the decoder directly, which under "
            "FSDP2 sees sharded weights. Use DeepSpeed ZeRO-3 (examples/accelerate_configs/deepspeed_zero3.yaml) or "
            "DDP for multi-GPU training."
        )


def _prg_hook(callbacks: list) -> PRGCallback:
    hooks = [c for c in callbacks if isinstance(c, PRGCallback)]
    if len(hooks) > 1:
        raise ValueError(
            f"`callbacks` holds {len(hooks)} PRGCallback instances ({', '.join(type(h).__name__ for h in hooks)}); "
            "the RD weight has one rule: pass one."
        )
    return hooks[0] if hooks else PRGCallback()


class HyTuningTrainer(GRPOTrainer):
    """
    Trainer for HyTuning ("Less Approximates More", arXiv 2604.08454): GRPO on the policy's own internal feedback
    (RLIF) over unlabeled prompts, mixed with reasoning distillation (RD) on a few supervised traces::

        loss = (1 - rd_weight) * L_GRPO + rd_weight * L_RD / gradient_accumulation_steps

    ``rd_weight`` is set at every optimizer step by the mixing rule (config ``mixing``; the default ``"prg"`` reads
    the gain of the gold answer along held-out anchor traces) through the [`PRGCallback`] hook. Compared with
    [`~trl.GRPOTrainer`] it overrides only:

    * ``_generate``: passes each completion's prompt ids on through TRL's ``extra_fields``;
    * ``_calculate_rewards``: one no-grad scoring pass gives each completion its self-certainty, entropy and PRG
      trajectory (``hytuning_stats``, handed to every reward function, read with the row's own ``options``);
    * ``_generate_and_score_completions``: logs the round's means, applies the optional per-sample gate
      (``prg_gate``) to the advantages TRL computed, takes the answer statements out of the loss mask
      (``answer_blind_rl``), hands the calibration loss its targets, and on every ``prg_every``-th round runs the
      anchor round;
    * ``_prepare_inputs``: on a step whose loss uses no rollout (RD weight 1, no calibration loss) nothing is
      generated: the step costs an RD step (plus the anchor round when one is due);
    * ``training_step``: at the optimizer-step boundary the mixing controller folds the round means and sets the
      next ``rd_weight`` (the first one is set when training begins, by an internal callback);
    * ``compute_loss``: adds the RD loss of one batch of traces (drawn on every process at every micro-step whose RD
      weight is above 0) and the calibration loss (read from the GRPO forward's hidden states);
    * ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: the mixing state in ``hytuning_state.json``;
    * ``save_model``: the HyTuning model card (base model, mixing rule, citation, calibration figures when a report
      is in the folder, the not-for-clinical-use warning) beside the saved model or adapter.

    Args:
        model, reward_funcs, args, train_dataset, eval_dataset, processing_class, callbacks, **kwargs:
            as for [`~trl.GRPOTrainer`]. ``reward_funcs`` defaults to [`SelfCertaintyReward`]; ``args`` must be a
            [`HyTuningConfig`].
        distill_dataset: the RD traces in TRL's prompt-completion format (plain or conversational), with an optional
            ``options`` column for multiple choice. Needed by every mixing rule but ``rl_only``.
        anchor_dataset: held-out traces in the same format for the ``prg`` / ``prg_gap`` rules. Default:
            ``min(anchor_holdout, n // 4)`` traces split off ``distill_dataset`` with the seed, never trained on.
    """

    _tag_names = ["trl", "grpo", "hytuning"]
    _name = "HyTuning"
    _paper = PAPER

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: HyTuningConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        distill_dataset: Any = None,
        callbacks: list | None = None,
        anchor_dataset: Any = None,
        **kwargs: Any,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = HyTuningConfig(f"{model_name.split('/')[-1]}-HyTuning")
        if not isinstance(args, HyTuningConfig):
            raise TypeError(f"`args` must be a HyTuningConfig, got {type(args).__name__}.")
        trl_compat.check_trl_version()
        _check_train_dataset(train_dataset)
        check_distill_dataset(distill_dataset, args.mixing)
        if args.mixing != "rl_only":
            check_anchor_dataset(anchor_dataset, args.anchor_signal)
        _check_peft_zero3(model, args, kwargs.get("peft_config"))
        _check_unsupported(args, processing_class, kwargs)
        if reward_funcs is None:
            reward_funcs = [SelfCertaintyReward()]
        callbacks = list(callbacks or [])
        hook = _prg_hook(callbacks)
        base_model = (
            model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", None)
        )

        super().__init__(
            model,
            reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            **kwargs,
        )
        self.prg_callback = hook
        self.base_model_name = base_model or None
        for callback in callbacks:
            if isinstance(callback, CalibrationEvalCallback):
                callback.bind(self)
        self.mixing = MixingController(args, hook)
        self.add_callback(_StartMixing(self.mixing))
        self._missing_window: list[float] = []
        self._packed_logged = False
        self._warned_missing = False
        self.answer_extractor = AnswerExtractor.from_config(
            self._tokenizer, args, special_ids=[*self.eos_token_ids, self._tokenizer.pad_token_id]
        )
        self._whitespace_ids = whitespace_token_ids(self._tokenizer)
        self._trigger_ids = self._tokenizer(args.answer_trigger, add_special_tokens=False)["input_ids"]

        self.distill_examples: list[DistillExample] = []
        self.anchor_examples: list[DistillExample] = []  # the anchor's expert traces (with steps)
        self._anchor_parsed: list[ParsedCompletion] = []
        self.anchor_questions: list[AnchorQuestion] = []
        self.distill_iterator: ShardedEndlessIterator | None = None
        if args.mixing != "rl_only":
            tokenize = lambda ds: tokenize_distill_dataset(  # noqa: E731
                ds, self._tokenizer, args.distill_max_length, self.chat_template_kwargs
            )
            examples = tokenize(distill_dataset)
            anchor_traces: list[DistillExample] = []
            if anchor_dataset is not None:
                self.distill_examples = examples
                if has_traces(anchor_dataset):
                    anchor_traces = tokenize(anchor_dataset)
                else:
                    self.anchor_questions = anchor_questions_from_rows(
                        anchor_dataset,
                        self._tokenizer,
                        instruction=args.mcq_instruction,
                        chat_template_kwargs=self.chat_template_kwargs,
                        answer_options=args.answer_options,
                    )
            else:
                train_idx, anchor_idx = split_anchor(len(examples), args.anchor_holdout, args.seed)
                self.distill_examples = [examples[i] for i in train_idx]
                anchor_traces = [examples[i] for i in anchor_idx]
                self.mixing.state.anchor_indices = anchor_idx
            if args.mixing in ("prg", "prg_gap") and not (anchor_traces or self.anchor_questions):
                raise ValueError(
                    f"mixing={args.mixing!r} needs held-out anchor questions, but there are none: pass "
                    f"`anchor_dataset`, or give `distill_dataset` at least 4 traces and `anchor_holdout` >= 1 (now "
                    f"{args.anchor_holdout}; {len(examples)} traces give min(anchor_holdout, n // 4) = 0)."
                )
            if anchor_dataset is None:
                capped = " (anchor_holdout capped at n // 4)" if len(anchor_idx) < args.anchor_holdout else ""
                logger.warning(
                    f"Held out {len(anchor_idx)} of {len(examples)} traces as the anchor{capped}; "
                    f"{len(self.distill_examples)} are trained on."
                )
            for i, example in enumerate(anchor_traces):
                parsed = self._parse_anchor(i, example, require_steps=args.anchor_signal == "trace")
                self.anchor_questions.append(
                    AnchorQuestion(example.prompt_ids, parsed.answer, example.options, example)
                )
                if parsed.spans:
                    self.anchor_examples.append(example)
                    self._anchor_parsed.append(parsed)
            self.mixing.state.anchor_fingerprint = (
                anchor_fingerprint(self.anchor_questions) if self.anchor_questions else None
            )
            self.distill_iterator = ShardedEndlessIterator(
                len(self.distill_examples),
                args.distill_per_device_batch_size,
                rank=self.accelerator.process_index,
                world_size=self.accelerator.num_processes,
                seed=args.seed,
            )
        if self.accelerator.device.type == "cpu":
            _disable_bnb_avx512bf16(self.model)

    # ------------------------------------------------------------------ mixing state
    @property
    def rd_weight(self) -> float:
        """The RD weight of the current step."""
        return self.mixing.rd_weight

    @property
    def mixing_state(self):
        """The mixing state (:class:`~hytuning_trl.mixing.MixingState`)."""
        return self.mixing.state

    def _sync_num_batches(self, n: int) -> int:
        """Under ZeRO-3 / FSDP every process must run the same number of forwards: agree on the maximum."""
        if self.accelerator.num_processes == 1 or not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            return n
        t = torch.tensor([n], device=self.accelerator.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def _reduce_sums(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction="sum").tolist() if self.accelerator.num_processes > 1 else values

    # ------------------------------------------------------------------ scoring
    def _parse_anchor(self, index: int, example: DistillExample, require_steps: bool) -> ParsedCompletion:
        """Read an anchor trace; refuse one without a stated gold answer, and (``anchor_signal='trace'``) one
        without steps."""
        parsed = self.answer_extractor.parse(example.completion_ids, example.options)
        problem = None
        if parsed.answer is None and example.truncated:
            problem = "lost its answer statement to `distill_max_length`; raise it"
        elif parsed.answer is None:
            problem = "states no answer the answer contract can read (e.g. 'The answer is B.')"
        elif require_steps and not parsed.spans:
            problem = "has no reasoning before its answer statement (K = 0)"
        if problem:
            raise ValueError(
                f"Anchor trace {index} ({example.completion_text[:60]!r}...) {problem}; the anchor needs the gold "
                "answer (and, under anchor_signal='trace', expert steps). Fix or drop the trace (`anchor_dataset`, or "
                "the distill dataset it is split from)."
            )
        return parsed

    def _score(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], parsed: list[ParsedCompletion], stats: bool
    ) -> list[RolloutStats]:
        """The scoring pass over a batch (model in eval mode: no dropout), with answers and PRG filled in."""
        was_training = self.model.training
        self.model.eval()  # TRL reads the mode from the model, so it is restored below
        try:
            records = score_rollouts(
                self.model,
                prompt_ids,
                completion_ids,
                step_spans=[p.spans for p in parsed],
                trigger_ids=self._trigger_ids,
                answer_ids=[p.answer_ids for p in parsed],
                option_ids=[p.option_ids for p in parsed],
                compute_stats=stats,
                method=self.args.scoring_method,
                token_budget=self.args.scoring_token_budget,
                pad_token_id=self._tokenizer.pad_token_id,
                sync_num_batches=self._sync_num_batches,
                whitespace_ids=self._whitespace_ids,
            )
        finally:
            self.model.train(was_training)
        return [p.fill(record, self.args.prg_aggregation) for record, p in zip(records, parsed)]

    # ------------------------------------------------------------------ TRL overrides
    def _generate(self, prompts: list):
        """TRL's generation, plus the prompts' token ids in ``extra_fields`` (TRL merges them into the rows that
        ``_calculate_rewards`` receives, where the scoring pass needs them)."""
        output = super()._generate(prompts)
        generated = trl_compat.unpack_generate(output)
        generated.extra_fields[PROMPT_IDS] = [list(p) for p in generated.prompt_ids]
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """The scoring pass, before TRL calls the reward functions: each row (one completion) gets its
        ``hytuning_stats`` (read with the row's own ``options``), so every reward function receives them aligned
        with ``completions``."""
        mode = "train" if self.model.training else "eval"
        completion_ids = [list(c) for c in completion_ids_list]
        parsed = [self.answer_extractor.parse(ids, row.get("options")) for ids, row in zip(completion_ids, inputs)]
        stats = self._score([row[PROMPT_IDS] for row in inputs], completion_ids, parsed, stats=True)
        group = self.num_generations if mode == "train" else self.num_generations_eval
        for row, s in zip(inputs, stats):
            row["hytuning_stats"], row["hytuning_num_generations"] = s, group
        # own column names: a reward function called "prg" has a column of that name already
        self._log_completion_extra("hytuning_prg", [s.prg for s in stats])
        self._log_completion_extra("hytuning_answer_confidence", [s.answer_confidence for s in stats])
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _generate_and_score_completions(self, inputs):
        """TRL's round, then what HyTuning does with it, from the statistics the rows carry: the round's means
        (logged, and queued for the mixing rule with the anchor round's), and the optional per-sample gate."""
        output = super()._generate_and_score_completions(inputs)
        stats = [row["hytuning_stats"] for row in inputs]
        mode = "train" if self.model.training else "eval"
        policy = self._log_round(stats, mode)
        if mode == "train":
            if self.args.prg_gate:
                self._gate_advantages(output, stats)
            if self.args.answer_blind_rl:
                self._blind_answers(output, stats)
            if self.args.calibration_weight > 0:
                self._calibration_inputs(output, stats)
            self._mixing_round(policy)
        return output

    def _mixing_round(self, policy: float | None) -> None:
        """Queue one generation round's means for the mixing rule, with an anchor round every ``prg_every`` rounds."""
        anchor_prg = anchor_gain = None
        round_index = self.mixing.state.generation_rounds + self.mixing.rounds_pending
        if self.anchor_questions and round_index % self.args.prg_every == 0:
            anchor_prg, anchor_gain = self._anchor_round()
        self.mixing.record(RoundMeans(policy_prg=policy, anchor_prg=anchor_prg, anchor_gain=anchor_gain))

    def _skips_rollouts(self) -> bool:
        """A step whose loss uses no rollout: RD weight 1 and no calibration loss (every process agrees: the weight
        is reduced globally)."""
        return self.distill_iterator is not None and self.rd_weight >= 1.0 and self.args.calibration_weight == 0

    def _prepare_inputs(self, generation_batch):
        """TRL's generation and buffering, except on a training step that uses no rollout (:meth:`_skips_rollouts`):
        then nothing is generated or scored and the step costs an RD (SFT) step, plus the anchor round on the
        micro-steps where TRL would have generated (so ``prg_every`` keeps counting the same rounds)."""
        if not (self.model.training and self._skips_rollouts()):
            return super()._prepare_inputs(generation_batch)
        if trl_compat.generation_due(self):
            self._mixing_round(None)
        trl_compat.drop_rollouts(self)
        return {RD_ONLY_STEP: True}

    def _blind_answers(self, output: dict, stats: list[RolloutStats]) -> None:
        """``answer_blind_rl``: zero each rollout's answer statement in TRL's ``tool_mask`` (the mask of the tokens
        that are the policy's own to train on), so the policy-gradient, KL and entropy terms skip them; the token
        count behind the ``dapo`` / ``cispo`` / ``vespo`` normaliser (``num_items_in_batch``) is recounted
        without them. ``grpo`` / ``bnpo`` / ``luspo`` divide by the masked tokens themselves; ``dr_grpo`` by the
        constant ``max_completion_length``."""
        completion_mask = output["completion_mask"]
        if len(stats) != completion_mask.size(0):
            raise RuntimeError(f"{len(stats)} scored rollouts for {completion_mask.size(0)} completions.")
        width = completion_mask.size(1)
        blind = torch.tensor([s.statement_mask(width) for s in stats], device=completion_mask.device)
        tool_mask = output.get("tool_mask")
        output["tool_mask"] = blind.to(completion_mask.dtype) if tool_mask is None else tool_mask * blind
        kept = completion_mask * output["tool_mask"]
        output["num_items_in_batch"] = self.accelerator.gather(kept.sum()).sum()
        removed, total = self._reduce_sums(
            [float((completion_mask * (1 - blind)).sum()), float(completion_mask.sum())]
        )
        trl_compat.metrics(self, "train")["hytuning/answer_blind_share"].append(removed / max(total, 1.0))

    def _calibration_inputs(self, output: dict, stats: list[RolloutStats]) -> None:
        """Per rollout, what the calibration loss needs (``nan`` target / position -1 where it has none): the target
        ``t_i`` (held constant), the stated letter's position, the option tokens in the form it was written and the
        stated option's index among them."""
        device = output["completion_mask"].device
        if self.args.calibration_target == "share":
            group = self.num_generations
            everyone, offset = gather_objects(
                [normalise_answer(s.answer) if s.answer_usable() else None for s in stats]
            )
            shares = [
                x for start in range(0, len(everyone), group) for x in group_shares(everyone[start : start + group])
            ]
            targets = shares[offset : offset + len(stats)]
        else:
            targets = [s.weakest_token if s.answer_usable() else None for s in stats]
        width = max((len(s.statement_option_ids or []) for s in stats), default=1) or 1
        target, position, options, index = [], [], [], []
        for s, t in zip(stats, targets):
            ids = s.statement_option_ids
            usable = t is not None and math.isfinite(t) and ids is not None and s.answer_position is not None
            target.append(float(t) if usable else math.nan)
            position.append(s.answer_position if usable else -1)
            options.append((list(ids) if usable else []) + [-1] * (width - (len(ids) if usable else 0)))
            index.append(ids.index(s.completion_ids[s.answer_position]) if usable else 0)
        output[CAL_TARGET] = torch.tensor(target, dtype=torch.float32, device=device)
        output[CAL_POSITION] = torch.tensor(position, dtype=torch.long, device=device)
        output[CAL_OPTIONS] = torch.tensor(options, dtype=torch.long, device=device)
        output[CAL_INDEX] = torch.tensor(index, dtype=torch.long, device=device)
        usable, n = self._reduce_sums([float(sum(p >= 0 for p in position)), float(len(stats))])
        trl_compat.metrics(self, "train")["hytuning/calibration_share"].append(usable / max(n, 1.0))

    def _gate_advantages(self, output: dict, stats: list[RolloutStats]) -> None:
        """Per-sample gating: a positive advantage of a rollout whose own PRG is <= 0, missing or non-finite, or
        whose answer is forced, is multiplied by ``prg_gate_floor``; negative advantages stay."""
        advantages = trl_compat.advantages(output)
        if len(stats) != advantages.size(0):
            raise RuntimeError(f"{len(stats)} scored rollouts for {advantages.size(0)} advantages: cannot gate.")
        unsupported = torch.tensor(
            [not s.has_prg or s.prg is None or not math.isfinite(s.prg) or s.prg <= 0 for s in stats],
            device=advantages.device,
        )
        gated = unsupported & (advantages > 0)
        output[trl_compat.ADVANTAGES] = torch.where(gated, advantages * self.args.prg_gate_floor, advantages)
        n_gated, n = self._reduce_sums([float(gated.sum()), float(len(stats))])
        trl_compat.metrics(self, "train")["hytuning/prg_gated_share"].append(n_gated / max(n, 1.0))

    def _log_round(self, stats: list[RolloutStats], mode: str) -> float | None:
        """Reduce one round's statistics across processes, log them, and return the policy's global mean PRG over
        stated answers with at least one step (forced answers left out: choosing an answer by its final probability
        guarantees it a gain)."""
        prg_sum = prg_n = missing = nonfinite = sc_sum = sc_n = conf_sum = conf_n = steps = forced = 0.0
        for s in stats:
            forced += s.answer_forced
            if not s.has_prg:
                missing += 1
            elif s.prg is None or not math.isfinite(s.prg):
                nonfinite += 1
            else:
                prg_sum, prg_n = prg_sum + s.prg, prg_n + 1
            if math.isfinite(s.self_certainty):
                sc_sum, sc_n = sc_sum + s.self_certainty, sc_n + 1
            conf = s.answer_confidence
            if conf is not None and math.isfinite(conf):
                conf_sum, conf_n = conf_sum + conf, conf_n + 1
            steps += s.num_steps
        letters = self.args.answer_options or []
        answered = [float(sum((s.answer or "").strip() == letter for s in stats)) for letter in letters]
        totals = self._reduce_sums(
            [prg_sum, prg_n, missing, nonfinite, sc_sum, sc_n, conf_sum, conf_n, steps, forced, len(stats), *answered]
        )
        prg_sum, prg_n, missing, nonfinite, sc_sum, sc_n, conf_sum, conf_n, steps, forced, n = totals[:11]
        metrics = trl_compat.metrics(self, mode)
        for letter, count in zip(letters, totals[11:]):  # label-free: a letter the policy stops giving shows here
            metrics[f"hytuning/answered/{letter}"].append(count / max(n, 1))
        policy = prg_sum / prg_n if prg_n else None
        if policy is not None:
            metrics["hytuning/prg_policy"].append(policy)
        metrics["hytuning/prg_missing"].append(missing / max(n, 1))
        metrics["hytuning/prg_nonfinite"].append(nonfinite)
        metrics["hytuning/answer_forced_rate"].append(forced / max(n, 1))
        metrics["hytuning/num_steps"].append(steps / max(n, 1))
        if not self._packed_logged:  # the scoring path in use, once: a silent fallback is a 5x slowdown
            method = self.args.scoring_method
            verdict = packed_scoring_verdict(self.model) if method == "auto" else method == "packed"
            if verdict is not None:
                metrics["hytuning/packed_scoring"].append(float(verdict))
                self._packed_logged = True
        if sc_n:
            metrics["hytuning/self_certainty"].append(sc_sum / sc_n)
        if conf_n:
            metrics["hytuning/answer_confidence"].append(conf_sum / conf_n)
        if mode == "train":
            self._missing_window.append(missing / max(n, 1))
        return policy

    def _anchor_round(self) -> tuple[float | None, float | None]:
        """One anchor round (:mod:`hytuning_trl.anchor`): return the global mean PRG of the anchor traces (rule
        ``prg_gap``) and the mean gain ``G`` of the signal in use (rule ``prg``)."""
        if self.args.anchor_signal == "trace":
            return self._trace_anchor_round(prefix="anchor")
        trace_prg = None
        if self.anchor_examples:
            trace_prg, _ = self._trace_anchor_round(prefix="anchor_trace")
        return trace_prg, self._own_anchor_round()

    def _own_anchor_round(self) -> float | None:
        """The policy answers this process's (padded) shard of the anchor questions with its own greedy reasoning;
        the gold answer is scored along its steps. Logs the global means; returns the mean ``G``."""
        acc = self.accelerator
        indices, real = shard_indices(len(self.anchor_questions), acc.process_index, acc.num_processes)
        questions = [self.anchor_questions[i] for i in indices]
        completions = self._generate_greedy([q.prompt_ids for q in questions])
        own = [self.answer_extractor.parse(c, q.options, always_steps=True) for c, q in zip(completions, questions)]
        scored = [gold_view(p, q, self._tokenizer) for p, q in zip(own, questions)]
        records = self._score([q.prompt_ids for q in questions], completions, scored, stats=False)
        sums = AnchorSums()
        for record, parsed, question, is_real in zip(records, own, questions, real):
            if is_real:
                sums.add(record, parsed, question)
        s = AnchorSums.from_list(self._reduce_sums(sums.as_list()))
        metrics = trl_compat.metrics(self, "train")
        metrics["hytuning/anchor_nonfinite"].append(s.nonfinite)
        if not s.count:
            return None
        metrics["hytuning/anchor_gain"].append(s.gain / s.count)
        metrics["hytuning/anchor_p0"].append(s.p0 / s.count)
        metrics["hytuning/anchor_pK"].append(s.pk / s.count)
        metrics["hytuning/anchor_accuracy"].append(s.correct / s.count)
        metrics["hytuning/anchor_stated"].append(s.stated / s.count)
        if s.brier_n:
            metrics["hytuning/anchor_brier"].append(s.brier / s.brier_n)
        return s.gain / s.count

    def _generate_greedy(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """Greedy completions (at most ``max_completion_length`` tokens, EOS kept) through TRL's own generation path
        for one turn (plain ``generate``, ZeRO-3 with gathered weights, vLLM colocate or server), without touching
        TRL's metrics or token counts, and with the random state of the rollouts restored afterwards."""
        vllm = getattr(self, "vllm_generation", None) if self.use_vllm else None
        saved_config, saved_temperature = getattr(self, "generation_config", None), getattr(vllm, "temperature", None)
        if saved_config is not None:
            greedy = copy.deepcopy(saved_config)
            greedy.do_sample = False
            greedy.temperature = greedy.top_p = greedy.top_k = greedy.min_p = greedy.repetition_penalty = None
            self.generation_config = greedy
        if vllm is not None:
            vllm.temperature = 0.0  # vLLM's greedy decoding
        devices = [torch.cuda.current_device()] if self.accelerator.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                completion_ids = trl_compat.generate_one_turn(self, prompt_ids)
        finally:
            if saved_config is not None:
                self.generation_config = saved_config
            if vllm is not None:
                vllm.temperature = saved_temperature
        return completion_ids

    def _trace_anchor_round(self, prefix: str) -> tuple[float | None, float | None]:
        """Score this process's (padded) shard of the anchor traces (teacher-forced); log the gain as
        ``hytuning/{prefix}_gain`` and return the global mean PRG and mean gain ``G``."""
        acc = self.accelerator
        mine, real = shard_indices(len(self.anchor_examples), acc.process_index, acc.num_processes)
        traces = [self.anchor_examples[i] for i in mine]
        records = self._score(
            [t.prompt_ids for t in traces],
            [t.completion_ids for t in traces],
            [self._anchor_parsed[i] for i in mine],
            stats=False,
        )
        sums = [0.0] * 6  # G, p_0, p_K, PRG, count, non-finite
        for r in (r for r, is_real in zip(records, real) if is_real):
            values = [r.gain, *r.endpoint_probabilities, r.prg]
            if all(v is not None and math.isfinite(v) for v in values):
                sums = [a + b for a, b in zip(sums, [*values, 1.0, 0.0])]
            else:
                sums[5] += 1
        gain, p0, pk, prg, count, nonfinite = self._reduce_sums(sums)
        metrics = trl_compat.metrics(self, "train")
        metrics[f"hytuning/{prefix}_nonfinite"].append(nonfinite)
        if not count:
            return None, None
        metrics[f"hytuning/{prefix}_gain"].append(gain / count)
        if prefix == "anchor":  # v2's names, unchanged
            metrics["hytuning/anchor_p0"].append(p0 / count)
            metrics["hytuning/anchor_pK"].append(pk / count)
        metrics["hytuning/prg_anchor"].append(prg / count)
        return prg / count, gain / count

    def training_step(self, model, inputs, num_items_in_batch=None):
        output = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients and self.model.training:
            self._end_of_optimizer_step()
        return output

    def _end_of_optimizer_step(self) -> None:
        """Fold the rounds into the mixing state and set the RD weight of the next step (same on every process)."""
        self.mixing.step(self.state.global_step + 1, self.state.max_steps)
        ms, metrics = self.mixing.state, trl_compat.metrics(self, "train")
        for name in ("anchor_gain_ema", "prg_policy_ema", "prg_anchor_ema"):
            if getattr(ms, name) is not None:
                metrics[f"hytuning/{name}"].append(getattr(ms, name))
        metrics["hytuning/rd_weight_next"].append(ms.rd_weight)
        window = max(int(self.args.logging_steps or 1), 1)
        if (self.state.global_step + 1) % window == 0:
            if self._missing_window and min(self._missing_window) >= 1.0 and not self._warned_missing:
                logger.warning(
                    "hytuning/prg_missing was 1.0 over the last logging window: no rollout had a stated answer with "
                    "reasoning steps, so PRG, answer confidence and the PRG-based rewards carry no signal. Check that "
                    "completions end with a statement `answer_pattern` reads (default 'The answer is X.'), that "
                    "multiple-choice rows have an `options` column or `answer_options` is set, and that "
                    "max_completion_length leaves room for the answer."
                )
                self._warned_missing = True
            self._missing_window = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``(1 - rd_weight) * L_GRPO + rd_weight * L_RD + calibration_weight * L_cal`` (each term scaled for gradient
        accumulation): TRL's loss, the RD loss of one batch of traces (not drawn when ``rd_weight`` is 0), and the
        calibration loss read from the GRPO forward's hidden states (no second forward). On a step that uses no
        rollout (:meth:`_prepare_inputs`) the RD loss alone."""
        if inputs.get(RD_ONLY_STEP):
            if return_outputs:
                raise ValueError("HyTuningTrainer does not support returning outputs")
            trl_compat.metrics(self, "train")["hytuning/rd_weight"].append(1.0)
            return self._rd_loss(model)
        calibrate = self.model.training and self.args.calibration_weight > 0 and CAL_TARGET in inputs
        with _captured_hidden(model, calibrate) as hidden:
            loss = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        if not self.model.training:
            return loss
        metrics = trl_compat.metrics(self, "train")
        rd_weight = self.rd_weight
        metrics["hytuning/rd_weight"].append(rd_weight)
        total = (1.0 - rd_weight) * loss if rd_weight < 1.0 else 0.0 * torch.nan_to_num(loss)
        if self.distill_iterator is not None and rd_weight > 0:  # rl_only, or a weight of 0: no RD forward
            total = total + rd_weight * self._rd_loss(model)
        if calibrate:
            total = total + self.args.calibration_weight * self._calibration_loss(model, inputs, hidden)
        return total

    def _rd_loss(self, model) -> torch.Tensor:
        """The RD loss of the next batch of traces, divided by the accumulation steps; its NLL is logged."""
        metrics = trl_compat.metrics(self, "train")
        batch = collate_distill(
            [self.distill_examples[i] for i in next(self.distill_iterator)], self._tokenizer.pad_token_id
        )
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        out = rd_loss(model, batch, chord_phi=self.args.chord_phi)
        nll_sum, n_tokens, nonfinite = self._reduce_sums([out.nll_sum, out.num_tokens, float(out.nonfinite)])
        if n_tokens:
            metrics["hytuning/rd_nll"].append(nll_sum / n_tokens)
        metrics["hytuning/rd_nonfinite"].append(nonfinite)
        return out.loss / self.current_gradient_accumulation_steps

    def _calibration_loss(self, model, inputs: dict, hidden: list[torch.Tensor]) -> torch.Tensor:
        """``mean_i (p(a_i | x, r_i) - t_i)^2 / gradient_accumulation_steps`` over this micro-batch's rollouts with a
        target: ``p`` the option-renormalised probability of the stated letter, from the untempered logits of the
        hidden state that predicted it in the GRPO forward, projected through the LM head (called as a module, so
        ZeRO-3 gathers it); ``t_i`` carries no gradient."""
        if len(hidden) != 1:
            raise RuntimeError(f"Expected one GRPO forward per micro-batch, saw {len(hidden)}.")
        states = hidden[0]
        target, position = inputs[CAL_TARGET], inputs[CAL_POSITION]
        rows = torch.nonzero(position >= 0).squeeze(-1)
        prompt_width = inputs["prompt_ids"].size(1)
        h = states[rows, prompt_width + position[rows] - 1]
        _, head = get_backbone_and_head(model)
        logits = finish_logits(head(h).float(), *lm_head_scaling(unwrap_model(model).config))
        options = inputs[CAL_OPTIONS][rows]
        z = logits.gather(1, options.clamp(min=0)).masked_fill(options < 0, -math.inf)
        p = z.softmax(-1).gather(1, inputs[CAL_INDEX][rows].unsqueeze(1)).squeeze(1)
        squared = (p - target[rows].detach()) ** 2
        loss = squared.sum() / max(len(rows), 1) / self.current_gradient_accumulation_steps
        sums = [float(squared.detach().sum()), float(len(rows)), float(p.detach().sum()), float(target[rows].sum())]
        total, n, p_sum, target_sum = self._reduce_sums(sums)
        if n:
            metrics = trl_compat.metrics(self, "train")
            metrics["hytuning/calibration_loss"].append(total / n)
            # where p and its target sit: a loss can fall by moving p toward a target that carries no signal
            metrics["hytuning/calibration_p"].append(p_sum / n)
            metrics["hytuning/calibration_target"].append(target_sum / n)
        return loss

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint plus ``hytuning_state.json`` (mixing state, held-out anchor, RD iterator position),
        written first and atomically; SIGTERM / SIGINT arriving while the checkpoint is written are held until it is
        complete."""
        if self.args.should_save:
            folder = os.path.join(
                trl_compat.output_dir(self, trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            state = self.mixing.state_dict()
            if self.distill_iterator is not None:
                state.update(self.distill_iterator.state_dict())
            tmp = os.path.join(folder, STATE_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(state, f, indent=2)
            os.replace(tmp, os.path.join(folder, STATE_FILE))
        with _signals_held():
            super()._save_checkpoint(model, trial)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """TRL's ``save_model`` (full model or PEFT adapter), then the HyTuning model card in the same folder (the
        internal calls of checkpoints and ``push_to_hub`` get it from :meth:`create_model_card`)."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call and self.is_world_process_zero():
            self._write_model_card(output_dir or self.args.output_dir)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's hook, called by ``push_to_hub`` and at every checkpoint save: the HyTuning card (base model, mixing
        rule, rd_weight by step, calibration figures when a report is in the folder, citation, the not-for-clinical-use
        warning) replaces the GRPO card TRL writes into ``output_dir``, so what is uploaded keeps the warning."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero():
            self._write_model_card(self.args.output_dir)

    def _write_model_card(self, folder: str) -> str:
        return write_model_card(
            folder,
            self.base_model_name,
            self.args.mixing,
            rd_weight_trajectory=[
                h["hytuning/rd_weight"] for h in self.state.log_history if "hytuning/rd_weight" in h
            ],
            adapter=hasattr(self.model, "peft_config"),
        )

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None):
        """TRL's ``train``, except when the checkpoint to resume from is already at ``max_steps``: transformers runs
        one optimizer step before its loop checks ``max_steps``, so resuming a finished run (one stopped during its
        final evaluation) would train step ``max_steps + 1``. Such a checkpoint's weights, trainer state and mixing
        state are loaded and no step runs (``training_loss`` 0, as transformers reports for no step)."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        state_path = os.path.join(checkpoint, TRAINER_STATE_NAME) if isinstance(checkpoint, str) else ""
        if self.args.max_steps > 0 and os.path.exists(state_path):
            state = TrainerState.load_from_json(state_path)
            if state.global_step >= self.args.max_steps:
                return self._load_finished(checkpoint, state)
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)

    def _load_finished(self, checkpoint: str, state: TrainerState) -> TrainOutput:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                f"{checkpoint} is at step {state.global_step} and max_steps is {self.args.max_steps}: its training is "
                "finished, and resuming it would train one step more. Use the model saved in it (or "
                "trainer.save_model() after loading it), or raise max_steps to train on."
            )
        logger.warning(f"{checkpoint} is at max_steps ({state.global_step}): loaded, no step trained.")
        self._load_from_checkpoint(checkpoint)
        self.state = state
        self._load_hytuning_state(checkpoint)
        return TrainOutput(state.global_step, 0.0, {})

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_hytuning_state(checkpoint)

    def _load_hytuning_state(self, checkpoint: str) -> None:
        """The mixing state and RD iterator position saved in ``checkpoint``, after checking that it held out the same
        anchor as this run."""
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            logger.warning(
                f"{checkpoint} has no {STATE_FILE}: the mixing state (averages, RD weight) and the RD iterator "
                "restart from their initial values."
            )
            return
        with open(path) as f:
            state = json.load(f)
        saved_anchor = state.get("anchor_indices", [])
        if saved_anchor != self.mixing.state.anchor_indices:
            raise ValueError(
                f"{path} held out the anchor traces {saved_anchor}, but this run holds out "
                f"{self.mixing.state.anchor_indices}: resume with the same distill dataset, seed and anchor_holdout, "
                "or the anchor would have been trained on."
            )
        saved_print = state.get("anchor_fingerprint")
        if saved_print is not None and saved_print != self.mixing.state.anchor_fingerprint:
            raise ValueError(
                f"{path} was trained with another anchor (fingerprint {saved_print}, this run's is "
                f"{self.mixing.state.anchor_fingerprint}): the distill or anchor dataset changed. Resume with the "
                "datasets of the interrupted run, or the anchor average would mix two anchors."
            )
        self.mixing.load_state_dict(state)
        if self.distill_iterator is not None:
            self.distill_iterator.load_state_dict(state)


class _StartMixing(TrainerCallback):
    """Sets the RD weight of the first step when training begins: after a resumed checkpoint's mixing state is
    loaded, before the first step (so no override depends on which of them TRL calls first)."""

    def __init__(self, controller: MixingController):
        self.controller = controller

    def on_train_begin(self, args, state, control, **kwargs):
        self.controller.start(state.global_step, state.max_steps)


@contextlib.contextmanager
def _captured_hidden(model, active: bool):
    """While active, collect the decoder's last hidden states of every forward (with their graph): the calibration
    loss reads the stated letters' logits from the GRPO forward instead of running a second one."""
    captured: list[torch.Tensor] = []
    if not active:
        yield captured
        return
    backbone, _ = get_backbone_and_head(model)

    def hook(module, args, output):
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = backbone.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextlib.contextmanager
def _signals_held():
    """Hold SIGTERM / SIGINT until the block ends, then deliver them (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in received:
            os.kill(os.getpid(), signum)


def _disable_bnb_avx512bf16(model: torch.nn.Module) -> None:
    """On CPU, bitsandbytes repacks 4-bit weights for an AVX512-BF16 kernel after a no-grad forward, and training
    then runs through a kernel without gradients: LoRA gradients become exactly 0, silently. Opt every 4-bit layer
    out of that kernel."""
    try:
        import bitsandbytes as bnb
    except Exception:  # noqa: BLE001 - bitsandbytes is optional (extra `qlora`)
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
