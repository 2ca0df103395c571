"""One prepared GPU check: the GPU path of hytuning-trl measured in a single call of at most 8 minutes.

    python benchmarks/gpu_check.py --output gpu_check.json              # on a CUDA machine (one H200: ~4-6 min)
    python benchmarks/gpu_check.py --dry_run --output /tmp/dry.json     # CPU, tiny sizes: every part executed

No weights are downloaded: the models are randomly initialised from the configs in ``benchmarks/configs/`` (shapes
are what matter for speed and memory), with a word-level tokenizer over the whole 151,936-token vocabulary built in
memory. Parts, each run on its own (a failing part is reported with its error, and the others still run):

1. ``equivalence``: packed against naive PRG trajectories and token statistics (one scoring pass vs K+1 forwards) in
   bf16 and fp16, with sdpa and, where ``flash_attn`` is installed, flash-attention-2; the largest difference against
   the tolerance the engine uses for its own packed-mask probe (:func:`hytuning_trl.scoring.probe_tolerance`).
2. ``scoring``: the scoring pass at V = 151,936, T = 1,024 (completion), B = 8, K = 8 on the 0.5B-shaped model in
   bf16: peak CUDA memory above the loaded model against the full fp32 logits of the completions (B x T x V x 4
   bytes), and the time of the packed pass, the naive K+1 passes and one plain forward (medians of 5 after a
   warm-up).
3. ``training``: 5 HyTuning steps against 5 plain GRPO steps on the 0.5B-shaped model in bf16 (own-reasoning anchor
   on, ``prg_every`` 2): the median step time (first step dropped) and its ratio, and the peak CUDA memory; the same
   with LoRA, and with gradient checkpointing.

A table is printed and everything goes to one JSON file (``--output``). Exit status: 0 when every part ran, 1 when a
part failed (the JSON says which and why), 2 when there is no CUDA device (without ``--dry_run``) or the installed
packages do not satisfy the package's requirements.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import traceback
from typing import Any

from _run_config import MEASUREMENT_ARGS  # benchmarks/_run_config.py (the script's own folder)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = os.path.join(HERE, "configs")
GPU_TRANSFORMERS = "5.17"  # the version on the lent GPU machine
WORDS = ["<pad>", "<eos>", "The", "answer", "is", "A", "B", "C", "D", ".", "Question", "Options", ":", ")", "so"]


# ----------------------------------------------------------------------------------------------------- environment
def versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "pyarrow", "hytuning-trl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def requirement_problems() -> list[str]:
    """The package's own requirements (pyproject.toml) that the installed packages do not satisfy, and a floor on
    transformers above the GPU machine's version."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        requirements = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
    problems = []
    for req in requirements:
        if req.name == "transformers":
            floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
            if floors and max(floors) > Version(GPU_TRANSFORMERS):
                problems.append(
                    f"the package asks for transformers {req.specifier}, above the GPU machine's {GPU_TRANSFORMERS}: "
                    "look at the floor in pyproject.toml before running here"
                )
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed (needs {req.specifier or 'any'})")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is installed; the package needs {req}")
    return problems


