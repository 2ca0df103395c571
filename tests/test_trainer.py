"""HyTuningTrainer end to end on a tiny model that writes real steps and answers."""

import json
import math
import os

import pytest
import torch
from conftest import make_args
from datasets import Dataset

from hytuning_trl import HyTuningConfig, HyTuningTrainer, PRGCallback, PRGReward, SelfCertaintyReward
from hytuning_trl.mixing import chord_weight


def _train(tmp_path, model, tokenizer, train_dataset, distill_dataset, **overrides):
    reward_funcs = overrides.pop("reward_funcs", [SelfCertaintyReward(), PRGReward()])
    callbacks = overrides.pop("callbacks", None)
    args = make_args(tmp_path, **overrides)
    trainer = HyTuningTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train_dataset,
        distill_dataset=distill_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    moved = max((p.detach() - before[n]).abs().max().item() for n, p in trainer.model.named_parameters())
    return trainer, logs, moved


def test_prg_mixing_trains_and_lam_moves(tmp_path, trained_model, trained_tokenizer, train_dataset, distill_dataset):
    trainer, logs, moved = _train(
        tmp_path, trained_model, trained_tokenizer, train_dataset, distill_dataset, max_steps=4, prg_tau=0.05
    )
    assert len(logs) == 4 and all(math.isfinite(h["loss"]) for h in logs)
    assert moved > 0
    lams = [h["hytuning/rd_weight"] for h in logs]
    assert lams[0] == pytest.approx(0.5)  # rd_weight until both EMAs have a value
    assert all(0.05 - 1e-9 <= lam <= 0.9 + 1e-9 for lam in lams[1:])
    assert len({round(lam, 6) for lam in lams}) > 1, lams  # lam really moves
    prg = [h["hytuning/prg_policy"] for h in logs if "hytuning/prg_policy" in h]
    assert len(prg) == 4 and len({round(p, 6) for p in prg}) > 1 and any(abs(p) > 1e-4 for p in prg), prg
    assert all(h["hytuning/prg_missing"] < 1 for h in logs)
    assert all(h["hytuning/num_steps"] >= 1 for h in logs)  # the model writes real steps
    assert all("hytuning/prg_anchor" in h and "hytuning/rd_nll" in h for h in logs)
    # the rule: the logged lam follows from the logged EMAs
    ms = trainer.mixing_state
    expected = 0.05 + 0.85 * math.tanh(max(ms.prg_anchor_ema - ms.prg_policy_ema, 0) / 0.05)
    assert ms.rd_weight == pytest.approx(expected)


@pytest.mark.parametrize("mixing,expected", [("rl_only", 0.0), ("rd_only", 1.0), ("constant", 0.3)])
def test_fixed_rules(tmp_path, trained_model, trained_tokenizer, train_dataset, distill_dataset, mixing, expected):
    distill = None if mixing == "rl_only" else distill_dataset
    trainer, logs, moved = _train(
        tmp_path, trained_model, trained_tokenizer, train_dataset, distill, mixing=mixing, rd_weight=0.3, max_steps=2
    )
    assert moved > 0 and all(math.isfinite(h["loss"]) for h in logs)
    assert [h["hytuning/rd_weight"] for h in logs] == [expected] * 2
    if mixing == "rl_only":
        assert trainer.distill_iterator is None and not any("hytuning/rd_nll" in h for h in logs)
    else:
        assert all("hytuning/rd_nll" in h for h in logs)


def test_chord_schedule(tmp_path, trained_model, trained_tokenizer, train_dataset, distill_dataset):
    _, logs, _ = _train(
        tmp_path,
        trained_model,
        trained_tokenizer,
        train_dataset,
        distill_dataset,
        mixing="chord",
        max_steps=4,
        chord_mu_warmup_ratio=0.5,
    )
    lams = [h["hytuning/rd_weight"] for h in logs]
    assert lams == pytest.approx([chord_weight(s, 4, 0.9, 0.05, 0.5) for s in range(4)])
    assert lams[1] == pytest.approx(0.9) and lams[-1] < lams[1]


def test_conversational_datasets(tmp_path, trained_model, trained_tokenizer, mcq):
    train = Dataset.from_list([{"prompt": [{"role": "user", "content": e["prompt"]}]} for e in mcq[:16]])
    distill = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": e["prompt"]}],
                "completion": [{"role": "assistant", "content": e["completion"]}],
            }
            for e in mcq[16:32]
        ]
    )
    trainer, logs, moved = _train(tmp_path, trained_model, trained_tokenizer, train, distill, max_steps=2)
    assert moved > 0 and all(math.isfinite(h["loss"]) and "hytuning/rd_nll" in h for h in logs)
    ex = trainer.distill_examples[0]
    assert trained_tokenizer.decode(ex.prompt_ids).startswith("<|user|>")
    assert trained_tokenizer.decode(ex.completion_ids).endswith("<|end|>")


