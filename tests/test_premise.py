"""The premise preset of the evidence harness (issue 34) end to end on the tiny model: checkpoints evaluated with every
confidence estimator, the premise table recomputed from the predictions files (sklearn), collect and restore."""

import json
import os
import sys
from dataclasses import replace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from evidence import analysis, cli, presets, report, runner, store  # noqa: E402


def _predictions(folder):
    with open(os.path.join(folder, "predictions.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_premise_evaluates_checkpoints_with_every_estimator(tmp_path, trained_dir, capsys):
    """The premise preset on the tiny model, one seed, checkpoints 2 and 4: each checkpoint evaluated single pass on
    the 12 eval questions (the last one's is the run's calibration_after; the last one also on the 4 questions after
    them, --extra_eval) and with samples on the sampled ones; the per-checkpoint table's accuracy, maj@k and AUROCs
    recomputed here from the predictions (sklearn); collect and restore carry the checkpoint evaluations; a rerun
    evaluates nothing again."""
    import synthetic_task
    from sklearn.metrics import roc_auc_score

    from hytuning_trl.estimators import ESTIMATORS, SAMPLED_ESTIMATORS, estimator_confidences

    out = str(tmp_path / "premise")
    splits = synthetic_task.generate(3, n_traces=16, n_unlabeled=32, n_eval=16)  # small: 12 RD traces + 4 anchor
    data = {}
    for name in ("traces", "unlabeled", "eval"):
        data[name] = str(tmp_path / f"{name}.jsonl")
        runner.write_jsonl(data[name], splits[name])
    argv = ["--preset", "premise", "--seeds", "1", "--max_steps", "4", "--checkpoint_steps", "2", "4"]
    argv += ["--train_file", data["unlabeled"], "--eval_file", data["eval"], "--traces_file", data["traces"]]
    argv += [
        "--max_eval_samples",
        "12",
        "--extra_eval",
        "4",
        "--n_bootstrap",
        "100",
        "--jobs",
        "1",
        "--output_dir",
        out,
    ]
    argv += ["--", "--model_name_or_path", trained_dir, "--max_completion_length", "24", "--eval_max_new_tokens", "24"]
    argv += ["--learning_rate", "1e-3", "--save_steps", "2"]
    result = cli.main(argv)
    capsys.readouterr()
    run = os.path.join(out, "runs", "rd_only", "seed0")
    premise = result["premise"]
    assert premise["checkpoint_steps"] == [2, 4] and premise["last_step"] == 4
    assert not os.path.exists(os.path.join(run, "premise", "step4", "full"))  # calibration_after serves
    questions = [q["question"] for q in splits["eval"]]
    assert not os.path.exists(os.path.join(run, "premise", "step2", "extra"))  # the last checkpoint only
    for step in (2, 4):
        full = _predictions(os.path.join(run, "premise", f"step{step}", "full") if step == 2 else
                            os.path.join(run, "calibration_after"))  # fmt: skip
        assert [r["question"] for r in full] == questions[:12]
        if step == 4:
            extra = _predictions(os.path.join(run, "premise", "step4", "extra"))
            assert [r["question"] for r in extra] == questions[12:]
            full += extra
        n = len(full)
        sampled = _predictions(os.path.join(run, "premise", f"step{step}", "sampled"))
        assert len(sampled) == 12 and all(len(r["samples"]) == 4 for r in sampled)
        row = premise["per_run"]["rd_only/seed0"][str(step)]
        correct = [r["correct"] for r in full]
        assert row["n_questions"] == n == (16 if step == 4 else 12) and row["errors"] == n - sum(correct)
        assert row["accuracy"] == pytest.approx(sum(correct) / n)
        assert row["maj_at_k"] == pytest.approx(sum(r["majority"] == r["gold"] for r in sampled) / 12)
        for name in ESTIMATORS:
            recs = sampled if name in SAMPLED_ESTIMATORS else full
            y = [r["correct"] for r in recs]
            if 0 < sum(y) < len(y):
                scores = [estimator_confidences(r)[name] for r in recs]
                assert row["auroc"][name]["value"] == pytest.approx(roc_auc_score(y, scores)), (step, name)
    assert set(premise["against_after_reasoning"]) == set(ESTIMATORS[1:]) and premise["missing"] == []
    assert "The premise" in open(os.path.join(out, "results.md")).read()
    kept = tmp_path / "kept"
    copied = store.collect(out, str(kept))
    assert os.path.join("runs", "rd_only", "seed0", "premise", "step2", "sampled", "predictions.jsonl") in copied
    fresh = tmp_path / "fresh"
    restored = store.restore(str(kept), str(fresh))
    assert os.path.join("runs", "rd_only", "seed0", "premise", "step4", "sampled", "predictions.jsonl") in restored
    assert os.path.join("runs", "rd_only", "seed0", "premise", "step4", "extra", "predictions.jsonl") in restored
    before = os.path.getmtime(os.path.join(run, "premise", "step2", "sampled", "predictions.jsonl"))
    cli.main(argv)  # resumed: the run is done, its evaluations are there
    capsys.readouterr()
    assert os.path.getmtime(os.path.join(run, "premise", "step2", "sampled", "predictions.jsonl")) == before

    # more extra questions than the eval file has after those evaluated: refused, the numbers and the fixes named
    asked = [*argv[: argv.index("--extra_eval") + 1], "5", *argv[argv.index("--extra_eval") + 2 :]]
    args, _ = cli.parse(asked)
    with pytest.raises(SystemExit, match=r"has 16 questions: .* asks for 5 after the 12 evaluated.*--extra_eval 0"):
        runner.prepare_data(args, presets.resolve(args))
    # an analysis while the last checkpoint's extra evaluation is missing leaves it out and says so
    os.rename(os.path.join(run, "premise", "step4", "extra"), os.path.join(run, "premise", "step4", "extra_gone"))
    partial = analysis.premise([runner.Run("rd_only", 0, run)], presets.resolve(args), {"max_steps": 4}, 50)
    assert partial["missing"] == ["rd_only/seed0/step4"] and partial["against_after_reasoning"] == {}
    assert partial["some_estimator_sees_more"] is None
    assert "Not measured yet" in "\n".join(report.premise_markdown(partial))
    assert list(partial["per_run"]["rd_only/seed0"]) == ["2"]

    # the pilot's look at the same run: its anchor questions answered with samples, as the pilot preset asks
    pilot = replace(presets.PRESETS["pilot"], max_new_tokens=24)
    files = {"anchor_traces": os.path.join(out, "data", "anchor_traces.jsonl")}
    runner.evaluate_pilot(runner.Run("rd_only", 0, run), pilot, files, 1)
    sampled = _predictions(os.path.join(run, "calibration_anchor_sampled"))
    anchor = _predictions(os.path.join(run, "calibration_anchor"))
    assert [r["question"] for r in sampled] == [r["question"] for r in anchor] and len(anchor) == 4
    assert all(len(r["samples"]) == pilot.num_samples == 4 for r in sampled)
    answers = analysis.sampled_answers(sampled)
    assert [a["correct"] for a in answers] == [s["answer"] == r["gold"] for r in sampled for s in r["samples"]]
