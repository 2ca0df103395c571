"""HyTuningTrainer end to end on a tiny model that writes real steps and answers."""

import copy
import json
import math
import os

import pytest
import torch
from conftest import make_args, reference_trajectory
from datasets import Dataset
from transformers import TrainerCallback

from hytuning_trl import HyTuningConfig, HyTuningTrainer, PRGCallback, PRGReward, SelfCertaintyReward


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


def _logs(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


def _hand_anchor_gain(trainer, model):
    """Mean normalised gain of the gold answer over the anchor traces, from plain forwards built by hand."""
    from hytuning_trl.answers import whitespace_token_ids

    tok = trainer.processing_class
    ws = whitespace_token_ids(tok)
    gains = []
    for example, parsed in zip(trainer.anchor_examples, trainer._anchor_parsed):
        steps = [example.completion_ids[s:e] for s, e in parsed.spans]
        lp = reference_trajectory(
            model.eval(),
            example.prompt_ids,
            steps,
            trainer._trigger_ids,
            options=parsed.option_ids,
            index=parsed.letters.index(parsed.answer),
            ws=ws,
        )
        p0, pk = math.exp(lp[0]), math.exp(lp[-1])
        gains.append(0.0 if abs(pk - p0) < 1e-6 else (pk - p0) / (1 - p0) if pk > p0 else (pk - p0) / p0)
    return sum(gains) / len(gains)


def test_prg_mixing_v2(build_trainer, trained_model):
    """The v2 anchor (anchor_signal='trace'), unchanged: the logged gain along the expert traces equals the gain
    computed by hand before the first update, and each next weight is min + (max - min) * (1 - clip(EMA(G), 0, 1))
    with decay 0.5, by hand."""
    trainer = build_trainer(
        max_steps=3, learning_rate=1e-3, reward_funcs=[SelfCertaintyReward(), PRGReward()], anchor_signal="trace"
    )
    anchor_texts = {e.completion_text for e in trainer.anchor_examples}
    assert len(trainer.anchor_examples) == 4 and len(trainer.distill_examples) == 12  # min(16, 16 // 4) held out
    assert not anchor_texts & {e.completion_text for e in trainer.distill_examples}  # never trained on
    expected_first = _hand_anchor_gain(trainer, copy.deepcopy(trained_model))
    trainer.train()
    logs = _logs(trainer)
    assert logs[0]["hytuning/anchor_gain"] == pytest.approx(expected_first, abs=1e-4)
    assert logs[0]["hytuning/rd_weight"] == pytest.approx(0.5)  # rd_weight until the EMA has a value
    # the probe's verdict, logged once: the tiny Llama takes the packed mask
    assert logs[0]["hytuning/packed_scoring"] == 1.0 and all("hytuning/packed_scoring" not in h for h in logs[1:])
    ema = None
    for i, h in enumerate(logs):
        ema = h["hytuning/anchor_gain"] if ema is None else 0.5 * ema + 0.5 * h["hytuning/anchor_gain"]
        assert h["hytuning/anchor_gain_ema"] == pytest.approx(ema, abs=1e-9)
        expected = 0.05 + 0.85 * (1 - min(max(ema, 0.0), 1.0))
        assert h["hytuning/rd_weight_next"] == pytest.approx(expected, abs=1e-9)
        if i + 1 < len(logs):
            assert logs[i + 1]["hytuning/rd_weight"] == pytest.approx(expected, abs=1e-9)
        assert {"hytuning/anchor_p0", "hytuning/anchor_pK", "hytuning/answer_forced_rate"} <= set(h)


def test_prg_gap_rule(build_trainer):
    """The turn-1 rule kept for comparison: tanh of the gap between the EMAs, computed by hand from the logs."""
    trainer = build_trainer(mixing="prg_gap", max_steps=3, learning_rate=1e-3, prg_tau=0.05)
    trainer.train()
    policy = anchor = None
    for h in _logs(trainer):
        if "hytuning/prg_policy" in h:
            x = h["hytuning/prg_policy"]
            policy = x if policy is None else 0.9 * policy + 0.1 * x
        x = h["hytuning/prg_anchor"]
        anchor = x if anchor is None else 0.9 * anchor + 0.1 * x
        if policy is not None:
            expected = 0.05 + 0.85 * math.tanh(max(anchor - policy, 0.0) / 0.05)
            assert h["hytuning/rd_weight_next"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("mixing,expected", [("rl_only", 0.0), ("rd_only", 1.0), ("constant", 0.3)])
def test_fixed_rules(build_trainer, distill_dataset, mixing, expected):
    distill = None if mixing == "rl_only" else distill_dataset
    trainer = build_trainer(mixing=mixing, rd_weight=0.3, max_steps=2, distill_dataset=distill)
    trainer.train()
    logs = _logs(trainer)
    assert [h["hytuning/rd_weight"] for h in logs] == [expected] * 2
    if mixing == "rl_only":
        assert trainer.distill_iterator is None and not any("hytuning/rd_nll" in h for h in logs)
    else:
        assert all("hytuning/rd_nll" in h for h in logs)
        assert len(trainer.distill_examples) == 12  # every arm trains on the same traces, the anchor held out


def test_chord_schedule(build_trainer):
    trainer = build_trainer(mixing="chord", max_steps=4, chord_mu_warmup_ratio=0.5)
    trainer.train()
    # warm-up over 2 of 4 steps to 0.9, then cosine to 0.05: worked by hand
    # step 3: 0.05 + 0.85 * 0.5 * (1 + cos(pi * 1 / 2)) = 0.475
    assert [h["hytuning/rd_weight"] for h in _logs(trainer)] == pytest.approx([0.45, 0.9, 0.9, 0.475])


def test_anchor_size_is_logged(build_trainer, caplog):
    """Bug it catches: anchor_holdout capped at n // 4 without a word."""
    with caplog.at_level("WARNING"):
        build_trainer()
    assert any(
        "Held out 4 of 16 traces as the anchor (anchor_holdout capped at n // 4); 12 are trained on" in r.message
        for r in caplog.records
    )


def test_anchor_refusals(build_trainer, distill_dataset):
    with pytest.raises(ValueError, match="anchor_dataset.*anchor_holdout"):
        build_trainer(anchor_holdout=0)
    steps_ok = {"prompt": "Question: which organ?", "completion": "we look.\n\nso the heart.\nThe answer is A."}
    no_answer = {"prompt": "Question: which organ?", "completion": "we look.\n\nso the heart is likely."}
    no_steps = {"prompt": "Question: which organ?", "completion": "The answer is A."}
    with pytest.raises(ValueError, match=r"Anchor trace 1 .*states no answer"):
        build_trainer(anchor_dataset=Dataset.from_list([steps_ok, no_answer]))
    long_trace = {"prompt": "Question: which organ?", "completion": "we look. " * 200 + "\n\nThe answer is A."}
    with pytest.raises(ValueError, match=r"Anchor trace 0 .*distill_max_length"):
        build_trainer(anchor_dataset=Dataset.from_list([long_trace, steps_ok]), distill_max_length=64)
    with pytest.raises(ValueError, match=r"Anchor trace 0 .*K = 0"):  # v2 needs expert steps
        build_trainer(anchor_dataset=Dataset.from_list([no_steps, steps_ok]), anchor_signal="trace")
    own = build_trainer(anchor_dataset=Dataset.from_list([no_steps, steps_ok]))  # v3 needs the gold answer only
    assert [q.gold for q in own.anchor_questions] == ["A", "A"] and len(own.anchor_examples) == 1
    trainer = build_trainer(anchor_dataset=Dataset.from_list([steps_ok, steps_ok]))
    assert len(trainer.distill_examples) == 16 and len(trainer.anchor_examples) == 2
    assert trainer.mixing_state.anchor_indices == []


def test_rd_weight_hook(build_trainer):
    """A PRGCallback subclass sets the weight; it receives the step about to run and a copy of the state."""
    calls = []

    class Half(PRGCallback):
        def compute_rd_weight(self, args, state, step, max_steps):
            calls.append((step, max_steps))
            state.rd_weight = 123.0  # a copy: must not leak into the trainer
            return 0.5 * super().compute_rd_weight(args, state, step, max_steps)

    hook = Half()
    trainer = build_trainer(reward_funcs=None, callbacks=[hook], max_steps=2, mixing="constant", rd_weight=0.6)
    trainer.train()
    assert trainer.reward_func_names == ["self_certainty"] and trainer.prg_callback is hook
    assert [h["hytuning/rd_weight"] for h in _logs(trainer)] == pytest.approx([0.3, 0.3])
    assert calls[-2:] == [(1, 2), (2, 2)] and calls[0][0] == 0
    with pytest.raises(ValueError, match="PRGCallback"):
        build_trainer(callbacks=[PRGCallback(), Half()])


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


def test_resume_restores_mixing_state(tmp_path, build_trainer, trained_tokenizer, distill_dataset):
    trainer = build_trainer(max_steps=3, save_strategy="steps", save_steps=2, learning_rate=1e-3)
    trainer.train()
    logs = _logs(trainer)
    ckpt = tmp_path / "out" / "checkpoint-2"
    saved = json.loads((ckpt / "hytuning_state.json").read_text())
    assert saved["anchor_gain_ema"] is not None and saved["rd_position"] == 2 and len(saved["anchor_indices"]) == 4
    assert saved["rd_weight"] == pytest.approx(logs[2]["hytuning/rd_weight"])  # the weight the next step used

    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # after the checkpoint is loaded
            seen.update(resumed.mixing.state_dict())
            seen.update(resumed.distill_iterator.state_dict())

    from transformers import AutoModelForCausalLM

    resumed = build_trainer(
        model=AutoModelForCausalLM.from_pretrained(ckpt), max_steps=3, callbacks=[Spy()], learning_rate=1e-3
    )
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert seen == saved
    # another seed holds out other anchor traces: resuming would train on the old anchor
    other = build_trainer(model=AutoModelForCausalLM.from_pretrained(ckpt), max_steps=3, seed=1)
    with pytest.raises(ValueError, match="anchor"):
        other.train(resume_from_checkpoint=str(ckpt))
    # the same number of traces with another content: the anchor EMA would mix two anchors
    changed = Dataset.from_list(
        [{"prompt": r["prompt"] + " Again.", "completion": r["completion"]} for r in distill_dataset]
    )
    other = build_trainer(model=AutoModelForCausalLM.from_pretrained(ckpt), max_steps=3, distill_dataset=changed)
    with pytest.raises(ValueError, match="another anchor .*fingerprint"):
        other.train(resume_from_checkpoint=str(ckpt))


def test_resume_of_a_finished_run_trains_no_further_step(tmp_path, build_trainer, trained_dir):
    """transformers runs one optimizer step before its loop checks ``max_steps``, so resuming a run whose last
    checkpoint is at ``max_steps`` (one stopped during its final evaluation) trained step ``max_steps + 1``. The
    resumed trainer must hold the checkpoint's weights, state and mixing state, and train nothing."""
    from transformers import AutoModelForCausalLM

    build_trainer(max_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3).train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    saved = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    fresh = AutoModelForCausalLM.from_pretrained(trained_dir)
    assert not all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())  # the check below can fail

    resumed = build_trainer(model=fresh, max_steps=2, save_strategy="steps", save_steps=1, learning_rate=1e-3)
    out = resumed.train(resume_from_checkpoint=True)
    assert out.global_step == resumed.state.global_step == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]
    assert all(torch.equal(v, saved[k]) for k, v in resumed.model.state_dict().items())
    assert resumed.state.log_history == json.loads((ckpt / "trainer_state.json").read_text())["log_history"]
    restored = {**resumed.mixing.state_dict(), **resumed.distill_iterator.state_dict()}
    assert restored == json.loads((ckpt / "hytuning_state.json").read_text())


