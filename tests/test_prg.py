"""PRG: step splitting, aggregation, and the packed single pass against the naive K+1 forwards."""

import math
import warnings

import pytest
import torch
from conftest import WS, reference_trajectory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hytuning_trl import answer_logprob_trajectory, prg_score, score_rollouts, split_steps
from hytuning_trl._testing import tiny_model


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, seed=3, hidden_size=32).eval()


# ---------------------------------------------------------------- prg_score
@pytest.mark.parametrize(
    "aggregation,expected",
    [
        # p = [0.2, 0.5, 0.4, 0.8]: gains 0.3, -0.1, 0.4
        ("monotone", (0.8 - 0.2) * 2 / 3),
        ("net", 0.6),
        ("positive", (0.3 + 0 + 0.4) / 3),
        ("auc", ((0.5 - 0.2) + (0.4 - 0.2) + (0.8 - 0.2)) / 3),
    ],
)
def test_prg_score_hand_values(aggregation, expected):
    lp = [math.log(p) for p in (0.2, 0.5, 0.4, 0.8)]
    assert prg_score(lp, aggregation) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "probs,aggregation,expected",
    [
        # steady decline 0.9 -> 0.6 -> 0.3 -> 0.1: every gain has the sign of p_K - p_0 = -0.8
        ((0.9, 0.6, 0.3, 0.1), "monotone", -0.8),
        ((0.9, 0.6, 0.3, 0.1), "net", -0.8),
        ((0.9, 0.6, 0.3, 0.1), "auc", ((0.6 - 0.9) + (0.3 - 0.9) + (0.1 - 0.9)) / 3),
        ((0.9, 0.6, 0.3, 0.1), "positive", 0.0),  # gain only, by definition
        # one-step decline 0.7 -> 0.2
        ((0.7, 0.2), "monotone", -0.5),
        ((0.7, 0.2), "auc", -0.5),
        # steady rise 0.1 -> 0.4 -> 0.8
        ((0.1, 0.4, 0.8), "monotone", 0.7),
        # a decline with one setback: net -0.5, gains -0.4, +0.2, -0.3 -> 2 of 3 consistent
        ((0.8, 0.4, 0.6, 0.3), "monotone", -0.5 * 2 / 3),
        # a zero gain counts as consistent
        ((0.2, 0.2, 0.6), "monotone", 0.4),
    ],
)
def test_prg_sign(probs, aggregation, expected):
    """Bug it catches: `monotone` scoring a decline as 0 (share of non-negative gains), never below zero."""
    assert prg_score([math.log(p) for p in probs], aggregation) == pytest.approx(expected, abs=1e-12)


def test_prg_score_edge_cases():
    assert prg_score([math.log(0.7)]) == 0.0  # K = 0
    assert prg_score([0.0, 0.0, 0.0]) == 0.0  # certain before reasoning: decide first, explain later
    assert prg_score([0.0, math.log(0.5), math.log(0.1)], "net") == pytest.approx(-0.9)
    assert math.isnan(prg_score([0.0, float("nan")]))
    with pytest.raises(ValueError, match="aggregation"):
        prg_score([0.0], "median")
    with pytest.raises(ValueError):
        prg_score([])


@given(st.lists(st.floats(min_value=-30, max_value=0), min_size=2, max_size=20))
def test_monotone_is_a_shrunk_net_gain(lps):
    """`monotone` = net gain times a share in [0, 1]: never larger in size, never of the other sign. Bug it catches:
    a share computed against a fixed sign (>= 0), which shrinks a steady decline to 0."""
    monotone, net = prg_score(lps, "monotone"), prg_score(lps, "net")
    assert abs(monotone) <= abs(net) + 1e-12 and monotone * net >= 0
    p = [math.exp(x) for x in lps]
    if all(b <= a for a, b in zip(p, p[1:])) or all(b >= a for a, b in zip(p, p[1:])):
        assert monotone == pytest.approx(net, abs=1e-12)  # a monotone trajectory keeps its whole net gain


