"""Confidence estimators: each against a hand computation (plain forwards, formulas worked by hand, sklearn)."""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from sklearn.metrics import roc_auc_score

from hytuning_trl import evaluate_mcq, load_mcq, score_rollouts
from hytuning_trl.estimators import (
    calibrated_confidences,
    consistency,
    estimator_confidences,
    fit_estimator,
    fit_power,
    group_shares,
    majority_vote,
    marginal,
    reasoning_likelihood,
    weakest_token,
)
from hytuning_trl.evaluation import summarise


def test_formulas_by_hand():
    lps = [math.log(0.9), math.log(0.5), math.log(0.8)]
    assert weakest_token(lps) == pytest.approx(0.5)
    assert reasoning_likelihood(lps) == pytest.approx((0.9 * 0.5 * 0.8) ** (1 / 3))
    assert weakest_token([]) == 1.0 and reasoning_likelihood([]) == 1.0
    samples = [
        {"option_letters": ["A", "B"], "option_logprobs": [math.log(0.25), math.log(0.75)]},
        {"option_letters": ["A", "B"], "option_logprobs": [0.0, 0.0]},  # unnormalised: 0.5 / 0.5
        {"option_letters": ["A", "B"], "option_logprobs": None},  # no option scores: counts 0
    ]
    assert marginal(samples, "B") == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert consistency(["B", None, "B", "C"], "B") == 0.5
    assert majority_vote(["C", "B", "B", "C", None], [0.1, 0.2, 0.3, 0.9, 0.0]) == "C"  # tie: more mass
    assert majority_vote([None, None]) is None
    assert group_shares(["A", "A", "B", None]) == [2 / 3, 2 / 3, 1 / 3, None]
    assert group_shares(["A", None, None]) == [None, None, None]


def test_token_logprobs_against_a_plain_forward(tokenizer):
    """Bug it catches: the stat positions' targets shifted by one (each token scored at its own position) or the
    answer statement counted as reasoning."""
    from hytuning_trl._testing import tiny_model

    model = tiny_model(tokenizer, seed=3, hidden_size=32).eval()
    prompt, completion = [3, 4, 5], [10, 11, 12, 13, 14, 15]
    for method in ("packed", "naive"):
        [s] = score_rollouts(model, [prompt], [completion], step_spans=[[(0, 2), (2, 4)]], trigger_ids=[7],
                             option_ids=[30, 31], method=method)  # fmt: skip
        with torch.no_grad():
            logp = model(torch.tensor([prompt + completion])).logits[0].double().log_softmax(-1)
        ref = [logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(completion)]
        assert s.token_logprobs == pytest.approx(ref, abs=1e-5)
        s.reasoning_end = 4  # tokens 4, 5: the statement
        assert s.weakest_token == pytest.approx(min(math.exp(x) for x in ref[:4]), rel=1e-5)
        assert s.reasoning_likelihood == pytest.approx(math.exp(sum(ref[:4]) / 4), rel=1e-5)


def _questions(mcq, n):
    return load_mcq(Dataset.from_list([{k: e[k] for k in ("question", "options", "answer_idx")} for e in mcq[:n]]))


