"""The commands: ``hytuning-eval`` (confidence faithfulness of a model on a multiple-choice file) and ``hytuning-prg``
(PRG trajectories and validity of a model on a trace file, :mod:`hytuning_trl.prg_analysis`).

    hytuning-eval --model_name_or_path outputs/medqa-hytuning --dataset_name data/heldout.jsonl --output_dir report
    hytuning-prg --model_name_or_path outputs/medqa-hytuning --traces_file traces.jsonl --output_dir prg_report

Exit status 0 on success; on bad input (a missing file, a dataset without the needed columns, a gold letter that is
not an option) one line on stderr and status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .constants import (
    DEFAULT_ANSWER_PATTERN,
    DEFAULT_ANSWER_TRIGGER,
    DEFAULT_MCQ_INSTRUCTION,
    PRG_AGGREGATIONS,
    split_options,
)
from .evaluation import SamplingOutOfMemory, evaluate_mcq
from .mcq import load_mcq
from .prg_analysis import PRGAnalysis, analyse_prg, format_validity, load_traces, read_trace_rows, write_analysis
from .report import format_table, write_report

__all__ = [
    "EvalArguments",
    "PRGArguments",
    "check_model_path",
    "load_model",
    "main",
    "prg_main",
    "run_evaluation",
    "run_prg",
]

DEFAULT_TRIGGER = DEFAULT_ANSWER_TRIGGER
DEFAULT_PATTERN = DEFAULT_ANSWER_PATTERN


@dataclass
class EvalArguments:
    """Arguments of ``hytuning-eval``."""

    model_name_or_path: str = field(metadata={"help": "Model folder or hub name."})
    dataset_name: str = field(
        metadata={"help": "MedQA-style jsonl path, or a hub dataset with question / options / answer_idx."}
    )
    output_dir: str = field(
        default="outputs/eval", metadata={"help": "Where calibration.json and reliability.png go."}
    )
    dataset_split: str = field(default="test", metadata={"help": "Split of a hub dataset."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first this many questions."})
    batch_size: int = field(default=8, metadata={"help": "Questions per generation batch."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens of reasoning per question."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside the model folder, if any."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    device: str = field(default="cpu", metadata={"help": "Device to run on, e.g. cpu or cuda."})
    answer_trigger: str = field(default=DEFAULT_TRIGGER, metadata={"help": "Text that asks for the answer."})
    answer_pattern: str = field(default=DEFAULT_PATTERN, metadata={"help": "Regex of the final-answer statement."})
    n_bins: int = field(default=15, metadata={"help": "Bins of the ECE and the reliability diagram."})
    use_chat_template: bool = field(default=True, metadata={"help": "Render prompts with the chat template."})
    mcq_instruction: str = field(
        default=DEFAULT_MCQ_INSTRUCTION, metadata={"help": "Instruction closing each prompt (after the options)."}
    )
    num_samples: int = field(
        default=0,
        metadata={
            "help": "Completions sampled per question for the 'marginal' and 'consistency' estimators and maj@k "
            "(0: the single-pass estimators only, at the cost of the greedy pass)."
        },
    )
    sample_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of those completions."})


def check_model_path(path: str, gguf_file: str | None = None) -> None:
    """Raise, naming the path, where ``path`` is meant as a local folder (absolute, ``./`` or ``../``, or an existing
    directory) but holds no model: missing, or without ``config.json`` (or the ``gguf_file``). transformers would
    read a missing folder as a malformed hub name, and an empty one as a tokenizer it cannot convert."""
    local = os.path.isabs(path) or path.startswith(("./", "../")) or os.path.isdir(path)
    if not local:
        return
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No such model folder: {path}")
    needed = gguf_file or "config.json"
    if not os.path.exists(os.path.join(path, needed)):
        raise FileNotFoundError(
            f"{path} holds no model: no {needed} there (a model folder as save_pretrained writes it)."
        )


def load_model(path: str, gguf_file: str | None = None, dtype: str = "float32", device: str = "cpu"):
    """A causal LM and its tokenizer (pad token set) from a folder, a hub name or a GGUF file, for the commands."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise ValueError(f"Unknown --dtype {dtype!r}; use float32, bfloat16 or float16.")
    check_model_path(path, gguf_file)
    load_kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **load_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **load_kwargs).to(device)
    return model.eval(), tokenizer


