"""Answer-blind RL, the label-free calibration loss and the rollout-free RD step, shown by gradients.

Same harness as test_loss_gradients: fixed rollouts from TRL's `rollout_func`, learning rate 0, gradients read before
the optimizer step. References are built by hand: plain `trl.GRPOTrainer` with the statement tokens masked through
TRL's own `env_mask` (found here on the token ids), and the calibration loss from plain forwards.
"""

import copy
import math

import pytest
import torch
from conftest import BASE_ARGS, grpo_only
from test_loss_gradients import (
    COMMON,
    POOL,
    _assert_close,
    _grads,
    _rd_reference,
    length_reward,
    make_rollout_func,
    record_draws,
)

LETTERS = ["A", "B", "C", "D"]


def _statement(tokenizer, text):
    """Token span [start, end) of "The answer is X" in the completion, by hand: token counts of the text's prefixes."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(text[: text.index("The answer is")], add_special_tokens=False)["input_ids"])
    letter = text.index("The answer is") + len("The answer is ")
    end = len(tokenizer(text[: letter + 1], add_special_tokens=False)["input_ids"])
    assert ids[:end] == tokenizer(text[: letter + 1], add_special_tokens=False)["input_ids"]  # prefix-stable
    return start, end


def masked_rollout_func(tokenizer):
    inner = make_rollout_func(tokenizer, POOL)
    spans = [_statement(tokenizer, t) for t in POOL]

    def rollout_func(prompts, trainer):
        out = inner(prompts, trainer)
        out["env_mask"] = [
            [0 if spans[i % len(POOL)][0] <= t < spans[i % len(POOL)][1] else 1 for t in range(len(c))]
            for i, c in enumerate(out["completion_ids"])
        ]
        return out

    return rollout_func


@pytest.mark.slow
@pytest.mark.parametrize("loss_type,ga", [("grpo", 2), ("dapo", 2), ("bnpo", 1)])
def test_answer_blind_rl_by_gradients(tmp_path, build_trainer, trained_model, trained_tokenizer, train_dataset,
                                      loss_type, ga):  # fmt: skip
    """answer_blind_rl = plain GRPO with the statement tokens masked by hand, for loss types that normalise per
    sequence (grpo), per batch (bnpo) and by the generation batch's token count (dapo: num_items_in_batch recounted);
    the last hidden state that predicts a statement token gets no gradient. Bugs it catches: the mask off by one, the
    token count of dapo left at the unmasked one, the statement left in the loss."""
    from trl import GRPOConfig, GRPOTrainer

    overrides = {**COMMON, "loss_type": loss_type, "gradient_accumulation_steps": ga}
    initial = copy.deepcopy(trained_model)
    blind_trainer = build_trainer(
        reward_funcs=[length_reward],
        rollout_func=make_rollout_func(trained_tokenizer, POOL),
        mixing="rl_only",
        answer_blind_rl=True,
        model=copy.deepcopy(initial),
        **overrides,
    )
    statement_ids = {tuple(trained_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in POOL}
    grads_at_statement, grads_elsewhere = [], []
    backbone = blind_trainer.model.model

    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"]
        if not output.last_hidden_state.requires_grad:  # generation and the scoring pass
            return

        def keep(grad):
            for row in range(ids.size(0)):
                seq = ids[row].tolist()
                for text_ids in statement_ids:  # where this row's completion starts, and its statement
                    n = len(text_ids)
                    for at in range(len(seq) - n + 1):
                        if tuple(seq[at : at + n]) == text_ids:
                            text = trained_tokenizer.decode(list(text_ids))
                            s, e = _statement(trained_tokenizer, text)
                            for t in range(n):
                                norm = grad[row, at + t - 1].abs().max().item()
                                (grads_at_statement if s <= t < e else grads_elsewhere).append(norm)

        output.last_hidden_state.register_hook(keep)

    handle = backbone.register_forward_hook(hook, with_kwargs=True)
    blind = _grads(blind_trainer, 1)
    handle.remove()
    kwargs = grpo_only({**BASE_ARGS, **overrides})
    reference_trainer = GRPOTrainer(
        model=copy.deepcopy(initial),
        reward_funcs=[length_reward],
        args=GRPOConfig(output_dir=str(tmp_path / "ref"), **kwargs),
        train_dataset=train_dataset,
        processing_class=trained_tokenizer,
        rollout_func=masked_rollout_func(trained_tokenizer),
    )
    reference = _grads(reference_trainer, 1)
    _assert_close(blind[0], reference[0], f"answer-blind vs hand-masked GRPO ({loss_type})")
    unmasked = _grads(
        build_trainer(reward_funcs=[length_reward], rollout_func=make_rollout_func(trained_tokenizer, POOL),
                      mixing="rl_only", model=copy.deepcopy(initial), **overrides), 1)  # fmt: skip
    assert any(not torch.allclose(blind[0][n], unmasked[0][n]) for n in blind[0])  # the mask changed something
    assert grads_at_statement and max(grads_at_statement) == 0.0
    assert max(grads_elsewhere) > 0.0


def hand_calibration_grads(model, tokenizer, calls, target, weight, ga, micro_batch=4, levels=None):
    """w * sum over micro-batches of mean_i (p_i - t_i)^2 / GA, the rollouts of each call split into micro-batches of
    ``micro_batch`` (their order does not matter: every micro-batch has as many rows, all with a target), by plain
    forwards: p_i the option-renormalised probability of the stated letter where the completion states it. ``levels``
    (a dict), when given, receives the mean p_i and t_i."""
    model = copy.deepcopy(model).train()
    model.zero_grad()
    options = [tokenizer(" " + x, add_special_tokens=False)["input_ids"][0] for x in LETTERS]
    for prompt_ids, completions in calls:
        terms = []
        for p, c, text in zip(prompt_ids, completions, [POOL[i % len(POOL)] for i in range(len(completions))]):
            seq = torch.tensor([p + c])
            s, e = _statement(tokenizer, text)
            logits = model(seq).logits[0]
            letter_at = len(p) + e - 1  # the letter is the statement's last token
            prob = logits[letter_at - 1, options].float().softmax(-1)[LETTERS.index(text.strip(".")[-1])]
            if target == "share":
                t = 1 / 4  # every group of 4 states A, B, C and D once
            else:
                with torch.no_grad():
                    logp = logits.double().log_softmax(-1)
                    lps = [logp[len(p) - 1 + j, c[j]].item() for j in range(s)]
                t = math.exp(min(lps)) if lps else 1.0
            terms.append((prob - t) ** 2)
            if levels is not None:
                levels.setdefault("p", []).append(prob.item())
                levels.setdefault("t", []).append(t)
        for b in range(0, len(terms), micro_batch):
            (weight * torch.stack(terms[b : b + micro_batch]).mean() / ga).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("target", ["share", "weakest_token"])
def test_calibration_loss_by_gradients(build_trainer, trained_model, trained_tokenizer, target):
    """rd_only + calibration: the RD NLL by hand plus w * (p - t)^2 by hand (p with its gradient, t constant), with
    gradient accumulation 2; the GRPO term contributes nothing at rd_weight 1. Bugs it catches: a gradient into the
    target, the letter's logit read one position off, a tempered or unrenormalised p, the GA factor."""
    ga, weight = 2, 3.0
    initial = copy.deepcopy(trained_model)
    calls = []
    inner = make_rollout_func(trained_tokenizer, POOL)

    def recording(prompts, trainer):
        out = inner(prompts, trainer)
        calls.append((out["prompt_ids"], out["completion_ids"]))
        return out

    trainer = build_trainer(
        reward_funcs=[length_reward],
        rollout_func=recording,
        mixing="rd_only",
        calibration_weight=weight,
        calibration_target=target,
        model=copy.deepcopy(initial),
        **{**COMMON, "gradient_accumulation_steps": ga},
    )
    drawn = record_draws(trainer)
    got = _grads(trainer, 1)
    assert len(calls) == 1 and len(calls[0][0]) == 4 * ga  # one generation round for both micro-steps
    rd = _rd_reference(initial, trainer, drawn, 1, ga)[0]
    levels = {}
    cal = hand_calibration_grads(initial, trained_tokenizer, [(calls[0][0], calls[0][1])], target, weight, ga,
                                 levels=levels)  # fmt: skip
    expected = {n: rd[n] + cal[n] for n in rd}
    _assert_close(got[0], expected, f"rd_only + calibration ({target})", atol=1e-6)
    assert max(g.abs().max().item() for g in cal.values()) > 1e-6  # the calibration part is not trivially zero
    logged = [h for h in trainer.state.log_history if "hytuning/calibration_loss" in h]
    assert logged and logged[0]["hytuning/calibration_share"] == 1.0
    # the logged levels: the mean p and target over the step's rollouts, by hand (micro-batches of equal size)
    assert logged[0]["hytuning/calibration_p"] == pytest.approx(sum(levels["p"]) / len(levels["p"]), abs=1e-5)
    assert logged[0]["hytuning/calibration_target"] == pytest.approx(sum(levels["t"]) / len(levels["t"]), abs=1e-5)


