"""The loss is (1 - rd_weight) * GRPO + rd_weight * RD, shown by its gradients on fixed rollouts.

Every trainer gets the same rollouts from TRL's `rollout_func`, the same plain TRL reward, learning rate 0 (so every
step sees the same parameters) and no gradient clipping; gradients are read in `on_pre_optimizer_step`. References:
plain `trl.GRPOTrainer` for the GRPO part, and a hand-written NLL (the model's own loss on the drawn traces, labels
masked to the completion) for the RD part.
"""

import copy

import pytest
import torch
from conftest import BASE_ARGS, grpo_only
from transformers import TrainerCallback

RTOL = 1e-5


class GradSpy(TrainerCallback):
    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(
            {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None and p.requires_grad}
        )


def length_reward(completions, **kwargs):
    """A plain TRL reward: the completion's length in characters."""
    return [float(len(c)) for c in completions]


def make_rollout_func(tokenizer, pool):
    completion_ids = [
        tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in pool
    ]

    def rollout_func(prompts, trainer):
        prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
        completions = [completion_ids[i % len(completion_ids)] for i in range(len(prompts))]
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completions,
            "logprobs": [[0.0] * len(c) for c in completions],
        }

    return rollout_func


POOL = [
    "we look at the heart.\n\nso the heart is likely.\nThe answer is A.",
    "the lung.\nThe answer is B.",
    "first the fever.\n\nthen the cough.\n\nso the lung is likely.\nThe answer is C.",
    "The answer is D.",
]
COMMON = dict(learning_rate=0.0, max_grad_norm=0.0, beta=0.0, max_steps=1, max_completion_length=64)


def _grads(trainer, steps):
    spy = GradSpy()
    trainer.add_callback(spy)
    trainer.train()
    assert len(spy.grads) == steps
    return spy.grads


def record_draws(trainer) -> list:
    """Wrap the trainer's RD iterator so that every batch of trace indices it yields is recorded; return the list."""
    drawn: list = []
    if trainer.distill_iterator is None:
        return drawn
    original = trainer.distill_iterator.__next__

    class Recording:
        def __next__(self):
            batch = original()
            drawn.append(batch)
            return batch

        def __getattr__(self, name):
            return getattr(original.__self__, name)

    trainer.distill_iterator = Recording()
    return drawn


def _hy_grads(build_trainer, tokenizer, steps, **overrides):
    trainer = build_trainer(
        reward_funcs=[length_reward], rollout_func=make_rollout_func(tokenizer, POOL), **{**COMMON, **overrides}
    )
    drawn = record_draws(trainer)
    return _grads(trainer, steps), drawn, trainer


def _plain_grads(tmp_path, model, tokenizer, train_dataset, steps, **overrides):
    from trl import GRPOConfig, GRPOTrainer

    kwargs = grpo_only({**BASE_ARGS, **COMMON, **overrides})
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[length_reward],
        args=GRPOConfig(output_dir=str(tmp_path / "plain"), **kwargs),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        rollout_func=make_rollout_func(tokenizer, POOL),
    )
    return _grads(trainer, steps)


def hand_nll_backward(model, examples, pad: int, ga: int) -> None:
    """Backward of the model's own loss on the traces (labels masked to the completion), divided by ``ga``."""
    seqs = [e.prompt_ids + e.completion_ids for e in examples]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    labels = ids.clone()
    for row, e in enumerate(examples):
        labels[row, : len(e.prompt_ids)] = -100
    labels[mask == 0] = -100
    (model(input_ids=ids, attention_mask=mask, labels=labels).loss / ga).backward()


def _rd_reference(model, trainer, drawn, steps, ga):
    """The RD gradient by hand: the model's own loss (labels masked to the completion) on each drawn batch, / GA."""
    model = copy.deepcopy(model).train()
    pad = trainer.processing_class.pad_token_id
    out = []
    for step in range(steps):
        model.zero_grad()
        for indices in drawn[step * ga : (step + 1) * ga]:
            hand_nll_backward(model, [trainer.distill_examples[i] for i in indices], pad, ga)
        out.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    return out


def _assert_close(got, expected, what, atol=1e-7):
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=RTOL, atol=atol, msg=f"{what}: {name}")


# The interpolation is one backward of 0.7 * GRPO + 0.3 * RD against a weighted sum of two separate backwards: float32
# rounding differs by up to ~2e-7 on gradients of magnitude ~0.2 (measured); a wrong (1 - w) or GA factor moves them
# by 1e-2 or more.
MIX_ATOL = 1e-6