# ------------------------------------------------------------------------------------------------ models and data
def tokenizer(vocab_size: int):
    """A word-level tokenizer over ``vocab_size`` tokens: a few real words (the answer statement, option letters),
    the rest ``w<i>``. Built in memory; nothing is downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    vocab.update({f"w{i}": i for i in range(len(WORDS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w20"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.padding_side = "left"
    return fast


def model_config(name: str, dry_run: bool):
    from transformers import Qwen2Config

    with open(os.path.join(CONFIGS, f"{name}.json")) as f:
        fields = {k: v for k, v in json.load(f).items() if k not in ("architectures", "model_type")}
    if dry_run:  # the same architecture at test size
        fields.update(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        )
    fields.update(pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return Qwen2Config(**fields)


def random_model(config, dtype, device, attn: str = "sdpa"):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config._attn_implementation = attn
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 0
    return model.to(device).eval()


def rollouts(vocab: int, batch: int, steps: int, completion_len: int, prompt_len: int, seed: int = 0):
    """Random prompts and completions with ``steps`` step spans covering ``completion_len - 6`` tokens, a trigger and
    one answer token each."""
    rng = random.Random(seed)
    step_len = max((completion_len - 6) // steps, 1)
    prompts, completions, spans = [], [], []
    for _ in range(batch):
        prompts.append([rng.randrange(len(WORDS), vocab) for _ in range(prompt_len)])
        completions.append([rng.randrange(len(WORDS), vocab) for _ in range(step_len * steps + 6)])
        spans.append([(k * step_len, (k + 1) * step_len) for k in range(steps)])
    trigger = [2, 3, 4]  # "The answer is"
    answers = [[rng.choice([5, 6, 7, 8])] for _ in range(batch)]
    return prompts, completions, spans, trigger, answers


def score(model, data, method: str, compute_stats: bool = True):
    from hytuning_trl import score_rollouts

    prompts, completions, spans, trigger, answers = data
    return score_rollouts(
        model,
        prompts,
        completions,
        step_spans=spans,
        trigger_ids=trigger,
        answer_ids=answers,
        method=method,
        compute_stats=compute_stats,
    )


def plain_forward(model, data):
    import torch

    prompts, completions = data[0], data[1]
    ids = torch.tensor([p + c for p, c in zip(prompts, completions)], device=model.device)
    with torch.no_grad():
        return model(input_ids=ids).logits.float()  # the full (B, T, V) logits, as TRL's loss would hold them


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------------- parts
def part_equivalence(args, device) -> dict:
    import importlib.util

    import torch

    from hytuning_trl.scoring import probe_tolerance

    config = model_config(args.model, args.dry_run)
    sizes = (2, 2, 24, 8) if args.dry_run else (4, 4, 256, 32)
    data = rollouts(config.vocab_size, sizes[0], sizes[1], sizes[2], sizes[3], seed=1)
    attns = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") and not args.dry_run else [])
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        for attn in attns:
            model = random_model(config, dtype, device, attn)
            row = {"dtype": str(dtype).replace("torch.", ""), "attention": attn, "tolerance": probe_tolerance(dtype)}
            try:
                packed, naive = score(model, data, "packed"), score(model, data, "naive")
                row["max_diff_trajectory"] = max(
                    abs(a - b) for x, y in zip(packed, naive) for a, b in zip(x.answer_logprobs, y.answer_logprobs)
                )
                row["max_diff_self_certainty"] = max(
                    abs(x.self_certainty - y.self_certainty) for x, y in zip(packed, naive)
                )
                row["max_diff_entropy"] = max(abs(x.entropy - y.entropy) for x, y in zip(packed, naive))
                worst = max(row["max_diff_trajectory"], row["max_diff_self_certainty"], row["max_diff_entropy"])
                row["within_tolerance"] = bool(worst <= row["tolerance"])
            except Exception as exc:  # noqa: BLE001 - a refusal of the 4D mask (flash-attention) is a finding
                row["packed_refused"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
            del model
            gc.collect()
    return {"rows": rows, "batch": sizes[0], "steps": sizes[1], "completion_len": sizes[2]}


def _cuda_peak_above(fn) -> float | None:
    """Peak CUDA memory (MiB) that ``fn`` allocates above what was allocated before it; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def part_scoring(args, device) -> dict:
    import torch

    config = model_config(args.model, args.dry_run)
    batch, steps, length = (2, 2, 64) if args.dry_run else (8, 8, 1024)
    data = rollouts(config.vocab_size, batch, steps, length, 64 if not args.dry_run else 8)
    model = random_model(config, torch.bfloat16, device)
    runs = {
        "packed": lambda: score(model, data, "packed"),
        "naive": lambda: score(model, data, "naive"),
        "plain_forward": lambda: plain_forward(model, data),
    }
    memory = {name: _cuda_peak_above(fn) for name, fn in runs.items()}  # also the warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    logits_mib = batch * len(data[1][0]) * config.vocab_size * 4 / 2**20
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "vocab": config.vocab_size,
        "batch": batch,
        "steps": steps,
        "completion_len": len(data[1][0]),
        "full_fp32_logits_mib": logits_mib,
        "peak_mib": memory,
        "median_s": median,
        "packed_over_naive": median["packed"] / median["naive"],
        "packed_over_plain": median["packed"] / median["plain_forward"],
        "packed_memory_over_logits": None if memory["packed"] is None else memory["packed"] / logits_mib,
    }


