"""Two-process gradient check, launched by tests/test_loss_gradients.py with torchrun (gloo, CPU).

On fixed rollouts with gradient accumulation 2, trainers run one optimizer step each: plain trl.GRPOTrainer,
HyTuningTrainer with rl_only, rd_only and constant 0.3; plain GRPOTrainer with the answer statements masked by hand
through TRL's env_mask ("blind_ref") against HyTuningTrainer rl_only with answer_blind_rl ("blind": the default dapo
loss divides by the token count gathered over both processes); and rd_only with the calibration loss ("cal", target
"share": the groups of 4 span the two processes' micro-batches). Gradients are read after DDP's all-reduce. The RD and
calibration references are written here by hand: each process's gradients on what it drew and generated (/ GA),
averaged over the processes as DDP averages. Rank 0 saves everything.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from conftest import BASE_ARGS, grpo_only  # noqa: E402
from test_confidence_losses import hand_calibration_grads, masked_rollout_func  # noqa: E402
from test_loss_gradients import (  # noqa: E402
    COMMON,
    POOL,
    GradSpy,
    hand_nll_backward,
    length_reward,
    make_rollout_func,
    record_draws,
)

from hytuning_trl import HyTuningConfig, HyTuningTrainer  # noqa: E402
from hytuning_trl._testing import scripted_examples  # noqa: E402

GA = 2


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    train = Dataset.from_list([{"prompt": e["prompt"], "options": e["options"]} for e in scripted_examples(48, 11)])
    distill = Dataset.from_list(
        [{"prompt": e["prompt"], "completion": e["completion"]} for e in scripted_examples(16, 7)]
    )
    kwargs = {**BASE_ARGS, **COMMON, "per_device_train_batch_size": 2, "gradient_accumulation_steps": GA}
    results, draws, cal_draws, cal_calls = {}, [], [], []
    cal_weight = 3.0
    for mode in ("plain", "rl_only", "rd_only", "constant", "blind_ref", "blind", "cal"):
        model = AutoModelForCausalLM.from_pretrained(a.model)
        spy = GradSpy()
        out = os.path.join(a.out, mode)
        if mode in ("plain", "blind_ref"):
            from trl import GRPOConfig, GRPOTrainer

            grpo_kwargs = grpo_only(kwargs)
            trainer = GRPOTrainer(
                model=model,
                reward_funcs=[length_reward],
                args=GRPOConfig(output_dir=out, **grpo_kwargs),
                train_dataset=train,
                processing_class=tokenizer,
                rollout_func=masked_rollout_func(tokenizer)
                if mode == "blind_ref"
                else make_rollout_func(tokenizer, POOL),
                callbacks=[spy],
            )
        elif mode in ("blind", "cal"):
            inner = make_rollout_func(tokenizer, POOL)

            def recording(prompts, trainer, inner=inner):
                generated = inner(prompts, trainer)
                cal_calls.append((generated["prompt_ids"], generated["completion_ids"]))
                return generated

            extra = {"mixing": "rl_only", "answer_blind_rl": True} if mode == "blind" else {}
            if mode == "cal":
                extra = {"mixing": "rd_only", "calibration_weight": cal_weight, "calibration_target": "share"}
            trainer = HyTuningTrainer(
                model=model,
                reward_funcs=[length_reward],
                args=HyTuningConfig(output_dir=out, **extra, **kwargs),
                train_dataset=train,
                distill_dataset=distill if mode == "cal" else None,
                processing_class=tokenizer,
                rollout_func=recording if mode == "cal" else inner,
                callbacks=[spy],
            )
            if mode == "cal":
                cal_draws, cal_examples = record_draws(trainer), trainer.distill_examples
        else:
            trainer = HyTuningTrainer(
                model=model,
                reward_funcs=[length_reward],
                args=HyTuningConfig(output_dir=out, mixing=mode, rd_weight=0.3, **kwargs),
                train_dataset=train,
                distill_dataset=None if mode == "rl_only" else distill,
                processing_class=tokenizer,
                rollout_func=make_rollout_func(tokenizer, POOL),
                callbacks=[spy],
            )
            recorded = record_draws(trainer)
            if mode == "rd_only":
                draws, examples = recorded, trainer.distill_examples
        trainer.train()
        assert len(spy.grads) == 1
        results[mode] = spy.grads[0]

    # the RD reference: this process's hand NLL gradient, averaged over processes as DDP does
    model = AutoModelForCausalLM.from_pretrained(a.model).train()
    pad = tokenizer.pad_token_id
    assert len(draws) == GA
    for indices in draws:
        hand_nll_backward(model, [examples[i] for i in indices], pad, GA)
    ref = {}
    for n, param in model.named_parameters():
        g = param.grad.detach().clone()
        dist.all_reduce(g)
        ref[n] = g / dist.get_world_size()
    # the calibration run's reference: the hand NLL on what it drew plus the hand calibration loss on what it generated
    assert len(cal_draws) == GA and len(cal_calls) == 1
    model = AutoModelForCausalLM.from_pretrained(a.model).train()
    for indices in cal_draws:
        hand_nll_backward(model, [cal_examples[i] for i in indices], pad, GA)
    cal = hand_calibration_grads(model, tokenizer, cal_calls, "share", cal_weight, GA, micro_batch=2)
    cal_ref = {}
    for n, param in model.named_parameters():
        g = param.grad.detach().clone() + cal[n]
        dist.all_reduce(g)
        cal_ref[n] = g / dist.get_world_size()
    all_draws = [None] * dist.get_world_size()
    dist.all_gather_object(all_draws, draws)
    if dist.get_rank() == 0:
        torch.save(
            {
                "grads": results,
                "ref": ref,
                "cal_ref": cal_ref,
                "draws": all_draws,
                "world_size": dist.get_world_size(),
            },
            os.path.join(a.out, "grads.pt"),
        )
    dist.barrier()


if __name__ == "__main__":
    main()