def test_evaluation_estimators_by_hand(trained_model, trained_tokenizer, mcq):
    """Every single-pass estimator of a record from a plain forward over its prompt and completion; the sampled ones
    at a temperature so low that every sample is the greedy completion (consistency 1 on stated answers, marginal =
    after_reasoning); maj@k; AUROC against sklearn."""
    from hytuning_trl.mcq import render_prompts

    questions = _questions(mcq, 8)
    result = evaluate_mcq(trained_model, trained_tokenizer, questions, batch_size=4, max_new_tokens=80,
                          progress=False, num_samples=3, sample_temperature=1e-4)  # fmt: skip
    prompts = render_prompts(trained_tokenizer, questions, None, None)
    trigger = trained_tokenizer("\nThe answer is", add_special_tokens=False)["input_ids"]
    for r, prompt in zip(result.records, prompts):
        completion = trained_tokenizer(r["completion"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = trained_model(torch.tensor([prompt + completion])).logits[0].double().log_softmax(-1)
        ref = [logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(completion)]
        # the reasoning ends where the last "The answer is" starts: find it by hand on the token ids
        end = len(completion)
        for i in range(len(completion) - len(trigger) + 1, -1, -1):
            if r["stated"] and completion[i : i + len(trigger) - 1] == trigger[1:]:
                end = i
                break
        est = r["estimators"]
        assert est["weakest_token"] == pytest.approx(min(math.exp(x) for x in ref[:end]), rel=1e-4)
        assert est["reasoning_likelihood"] == pytest.approx(math.exp(sum(ref[:end]) / end), rel=1e-4)
        assert est["prg_gated"] == pytest.approx(r["confidence"] * min(max(r["gain"], 0.0), 1.0))
        assert est["marginal"] == pytest.approx(r["confidence"], abs=1e-4)
        assert est["consistency"] == (1.0 if r["stated"] else 0.0)
        assert r["majority"] == r["chosen"]
    correct = [r["correct"] for r in result.records]
    m = result.metrics
    assert m["maj_at_k"] == pytest.approx(np.mean(correct)) and m["num_samples"] == 3
    for name, block in m["estimators"].items():
        assert block["accuracy"] == pytest.approx(np.mean(correct))
        scores = [r["estimators"][name] for r in result.records]
        if 0 < sum(correct) < len(correct):
            assert block["auroc"] == pytest.approx(roc_auc_score(correct, scores))
    assert summarise(result.records)["estimators"] == m["estimators"]  # re-analysable from the records alone


def test_sampling_differs_from_greedy_at_temperature_one(trained_model, trained_tokenizer, mcq):
    """k samples come from one sampled generate call; at temperature 1 on a tiny model some differ from greedy."""
    result = evaluate_mcq(trained_model, trained_tokenizer, _questions(mcq, 4), batch_size=4, max_new_tokens=40,
                          progress=False, num_samples=4, sample_temperature=1.0)  # fmt: skip
    assert all(len(r["samples"]) == 4 for r in result.records)
    assert any(r["estimators"]["consistency"] < 1.0 for r in result.records)
    for r in result.records:  # maj@k by hand from the kept samples
        votes = [s["answer"] for s in r["samples"]]
        top = max(votes.count(v) for v in votes)
        assert votes.count(r["majority"]) == top


def test_posthoc_fits_by_grid():
    """The power fit and the marginal temperature against a brute-force grid of the same objective."""
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.6, 1.0, 200)
    correct = rng.uniform(size=200) < conf**3  # true calibration is c ** 3
    a = fit_power(conf, correct)
    grid = np.exp(np.linspace(math.log(0.1), math.log(30), 4001))
    nll = [-np.mean(np.where(correct, np.log(conf**g), np.log1p(-(conf**g)))) for g in grid]
    assert a == pytest.approx(grid[int(np.argmin(nll))], rel=2e-3) and 2 < a < 4.5
    records = []
    for _ in range(60):
        z = rng.normal(size=(3, 4)) * 2
        gold = "ABCD"[int(np.argmax(z.sum(0) + rng.normal(size=4) * 3))]
        samples = [{"option_letters": list("ABCD"), "option_logprobs": list(row), "answer": "A", "stated": True}
                   for row in z]  # fmt: skip
        records.append({"gold": gold, "chosen": "A", "correct": gold == "A", "samples": samples})
    fit = fit_estimator(records, "marginal")
    temps = np.exp(np.linspace(math.log(0.05), math.log(20), 3001))

    def nll_at(t):
        p = []
        for r in records:
            rows = np.array([s["option_logprobs"] for s in r["samples"]]) / t
            probs = np.exp(rows - rows.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            p.append(probs[:, "ABCD".index(r["gold"])].mean())
        return -np.mean(np.log(p))

    best = temps[int(np.argmin([nll_at(t) for t in temps]))]
    assert fit["kind"] == "temperature" and fit["value"] == pytest.approx(best, rel=1e-2)
    scaled = calibrated_confidences(records, "marginal", fit)
    assert scaled[0] == pytest.approx(
        np.mean([np.exp(np.array(s["option_logprobs"]) / best)[0] / np.exp(np.array(s["option_logprobs"]) / best).sum()
                 for s in records[0]["samples"]]), rel=1e-2)  # fmt: skip
    power = {"kind": "power", "value": 2.0}
    rec = {"confidence": 0.5, "reasoning_logprobs": [math.log(0.81)], "gain": 0.5, "chosen": "A"}
    assert calibrated_confidences([rec], "weakest_token", power) == pytest.approx([0.81**2])
    assert estimator_confidences(rec)["prg_gated"] == pytest.approx(0.25)