def _train(setting: str, args, device, tok, config) -> dict:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from hytuning_trl import HyTuningConfig, HyTuningTrainer, SelfCertaintyReward

    rng = random.Random(0)
    vocab = config.vocab_size

    def words(n):
        return " ".join(f"w{rng.randrange(len(WORDS), vocab)}" for _ in range(n))

    options = {"A": "w30", "B": "w31", "C": "w32", "D": "w33"}
    prompt_len = 16 if args.dry_run else 128
    train = Dataset.from_list([{"prompt": f"Question : {words(prompt_len)}", "options": options} for _ in range(64)])
    traces = Dataset.from_list(
        [
            {
                "prompt": f"Question : {words(prompt_len)}",
                "completion": f"{words(8)} . so {words(8)} . The answer is {rng.choice('ABCD')} .",
                "options": options,
            }
            for _ in range(32)
        ]
    )
    hy, lora, gc_on = not setting.startswith("grpo"), "lora" in setting, "checkpointing" in setting
    common = dict(
        output_dir=os.path.join(args.work_dir, setting),
        per_device_train_batch_size=8 if not args.dry_run else 4,
        num_generations=4,
        max_completion_length=args.max_completion_length if not args.dry_run else 16,
        max_steps=args.train_steps,
        **MEASUREMENT_ARGS,
        gradient_checkpointing=gc_on,
        bf16=not args.dry_run,
        use_cpu=args.dry_run,
    )
    model = random_model(config, torch.bfloat16 if not args.dry_run else torch.float32, device).train()
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    if hy:
        trainer = HyTuningTrainer(
            model=model,
            reward_funcs=[SelfCertaintyReward()],
            args=HyTuningConfig(**common, prg_every=2, anchor_holdout=8),
            train_dataset=train,
            distill_dataset=traces,
            processing_class=tok,
            peft_config=peft_config,
        )
    else:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[answer_stated],
            args=GRPOConfig(**common),
            train_dataset=train,
            processing_class=tok,
            peft_config=peft_config,
        )
    peak = _cuda_peak_above(trainer.train)
    times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    anchor = [h["hytuning/anchor_gain"] for h in trainer.state.log_history if "hytuning/anchor_gain" in h]
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"step_times_s": times, "median_step_s": statistics.median(times[1:] or times), "peak_mib": peak,
            "anchor_rounds": len(anchor)}  # fmt: skip


def answer_stated(completions, **kwargs) -> list[float]:
    """Plain GRPO's reward: an ordinary TRL reward (1 when the completion states an answer)."""
    return [float("answer is" in (c if isinstance(c, str) else c[-1]["content"])) for c in completions]


def part_training(args, device) -> dict:
    config = model_config(args.model, args.dry_run)
    tok = tokenizer(config.vocab_size)
    out: dict[str, Any] = {}
    for variant in ("", "_lora", "_checkpointing"):
        grpo, hy = (
            _train("grpo" + variant, args, device, tok, config),
            _train("hytuning" + variant, args, device, tok, config),
        )
        out[variant.strip("_") or "full"] = {
            "grpo": grpo,
            "hytuning": hy,
            "step_time_ratio": hy["median_step_s"] / grpo["median_step_s"],
            "peak_memory_ratio": None if grpo["peak_mib"] is None else hy["peak_mib"] / max(grpo["peak_mib"], 1e-9),
        }
    return out


PARTS = {"equivalence": part_equivalence, "scoring": part_scoring, "training": part_training}


