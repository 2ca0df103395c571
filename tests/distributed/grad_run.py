"""Two-process gradient check, launched by tests/test_loss_gradients.py with torchrun (gloo, CPU).

On fixed rollouts with gradient accumulation 2, four trainers run one optimizer step each: plain trl.GRPOTrainer,
and HyTuningTrainer with rl_only, rd_only and constant 0.3. Gradients are read after DDP's all-reduce. The RD
reference is written here by hand: each process's NLL gradient on the traces it drew (the model's own loss, labels
masked to the completion, / GA), averaged over the processes as DDP averages. Rank 0 saves everything.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from conftest import BASE_ARGS  # noqa: E402
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
    results, draws = {}, []
    for mode in ("plain", "rl_only", "rd_only", "constant"):
        model = AutoModelForCausalLM.from_pretrained(a.model)
        spy = GradSpy()
        out = os.path.join(a.out, mode)
        if mode == "plain":
            from trl import GRPOConfig, GRPOTrainer

            grpo_kwargs = {k: v for k, v in kwargs.items() if k != "answer_options"}
            trainer = GRPOTrainer(
                model=model,
                reward_funcs=[length_reward],
                args=GRPOConfig(output_dir=out, **grpo_kwargs),
                train_dataset=train,
                processing_class=tokenizer,
                rollout_func=make_rollout_func(tokenizer, POOL),
                callbacks=[spy],
            )
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
    all_draws = [None] * dist.get_world_size()
    dist.all_gather_object(all_draws, draws)
    if dist.get_rank() == 0:
        torch.save(
            {"grads": results, "ref": ref, "draws": all_draws, "world_size": dist.get_world_size()},
            os.path.join(a.out, "grads.pt"),
        )
    dist.barrier()


if __name__ == "__main__":
    main()
