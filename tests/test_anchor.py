"""The anchor v3: the policy judged by its own reasoning on held-out questions, against hand computations."""

import copy
import math
import random

import pytest
import torch
from conftest import make_args, reference_trajectory
from datasets import Dataset

from hytuning_trl import HyTuningTrainer, InternalFeedbackReward, SelfCertaintyReward
from hytuning_trl.answers import AnswerExtractor, whitespace_token_ids
from hytuning_trl.mcq import format_mcq_prompt


def _logs(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


def _gain(p0, pk):
    return 0.0 if abs(pk - p0) < 1e-6 else (pk - p0) / (1 - p0) if pk > p0 else (pk - p0) / p0


@torch.no_grad()
def hand_own_anchor(model, tokenizer, questions, max_new_tokens, trigger_ids, letters=("A", "B", "C", "D")):
    """Per question, by hand: greedy ``model.generate`` one prompt at a time, then one plain forward per k over
    [x, s_1..s_k, t] for the gold option (the steps cut by the answer contract). Returns the means of G, accuracy
    (forced answers counted), stated and Brier."""
    model = model.eval()
    eos = tokenizer.eos_token_id
    extractor = AnswerExtractor(
        tokenizer, answer_options=list(letters), answer_probability="options", special_ids=[eos]
    )
    option_ids = extractor.option_ids(list(letters))
    ws = whitespace_token_ids(tokenizer)
    gains, correct, stated, brier = [], [], [], []
    for prompt_ids, gold, options in questions:
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=eos
        )[0, len(prompt_ids) :].tolist()
        completion = out[: out.index(eos) + 1] if eos in out else out
        parsed = extractor.parse(completion, options)
        steps = [completion[s:e] for s, e in parsed.spans]
        lp = reference_trajectory(
            model, prompt_ids, steps, trigger_ids, options=option_ids, index=list(letters).index(gold), ws=ws
        )
        gains.append(_gain(math.exp(lp[0]), math.exp(lp[-1])))
        finals = [
            reference_trajectory(model, prompt_ids, steps, trigger_ids, options=option_ids, index=j, ws=ws)[-1]
            for j in range(len(letters))
        ]
        chosen = (
            parsed.answer if parsed.answer is not None else letters[max(range(len(letters)), key=finals.__getitem__)]
        )
        ok = chosen == gold
        correct.append(ok)
        stated.append(parsed.answer is not None)
        brier.append((math.exp(finals[list(letters).index(chosen)]) - ok) ** 2)
    n = len(gains)
    return sum(gains) / n, sum(correct) / n, sum(stated) / n, sum(brier) / n


def test_own_anchor_by_hand(build_trainer, trained_model, trained_tokenizer):
    """The first anchor round (before any update) logs G, accuracy, stated and Brier equal to the hand computation;
    the trace gain is the v2 diagnostic; the rule follows the EMA of the own gain."""
    trainer = build_trainer(max_steps=3, learning_rate=1e-3)
    assert trainer.args.anchor_signal == "own" and len(trainer.anchor_questions) == 4
    questions = [(q.prompt_ids, q.gold, q.options) for q in trainer.anchor_questions]
    expected = hand_own_anchor(copy.deepcopy(trained_model), trained_tokenizer, questions, 96, trainer._trigger_ids)
    trainer.train()
    logs = _logs(trainer)
    first = logs[0]
    names = ("anchor_gain", "anchor_accuracy", "anchor_stated", "anchor_brier")
    for name, value in zip(names, expected):
        assert first[f"hytuning/{name}"] == pytest.approx(value, abs=1e-4), name
    assert (
        "hytuning/anchor_trace_gain" in first and first["hytuning/anchor_trace_gain"] != first["hytuning/anchor_gain"]
    )
    ema = None
    for h in logs:
        ema = h["hytuning/anchor_gain"] if ema is None else 0.5 * ema + 0.5 * h["hytuning/anchor_gain"]
        assert h["hytuning/rd_weight_next"] == pytest.approx(0.05 + 0.85 * (1 - min(max(ema, 0.0), 1.0)), abs=1e-9)