def test_rd_only_step_generates_nothing(build_trainer, trained_model, trained_tokenizer):
    """A rd_only step (no calibration) runs no rollout: the rollout function is never called, the anchor round still
    runs every prg_every rounds, and the gradient is the hand NLL's. Bug it catches: a rd_only step paying for a
    whole GRPO step (generation, scoring, GRPO forward and backward) that it weights 0."""
    calls = []
    inner = make_rollout_func(trained_tokenizer, POOL)

    def counting(prompts, trainer):
        calls.append(len(prompts))
        return inner(prompts, trainer)

    initial = copy.deepcopy(trained_model)
    trainer = build_trainer(
        reward_funcs=[length_reward], rollout_func=counting, mixing="rd_only", model=copy.deepcopy(initial),
        prg_every=2, **{**COMMON, "max_steps": 3},
    )  # fmt: skip
    drawn = record_draws(trainer)
    got = _grads(trainer, 3)
    assert calls == []
    reference = _rd_reference(initial, trainer, drawn, 3, 1)
    for step in range(3):
        _assert_close(got[step], reference[step], f"rd_only step {step} vs hand NLL")
    anchor_steps = [h["step"] for h in trainer.state.log_history if "hytuning/anchor_gain" in h]
    assert anchor_steps == [1, 3]  # rounds 0 and 2 of prg_every=2
