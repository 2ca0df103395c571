"""A HyTuning run for the multi-process tests: launched with torchrun (DDP on CPU) or accelerate (ZeRO-3 on CPU).

Every process writes what it saw to ``<out>/rank<r>.json``: the world size, its logs, the RD trace indices it read,
the step counts of its completions, and (on resume) the mixing state restored at the start of training.

``--then "resume=DIR,max_steps=2" "anchor_signal=trace" ...`` runs, after the first run and in the same processes, one
more run per spec, each a fresh trainer on the model loaded again, with the first run's arguments changed as the spec
says (no fault injected), into ``<out>/then<i>/rank<r>.json``; a run that the trainer refuses with a ValueError (at
construction or at the start of ``train``) writes the message as ``error``. ``--example ARGS...`` (last on the command
line) then runs ``examples/train_medqa.py``'s own ``parse`` and ``main`` with ``ARGS`` in the same processes. One
launch checks several things.
"""

import argparse
import json
import math
import os
import random
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from hytuning_trl import (
    HyTuningConfig,
    HyTuningTrainer,
    InternalFeedbackReward,
    MajorityVoteReward,
    PRGReward,
    SelfCertaintyReward,
)
from hytuning_trl import answers as answers_module
from hytuning_trl._testing import scripted_examples

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")


class StepCount(InternalFeedbackReward):
    """Records the number of steps of every local completion (and rewards nothing)."""

    __name__ = "step_count"
    seen: list[int] = []

    def score(self, stats):
        StepCount.seen.append(stats.num_steps)
        return 0.0


class Spy(TrainerCallback):
    """Records the mixing state and RD iterator position at the start of training (after a checkpoint is loaded)."""

    restored: dict = {}
    trainer = None

    def on_train_begin(self, args, state, control, **kwargs):
        iterator = Spy.trainer.distill_iterator
        Spy.restored = {**Spy.trainer.mixing.state_dict(), **(iterator.state_dict() if iterator else {})}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max_steps", type=int, default=3)
    p.add_argument("--save_steps", type=int, default=0)
    p.add_argument("--resume", default=None)
    p.add_argument("--scripted", action="store_true", help="scripted rollouts: 1-step on rank 0, 4-step on rank 1")
    p.add_argument("--inject_nonfinite", action="store_true")
    p.add_argument("--peft", action="store_true")
    p.add_argument("--token_budget", type=int, default=16384)
    p.add_argument("--mixing", default="prg")
    p.add_argument("--no_gradient_checkpointing", action="store_true")
    p.add_argument("--anchor_rows", type=int, default=0, help="anchor: this many question rows (no traces)")
    p.add_argument("--anchor_signal", default="own")
    p.add_argument("--answer_blind", action="store_true", help="answer_blind_rl=True")
    p.add_argument("--calibration_weight", type=float, default=0.0)
    p.add_argument("--then", nargs="*", default=[], metavar="NAME=VALUE,...")
    p.add_argument(
        "--example",
        nargs=argparse.REMAINDER,
        help="last: examples/train_medqa.py's own parse and main with these arguments, in the same processes",
    )
    a = p.parse_args()
    run(a, a.out, inject_nonfinite=a.inject_nonfinite)
    for i, spec in enumerate(a.then):
        StepCount.seen.clear()
        Spy.restored = {}
        run(changed(a, spec), os.path.join(a.out, f"then{i}"), inject_nonfinite=False)
    if a.example is not None:  # last: the example ends the process group itself
        sys.path.insert(0, EXAMPLES)
        import train_medqa

        train_medqa.main(*train_medqa.parse(a.example))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def changed(a: argparse.Namespace, spec: str) -> argparse.Namespace:
    """``a`` with the ``name=value`` pairs of ``spec`` (comma-separated) set, each value read as its field's type."""
    out = argparse.Namespace(**vars(a))
    for pair in spec.split(","):
        name, value = pair.split("=", 1)
        old = getattr(a, name)
        if isinstance(old, bool):
            new = value == "true"
        elif value == "none":
            new = None
        else:
            new = type(old)(value) if old is not None else value
        setattr(out, name, new)
    return out


def run(a: argparse.Namespace, out: str, inject_nonfinite: bool) -> None:
    """One training run into ``out``; one the trainer refuses with a ValueError is recorded as ``error``."""
    os.makedirs(out, exist_ok=True)
    try:
        trainer, seen_traces = build(a, out, inject_nonfinite)
        trainer.train(resume_from_checkpoint=a.resume)
    except ValueError as exc:
        rank = int(os.environ.get("RANK", "0"))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "error": str(exc)}, f)
        return
    record(a, out, trainer, seen_traces)


