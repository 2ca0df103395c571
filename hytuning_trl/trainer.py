"""HyTuningTrainer: GRPO on internal feedback plus reasoning distillation, mixed by Progressive Reasoning Gain."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import textwrap
import threading
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

from .answers import AnswerExtractor
from .callbacks import PRGCallback
from .config import HyTuningConfig
from .distill import (
    DistillExample,
    ShardedEndlessIterator,
    check_distill_dataset,
    collate_distill,
    rd_loss,
    tokenize_distill_dataset,
)
from .mixing import MixingState
from .rewards import SelfCertaintyReward
from .scoring import RolloutStats, score_rollouts

__all__ = ["HyTuningTrainer", "STATE_FILE"]

STATE_FILE = "hytuning_state.json"
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
                "head adds a second forward per micro-step). Set gradient_checkpointing=False (LoRA activations are "
                "small), use ZeRO-2, or train with mixing='rl_only'."
            )


class HyTuningTrainer(GRPOTrainer):
    """
    Trainer for HyTuning ("Less Approximates More", arXiv 2604.08454): GRPO on the policy's own internal feedback
    (RLIF) over unlabeled prompts, mixed with reasoning distillation (RD) on a few supervised traces::

        loss = (1 - lam) * L_GRPO + lam * L_RD / gradient_accumulation_steps

    ``lam`` is set after every step by [`PRGCallback`] from the Progressive Reasoning Gain of the policy's rollouts and
    of the RD traces (config ``mixing``). Compared with [`~trl.GRPOTrainer`] it overrides only:

    * ``_generate``: after TRL generates, one no-grad scoring pass gives each completion its self-certainty,
      entropy and PRG trajectory (``hytuning_stats``, handed to every reward function), and on every ``prg_every``-th
      round the anchor PRG of a few RD traces;
    * ``_generate_and_score_completions``: keeps the batch's rows (for their ``options``) while TRL scores them;
    * ``compute_loss``: adds the RD loss of one batch of traces, drawn on every process at every micro-step;
    * ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: the mixing state in ``hytuning_state.json``.

    Args:
        model, reward_funcs, args, train_dataset, eval_dataset, processing_class, callbacks, **kwargs:
            as for [`~trl.GRPOTrainer`]. ``reward_funcs`` defaults to [`SelfCertaintyReward`]; ``args`` must be a
            [`HyTuningConfig`].
        distill_dataset: the RD traces in TRL's prompt-completion format (plain or conversational), with an optional
            ``options`` column for multiple choice. Needed by every mixing rule but ``rl_only``.
    """

    _tag_names = ["trl", "grpo", "hytuning"]
    _name = "HyTuning"
    _paper = {
        "title": "Less Approximates More: Harmonizing Performance and Confidence Faithfulness via Hybrid "
        "Post-Training for High-Stakes Tasks",
        "id": "2604.08454",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{hytuning2026,
                title        = {{Less Approximates More: Harmonizing Performance and Confidence Faithfulness
                                 via Hybrid Post-Training for High-Stakes Tasks}},
                year         = 2026,
                eprint       = {arXiv:2604.08454},
            }"""),
    }

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
        **kwargs: Any,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = HyTuningConfig(f"{model_name.split('/')[-1]}-HyTuning")
        if not isinstance(args, HyTuningConfig):
            raise TypeError(f"`args` must be a HyTuningConfig, got {type(args).__name__}.")
        _check_train_dataset(train_dataset)
        check_distill_dataset(distill_dataset, args.mixing)
        _check_peft_zero3(model, args, kwargs.get("peft_config"))
        if reward_funcs is None:
            reward_funcs = [SelfCertaintyReward()]
        callbacks = list(callbacks or [])
        prg_callback = next((c for c in callbacks if isinstance(c, PRGCallback)), None)
        if prg_callback is None:
            prg_callback = PRGCallback()
            callbacks.append(prg_callback)

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
        self.prg_callback = prg_callback
        for callback in callbacks:
            if hasattr(callback, "bind"):
                callback.bind(self)
        self.mixing_state = MixingState(rd_weight={"rl_only": 0.0, "rd_only": 1.0}.get(args.mixing, args.rd_weight))
        self._mixing_state_restored = False
        self._prg_rounds: list[dict[str, float | None]] = []
        self._rollout_rows: list[dict] | None = None
        self.answer_extractor = AnswerExtractor.from_config(
            self._tokenizer, args, special_ids=[*self.eos_token_ids, self._tokenizer.pad_token_id]
        )
        self._trigger_ids = self._tokenizer(args.answer_trigger, add_special_tokens=False)["input_ids"]

        self.distill_examples: list[DistillExample] = []
        self.distill_iterator: ShardedEndlessIterator | None = None
        if args.mixing != "rl_only":
            self.distill_examples = tokenize_distill_dataset(
                distill_dataset, self._tokenizer, args.distill_max_length, self.chat_template_kwargs
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
        """The RD weight ``lam`` used by the current step."""
        return self.mixing_state.rd_weight

    def _pop_prg_rounds(self) -> list[dict[str, float | None]]:
        rounds, self._prg_rounds = self._prg_rounds, []
        return rounds

    def _sync_num_batches(self, n: int) -> int:
        """Under ZeRO-3 / FSDP every process must run the same number of forwards: agree on the maximum."""
        if self.accelerator.num_processes == 1 or not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            return n
        t = torch.tensor([n], device=self.accelerator.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    # ------------------------------------------------------------------ scoring
    def _score(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], rows: list[dict | None], stats: bool
    ) -> list[RolloutStats]:
        """The scoring pass over a batch, with the answers and PRG filled in."""
        parsed = [
            self.answer_extractor.parse(ids, row.get("options") if row else None)
            for ids, row in zip(completion_ids, rows)
        ]
        was_training = self.model.training
        self.model.eval()  # no dropout in the statistics; TRL reads the mode from the model, so it is restored below
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
            )
        finally:
            self.model.train(was_training)
        return [p.fill(record, self.args.prg_aggregation) for record, p in zip(records, parsed)]

    def _reduce_sums(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction="sum").tolist() if self.accelerator.num_processes > 1 else values

    # ------------------------------------------------------------------ TRL overrides
    def _generate_and_score_completions(self, inputs):
        self._rollout_rows = inputs
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_rows = None

    def _generate(self, prompts: list):
        output = list(super()._generate(prompts))
        prompt_ids, completion_ids, extra_fields = output[0], output[1], output[5]
        mode = "train" if self.model.training else "eval"
        rows = self._rollout_rows if self._rollout_rows is not None else [None] * len(prompts)
        if len(rows) != len(completion_ids):
            rows = [None] * len(completion_ids)
        stats = self._score([list(p) for p in prompt_ids], [list(c) for c in completion_ids], rows, stats=True)
        extra_fields["hytuning_stats"] = stats
        extra_fields["hytuning_num_generations"] = (
            self.num_generations if mode == "train" else self.num_generations_eval
        )
        self._log_completion_extra("prg", [s.prg for s in stats])
        self._log_completion_extra("answer_confidence", [s.answer_confidence for s in stats])
        policy = self._log_round(stats, mode)
        if mode == "train":
            anchor = self._anchor_prg()
            self._prg_rounds.append({"policy": policy, "anchor": anchor})
        return tuple(output)

    def _log_round(self, stats: list[RolloutStats], mode: str) -> float | None:
        """Reduce one round's statistics across processes, log them, and return the policy's global mean PRG."""
        prg_sum = prg_n = missing = nonfinite = sc_sum = sc_n = conf_sum = conf_n = steps = 0.0
        for s in stats:
            usable = s.answer_logprobs is not None and s.num_steps > 0
            if not usable:
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
        totals = self._reduce_sums(
            [prg_sum, prg_n, missing, nonfinite, sc_sum, sc_n, conf_sum, conf_n, steps, len(stats)]
        )
        prg_sum, prg_n, missing, nonfinite, sc_sum, sc_n, conf_sum, conf_n, steps, n = totals
        metrics = self._metrics[mode]
        policy = prg_sum / prg_n if prg_n else None
        if policy is not None:
            metrics["hytuning/prg_policy"].append(policy)
        metrics["hytuning/prg_missing"].append(missing / max(n, 1))
        metrics["hytuning/prg_nonfinite"].append(nonfinite)
        metrics["hytuning/num_steps"].append(steps / max(n, 1))
        if sc_n:
            metrics["hytuning/self_certainty"].append(sc_sum / sc_n)
        if conf_n:
            metrics["hytuning/answer_confidence"].append(conf_sum / conf_n)
        return policy

    def _anchor_prg(self) -> float | None:
        """Every ``prg_every`` rounds: the mean PRG of a sample of RD traces under the current model (global)."""
        round_index = self.mixing_state.generation_rounds + len(self._prg_rounds)
        if self.distill_iterator is None or round_index % self.args.prg_every != 0:
            return None
        generator = torch.Generator().manual_seed(
            self.args.seed * 100003 + round_index * 1009 + self.accelerator.process_index
        )
        picks = torch.randint(
            len(self.distill_examples), (self.args.distill_per_device_batch_size,), generator=generator
        )
        traces = [self.distill_examples[i] for i in picks.tolist()]
        records = self._score(
            [t.prompt_ids for t in traces],
            [t.completion_ids for t in traces],
            [{"options": t.options} if t.options is not None else None for t in traces],
            stats=False,
        )
        good = [r.prg for r in records if r.answer_logprobs is not None and r.num_steps > 0 and r.prg is not None]
        good = [g for g in good if math.isfinite(g)]
        total, count = self._reduce_sums([sum(good), len(good)])
        if not count:
            return None
        anchor = total / count
        self._metrics["train"]["hytuning/prg_anchor"].append(anchor)
        return anchor

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not self.model.training:
            return loss
        metrics = self._metrics["train"]
        lam = self.rd_weight
        metrics["hytuning/rd_weight"].append(lam)
        if self.distill_iterator is None:  # rl_only: no RD forward on any process
            return loss
        batch = collate_distill(
            [self.distill_examples[i] for i in next(self.distill_iterator)], self._tokenizer.pad_token_id
        )
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        out = rd_loss(model, batch, chord_phi=self.args.chord_phi)
        rd = out.loss / self.current_gradient_accumulation_steps
        nll_sum, n_tokens, nonfinite = self._reduce_sums([out.nll_sum, out.num_tokens, float(out.nonfinite)])
        if n_tokens:
            metrics["hytuning/rd_nll"].append(nll_sum / n_tokens)
        metrics["hytuning/rd_nonfinite"].append(nonfinite)
        grpo = (1.0 - lam) * loss if lam < 1.0 else 0.0 * torch.nan_to_num(loss)
        return grpo + lam * rd

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint plus ``hytuning_state.json`` (mixing state and RD iterator position), written first and
        atomically; SIGTERM / SIGINT arriving while the checkpoint is written are held until it is complete."""
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            state = self.mixing_state.to_dict()
            if self.distill_iterator is not None:
                state.update(self.distill_iterator.state_dict())
            tmp = os.path.join(folder, STATE_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(state, f, indent=2)
            os.replace(tmp, os.path.join(folder, STATE_FILE))
        with _signals_held():
            super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            logger.warning(
                f"{checkpoint} has no {STATE_FILE}: the mixing state (PRG averages, RD weight) and the RD iterator "
                "restart from their initial values."
            )
            return
        with open(path) as f:
            state = json.load(f)
        self.mixing_state = MixingState.from_dict(state)
        if self.distill_iterator is not None:
            self.distill_iterator.load_state_dict(state)
        self._mixing_state_restored = True


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
