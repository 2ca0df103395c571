"""Multiple-choice evaluation and the hytuning-eval command on a tiny local model."""

import json

import pytest
from datasets import Dataset

from hytuning_trl import evaluate_mcq, load_mcq


def _write_jsonl(path, mcq):
    with open(path, "w") as f:
        for e in mcq:
            f.write(
                json.dumps({"question": e["question"], "options": e["options"], "answer_idx": e["answer_idx"]}) + "\n"
            )


def test_evaluate_mcq(trained_model, trained_tokenizer, mcq):
    questions = load_mcq(
        Dataset.from_list([{k: e[k] for k in ("question", "options", "answer_idx")} for e in mcq[:6]])
    )
    result = evaluate_mcq(trained_model, trained_tokenizer, questions, batch_size=4, max_new_tokens=80, progress=False)
    assert len(result.records) == 6
    for r in result.records:
        assert 0.0 <= r["confidence"] <= 1.0 and r["chosen"] in "ABCD" and r["correct"] == (r["chosen"] == r["gold"])
    assert result.metrics["n"] == 6 and result.metrics["stated_rate"] > 0  # the tiny model states answers
    assert any(r["num_steps"] >= 1 for r in result.records)


def test_stated_only_figures(trained_model, trained_tokenizer, mcq):
    """Headline figures keep forced answers; the stated-only figures are computed over stated answers alone."""
    from hytuning_trl.calibration import calibration_metrics
    from hytuning_trl.evaluation import summarise

    records = [
        {"confidence": 0.9, "correct": True, "stated": True, "prg": 0.1},
        {"confidence": 0.8, "correct": False, "stated": True, "prg": 0.0},
        {"confidence": 0.3, "correct": False, "stated": False, "prg": 0.2},
        {"confidence": 0.6, "correct": True, "stated": True, "prg": -0.1},
    ]
    m = summarise(records)
    assert m["n"] == 4 and m["accuracy"] == 0.5 and m["stated_rate"] == 0.75
    ref = calibration_metrics([0.9, 0.8, 0.6], [1, 0, 1])
    assert m["stated_only"]["n"] == 3 and m["stated_only"]["brier"] == pytest.approx(ref["brier"])
    assert m["stated_only"]["accuracy"] == pytest.approx(2 / 3)


def test_bad_mcq_data(tmp_path):
    with pytest.raises(ValueError, match="'options'"):
        load_mcq([{"question": "q", "answer_idx": "A"}])
    with pytest.raises(ValueError, match="not one of its options"):
        load_mcq([{"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "E"}])
    rows = load_mcq([{"question": "q", "options": ["x", "y", "z"], "answer": "z"}])
    assert rows[0]["answer_idx"] == "C" and rows[0]["options"] == {"A": "x", "B": "y", "C": "z"}


def test_calibration_eval_callback_logs(build_trainer, mcq):
    from hytuning_trl import CalibrationEvalCallback

    heldout = [{k: e[k] for k in ("question", "options", "answer_idx")} for e in mcq[:4]]
    callback = CalibrationEvalCallback(heldout, eval_steps=1, max_new_tokens=32, batch_size=4)
    trainer = build_trainer(max_steps=2, callbacks=[callback])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all("eval_calibration/ece" in h and "eval_calibration/accuracy" in h for h in logs)
    assert len(callback.history) == 2 and callback.history[0]["n"] == 4
    # each letter's share of the greedy answers reaches the logs beside the metrics
    for h, probe in zip(logs, callback.history):
        assert {k: v for k, v in h.items() if k.startswith("eval_calibration/letters/")} == pytest.approx(
            {f"eval_calibration/letters/{k}/answered": v["answered"] for k, v in probe["letters"].items()}
        )


def test_letter_shares_in_the_summary_worked_by_hand():
    """Bug it catches: a model that no longer gives one letter (0.4.0's RL and stalled-RD runs) hidden in the
    summary: each letter's gold share, answered share (stated or forced) and accuracy on its questions, by hand,
    and their rows in the printed table; no answer read is no letter."""
    from hytuning_trl.evaluation import summarise
    from hytuning_trl.report import format_table

    rows = [
        ("A", "A", True),
        ("A", "B", True),
        ("B", "B", True),
        ("B", "B", False),
        ("C", "B", True),
        ("D", "D", True),
        ("D", None, False),
    ]  # (gold, chosen, stated)
    records = [{"confidence": 0.5, "correct": g == c, "stated": st, "prg": 0.0, "gold": g, "chosen": c}
               for g, c, st in rows]  # fmt: skip
    letters = summarise(records)["letters"]
    assert list(letters) == ["A", "B", "C", "D"]
    assert {k: (v["gold"] * 7, v["answered"] * 7) for k, v in letters.items()} == pytest.approx(
        {"A": (2, 1), "B": (2, 4), "C": (1, 0), "D": (2, 1)}
    )
    assert {k: v["accuracy"] for k, v in letters.items()} == {"A": 0.5, "B": 1.0, "C": 0.0, "D": 0.5}
    table = format_table(summarise(records)).splitlines()
    assert table[-3:] == [
        f"  {'gold share':<28}" + "".join(f"{x:>10}" for x in ("0.2857", "0.2857", "0.1429", "0.2857")),
        f"  {'answered share':<28}" + "".join(f"{x:>10}" for x in ("0.1429", "0.5714", "0.0000", "0.1429")),
        f"  {'accuracy on them':<28}" + "".join(f"{x:>10}" for x in ("0.5000", "1.0000", "0.0000", "0.5000")),
    ]
    assert "letters" not in summarise([{k: v for k, v in r.items() if k != "gold"} for r in records])


def test_calibration_callback_refuses_zero3_without_sync(mcq):
    """Bug it catches: a plain GRPOTrainer (no `_sync_num_batches`) under DeepSpeed on several processes evaluated
    without synchronised forwards, which hangs ZeRO-3: refused with the fix instead."""
    from types import SimpleNamespace

    import pytest

    from hytuning_trl import CalibrationEvalCallback

    callback = CalibrationEvalCallback([{k: e[k] for k in ("question", "options", "answer_idx")} for e in mcq[:4]])
    plain = SimpleNamespace(
        accelerator=SimpleNamespace(num_processes=2, process_index=0),
        is_deepspeed_enabled=True,
        args=SimpleNamespace(),
    )
    callback.bind(plain)
    with pytest.raises(ValueError, match="_sync_num_batches.*HyTuningTrainer"):
        callback.evaluate()