# ---------------------------------------------------------------- split_steps
def test_split_steps_blank_lines(tokenizer):
    text = "first we look.\n\nthen we test.\n\nso the heart is likely.\nThe answer is A."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    end = len(tokenizer(text[: text.index("\nThe answer")], add_special_tokens=False)["input_ids"])
    spans = split_steps(ids, tokenizer, "\n\n", reasoning_end=end)
    assert spans[0][0] == 0 and spans[-1][1] == end
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # spans tile the reasoning
    steps = [tokenizer.decode(ids[s:e]).strip() for s, e in spans]
    assert steps == ["first we look.", "then we test.", "so the heart is likely."]


def test_split_steps_fallback_and_limits(tokenizer):
    ids = tokenizer("a b c.\nd e f.\ng h.", add_special_tokens=False)["input_ids"]
    assert len(split_steps(ids, tokenizer, "\n\n")) == 3  # falls back to single newlines
    assert len(split_steps(ids, tokenizer, "\n\n", fallback_separator=None)) == 1  # no separator: one step
    assert split_steps(ids, tokenizer, "\n\n", reasoning_end=0) == []  # empty reasoning: K = 0
    many = tokenizer("\n\n".join(f"step {i}." for i in range(40)), add_special_tokens=False)["input_ids"]
    spans = split_steps(many, tokenizer, "\n\n", max_steps=16)
    assert len(spans) == 16 and spans[0][0] == 0 and spans[-1][1] == len(many)
    with pytest.raises(ValueError, match="reasoning_end"):
        split_steps(ids, tokenizer, reasoning_end=len(ids) + 1)


# ---------------------------------------------------------------- against a plain forward built by hand
sample = st.fixed_dictionaries(
    {
        "prompt": st.lists(st.integers(5, 390), min_size=1, max_size=12),
        "steps": st.lists(st.lists(st.integers(5, 390), min_size=1, max_size=9), min_size=0, max_size=6),
        "answer": st.lists(st.integers(7, 390), min_size=1, max_size=3),
        "tail": st.lists(st.integers(5, 390), min_size=0, max_size=5),
    }
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(sample, min_size=1, max_size=5),
    st.sampled_from(["sdpa", "eager"]),
    st.sampled_from([64, 100000]),
    st.sampled_from(["packed", "naive"]),
)
def test_trajectory_matches_plain_forward(model, samples, attn, budget, method):
    """Both layouts against the hand-built reference (random ids; 5 and 6 count as whitespace, so branch points
    move). Bug it catches: a mask, position or branch-placement error shared by the packed and naive layouts."""
    model.config._attn_implementation = attn
    trigger = [7, 8]
    prompts = [s["prompt"] for s in samples]
    completions, spans = [], []
    for s in samples:
        ids, sp = [], []
        for step in s["steps"]:
            sp.append((len(ids), len(ids) + len(step)))
            ids += step
        completions.append(ids + s["tail"])
        spans.append(sp)
    answers = [s["answer"] for s in samples]
    out = score_rollouts(
        model,
        prompts,
        completions,
        step_spans=spans,
        trigger_ids=trigger,
        answer_ids=answers,
        token_budget=budget,
        method=method,
        vocab_chunk_elems=1000,
        whitespace_ids=WS,
    )
    for got, s in zip(out, samples):
        ref = reference_trajectory(model, s["prompt"], s["steps"], trigger, s["answer"])
        assert got.num_steps == len(s["steps"])
        assert got.answer_logprobs == pytest.approx(ref, abs=1e-4)
    model.config._attn_implementation = "sdpa"