def run_evaluation(args: EvalArguments, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Load (unless given), evaluate, write the report and print the table; returns the written paths and metrics."""
    if args.num_samples < 0:
        raise ValueError(f"--num_samples must be >= 0, got {args.num_samples}.")
    if args.num_samples and not args.sample_temperature > 0:
        raise ValueError(f"--sample_temperature must be > 0 to sample, got {args.sample_temperature}.")
    questions = load_mcq(args.dataset_name, args.dataset_split, args.max_samples)  # bad data fails before loading
    if model is None or tokenizer is None:
        model, tokenizer = load_model(args.model_name_or_path, args.gguf_file, args.dtype, args.device)
    result = evaluate_mcq(
        model,
        tokenizer,
        questions,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        answer_trigger=args.answer_trigger,
        answer_pattern=args.answer_pattern,
        n_bins=args.n_bins,
        use_chat_template=args.use_chat_template,
        instruction=args.mcq_instruction,
        num_samples=args.num_samples,
        sample_temperature=args.sample_temperature,
    )
    paths = write_report(
        result, args.output_dir, title=os.path.basename(os.path.normpath(args.model_name_or_path)), extra=asdict(args)
    )
    print(format_table(result.metrics, f"Confidence faithfulness of {args.model_name_or_path} on {args.dataset_name}"))
    diagrams = sum(key.startswith("reliability_") for key in paths)
    also = f" (and {diagrams} reliability_<estimator>.png)" if diagrams else ""
    print(f"Wrote {paths['calibration']} and {paths['reliability']}{also}")
    return {"paths": paths, "metrics": result.metrics}


def _command(name: str, arguments: type, run: Callable[[Any], Any], argv: list[str] | None) -> int:
    """Parse ``argv`` with TRL's parser, run, and turn bad input into one line on stderr and exit status 2."""
    from trl import TrlParser

    (args,) = TrlParser(arguments).parse_args_and_config(args=argv if argv is not None else sys.argv[1:])
    try:
        run(args)
    except (ValueError, OSError, KeyError, SamplingOutOfMemory) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hytuning-eval``: 0 on success; on bad input one line on stderr and exit status 2."""
    return _command("hytuning-eval", EvalArguments, run_evaluation, argv)


@dataclass
class PRGArguments:
    """Arguments of ``hytuning-prg``."""

    model_name_or_path: str = field(metadata={"help": "Model folder or hub name."})
    traces_file: str = field(metadata={"help": "MedQA-style jsonl with a 'reasoning' field, or prompt/completion."})
    output_dir: str = field(default="outputs/prg", metadata={"help": "Where the report goes."})
    max_samples: int | None = field(default=None, metadata={"help": "Analyse only the first this many traces."})
    answer_options: str | None = field(
        default=None, metadata={"help": "Option letters, e.g. A,B,C,D (rows without an 'options' field)."}
    )
    aggregation: str = field(default="monotone", metadata={"help": "PRG aggregation: " + ", ".join(PRG_AGGREGATIONS)})
    answer_trigger: str = field(default=DEFAULT_ANSWER_TRIGGER, metadata={"help": "Text that asks for the answer."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of the AUROC intervals."})
    seed: int = field(default=0, metadata={"help": "Seed of the corruptions and the bootstrap."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside the model folder, if any."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    device: str = field(default="cpu", metadata={"help": "Device to run on, e.g. cpu or cuda."})
    use_chat_template: bool = field(default=True, metadata={"help": "Render prompts with the chat template."})
    mcq_instruction: str = field(
        default=DEFAULT_MCQ_INSTRUCTION,
        metadata={"help": "Instruction closing each prompt of MedQA-style traces (after the options)."},
    )


def run_prg(args: PRGArguments) -> PRGAnalysis:
    """Load, analyse, write the report and print the tables."""
    letters = split_options(args.answer_options)
    rows = read_trace_rows(args.traces_file, answer_options=letters, max_samples=args.max_samples)  # before loading
    model, tokenizer = load_model(args.model_name_or_path, args.gguf_file, args.dtype, args.device)
    traces = load_traces(
        rows,
        tokenizer,
        answer_options=letters,
        use_chat_template=args.use_chat_template,
        max_samples=args.max_samples,
        instruction=args.mcq_instruction,
    )
    analysis = analyse_prg(
        model,
        tokenizer,
        traces,
        answer_trigger=args.answer_trigger,
        aggregation=args.aggregation,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
    )
    paths = write_analysis(analysis, args.output_dir, os.path.basename(os.path.normpath(args.model_name_or_path)))
    s = analysis.summary
    print(f"PRG of {args.model_name_or_path} on {s['n_traces']} traces of {args.traces_file} ({s['aggregation']}):")
    print(
        f"  gold answer: p_0 {s['mean_p0_gold']:.4f} -> p_K {s['mean_pK_gold']:.4f}, "
        f"mean PRG {s['mean_prg_gold']:.4f}, mean gain G {s['mean_gain_gold']:.4f}; "
        f"top answer at K is gold in {s['top_at_K_is_gold']:.0%}"
    )
    print("Validity: does PRG rank real traces above corrupted ones?")
    print(format_validity(analysis))
    print(f"Wrote {paths['trajectories']}, {paths['validity']} and {paths['curve']}")
    return analysis


def prg_main(argv: list[str] | None = None) -> int:
    """Entry point of ``hytuning-prg``: 0 on success; on bad input one line on stderr and exit status 2."""
    return _command("hytuning-prg", PRGArguments, run_prg, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