def test_untempered_rd_nll(trained_tokenizer, build_trainer):
    """The RD NLL ignores the sampling temperature (TRL's fused head divides by it)."""
    from hytuning_trl.distill import collate_distill, rd_loss

    trainer = build_trainer(temperature=3.0)
    batch = collate_distill(trainer.distill_examples[:2], trained_tokenizer.pad_token_id)
    with torch.no_grad():
        out = rd_loss(trainer.model, batch)
        ref = trainer.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100),
        ).loss
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_resume_restores_mixing_state(tmp_path, trained_model, trained_tokenizer, train_dataset, distill_dataset):
    _, logs, _ = _train(
        tmp_path,
        trained_model,
        trained_tokenizer,
        train_dataset,
        distill_dataset,
        max_steps=3,
        save_strategy="steps",
        save_steps=2,
    )
    ckpt = tmp_path / "out" / "checkpoint-2"
    saved = json.loads((ckpt / "hytuning_state.json").read_text())
    assert saved["prg_policy_ema"] is not None and saved["rd_position"] == 2
    assert saved["rd_weight"] == pytest.approx(logs[2]["hytuning/rd_weight"])  # lam the next step used

    seen = {}

    class Spy(PRGCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            seen.update(self.trainer.mixing_state.to_dict())
            seen.update(self.trainer.distill_iterator.state_dict())

    from transformers import AutoModelForCausalLM

    trainer = HyTuningTrainer(
        model=AutoModelForCausalLM.from_pretrained(ckpt),
        reward_funcs=[SelfCertaintyReward(), PRGReward()],
        args=make_args(tmp_path, max_steps=3, save_strategy="steps", save_steps=2),
        train_dataset=train_dataset,
        distill_dataset=distill_dataset,
        processing_class=trained_tokenizer,
        callbacks=[Spy()],
    )
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert seen == saved


def test_completions_table_and_model_card(tmp_path, trained_model, trained_tokenizer, train_dataset, distill_dataset):
    import pandas as pd

    trainer, _, _ = _train(
        tmp_path, trained_model, trained_tokenizer, train_dataset, distill_dataset, max_steps=1, log_completions=True
    )
    table = pd.read_parquet(tmp_path / "out" / "completions" / "completions_00001.parquet")
    assert {"prg", "answer_confidence"} <= set(table.columns)
    assert table["prg"].notna().any()
    trainer.create_model_card(model_name="tiny")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "HyTuning" in card and "2604.08454" in card


def test_default_reward_and_user_callback(tmp_path, trained_model, trained_tokenizer, train_dataset, distill_dataset):
    class Half(PRGCallback):
        def compute_rd_weight(self, args, state, step, max_steps):
            return 0.5 * super().compute_rd_weight(args, state, step, max_steps)

    cb = Half()
    trainer, logs, _ = _train(
        tmp_path,
        trained_model,
        trained_tokenizer,
        train_dataset,
        distill_dataset,
        reward_funcs=None,
        callbacks=[cb],
        max_steps=2,
    )
    assert trainer.reward_func_names == ["self_certainty"]
    assert (
        trainer.prg_callback is cb and sum(isinstance(c, PRGCallback) for c in trainer.callback_handler.callbacks) == 1
    )
    assert logs[0]["hytuning/rd_weight"] == pytest.approx(0.25)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"mixing": "sometimes"}, "mixing"),
        ({"prg_aggregation": "median"}, "prg_aggregation"),
        ({"rd_weight_min": 0.8, "rd_weight_max": 0.2}, "rd_weight_min"),
        ({"rd_weight_max": 1.5}, "rd_weight_max"),
        ({"rd_weight": -0.1}, "rd_weight"),
        ({"answer_probability": "options", "answer_options": None}, "answer_options"),
        ({"answer_pattern": "answer is [A-E]"}, "capturing group"),
        ({"prg_every": 0}, "prg_every"),
    ],
)
def test_bad_config(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **overrides)


def test_answer_options_from_cli_string(tmp_path):
    assert make_args(tmp_path, answer_options="A,B,C,D,E").answer_options == list("ABCDE")
    assert make_args(tmp_path, answer_options=None).answer_probability == "raw"


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "needs `distill_dataset`"),
        ("empty", "empty"),
        ("no_completion", "lacks the 'completion' column"),
        ("no_prompt", "lacks the 'prompt' column"),
        ("too_small", "fewer than distill_per_device_batch_size"),
    ],
)
def test_bad_datasets(tmp_path, trained_model, trained_tokenizer, train_dataset, distill_dataset, case, match):
    train, distill = train_dataset, distill_dataset
    if case == "missing":
        distill = None
    elif case == "empty":
        distill = distill_dataset.select([])
    elif case == "no_completion":
        distill = distill_dataset.rename_column("completion", "solution")
    elif case == "no_prompt":
        train = train_dataset.rename_column("prompt", "question")
    elif case == "too_small":
        distill = distill_dataset.select([0])
    with pytest.raises(ValueError, match=match):
        HyTuningTrainer(
            model=trained_model,
            args=make_args(tmp_path),
            train_dataset=train,
            distill_dataset=distill,
            processing_class=trained_tokenizer,
        )


def test_args_must_be_hytuning_config(tmp_path, trained_model, trained_tokenizer, train_dataset):
    from trl import GRPOConfig

    with pytest.raises(TypeError, match="HyTuningConfig"):
        HyTuningTrainer(
            model=trained_model,
            args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False),
            train_dataset=train_dataset,
            processing_class=trained_tokenizer,
        )
    assert isinstance(make_args(tmp_path), HyTuningConfig) and os.path.isdir(tmp_path)