@pytest.mark.parametrize("mode", ["options", "raw"])
def test_padded_batches_match_plain_forward(model, tokenizer, mode):
    """TRL hands the scoring pass left-padded prompts and right-padded completions: every k against the reference,
    on real text whose steps end in blank lines (so every branch moves before them)."""
    from hytuning_trl.answers import whitespace_token_ids

    ws = whitespace_token_ids(tokenizer)
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [enc("Question: which organ?\nThink step by step.\n"), enc("Question 2: fever?\n")]
    step_texts = [["first we look.\n\n", "then we test.\n\n", "so the heart is likely."], ["the lung is fine.\n\n"]]
    steps = [[enc(t) for t in texts] for texts in step_texts]
    tails = [enc("\nThe answer is B."), enc("\nThe answer is A.")]
    trigger = enc("\nThe answer is")
    options = [enc(" " + letter)[0] for letter in "ABCD"]
    completions = [[t for st_ in ss for t in st_] + tail for ss, tail in zip(steps, tails)]
    spans = []
    for ss in steps:
        sp, at = [], 0
        for step in ss:
            sp.append((at, at + len(step)))
            at += len(step)
        spans.append(sp)
    width_p, width_c = max(map(len, prompts)), max(map(len, completions))
    left = torch.tensor([[0] * (width_p - len(p)) + p for p in prompts])
    left_mask = torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) for p in prompts])
    right = torch.tensor([c + [0] * (width_c - len(c)) for c in completions])
    right_mask = torch.tensor([[1] * len(c) + [0] * (width_c - len(c)) for c in completions])
    answers = [[options[1]], [options[0]]] if mode == "options" else [enc(" B"), enc(" A")]
    out = score_rollouts(
        model,
        left,
        right,
        prompt_mask=left_mask,
        completion_mask=right_mask,
        step_spans=spans,
        trigger_ids=trigger,
        answer_ids=answers,
        option_ids=options if mode == "options" else None,
        whitespace_ids=ws,
    )
    for got, p, ss, a, idx in zip(out, prompts, steps, answers, (1, 0)):
        if mode == "options":
            ref = reference_trajectory(model, p, ss, trigger, options=options, index=idx, ws=ws)
        else:
            ref = reference_trajectory(model, p, ss, trigger, answer=a, ws=ws)
        assert got.answer_logprobs == pytest.approx(ref, abs=1e-4)


def test_branches_see_context_then_trigger(tokenizer):
    """Every branch k = 0..K is inserted before the whitespace-only tokens that end what precedes it: the tokens a
    branch attends to decode to the context followed directly by the trigger (no doubled newline)."""
    from hytuning_trl.answers import AnswerExtractor, whitespace_token_ids
    from hytuning_trl.packing import build_packed_row
    from hytuning_trl.scoring import _branch_points

    ws = whitespace_token_ids(tokenizer)
    prompt = tokenizer("<|user|>Question: which organ?<|end|><|assistant|>\n")["input_ids"]
    text = "first we look.\n\nthen we test.\n\nso the heart is likely.\nThe answer is B."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    parsed = AnswerExtractor(tokenizer, answer_options=["A", "B", "C", "D"]).parse(ids)
    trigger = tokenizer("\nThe answer is", add_special_tokens=False)["input_ids"]
    cuts = [len(prompt) + c for c in [parsed.spans[0][0]] + [e for _, e in parsed.spans]]
    row = build_packed_row(prompt, ids, _branch_points(prompt + ids, cuts, ws), trigger, None, [1], False)
    seen = []
    for k in range(len(parsed.spans) + 1):
        start = row.groups.index(k)
        visible = [t for t, g in zip(row.input_ids[:start], row.groups[:start]) if g == -1]
        seen.append(tokenizer.decode(visible + [t for t, g in zip(row.input_ids, row.groups) if g == k]))
    head = "<|user|>Question: which organ?<|end|><|assistant|>"
    assert seen == [
        head + "\nThe answer is",
        head + "\nfirst we look.\nThe answer is",
        head + "\nfirst we look.\n\nthen we test.\nThe answer is",
        head + "\nfirst we look.\n\nthen we test.\n\nso the heart is likely.\nThe answer is",
    ]