SETTINGS = [
    pytest.param({}, 1, id="plain"),
    pytest.param({"gradient_accumulation_steps": 2}, 1, id="grad_accum_2"),
    pytest.param({"num_iterations": 2, "max_steps": 2}, 2, id="num_iterations_2"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,steps", SETTINGS)
def test_loss_by_gradients(tmp_path, build_trainer, trained_model, trained_tokenizer, train_dataset, overrides, steps):
    """rl_only = plain GRPO; rd_only = the RD NLL; constant 0.3 = 0.7 * GRPO + 0.3 * RD, at every optimizer step.
    Bugs it catches: the RD term scaled twice (or not) for accumulation, (1 - w) applied to part of TRL's loss, the
    RD batch drawn on the wrong micro-steps, the weight of another step."""
    ga = overrides.get("gradient_accumulation_steps", 1)
    initial = copy.deepcopy(trained_model)
    plain = _plain_grads(tmp_path, copy.deepcopy(initial), trained_tokenizer, train_dataset, steps, **overrides)
    rl, _, _ = _hy_grads(
        build_trainer, trained_tokenizer, steps, mixing="rl_only", model=copy.deepcopy(initial), **overrides
    )
    rd, drawn_rd, rd_trainer = _hy_grads(
        build_trainer, trained_tokenizer, steps, mixing="rd_only", model=copy.deepcopy(initial), **overrides
    )
    mix, drawn_mix, _ = _hy_grads(
        build_trainer,
        trained_tokenizer,
        steps,
        mixing="constant",
        rd_weight=0.3,
        model=copy.deepcopy(initial),
        **overrides,
    )
    assert drawn_rd == drawn_mix and len(drawn_rd) == steps * ga
    reference_rd = _rd_reference(initial, rd_trainer, drawn_rd, steps, ga)
    for s in range(steps):
        _assert_close(rl[s], plain[s], f"rl_only vs GRPOTrainer, step {s}")
        _assert_close(rd[s], reference_rd[s], f"rd_only vs hand NLL, step {s}")
        expected = {n: 0.7 * plain[s][n] + 0.3 * reference_rd[s][n] for n in plain[s]}
        _assert_close(mix[s], expected, f"constant 0.3 vs interpolation, step {s}", atol=MIX_ATOL)
        assert max(g.abs().max().item() for g in plain[s].values()) > 1e-6  # the GRPO part is not trivially zero


@pytest.mark.slow
def test_rd_only_gradients_do_not_depend_on_beta(build_trainer, trained_model, trained_tokenizer):
    """(1 - w) scales everything GRPOTrainer.compute_loss returns, its KL term included: at w = 1 beta is inert."""
    initial = copy.deepcopy(trained_model)
    without, _, _ = _hy_grads(build_trainer, trained_tokenizer, 1, mixing="rd_only", model=copy.deepcopy(initial))
    with_kl, _, _ = _hy_grads(
        build_trainer, trained_tokenizer, 1, mixing="rd_only", model=copy.deepcopy(initial), beta=0.5
    )
    _assert_close(with_kl[0], without[0], "rd_only, beta 0.5 vs 0")


@pytest.mark.multiprocess
def test_loss_by_gradients_two_processes(trained_dir, tmp_path):
    """The same three identities under DDP on 2 processes with gradient accumulation 2, plus answer-blind RL against
    plain GRPO masked by hand (dapo: the token count gathered over both processes) and rd_only + calibration against
    hand gradients: gradients after the all-reduce; the hand references are each process's averaged over them."""
    import os
    import socket
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("RANK", None)
    runner = os.path.join(root, "tests", "distributed", "grad_run.py")
    cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", str(port), runner]
    proc = subprocess.run(
        [*cmd, "--model", trained_dir, "--out", str(tmp_path)], capture_output=True, text=True, timeout=400, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    saved = torch.load(tmp_path / "grads.pt")
    assert saved["world_size"] == 2 and all(len(d) == 2 for d in saved["draws"])
    assert not {i for b in saved["draws"][0] for i in b} & {i for b in saved["draws"][1] for i in b}  # disjoint
    g = saved["grads"]
    _assert_close(g["rl_only"], g["plain"], "2 processes: rl_only vs GRPOTrainer")
    _assert_close(g["rd_only"], saved["ref"], "2 processes: rd_only vs hand NLL")
    expected = {n: 0.7 * g["plain"][n] + 0.3 * saved["ref"][n] for n in g["plain"]}
    _assert_close(g["constant"], expected, "2 processes: constant 0.3 vs interpolation", atol=MIX_ATOL)
    _assert_close(g["blind"], g["blind_ref"], "2 processes: answer-blind vs hand-masked GRPO (dapo)")
    assert any(not torch.allclose(g["blind"][n], g["plain"][n]) for n in g["plain"])
    _assert_close(g["cal"], saved["cal_ref"], "2 processes: rd_only + calibration vs hand", atol=MIX_ATOL)
