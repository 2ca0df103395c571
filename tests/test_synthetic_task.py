"""The synthetic multiple-choice task of benchmarks/synthetic_task.py: deterministic, disjoint splits, distractors
each ruled out by a named step, readable by the package's loaders unchanged."""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import synthetic_task  # noqa: E402

from hytuning_trl import load_mcq  # noqa: E402


def test_splits_are_deterministic_and_disjoint():
    first, again, other = synthetic_task.generate(0), synthetic_task.generate(0), synthetic_task.generate(1)
    assert first == again and first != other
    sizes = {k: len(v) for k, v in first.items()}
    assert sizes == {"traces": 64, "unlabeled": 256, "eval": 400, "probe": 64}
    seen = [{q["question"] for q in first[k]} for k in ("traces", "unlabeled", "eval")]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert {q["question"] for q in first["probe"]} <= seen[2]


def test_each_distractor_is_ruled_out_by_a_step():
    """Bug it catches: a trace that names a distractor nowhere (no step lowers its probability) or rules out the
    gold answer; the sum itself is checked by hand arithmetic."""
    for q in synthetic_task.generate(3, style="rule_out")["traces"]:
        a, b = map(int, re.findall(r"\d+", q["question"]))
        gold = q["answer_idx"]
        assert q["options"][gold] == str(a + b)
        steps = q["reasoning"].split("\n\n")
        assert len(steps) == 3 and steps[-1] == f"So {gold} ({a + b})."
        ruled_out = set(re.findall(r"\b([A-D]) \(\d+\)", " ".join(steps[:2])))
        assert ruled_out == set("ABCD") - {gold}
        ones = re.findall(r"not ([A-D])", steps[0])
        assert len(ones) == 1 and int(q["options"][ones[0]]) % 10 != (a + b) % 10  # the ones step: a ones digit


def test_check_traces_compute_then_look_up():
    """The default style: the ones and tens steps compute the sum (checked by hand arithmetic), and the last step
    names every option in order with 'yes' for the gold one only; the questions are those of the other style."""
    checked = synthetic_task.generate(3)
    assert [q["question"] for q in checked["eval"]] == [
        q["question"] for q in synthetic_task.generate(3, style="rule_out")["eval"]
    ]
    for q in checked["traces"]:
        a, b = map(int, re.findall(r"\d+", q["question"]))
        ones, tens, check = q["reasoning"].split("\n\n")
        assert ones.startswith(f"Ones: {a % 10}+{b % 10}={a % 10 + b % 10}, write {(a + b) % 10}")
        assert ("carry 1" in ones) == (a % 10 + b % 10 >= 10)
        assert tens.endswith(f"so the sum is {a + b}.")
        marks = re.findall(r"([A-D]) (\d+) (yes|no)", check)
        assert [m[0] for m in marks] == list("ABCD")
        assert [m[0] for m in marks if m[2] == "yes"] == [q["answer_idx"]]
        assert all(q["options"][letter] == value for letter, value, _ in marks)


def test_loaders_read_it(tmp_path):
    import json

    from hytuning_trl._testing import tiny_tokenizer
    from hytuning_trl.prg_analysis import load_traces

    splits = synthetic_task.generate(0, n_traces=8, n_unlabeled=8, n_eval=8)
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in splits["traces"]))
    traces = load_traces(str(path), tiny_tokenizer(), use_chat_template=False)
    assert len(traces) == 8 and all(len(t.steps) == 3 for t in traces)
    assert [t.gold for t in traces] == [r["answer_idx"] for r in splits["traces"]]
    assert len(load_mcq(splits["eval"])) == 8