def test_options_mode_and_forced_choice(model):
    options = [20, 21, 22, 23]
    prompts, steps = [[1, 2, 3], [4, 5]], [[[30, 31], [32]], [[40, 41, 42]]]
    forced = answer_logprob_trajectory(model, prompts, steps, [7], [None, None], option_ids=options)
    naive = answer_logprob_trajectory(model, prompts, steps, [7], [None, None], option_ids=options, method="naive")
    for f, n in zip(forced, naive):
        assert torch.allclose(f, n, atol=1e-4)
        assert (f <= 0).all()
    stats = score_rollouts(
        model,
        prompts,
        [[30, 31, 32], [40, 41, 42]],
        step_spans=[[(0, 2), (2, 3)], [(0, 3)]],
        trigger_ids=[7],
        option_ids=options,
        answer_ids=[[22], None],
    )
    # option-renormalised: the probabilities over the options sum to 1 at every k
    for s in stats:
        total = torch.tensor(s.option_logprobs).exp().sum(-1)
        assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    assert stats[0].answer_index == 2
    assert stats[1].answer_index == int(torch.tensor(stats[1].option_logprobs[-1]).argmax())


def test_statistics_match_full_logits(model):
    """self-certainty and entropy against a direct computation from the model's full logits."""
    prompt, completion = [3, 4, 5, 6], [10, 11, 12, 13, 14]
    [stats] = score_rollouts(model, [prompt], [completion])
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].double()
    logp = logits.log_softmax(-1)
    vocab = logits.size(-1)
    self_certainty = (-math.log(vocab) - logp.mean(-1)).mean().item()  # KL(U || p)
    entropy = -(logp.exp() * logp).sum(-1).mean().item()
    assert stats.self_certainty == pytest.approx(self_certainty, abs=1e-4)
    assert stats.entropy == pytest.approx(entropy, abs=1e-4)
    assert stats.answer_logprobs is None


def test_padded_tensor_inputs(model):
    prompts = [[1, 2, 3, 4], [5, 6]]
    completions = [[10, 11, 12], [13, 14, 15, 16, 17]]
    ref = score_rollouts(model, prompts, completions)
    left = torch.tensor([[1, 2, 3, 4], [0, 0, 5, 6]])
    left_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    right = torch.tensor([[10, 11, 12, 0, 0], [13, 14, 15, 16, 17]])
    right_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = score_rollouts(model, left, right, prompt_mask=left_mask, completion_mask=right_mask)
    for a, b in zip(ref, out):
        assert a.self_certainty == pytest.approx(b.self_certainty, abs=1e-5)


def test_fallback_when_model_rejects_4d_mask(tokenizer):
    model = tiny_model(tokenizer, seed=4).eval()
    backbone = model.model
    original = backbone.forward

    def refuse(*args, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            raise RuntimeError("custom 4D masks are not supported")
        return original(*args, attention_mask=attention_mask, **kwargs)

    backbone.forward = refuse
    args = dict(step_spans=[[(0, 2), (2, 4)]], trigger_ids=[7], answer_ids=[[9]])
    with pytest.warns(UserWarning, match="falls back"):
        first = score_rollouts(model, [[1, 2, 3]], [[10, 11, 12, 13]], **args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        second = score_rollouts(model, [[1, 2, 3]], [[10, 11, 12, 13]], **args)
    assert first[0].answer_logprobs == second[0].answer_logprobs and len(first[0].answer_logprobs) == 3


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="non-empty prompt"):
        score_rollouts(model, [[]], [[1, 2]])
    with pytest.raises(ValueError, match="outside"):
        score_rollouts(model, [[1]], [[1, 2]], step_spans=[[(0, 5)]], trigger_ids=[3], answer_ids=[[4]])
    with pytest.raises(ValueError, match="not among the option"):
        score_rollouts(
            model, [[1]], [[1, 2]], step_spans=[[(0, 2)]], trigger_ids=[3], answer_ids=[[4]], option_ids=[5, 6]
        )
    with pytest.raises(ValueError, match="completions"):
        score_rollouts(model, [[1], [2]], [[1, 2]])