# ----------------------------------------------------------------------------------------------------- report
def table(result: dict) -> str:
    lines = [f"hytuning-trl GPU check on {result['device']} ({'dry run' if result['dry_run'] else result['model']})"]
    for name in result["parts"]:
        part = result["parts"][name]
        lines.append(f"\n[{name}] {part.get('status', 'not run')} in {part.get('seconds', 0):.0f} s")
        if part.get("status") != "ok":
            lines.append(f"  {part.get('error', '')}")
            continue
        r = part["result"]
        if name == "equivalence":
            for row in r["rows"]:
                if "packed_refused" in row:
                    lines.append(f"  {row['dtype']:<9}{row['attention']:<19} packed refused: {row['packed_refused']}")
                else:
                    lines.append(
                        f"  {row['dtype']:<9}{row['attention']:<19} max |packed - naive|: trajectory "
                        f"{row['max_diff_trajectory']:.2e}, self-certainty {row['max_diff_self_certainty']:.2e}, "
                        f"entropy {row['max_diff_entropy']:.2e} (tolerance {row['tolerance']:g}: "
                        f"{'within' if row['within_tolerance'] else 'OUTSIDE'})"
                    )
        elif name == "scoring":
            peak = r["peak_mib"]
            lines.append(
                f"  V={r['vocab']}, B={r['batch']}, K={r['steps']}, T={r['completion_len']}: full fp32 logits "
                f"{r['full_fp32_logits_mib']:.0f} MiB"
            )
            for method in ("packed", "naive", "plain_forward"):
                mem = "n/a" if peak[method] is None else f"{peak[method]:.0f} MiB"
                lines.append(f"  {method:<14} median {r['median_s'][method]:.4f} s, peak above model {mem}")
            lines.append(f"  packed / naive {r['packed_over_naive']:.3f}, packed / plain {r['packed_over_plain']:.3f}")
        else:
            for variant, v in r.items():
                mem = "n/a" if v["peak_memory_ratio"] is None else f"{v['peak_memory_ratio']:.2f}"
                lines.append(
                    f"  {variant:<14} step GRPO {v['grpo']['median_step_s']:.3f} s, HyTuning "
                    f"{v['hytuning']['median_step_s']:.3f} s: x{v['step_time_ratio']:.2f}; peak memory x{mem}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="gpu_check.json", help="Where the JSON goes.")
    p.add_argument("--dry_run", action="store_true", help="CPU, tiny sizes: execute every part, measure nothing real.")
    p.add_argument("--model", default="qwen2.5-0.5b", help="A config in benchmarks/configs/ (no weights).")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--repeats", type=int, default=5, help="Timed repetitions of the scoring pass (after a warm-up).")
    p.add_argument("--train_steps", type=int, default=5)
    p.add_argument("--max_completion_length", type=int, default=128)
    p.add_argument("--work_dir", default=None, help="Trainer output folders (default: a temporary folder).")
    args = p.parse_args(argv)

    import tempfile

    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_check: error: no CUDA device; this check measures the GPU path (use --dry_run on a CPU).")
        return 2
    problems = requirement_problems()
    if problems:
        print("gpu_check: error: the installed packages do not fit the package:\n  " + "\n  ".join(problems))
        return 2
    if args.dry_run:
        args.repeats, args.train_steps = 2, 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="gpu_check_")
    result: dict[str, Any] = {
        "dry_run": args.dry_run,
        "model": args.model,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else "cpu",
        "versions": versions(),
        "parts": {},
    }
    start = time.perf_counter()
    for name in args.parts:
        t0 = time.perf_counter()
        print(f"[{time.perf_counter() - start:6.0f} s] {name} ...", flush=True)
        try:
            result["parts"][name] = {"status": "ok", "result": PARTS[name](args, device)}
        except Exception as exc:  # noqa: BLE001 - report the part that failed and go on with the rest
            result["parts"][name] = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-4000:],
            }
            print(f"  {name} failed: {type(exc).__name__}: {exc}", flush=True)
        result["parts"][name]["seconds"] = time.perf_counter() - t0
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    result["seconds"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(table(result))
    print(f"\nWrote {args.output} ({result['seconds']:.0f} s)")
    return 0 if all(part["status"] == "ok" for part in result["parts"].values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