def test_anchor_from_question_rows(build_trainer, trained_model, trained_tokenizer, mcq):
    """Plain multiple-choice rows (no reasoning) are anchor questions: MedQA-style rows get the package's prompt with
    the configured instruction, prompt/answer rows their own prompt; the logged G matches the hand computation."""
    rows = [{"question": q["question"], "options": q["options"], "answer_idx": q["answer"]} for q in mcq[:3]]
    instruction = "Think in steps, then say the letter."
    trainer = build_trainer(max_steps=1, anchor_dataset=Dataset.from_list(rows), mcq_instruction=instruction)
    assert len(trainer.distill_examples) == 16 and trainer.mixing_state.anchor_indices == []
    rendered = trained_tokenizer.apply_chat_template(
        [{"role": "user", "content": format_mcq_prompt(rows[0]["question"], rows[0]["options"], instruction)}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert trained_tokenizer.decode(trainer.anchor_questions[0].prompt_ids) == rendered
    questions = [(q.prompt_ids, q.gold, q.options) for q in trainer.anchor_questions]
    expected = hand_own_anchor(copy.deepcopy(trained_model), trained_tokenizer, questions, 96, trainer._trigger_ids)
    trainer.train()
    assert _logs(trainer)[0]["hytuning/anchor_gain"] == pytest.approx(expected[0], abs=1e-4)
    assert "hytuning/anchor_trace_gain" not in _logs(trainer)[0]  # no traces, no diagnostic

    pairs = [{"prompt": q["prompt"], "answer": q["answer"]} for q in mcq[:2]]
    trainer = build_trainer(max_steps=1, anchor_dataset=Dataset.from_list(pairs))
    assert [q.gold for q in trainer.anchor_questions] == [q["answer"] for q in mcq[:2]]
    assert trainer.anchor_questions[0].prompt_ids == trained_tokenizer(mcq[0]["prompt"])["input_ids"]


@pytest.mark.parametrize(
    "rows,overrides,match",
    [
        ([{"question": "q?", "options": {"A": "x", "B": "y"}}], {}, "gold answer"),
        ([{"prompt": "q?", "answer": "Z"}], {}, "not one of its option letters"),
        (
            [{"question": "q?", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}],
            {"anchor_signal": "trace"},
            "trace",
        ),
    ],
)
def test_anchor_rows_refused(build_trainer, rows, overrides, match):
    with pytest.raises(ValueError, match=match):
        build_trainer(anchor_dataset=Dataset.from_list(rows), **overrides)


# ---------------------------------------------------------------- the case v2 gets wrong
ORGANS = ["heart", "lung", "liver", "kidney"]
SYMPTOMS = ["fever", "cough", "pain", "rash"]  # symptom i: the gold organ is ORGANS[i]
OPTIONS = {"ABCD"[i]: organ for i, organ in enumerate(ORGANS)}


def _prompt(i, symptom):
    return f"Question {i}: which organ is affected when the patient has {symptom}?\nOptions: " + " ".join(
        f"{k}) {v}" for k, v in OPTIONS.items()
    )


def _trace(symptom, organ):
    return f"we look at the {symptom}.\n\nso the {organ} is likely.\nThe answer is {'ABCD'[ORGANS.index(organ)]}."


def _wrong_format_model(tokenizer, steps=400):
    """A tiny model taught the trace format with a WRONG conclusion: for each symptom it concludes the next organ
    (half its traces), and the answer letter always follows the organ it concluded (the other half name a random
    organ), so the format is right and the reasoning is wrong."""
    from hytuning_trl._testing import tiny_model

    rng = random.Random(3)
    texts = []
    for i in range(400):
        s = rng.randrange(4)
        organ = ORGANS[(s + 1) % 4] if i % 2 == 0 else rng.choice(ORGANS)
        texts.append(
            tokenizer(_prompt(i, SYMPTOMS[s]))["input_ids"]
            + tokenizer(_trace(SYMPTOMS[s], organ), add_special_tokens=False)["input_ids"]
            + [tokenizer.eos_token_id]
        )
    torch.manual_seed(0)
    model = tiny_model(tokenizer, hidden_size=64, num_layers=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = [texts[(step * 16 + j) % len(texts)] for j in range(16)]
        width = max(map(len, batch))
        ids = torch.full((16, width), tokenizer.pad_token_id)
        mask = torch.zeros(16, width, dtype=torch.long)
        for j, b in enumerate(batch):
            ids[j, : len(b)], mask[j, : len(b)] = torch.tensor(b), 1
        model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.slow
def test_own_signal_sees_wrong_reasoning_that_trace_signal_trusts(tmp_path, tokenizer):
    """A model that writes the trace format with a wrong conclusion trusts the gold traces (v2 gain > 0.5, so the
    trace rule hands training to RLIF) while its own reasoning lowers the gold answer (own gain < 0, so the own rule
    keeps leaning on RD)."""
    model = _wrong_format_model(tokenizer)
    anchor = Dataset.from_list(
        [
            {"prompt": _prompt(100 + i, s), "completion": _trace(s, ORGANS[i]), "options": OPTIONS}
            for i, s in enumerate(SYMPTOMS)
        ]
    )
    train = Dataset.from_list([{"prompt": _prompt(200 + i, SYMPTOMS[i % 4]), "options": OPTIONS} for i in range(8)])
    distill = Dataset.from_list(
        [
            {"prompt": _prompt(300 + i, SYMPTOMS[i % 4]), "completion": _trace(SYMPTOMS[i % 4], ORGANS[i % 4])}
            for i in range(8)
        ]
    )
    weights = {}
    for signal in ("own", "trace"):
        trainer = HyTuningTrainer(
            model=copy.deepcopy(model),
            args=make_args(
                tmp_path / signal, max_steps=1, learning_rate=0.0, anchor_signal=signal, max_completion_length=32
            ),
            train_dataset=train,
            distill_dataset=distill,
            anchor_dataset=anchor,
            processing_class=tokenizer,
        )
        trainer.train()
        [log] = _logs(trainer)
        weights[signal] = log["hytuning/rd_weight_next"]
        if signal == "own":
            assert log["hytuning/anchor_gain"] < 0, log
            assert log["hytuning/anchor_trace_gain"] > 0.5, log
            assert log["hytuning/anchor_accuracy"] == 0.0 and log["hytuning/anchor_stated"] == 1.0
        else:
            assert log["hytuning/anchor_gain"] > 0.5 and "hytuning/anchor_accuracy" not in log
    assert weights["own"] >= 0.8 and weights["trace"] <= 0.5, weights


# ---------------------------------------------------------------- generation path, metrics, random stream
class Capture(InternalFeedbackReward):
    __name__ = "capture"
    completions: list = []

    def __call__(self, completion_ids=None, **kwargs):
        Capture.completions.append([list(c) for c in completion_ids])
        return [0.0] * len(completion_ids)


def test_anchor_leaves_rollouts_and_trl_metrics_alone(build_trainer, monkeypatch):
    """Sampled rollouts after an anchor round are the ones drawn without it (the random stream is restored), and
    TRL's token counts and completion-length metrics are the same."""
    runs = {}
    for anchor_on in (True, False):
        Capture.completions = []
        trainer = build_trainer(max_steps=2, learning_rate=0.0, reward_funcs=[Capture()])
        if not anchor_on:
            monkeypatch.setattr(trainer, "_own_anchor_round", lambda: None)
        trainer.train()
        runs[anchor_on] = (Capture.completions, _logs(trainer))
    (with_anchor, logs_on), (without, logs_off) = runs[True], runs[False]
    assert with_anchor == without and len(with_anchor) == 2
    assert "hytuning/anchor_accuracy" in logs_on[0] and "hytuning/anchor_accuracy" not in logs_off[0]
    trl_keys = [k for k in logs_off[0] if k == "num_tokens" or k.startswith("completions/")]
    assert trl_keys
    for on, off in zip(logs_on, logs_off):
        assert {k: on[k] for k in trl_keys} == {k: off[k] for k in trl_keys}


class FakeVLLM:
    """TRL's VLLMGeneration in colocate mode, stood in on CPU: records each call's prompts and temperature, and
    answers with a fixed completion."""

    calls: list = []

    def __init__(self, model, accelerator, processing_class, mode, temperature=1.0, **kwargs):
        self.tokenizer, self.temperature = processing_class, temperature

    def sync_weights(self):
        pass

    def generate(self, prompts, images, num_generations, profiler=None):
        FakeVLLM.calls.append((list(prompts), self.temperature))
        text = "we look.\n\nso the heart is likely.\nThe answer is A."
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        completions = [list(ids) for _ in prompts]
        return list(prompts), completions, [[[-1.0] for _ in c] for c in completions], None


def test_anchor_through_vllm_colocate(build_trainer, monkeypatch):
    """With vLLM colocate (stand-in), the anchor questions go through vLLM's generate, greedily (temperature 0, the
    rollouts' temperature restored), and TRL's token counts and completion lengths equal the run without anchor."""
    import trl.trainer.grpo_trainer as grpo_module

    monkeypatch.setattr(grpo_module, "VLLMGeneration", FakeVLLM)
    logs = {}
    for anchor_on in (True, False):
        FakeVLLM.calls = []
        trainer = build_trainer(
            max_steps=1,
            use_vllm=True,
            vllm_mode="colocate",
            vllm_importance_sampling_correction=False,
            learning_rate=0.0,
            reward_funcs=[SelfCertaintyReward()],
        )
        if not anchor_on:
            monkeypatch.setattr(trainer, "_own_anchor_round", lambda: None)
        trainer.train()
        logs[anchor_on] = _logs(trainer)[0]
        if anchor_on:
            anchor_prompts = [q.prompt_ids for q in trainer.anchor_questions]
            assert FakeVLLM.calls[-1] == (anchor_prompts, 0.0)  # the anchor round, greedy
            assert [t for _, t in FakeVLLM.calls[:-1]] == [1.0]  # the rollouts, at their own temperature
            assert trainer.vllm_generation.temperature == 1.0
            assert logs[True]["hytuning/anchor_stated"] == 1.0
        else:
            assert len(FakeVLLM.calls) == 1
    keys = [k for k in logs[False] if k == "num_tokens" or k.startswith("completions/")]
    assert keys and {k: logs[True][k] for k in keys} == {k: logs[False][k] for k in keys}