def test_resume_of_a_finished_lora_run_loads_the_adapter(tmp_path, build_trainer, trained_dir):
    """The same for a LoRA run: the checkpoint holds only the adapter, which must come back, not a fresh one."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    build_trainer(max_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-2, peft_config=lora).train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    saved = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained_dir), ckpt).state_dict()
    fresh = AutoModelForCausalLM.from_pretrained(trained_dir)
    resumed = build_trainer(model=fresh, max_steps=2, learning_rate=1e-2, peft_config=lora)
    assert resumed.train(resume_from_checkpoint=str(ckpt)).global_step == 2
    weights = resumed.model.state_dict()
    adapter = [k for k in weights if "lora_B" in k]
    assert adapter and any(weights[k].abs().sum() > 0 for k in adapter)  # lora_B starts at zero: it was loaded
    assert all(torch.equal(weights[k], saved[k]) for k in adapter)


def test_completions_table_and_model_card(tmp_path, build_trainer, trained_model, trained_tokenizer):
    """Each row's `hytuning_prg` equals the PRG computed by hand for that completion: plain forwards over
    [x, s_1..s_k, t] for its stated option, then (p_K - p_0) x the share of sign-consistent steps."""
    import pandas as pd

    from hytuning_trl.answers import whitespace_token_ids

    tok = trained_tokenizer
    pool = POOL[:2]  # two completions that state an option
    trainer = build_trainer(
        max_steps=1,
        log_completions=True,
        learning_rate=0.0,
        reward_funcs=[SelfCertaintyReward(), PRGReward()],
        rollout_func=_fixed_rollouts(tok, pool),
    )
    initial = copy.deepcopy(trained_model).eval()
    trainer.train()
    table = pd.read_parquet(tmp_path / "out" / "completions" / "completions_00001.parquet")
    # Bug it catches: the statistic and the reward both named "prg", one column silently lost
    assert {"prg", "hytuning_prg", "hytuning_answer_confidence"} <= set(table.columns)
    assert len(table) == 4
    letters = ["A", "B", "C", "D"]
    for _, row in table.iterrows():
        text = pool[[p.rstrip() for p in pool].index(row["completion"].strip())]
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        parsed = trainer.answer_extractor.parse(ids, {k: k for k in letters})
        steps = [ids[a:b] for a, b in parsed.spans]
        prompt = tok(row["prompt"])["input_ids"]
        lp = reference_trajectory(
            initial, prompt, steps, trainer._trigger_ids, options=parsed.option_ids,
            index=letters.index(parsed.answer), ws=whitespace_token_ids(tok),
        )  # fmt: skip
        p = [math.exp(v) for v in lp]
        net = p[-1] - p[0]
        share = sum((b - a) * net >= 0 for a, b in zip(p, p[1:])) / (len(p) - 1)
        assert row["hytuning_prg"] == pytest.approx(net * share, abs=1e-5)
    trainer.create_model_card(model_name="tiny")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "HyTuning" in card and "2604.08454" in card and "Not for clinical use" in card


def test_push_to_hub_uploads_the_hytuning_card(tmp_path, build_trainer, trained_dir, monkeypatch):
    """Bug it catches: push_to_hub saving with _internal_call=True (no HyTuning card) and TRL's create_model_card
    then writing the GRPO card, without the clinical warning, over README.md. A checkpoint save (no save_model call)
    leaves the same card in output_dir."""
    import transformers.trainer as trainer_module
    from transformers import AutoModelForCausalLM

    uploaded = {}

    class StandInHub:
        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded["repo_id"] = repo_id
            uploaded["readme"] = open(os.path.join(folder_path, "README.md")).read()
            return "commit"

    monkeypatch.setattr(trainer_module, "hf_api", lambda: StandInHub())
    model = AutoModelForCausalLM.from_pretrained(trained_dir)
    trainer = build_trainer(model=model, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    card = (tmp_path / "out" / "README.md").read_text()  # written at the checkpoint saves
    assert "Not for clinical use" in card and f"Base model: `{trained_dir}`" in card and "[None]" not in card
    trainer.hub_model_id = "someone/tiny-hytuning"
    trainer.push_to_hub()
    assert uploaded["repo_id"] == "someone/tiny-hytuning"
    assert "Not for clinical use" in uploaded["readme"] and "Mixing rule: `prg`" in uploaded["readme"]
    assert "`rd_weight` by optimizer step: 0.500, " in uploaded["readme"]


POOL = [
    "we look at the heart.\n\nso the heart is likely.\nThe answer is A.",
    "the lung.\n\nthe lung again.\nThe answer is B.",
    "first the fever and the cough and the rash.\n\nthen the kidney and the brain and the liver.",  # no answer
    "no idea.",  # no answer
]


def _fixed_rollouts(tokenizer, pool=None):
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in (pool or POOL)]

    def rollout_func(prompts, trainer):
        completions = [ids[i % len(ids)] for i in range(len(prompts))]
        return {
            "prompt_ids": [tokenizer(p)["input_ids"] for p in prompts],
            "completion_ids": completions,
            "logprobs": [[0.0] * len(c) for c in completions],
        }

    return rollout_func


def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def test_forced_answers_left_out_of_policy_prg(build_trainer, trained_tokenizer, monkeypatch):
    """Two of four rollouts state no answer: they are forced, flagged, counted, and left out of the policy PRG."""
    from hytuning_trl import HyTuningTrainer

    rounds = []
    original = HyTuningTrainer._generate_and_score_completions

    def record(self, inputs):  # the statistics each row carries out of TRL's round
        out = original(self, inputs)
        rounds.append([row["hytuning_stats"] for row in inputs])
        return out

    monkeypatch.setattr(HyTuningTrainer, "_generate_and_score_completions", record)
    trainer = build_trainer(
        max_steps=1,
        rollout_func=_fixed_rollouts(trained_tokenizer),
        reward_funcs=[length_reward],
        answer_options=list("ABCDE"),  # five letters for four rollouts: a share per letter is not a share per rollout
    )
    trainer.train()
    [h] = _logs(trainer)
    [stats] = rounds
    assert [s.answer_forced for s in stats] == [False, False, True, True]
    assert h["hytuning/answer_forced_rate"] == 0.5 and h["hytuning/prg_missing"] == 0.5
    assert h["hytuning/prg_policy"] == pytest.approx((stats[0].prg + stats[1].prg) / 2)
    # each option letter's share of the round's answers: A and B stated, the two forced ones the model's own choice
    given = ["A", "B", stats[2].answer, stats[3].answer]
    assert {k: v for k, v in h.items() if k.startswith("hytuning/answered/")} == {
        f"hytuning/answered/{letter}": given.count(letter) / 4 for letter in "ABCDE"
    }


def test_prg_gate(build_trainer, trained_tokenizer, monkeypatch):
    """Gating after TRL's advantages: a positive advantage of a rollout with PRG <= 0 or a forced answer becomes
    floor * advantage; the others stay as TRL computed them."""
    from trl import GRPOTrainer

    from hytuning_trl import HyTuningTrainer

    seen = []
    original_trl = GRPOTrainer._generate_and_score_completions
    original_hy = HyTuningTrainer._generate_and_score_completions

    def trl_side(self, inputs):
        out = original_trl(self, inputs)
        seen.append({"before": out["advantages"].clone()})
        return out

    def hy_side(self, inputs):
        out = original_hy(self, inputs)
        seen[-1].update(after=out["advantages"].clone(), stats=[row["hytuning_stats"] for row in inputs])
        return out

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", trl_side)
    monkeypatch.setattr(HyTuningTrainer, "_generate_and_score_completions", hy_side)
    trainer = build_trainer(
        max_steps=1,
        prg_gate=True,
        prg_gate_floor=0.25,
        rollout_func=_fixed_rollouts(trained_tokenizer),
        reward_funcs=[length_reward],
    )
    trainer.train()
    [record] = seen
    gated = 0
    for before, after, s in zip(record["before"].tolist(), record["after"].tolist(), record["stats"]):
        unsupported = s.answer_forced or s.prg is None or s.prg <= 0
        if before > 0 and unsupported:
            assert after == pytest.approx(0.25 * before)
            gated += 1
        else:
            assert after == before
    assert gated >= 1  # the longest completion states no answer: forced, positive advantage
    assert _logs(trainer)[0]["hytuning/prg_gated_share"] == pytest.approx(gated / 4)


def test_warns_when_no_rollout_has_prg(tmp_path, trained_model, trained_tokenizer, distill_dataset, caplog):
    """Bug it catches: raw mode with no statement anywhere trains on PRG-free rewards in silence."""
    from datasets import Dataset

    train = Dataset.from_list([{"prompt": "Question: which organ?"}] * 8)
    pool = ["no idea at all.", "maybe the lung."]
    ids = [trained_tokenizer(t, add_special_tokens=False)["input_ids"] for t in pool]

    def rollout_func(prompts, trainer):
        completions = [ids[i % 2] for i in range(len(prompts))]
        return {
            "prompt_ids": [trained_tokenizer(p)["input_ids"] for p in prompts],
            "completion_ids": completions,
            "logprobs": [[0.0] * len(c) for c in completions],
        }

    from hytuning_trl import HyTuningTrainer

    trainer = HyTuningTrainer(
        model=trained_model,
        reward_funcs=[length_reward],
        args=make_args(tmp_path, max_steps=2, answer_options=None, mixing="constant"),
        train_dataset=train,
        distill_dataset=distill_dataset,
        processing_class=trained_tokenizer,
        rollout_func=rollout_func,
    )
    with caplog.at_level("WARNING"):
        trainer.train()
    assert all(h["hytuning/prg_missing"] == 1.0 for h in _logs(trainer))
    assert sum("prg_missing was 1.0" in r.message for r in caplog.records) == 1


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"mixing": "sometimes"}, "mixing"),
        ({"prg_aggregation": "median"}, "prg_aggregation"),
        ({"rd_weight_min": 0.8, "rd_weight_max": 0.2}, "rd_weight_min"),
        ({"rd_weight_max": 1.5}, "rd_weight_max"),
        ({"rd_weight": -0.1}, "rd_weight"),
        ({"answer_options": ["A", "A"]}, "distinct"),
        ({"answer_options": ["A"]}, "at least two"),
        ({"answer_pattern": "answer is ("}, "regular expression"),
        ({"anchor_ema_decay": 1.0}, "anchor_ema_decay"),
        ({"prg_gate_floor": 2.0}, "prg_gate_floor"),
        ({"prg_every": 0}, "prg_every"),
    ],
)
def test_bad_config(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **overrides)


def test_answer_options_from_cli_string(tmp_path):
    assert make_args(tmp_path, answer_options="A,B,C,D,E").answer_options == list("ABCDE")
    # what TrlParser gives for `--answer_options A,B,C,D`: one item holding the commas
    assert make_args(tmp_path, answer_options=["A,B,C,D"]).answer_options == list("ABCD")
    assert make_args(tmp_path, answer_options=None).answer_probability == "auto"


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "needs `distill_dataset`"),
        ("empty", "empty"),
        ("no_completion", "lacks the 'completion' column"),
        ("no_prompt", "lacks the 'prompt' column"),
        ("too_small", "fewer than distill_per_device_batch_size"),
        ("no_anchor", "anchor_holdout"),
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
    elif case == "too_small":  # 4 traces: 1 held out as the anchor, 3 left for a batch of 4
        distill = distill_dataset.select(range(4))
    elif case == "no_anchor":  # 3 traces: min(16, 3 // 4) = 0 anchor traces
        distill = distill_dataset.select(range(3))
    with pytest.raises(ValueError, match=match):
        HyTuningTrainer(
            model=trained_model,
            args=make_args(tmp_path, distill_per_device_batch_size=4 if case == "too_small" else 2),
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
    assert isinstance(make_args(tmp_path), HyTuningConfig)
