"""Multiple-choice evaluation and the hytuning-eval command on a tiny local model."""

import json
import subprocess
import sys

import pytest
from datasets import Dataset

from hytuning_trl import evaluate_mcq, load_mcq
from hytuning_trl.evaluation import main


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


def test_hytuning_eval_end_to_end(tmp_path, trained_dir, mcq):
    data = tmp_path / "heldout.jsonl"
    _write_jsonl(data, mcq[:5])
    out = tmp_path / "report"
    res = main(
        [
            "--model_name_or_path",
            trained_dir,
            "--dataset_name",
            str(data),
            "--output_dir",
            str(out),
            "--max_new_tokens",
            "64",
            "--batch_size",
            "3",
        ]
    )
    report = json.loads((out / "calibration.json").read_text())
    assert report["n"] == 5 and set(report["metrics"]) >= {"accuracy", "ece", "brier", "auroc", "aurc"}
    assert report["settings"]["max_new_tokens"] == 64 and len(report["bins"]) == 15
    assert res["metrics"]["accuracy"] == report["metrics"]["accuracy"]
    png = (out / "reliability.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 5


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "hytuning_trl.evaluation", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--model_name_or_path" in out.stdout


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