def build(a: argparse.Namespace, out: str, inject_nonfinite: bool):
    """The trainer of one run, with the RD iterator recording the traces it reads."""
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    mcq = scripted_examples(32, seed=21)
    train = Dataset.from_list([{"prompt": e["prompt"], "options": e["options"]} for e in mcq])
    traces = scripted_examples(12, seed=22)
    distill = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in traces])
    anchor = None
    if a.anchor_rows:
        questions = scripted_examples(a.anchor_rows, seed=23)
        anchor = Dataset.from_list(
            [{"question": e["question"], "options": e["options"], "answer_idx": e["answer"]} for e in questions]
        )
    args = HyTuningConfig(
        output_dir=out,
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4 // int(os.environ.get("WORLD_SIZE", "1")),  # with 2 processes a group spans both
        num_generations=4,
        max_completion_length=64,
        max_steps=a.max_steps,
        logging_steps=1,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="steps" if a.save_steps else "no",
        save_steps=a.save_steps or 500,
        answer_options=["A", "B", "C", "D"],
        distill_per_device_batch_size=2,
        scoring_token_budget=a.token_budget,
        prg_tau=0.05,
        mixing=a.mixing,
        anchor_signal=a.anchor_signal,
        prg_every=1,
        answer_blind_rl=a.answer_blind,
        calibration_weight=a.calibration_weight,
        **({"gradient_checkpointing": False} if a.no_gradient_checkpointing else {}),
        seed=0,
        disable_tqdm=True,
    )
    rank = int(os.environ.get("RANK", "0"))
    rollout_func = None
    if a.scripted:
        rng = random.Random(rank)

        def rollout_func(prompts, trainer):
            n_steps = 1 if trainer.accelerator.process_index == 0 else 4
            prompt_ids = [tokenizer(pr)["input_ids"] for pr in prompts]
            completions = []
            for _ in prompts:
                steps = [
                    " ".join(rng.choice(["fever", "cough", "pain", "so", "likely"]) for _ in range(4)) + "."
                    for _ in range(n_steps)
                ]
                text = "\n\n".join(steps) + f"\nThe answer is {rng.choice('ABCD')}."
                completions.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
            return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": None}

    if inject_nonfinite:
        calls = {"rd": 0}
        real_prg_score = answers_module.prg_score

        def prg_score(lp, aggregation="monotone"):  # rank 0: one PRG per round is NaN
            if rank == 0 and not getattr(prg_score, "done", False):
                prg_score.done = True
                return float("nan")
            return real_prg_score(lp, aggregation)

        answers_module.prg_score = prg_score

        def nan_head(module, inputs, output):  # rank 1: the RD forward of its 2nd micro-step returns NaN logits
            if not torch.is_grad_enabled():  # generation (the anchor round's) runs the head too, without grad
                return output
            calls["rd"] += 1
            return output * float("nan") if rank == 1 and calls["rd"] == 2 else output

        model.get_output_embeddings().register_forward_hook(nan_head)

    peft_config = None
    if a.peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")

    trainer = HyTuningTrainer(
        model=model,
        reward_funcs=[SelfCertaintyReward(), PRGReward(), MajorityVoteReward(), StepCount()],
        args=args,
        train_dataset=train,
        distill_dataset=None if a.mixing == "rl_only" else distill,
        anchor_dataset=anchor,
        processing_class=tokenizer,
        callbacks=[Spy()],
        rollout_func=rollout_func,
        peft_config=peft_config,
    )
    Spy.trainer = trainer
    seen_traces = []
    iterator = trainer.distill_iterator
    original_next = type(iterator).__next__ if iterator is not None else None

    class Recording(type(iterator) if iterator is not None else object):
        def __next__(self):
            batch = original_next(self)
            seen_traces.append([self.epoch, batch])
            return batch

    if iterator is not None:
        iterator.__class__ = Recording
    return trainer, seen_traces


def record(a: argparse.Namespace, out: str, trainer, seen_traces: list) -> None:
    """What this process saw, into ``<out>/rank<r>.json``."""
    iterator = trainer.distill_iterator
    finite = all(torch.isfinite(p).all().item() for p in trainer.model.parameters())
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    result = {
        "world_size": trainer.accelerator.num_processes,
        "rank": trainer.accelerator.process_index,
        "global_step": trainer.state.global_step,
        "logs": [h for h in trainer.state.log_history if "loss" in h],
        "seen_traces": seen_traces,
        "batches_per_epoch": iterator.batches_per_epoch if iterator is not None else 0,
        "step_counts": StepCount.seen,
        "restored": Spy.restored if a.resume else None,
        "finite": finite,
        "trainable": len(trainable),
        "lora": any("lora" in n for n in trainable),
        "final_mixing": trainer.mixing_state.to_dict(),
        "anchor_questions": [[q.prompt_ids, q.gold, q.options] for q in trainer.anchor_questions],
        "anchor_traces": [
            [
                e.prompt_ids,
                [e.completion_ids[i:j] for i, j in parsed.spans],
                parsed.option_ids,
                parsed.letters.index(parsed.answer),
            ]
            for e, parsed in zip(trainer.anchor_examples, trainer._anchor_parsed)
        ],  # fmt: skip
    }
    with open(os.path.join(out, f"rank{result['rank']}.json"), "w") as f:
        json.dump(result, f, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x))
    if a.peft:
        trainer.save_model(os.path.join(out, "adapter"))  # every process: ZeRO-3 gathers the weights to save
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
