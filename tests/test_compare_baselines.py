"""benchmarks/compare_baselines.py: the presets' arms and seeds, the step budget worked by hand, and a real end-to-end
run of four arms at two seeds on the tiny model (every run a real examples/train_medqa.py process), with the intervals
checked against the predictions files and the resume checked by rerunning it."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from evidence import analysis, cli, presets, report, runner, store  # noqa: E402


def _dry(capsys, *argv):
    cli.main(["--dry_run", "--output_dir", "unused", *argv])
    lines = capsys.readouterr().out.strip().splitlines()
    runs = [line.split(":")[0] for line in lines[:-1]]
    return runs, lines


def test_presets_run_the_arms_and_seeds_the_issue_names(capsys):
    runs, lines = _dry(capsys, "--preset", "cpu")
    counts = {}
    for r in runs:
        counts[r.split(" seed")[0]] = counts.get(r.split(" seed")[0], 0) + 1
    assert counts == {"hytuning": 3, "rl_only": 3, "rd_only": 3, "chord": 1, "hytuning_gate": 1, "hytuning_const": 1}
    assert runs[0].startswith("hytuning") and runs[-1] == "hytuning_const seed 0"  # copies hytuning's mean weight
    assert all("--max_completion_length 64" in line and "--prg_every 2" in line for line in lines[:-1])
    assert "set from a measured step time" in lines[-1]
    full, _ = _dry(capsys, "--preset", "cpu-full")
    arms = [a for a in presets.ARMS if a not in presets.PILOT_ARMS]  # the calibration arms at the pilot's choice
    assert len(full) == 3 * len(arms) == 30 and {r.split(" seed")[1] for r in full} == {" 0", " 1", " 2"}
    gpu, gpu_lines = _dry(capsys, "--preset", "gpu")
    assert len(gpu) == 30
    [cal] = [line for line in gpu_lines if line.startswith("rd_cal seed 0")]
    flags = "--mixing rd_only --rewards self_certainty --reward_weights 1.0 --calibration_target weakest_token"
    assert f"{flags} --calibration_weight 0.01 " in cal
    [blind] = [line for line in gpu_lines if line.startswith("hytuning_blind seed 0")]  # an arm added in one place
    assert "--mixing prg --answer_blind_rl true --rewards self_certainty prg_gated_confidence" in blind
    assert all(presets.GPU_RECIPE in line and "Qwen/Qwen2.5-1.5B-Instruct" in line for line in gpu_lines[:-1])
    assert "--max_steps 300" in gpu_lines[0] and "measured" not in gpu_lines[-1]


def test_evidence_preset_names_the_arms_of_issue_23(capsys):
    """Each arm differs only in what the issue names: the mixing rule, the reward set, the gate."""
    runs, lines = _dry(capsys, "--preset", "evidence")
    counts = {}
    for r in runs:
        counts[r.split(" seed")[0]] = counts.get(r.split(" seed")[0], 0) + 1
    assert counts == {"rd_only": 3, "rl_only": 3, "hytuning": 3, "hytuning_const": 3, "rl_hyrewards": 1,
                      "hytuning_gate": 1, "chord": 1}  # fmt: skip
    by_arm = {line.split(" seed")[0]: line for line in lines[:-1]}
    recipe = "--rewards self_certainty prg_gated_confidence agreement_brier --reward_weights 0.1 1.0 1.0"
    alone = "--rewards self_certainty --reward_weights 1.0"
    expected = {
        "rd_only": ("--mixing rd_only", alone),
        "rl_only": ("--mixing rl_only", alone),
        "hytuning": ("--mixing prg", recipe),
        "hytuning_const": ("--mixing constant", recipe),
        "rl_hyrewards": ("--mixing rl_only", recipe),
        "hytuning_gate": ("--mixing prg --prg_gate true", recipe),
        "chord": ("--mixing chord", recipe),
    }
    for arm, parts in expected.items():
        assert all(part in by_arm[arm] for part in parts), arm
    assert "--prg_gate" not in by_arm["hytuning"] and "--rd_weight" in by_arm["hytuning_const"]
    # the rest of every command is the same: what precedes the arm's flags, but for --seed and --output_dir
    files = {k: f"<{k}>" for k in ("train", "rd_traces", "anchor_traces", "eval_used", "probe", "n_eval")}
    plan = {"max_steps": 60, "probe_steps": 20}
    common = set()
    for arm in expected:
        cmd = runner.run_command(runner.Run(arm, 0, "<out>"), presets.PRESETS["evidence"], files, plan, [], 0.5)
        assert (
            cmd[-len(presets.ARMS[arm]) - (2 if arm == "hytuning_const" else 0) :][: len(presets.ARMS[arm])]
            == presets.ARMS[arm]
        )
        common.add(tuple(cmd[: len(cmd) - len(presets.ARMS[arm]) - (2 if arm == "hytuning_const" else 0)]))
    assert len(common) == 1


def test_pilot_preset_runs_see_no_eval_question(capsys):
    """Issue 34's pilot: rd_only and RD plus the calibration loss at three weights, one seed, the premise's regime;
    no run evaluates or probes an eval question (the choice is made on the anchor questions only)."""
    runs, lines = _dry(capsys, "--preset", "pilot")
    weights = ("0.01", "0.03", "0.1", "0.3", "1.0")
    assert runs == ["rd_only seed 0"] + [f"rd_cal_weakest_token_{w} seed 0" for w in weights]
    by_arm = {line.split(" seed")[0]: line for line in lines[:-1]}
    for w in weights:
        line = by_arm[f"rd_cal_weakest_token_{w}"]
        assert f"--mixing rd_only --rewards self_certainty --reward_weights 1.0 --calibration_target weakest_token " \
               f"--calibration_weight {w}" in line  # fmt: skip
    files = {k: f"<{k}>" for k in ("train", "rd_traces", "anchor_traces", "eval_used", "probe", "n_eval")}
    plan = {"max_steps": 50, "probe_steps": 20}
    evidence = runner.run_command(
        runner.Run("rd_only", 0, "<out>"), presets.PRESETS["evidence"], files, plan, [], None
    )
    for line in lines[:-1]:
        assert "--skip_eval true" in line and "--eval_file" not in line and "--probe_file" not in line
        assert "--anchor_eval" not in line and "<anchor_traces>" in line and "--max_steps 50" in line
        # the rest is the evidence regime's command (the premise's, which keeps 5 checkpoints instead of 1)
        assert " ".join(evidence[1 : evidence.index("--eval_file")]) in line
    share, _ = _dry(capsys, "--preset", "pilot-share")
    assert share[1:] == [f"rd_cal_share_{w} seed 0" for w in weights]


def _pilot_records(tmp_path, arm, greedy_correct, samples):
    """A run folder of ``arm`` with its anchor answers: greedy (``greedy_correct``: one bool per question) and sampled
    (``samples``: per question, ``(answer, option_logprobs)`` pairs; gold is 'A', options A-D)."""
    folder = tmp_path / "runs" / arm / "seed0"
    for name, rows in (
        ("calibration_anchor", [{"gold": "A", "correct": c} for c in greedy_correct]),
        ("calibration_anchor_sampled", [{"gold": "A", "correct": True, "samples": [
            {"answer": a, "stated": True, "option_letters": list("ABCD"), "option_logprobs": lp} for a, lp in s
        ]} for s in samples]),
    ):  # fmt: skip
        (folder / name).mkdir(parents=True)
        runner.write_jsonl(str(folder / name / "predictions.jsonl"), rows)
    return runner.Run(arm, 0, str(folder))


def test_pilot_choice_worked_by_hand(tmp_path):
    """The pilot's rule: among the calibration runs whose greedy anchor accuracy is not below rd_only's, the lowest
    Brier of the after_reasoning confidence over the sampled anchor answers (softmax of the option log-probabilities
    at the stated answer, against gold); ties to the smaller weight; if none keeps rd_only's accuracy, the most
    accurate ones. Brier and AUROC computed here by hand and with sklearn."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    sure, unsure = [0.0, -9.0, -9.0, -9.0], [-1.0, -1.2, -1.1, -9.0]
    wrong_sure = [-9.0, 0.0, -9.0, -9.0]
    q = [[("A", sure), ("B", wrong_sure)], [("A", unsure), ("C", unsure)]]  # per question, two samples
    runs = [
        _pilot_records(tmp_path, "rd_only", [True, True], q),
        _pilot_records(tmp_path, "rd_cal_weakest_token_0.1", [True, False], [[("A", sure), ("B", unsure)]] * 2),
        _pilot_records(tmp_path, "rd_cal_weakest_token_0.3", [True, True], [[("A", sure), ("B", unsure)], q[1]]),
        _pilot_records(tmp_path, "rd_cal_weakest_token_1.0", [True, True], [[("A", sure), ("B", unsure)], q[1]]),
    ]
    result = analysis.pilot(runs)

    def by_hand(samples):
        conf, correct = [], []
        for question in samples:
            for answer, lp in question:
                p = np.exp(lp) / np.exp(lp).sum()
                conf.append(p["ABCD".index(answer)])
                correct.append(answer == "A")
        conf, correct = np.array(conf), np.array(correct)
        return float(np.mean((conf - correct) ** 2)), float(roc_auc_score(correct, conf)), float(correct.mean())

    for run, samples in zip(runs, [q, [[("A", sure), ("B", unsure)]] * 2, [[("A", sure), ("B", unsure)], q[1]]]):
        brier, auroc, acc = by_hand(samples)
        row = result["per_arm"][run.arm]
        assert row["sampled_brier"] == pytest.approx(brier) and row["sampled_auroc"] == pytest.approx(auroc)
        assert row["sampled_accuracy"] == pytest.approx(acc) and row["n_sampled"] == 4
    # 0.1 has the lowest Brier but lost an anchor question; 0.3 and 1.0 tie: the smaller weight
    assert result["per_arm"]["rd_cal_weakest_token_0.1"]["anchor_accuracy"] == 0.5
    assert result["eligible"] == ["rd_cal_weakest_token_0.3", "rd_cal_weakest_token_1.0"]
    assert result["chosen"] == "rd_cal_weakest_token_0.3" and result["chosen_weight"] == 0.3
    assert result["chosen_target"] == "weakest_token" and not result["no_arm_kept_rd_only_accuracy"]
    # none keeps rd_only's accuracy: the most accurate of them (here all tie at 0.5: the lowest Brier, 0.1)
    fallback = analysis.pilot(runs[:2] + [
        _pilot_records(tmp_path / "b", "rd_cal_weakest_token_1.0", [False, True], q)])  # fmt: skip
    assert fallback["no_arm_kept_rd_only_accuracy"] and fallback["chosen"] == "rd_cal_weakest_token_0.1"


def test_reading_in_words_worked_by_hand():
    """Which side an interval favours: higher is better for accuracy and AUROC, lower for Brier and ECE."""
    row = {"arm": "hytuning", "reference": "rd_only"}
    assert analysis.reading({**row, "metric": "accuracy", "ci95": [0.01, 0.05]}) == "hytuning better"
    assert analysis.reading({**row, "metric": "brier", "ci95": [0.01, 0.05]}) == "rd_only better"
    assert analysis.reading({**row, "metric": "ece", "ci95": [-0.05, -0.01]}) == "hytuning better"
    assert analysis.reading({**row, "metric": "auroc", "ci95": [-0.05, -0.01]}) == "rd_only better"
    assert analysis.reading({**row, "metric": "brier", "ci95": [-0.01, 0.05]}) == "no difference shown"
    assert analysis.reading({**row, "metric": "auroc", "ci95": [float("nan"), 0.1]}).startswith("no interval")
    assert analysis.reading({**row, "metric": "accuracy", "ci95": [-0.02, 0.01]}, -0.03) == "non-inferior"
    assert analysis.reading({**row, "metric": "accuracy", "ci95": [-0.04, 0.01]}, -0.03).startswith(
        "non-inferiority not"
    )


def test_threads_per_run_split_the_cores_unless_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 8)
    assert runner.thread_env(2)["OMP_NUM_THREADS"] == "4" and runner.thread_env(16)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runner.thread_env(2)["OMP_NUM_THREADS"] == "3"


def test_steps_fit_the_budget_worked_by_hand():
    """4 runs on 2 lanes (2 runs per lane), 20 minutes: per run <= 600 s. A question costs 1.15 x max(base 0.5 s,
    after the calibration steps 1.2 s) = 1.38 s: eval of 100 questions 138 s, a probe of 64 questions 88.32 s;
    overhead 10 s, step 10 s, probe every 10 steps.
    S = 30: 148 + 300 + 3 * 88.32 = 712.96 > 600; S = 29: 148 + 290 + 2 * 88.32 = 614.64 > 600;
    S = 28: 148 + 280 + 2 * 88.32 = 604.64 > 600; S = 27: 148 + 270 + 2 * 88.32 = 594.64 <= 600."""
    args, _ = cli.parse(["--preset", "cpu", "--budget_minutes", "20", "--safety", "1.0", "--jobs", "2"])
    timing = {"n_eval": 100, "base_eval_s": 50.0, "probe_s_per_question": 1.2, "run_overhead_s": 10.0}
    timing["step_time_s"] = 10.0
    plan = runner.steps_for_budget(timing, presets.PRESETS["cpu"], args, n_runs=4, elapsed_s=0.0)
    assert plan["max_steps"] == 27 and plan["probe_steps"] == 10
    assert plan["per_run_s"] == pytest.approx(594.6, abs=0.05)
    args, _ = cli.parse(["--preset", "cpu", "--budget_minutes", "3", "--jobs", "2"])
    with pytest.raises(SystemExit, match="raise --budget_minutes"):
        runner.steps_for_budget(timing, presets.PRESETS["cpu"], args, n_runs=4, elapsed_s=0.0)


def _predictions(folder):
    with open(os.path.join(folder, "predictions.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_end_to_end_intervals_and_resume(tmp_path, trained_dir, capsys):
    """The cpu preset end to end on the tiny model (4 arms, 2 seeds, 2 steps): shared data, the table and the primary
    comparisons recomputed from the predictions files, temperature scaling and the gate by hand, --analyse on a
    partial output, resume; then the budget measurement on the same output."""
    out = str(tmp_path / "compare")
    argv = ["--preset", "cpu", "--arms", "rl_only", "rd_only", "hytuning", "hytuning_const", "--seeds", "2"]
    argv += ["--max_steps", "2"]
    argv += ["--max_eval_samples", "12", "--n_bootstrap", "200", "--jobs", "2", "--output_dir", out]
    argv += ["--", "--model_name_or_path", trained_dir, "--max_completion_length", "24", "--eval_max_new_tokens", "24"]
    argv += ["--learning_rate", "1e-3"]
    result = cli.main(argv)
    capsys.readouterr()

    # the same RD / anchor split for every run, disjoint, 16 of the 64 traces held out
    data = os.path.join(out, "data")
    rd, anchor = (runner.read_jsonl(os.path.join(data, f)) for f in ("rd_traces.jsonl", "anchor_traces.jsonl"))
    assert len(rd) == 48 and len(anchor) == 16
    assert not {q["question"] for q in rd} & {q["question"] for q in anchor}
    commands = {}
    for arm in ("rl_only", "rd_only", "hytuning", "hytuning_const"):
        for seed in (0, 1):
            with open(os.path.join(out, "runs", arm, f"seed{seed}", "DONE.json")) as f:
                commands[arm, seed] = json.load(f)["command"]
    for (arm, seed), cmd in commands.items():
        assert cmd[cmd.index("--anchor_file") + 1] == os.path.join(data, "anchor_traces.jsonl")
        assert cmd[cmd.index("--distill_file") + 1] == os.path.join(data, "rd_traces.jsonl")
        # the run answered the anchor questions itself, as it answered the eval questions (no second process)
        folder = os.path.join(out, "runs", arm, f"seed{seed}", "calibration_anchor")
        with open(os.path.join(folder, "calibration.json")) as f:
            report = json.load(f)
        assert report["n"] == 16 and report["settings"]["max_new_tokens"] == 24
        assert not os.path.exists(os.path.join(folder, "eval.log"))

    # hytuning_const copies the hytuning runs' mean rd_weight, read here from their logs
    lams = []
    for seed in (0, 1):
        with open(os.path.join(out, "runs", "hytuning", f"seed{seed}", "trainer_state.json")) as f:
            lams += [h["hytuning/rd_weight"] for h in json.load(f)["log_history"] if "hytuning/rd_weight" in h]
    cmd = commands["hytuning_const", 0]
    assert float(cmd[cmd.index("--rd_weight") + 1]) == pytest.approx(sum(lams) / len(lams), abs=1e-4)

    # the table and the differences, recomputed from the predictions files
    base = _predictions(os.path.join(out, "base"))
    assert len(base) == 12 and result["n_questions"] == 12
    assert result["table"]["base"]["accuracy"]["value"] == pytest.approx(sum(r["correct"] for r in base) / 12)

    def acc(arm, seed):
        recs = _predictions(os.path.join(out, "runs", arm, f"seed{seed}", "calibration_after"))
        assert [r["question"] for r in recs] == [r["question"] for r in base]
        return sum(r["correct"] for r in recs) / len(recs)

    primary = {c["name"]: c for c in result["primary"]}
    assert list(primary) == [c.name for c in presets.PRIMARY]
    by_hand = sum(acc("hytuning", s) - acc("rd_only", s) for s in (0, 1)) / 2
    accuracy = primary["hytuning vs rd_only: accuracy"]
    assert accuracy["diff"] == pytest.approx(by_hand) and accuracy["n_seeds"] == 2
    assert accuracy["margin"] == -0.03 and accuracy["non_inferior"] == (accuracy["ci95"][0] > -0.03)
    for c in result["comparisons"] + result["against_base"] + result["primary"]:
        low, high = c["ci95"]
        assert c["excludes_0"] == (low > 0 or high < 0)
    assert not any(c["primary"] for c in result["comparisons"])
    # the adaptive weight against the constant one, on every metric (exploratory; Brier is primary, listed once)
    explored = {c["name"]: c for c in result["comparisons"]}
    adaptive_vs_const = explored["hytuning vs hytuning_const: accuracy"]
    by_hand = sum(acc("hytuning", s) - acc("hytuning_const", s) for s in (0, 1)) / 2
    assert adaptive_vs_const["diff"] == pytest.approx(by_hand) and adaptive_vs_const["n_seeds"] == 2
    assert "hytuning vs hytuning_const: auroc" in explored and "hytuning vs hytuning_const: brier" not in explored
    assert result["metrics_move"]["adaptive_rd_weight_span"] is not None

    # post-hoc temperature scaling, by hand: T minimises the gold option's NLL over the model's anchor answers (a
    # grid here), then the eval answers' chosen-option probability under softmax(logprobs / T)
    import numpy as np

    def scaled_brier(folder):
        anchor = _predictions(os.path.join(folder, "calibration_anchor"))
        assert len(anchor) == 16

        def nll(t):
            total = 0.0
            for r in anchor:
                z = np.array(r["option_logprobs"]) / t
                total += np.log(np.exp(z).sum()) - z[r["option_letters"].index(r["gold"])]
            return total / len(anchor)

        grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 20001))
        t = grid[np.argmin([nll(x) for x in grid])]
        brier = []
        for r in _predictions(os.path.join(folder, "calibration_after")):
            z = np.exp(np.array(r["option_logprobs"]) / t)
            p = z[r["option_letters"].index(r["chosen"])] / z.sum()
            brier.append((p - r["correct"]) ** 2)
        return t, float(np.mean(brier))

    rd_scaled = [scaled_brier(os.path.join(out, "runs", "rd_only", f"seed{s}")) for s in (0, 1)]
    for s, (t, _) in enumerate(rd_scaled):
        assert result["temperatures"][f"rd_only/seed{s}"] == pytest.approx(t, rel=2e-3)
    at_bound = [k for k, t in result["temperatures"].items() if not 0.05 * 1.001 < t < 20.0 * 0.999]
    assert result["temperatures_at_bound"] == at_bound
    table_value = result["table_scaled"]["rd_only"]["brier"]["value"]
    assert table_value == pytest.approx((rd_scaled[0][1] + rd_scaled[1][1]) / 2, abs=1e-4)
    against_ts = primary["hytuning vs rd_only (T-scaled): brier"]
    hy_raw = [_predictions(os.path.join(out, "runs", "hytuning", f"seed{s}", "calibration_after")) for s in (0, 1)]
    hy_brier = [np.mean([(r["confidence"] - r["correct"]) ** 2 for r in recs]) for recs in hy_raw]
    assert against_ts["diff"] == pytest.approx(np.mean(hy_brier) - table_value, abs=1e-4)
    assert against_ts["reference_scaled"] and not against_ts["arm_scaled"]
    # the gate: rd_only against base on accuracy, by hand
    base_acc = sum(r["correct"] for r in base) / 12
    rd_acc = sum(acc("rd_only", s) for s in (0, 1)) / 2
    g = result["gate"]
    assert g["base"] == pytest.approx(base_acc) and g["rd_only"] == pytest.approx(rd_acc)
    assert g["difference"] == pytest.approx(rd_acc - base_acc) and g["n_seeds"] == 2
    assert g["passed"] == (g["difference"] >= 0.10 and g["interval"][0] > 0)
    for name in ("results.md", "curves.png", "reliability_grid.png", "plan.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "results.md")) as f:
        text = f.read()
    assert "Primary comparisons" in text and "PRG validity" in text and "Temperature-scaled" in text
    assert "exploratory" in text and "Against the references (rl_only, rd_only, hytuning_const;" in text

    # resume: finished runs are skipped; an unfinished one (no DONE.json) starts again from scratch
    folder = os.path.join(out, "runs", "rd_only", "seed1")
    stamps = {k: os.path.getmtime(os.path.join(out, "runs", k[0], f"seed{k[1]}", "DONE.json")) for k in commands}
    os.remove(os.path.join(folder, "DONE.json"))
    with open(os.path.join(folder, "stale.txt"), "w") as f:
        f.write("left by an interrupted run")
    # --analyse: the finished runs only, as they stand; nothing trained, evaluated or rewritten in data/
    data_stamps = {f: os.path.getmtime(os.path.join(data, f)) for f in os.listdir(data)}
    os.remove(os.path.join(out, "runs", "hytuning", "seed0", "calibration_after", "reliability.png"))  # as collected
    state_file = os.path.join(out, "runs", "hytuning", "seed1", "trainer_state.json")
    with open(state_file) as f:
        state = json.load(f)
    assert result["run_steps"]["hytuning/seed1"] == state["global_step"] == 2 and result["runs_off_plan"] == []
    with open(state_file, "w") as f:  # as a resume at the final checkpoint before the trainer's fix left it
        json.dump({**state, "global_step": 3}, f)
    own = argv[: argv.index("--")]
    partial = cli.main([*own, "--analyse"])
    printed = capsys.readouterr().out
    assert "Partial" in printed and "Steps off the plan** (2 planned): hytuning/seed1 (3)" in printed
    assert partial["runs_off_plan"] == ["hytuning/seed1"] and partial["run_steps"]["hytuning/seed0"] == 2
    assert partial["partial"] and partial["runs_missing"] == ["rd_only/seed1"]
    assert partial["table"]["rd_only"]["seeds"] == [0] and partial["table"]["hytuning"]["seeds"] == [0, 1]
    assert partial["table"]["rd_only"]["accuracy"]["value"] == pytest.approx(acc("rd_only", 0))
    vs_rd = {c["name"]: c for c in partial["primary"]}["hytuning vs rd_only: accuracy"]
    assert vs_rd["n_seeds"] == 1 and vs_rd["diff"] == pytest.approx(acc("hytuning", 0) - acc("rd_only", 0))
    assert partial["wall_s"] is None and partial["runs_commits"] == [runner.git_commit()]
    assert os.path.exists(os.path.join(folder, "stale.txt")) and not os.path.exists(os.path.join(folder, "DONE.json"))
    assert {f: os.path.getmtime(os.path.join(data, f)) for f in os.listdir(data)} == data_stamps
    assert os.path.getsize(os.path.join(out, "reliability_grid.png")) > 0

    cli.main(argv)
    log = capsys.readouterr().out
    assert log.count("done before, skipped") == 7 and "rd_only seed 1: started" in log
    assert not os.path.exists(os.path.join(folder, "stale.txt")) and os.path.exists(os.path.join(folder, "DONE.json"))
    for key, stamp in stamps.items():
        if key != ("rd_only", 1):
            assert os.path.getmtime(os.path.join(out, "runs", key[0], f"seed{key[1]}", "DONE.json")) == stamp

    # the budget measurement (what a start without --max_steps does first), on the same output: the base evaluation
    # and the validity check are there, so only the calibration run is new. The step time is the median of its logged
    # step times after the first, the evaluation cost per question the probe's logged seconds over the 12 probe
    # questions, read here from the calibration run's own log.
    args, extra = cli.parse(
        [*own[: own.index("--max_steps")], *own[own.index("--max_steps") + 2 :], *argv[argv.index("--") :]]
    )
    assert args.max_steps is None and args.calibration_steps == 3
    files = runner.prepare_data(args, presets.PRESETS["cpu"])
    log = os.path.join(out, "base_eval.log")
    stamp = os.path.getmtime(log)
    timing = runner.measure(args, presets.PRESETS["cpu"], files, extra, trained_dir)
    with open(os.path.join(out, "_calibration", "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    times = [h["step_time"] for h in history if "step_time" in h]  # the first step (warm-up) is left out
    assert len(times) == 3 and timing["step_time_s"] == pytest.approx((times[1] + times[2]) / 2)
    probes = [h["eval_calibration/seconds"] for h in history if "eval_calibration/seconds" in h]
    assert len(probes) == 1 and timing["probe_s_per_question"] == pytest.approx(probes[0] / 12)
    assert timing["base_eval_s"] > 0 and os.path.exists(os.path.join(out, "validity", "validity.json"))
    assert os.path.getmtime(log) == stamp  # the base model was not evaluated again
    # a start interrupted after the measurements resumes with them: nothing measured again, nothing lost
    again = runner.measure(args, presets.PRESETS["cpu"], files, extra, trained_dir, calibrate=False)
    assert again == timing and os.path.getmtime(log) == stamp


def test_unfinished_run_with_a_checkpoint_resumes(tmp_path, monkeypatch):
    """An interrupted run that saved a checkpoint is resumed from it (the example's --resume_from_checkpoint true),
    not wiped; one that saved none starts again from scratch."""
    folder = tmp_path / "runs" / "rd_only" / "seed0"
    (folder / "checkpoint-10").mkdir(parents=True)
    (folder / "checkpoint-20").mkdir()
    (folder / "train.log").write_text("interrupted")
    calls, execute = [], runner.execute

    def echo(cmd, log, jobs, **kw):  # the real execute, on a command that writes one line to the log
        calls.append(cmd)
        return execute([sys.executable, "-c", f"print('ran {len(calls)}')"], log, jobs, **kw)

    monkeypatch.setattr(runner, "execute", echo)
    run = runner.Run("rd_only", 0, str(folder))
    files = {k: f"<{k}>" for k in ("train", "rd_traces", "anchor_traces", "eval_used", "probe", "n_eval")}
    plan = {"max_steps": 40, "probe_steps": 20}
    runner.train(run, presets.PRESETS["gate"], files, plan, [], jobs=1)
    training, anchor_eval = calls  # the run, then its answers to the anchor questions
    assert training[-2:] == ["--resume_from_checkpoint", "true"] and (folder / "checkpoint-20").exists()
    before, resumed, after = (folder / "train.log").read_text().splitlines()  # the log before it is kept
    assert (before, after) == ("interrupted", "ran 1") and resumed.endswith("] resumed")
    assert anchor_eval[anchor_eval.index("--dataset_name") + 1] == "<anchor_traces>"
    assert anchor_eval[anchor_eval.index("--output_dir") + 1] == str(folder / "calibration_anchor")
    assert presets.PRESETS["gate"].training[presets.PRESETS["gate"].training.index("--save_steps") + 1] == "10"
    fresh = tmp_path / "runs" / "rd_only" / "seed1"
    fresh.mkdir(parents=True)
    (fresh / "stale.txt").write_text("no checkpoint")
    runner.train(runner.Run("rd_only", 1, str(fresh)), presets.PRESETS["gate"], files, plan, [], jobs=1)
    assert "--resume_from_checkpoint" not in calls[-2] and not (fresh / "stale.txt").exists()


def test_profile_step_accounts_for_the_step(trained_dir, tmp_path):
    """benchmarks/profile_step.py on the tiny model (its own process: it patches TRL's classes with timers): every
    part is timed and the parts add up to the step."""
    import subprocess

    out = tmp_path / "profile.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "profile_step.py"), "--model", trained_dir]
    proc = subprocess.run([*cmd, "--steps", "3", "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    parts = result["parts_s"]
    expected = {"rollout generation", "scoring pass", "anchor round", "GRPO loss (forward)", "RD loss (forward)"}
    assert expected | {"backward", "optimizer", "other"} <= set(parts)
    timed = sum(v for k, v in parts.items() if k != "other")
    assert parts["other"] == pytest.approx(max(result["median_step_s"] - timed, 0.0))
    assert "anchor round" in proc.stdout and len(result["steps"]) == 3


def test_rd_sweep_first_step_is_the_rd_loss_by_hand(trained_dir, tmp_path):
    """benchmarks/rd_sweep.py (its own process) trains on the gate's RD traces: its first logged NLL is the mean token
    NLL of the completions of the first four traces it draws, computed here with a plain forward of the untrained
    model over the chat-rendered prompt + completion."""
    import random
    import subprocess

    import synthetic_task
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "sweep.json"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "rd_sweep.py"),
        "--model",
        trained_dir,
        "--output",
        str(out),
    ]
    cmd += ["--steps", "2", "--probe_every", "2", "--n_probe", "4", "--max_new_tokens", "16", "--n_traces", "32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [p["step"] for p in result["curve"]] == [2] and len(result["rd_nll"]) == 2

    # the gate's split: 32 + 16 traces, 16 held out by a fixed permutation (seed 0); the first batch: seed 0's shuffle
    traces = synthetic_task.generate(0, n_traces=48, n_eval=400)["traces"]
    order = list(range(48))
    random.Random(0).shuffle(order)
    rd = [t for i, t in enumerate(traces) if i not in set(order[:16])]
    first = list(range(len(rd)))
    random.Random(0).shuffle(first)
    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    model = AutoModelForCausalLM.from_pretrained(trained_dir)
    total, count = 0.0, 0
    for i in first[:4]:
        q = rd[i]
        prompt = [{"role": "user", "content": cb_prompt(q)}]
        completion = f"{q['reasoning'].strip()}\nThe answer is {q['answer_idx']}."
        p_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
        p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(full[len(p_text) :], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        targets = ids[0, 1:]
        nll = -logp[torch.arange(len(targets)), targets][len(p_ids) - 1 :]
        total, count = total + float(nll.sum()), count + len(c_ids)
    assert result["rd_nll"][0] == pytest.approx(total / count, rel=1e-4)


def cb_prompt(q: dict) -> str:
    from hytuning_trl.mcq import format_mcq_prompt

    return format_mcq_prompt(q["question"], q["options"])


def _write_tree(root, files: dict) -> None:
    """Each ``relative path: text`` of ``files`` written under ``root``."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_collect_copies_finished_runs_small_outputs_only(tmp_path):
    """--collect copies the figures, curves and predictions of finished runs (evaluated on the anchor questions too),
    under the same paths, and never weights or checkpoints; an unfinished run is left out."""
    out, dest = tmp_path / "out", tmp_path / "dest"
    files = {
        "plan.json": "{}",
        "base/predictions.jsonl": "{}\n",
        "base/model.safetensors": "weights",
        "runs/rd_only/seed0/DONE.json": "{}",
        "runs/rd_only/seed0/trainer_state.json": "{}",
        "runs/rd_only/seed0/calibration_after/predictions.jsonl": "{}\n",
        "runs/rd_only/seed0/calibration_anchor/predictions.jsonl": "{}\n",
        "runs/rd_only/seed0/model.safetensors": "weights",
        "runs/rd_only/seed0/checkpoint-50/optimizer.pt": "state",
        "runs/hytuning/seed0/trainer_state.json": "{}",  # unfinished: no anchor evaluation yet
        "runs/hytuning/seed0/checkpoint-10/model.safetensors": "weights",
    }
    _write_tree(out, files)
    cli.main(["--output_dir", str(out), "--collect", str(dest)])
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == [
        "base/predictions.jsonl",
        "plan.json",
        "runs/rd_only/seed0/DONE.json",
        "runs/rd_only/seed0/calibration_after/predictions.jsonl",
        "runs/rd_only/seed0/calibration_anchor/predictions.jsonl",
        "runs/rd_only/seed0/trainer_state.json",
    ]


def test_restore_brings_back_what_collect_copied(tmp_path, capsys):
    """--restore on a fresh output folder puts back, byte for byte, what --collect copied (a machine that lost its
    run folder resumes from the committed outputs), except the analysis, which is made anew; a file already there
    is kept, not overwritten."""
    out, dest, fresh = tmp_path / "out", tmp_path / "dest", tmp_path / "fresh"
    files = {
        "plan.json": '{"plan": {"max_steps": 50}}',
        "measurements.json": '{"base_eval_s": 1.0}',
        "results.json": "{}",
        "base/predictions.jsonl": '{"question": "q"}\n',
        "validity/validity.json": "{}",
        "runs/rd_only/seed0/DONE.json": '{"arm": "rd_only"}',
        "runs/rd_only/seed0/trainer_state.json": '{"global_step": 50}',
        "runs/rd_only/seed0/calibration_after/predictions.jsonl": '{"question": "a"}\n',
        "runs/rd_only/seed0/calibration_anchor/predictions.jsonl": '{"question": "b"}\n',
        "runs/rd_only/seed0/model.safetensors": "weights",
    }
    _write_tree(out, files)
    cli.main(["--output_dir", str(out), "--collect", str(dest)])
    (fresh / "validity").mkdir(parents=True)
    (fresh / "validity" / "validity.json").write_text('{"mine": true}')
    capsys.readouterr()
    cli.main(["--preset", "evidence", "--output_dir", str(fresh), "--restore", str(dest), "--dry_run"])
    printed = capsys.readouterr().out
    restored = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file())
    assert restored == sorted(set(files) - {"results.json", "runs/rd_only/seed0/model.safetensors"})
    for rel in restored:
        expected = '{"mine": true}' if rel == "validity/validity.json" else files[rel]
        assert (fresh / rel).read_text() == expected, rel
    assert "7 files restored" in printed and "15 runs" in printed  # then on as without it (here: the dry run)
    with pytest.raises(SystemExit, match="no such folder"):
        cli.main(["--output_dir", str(fresh), "--restore", str(tmp_path / "nowhere"), "--dry_run"])


def test_reused_evaluations_must_be_of_the_data_files_questions(tmp_path):
    """Evaluations kept from an earlier start or restored must answer the questions the data files hold now, in
    order; other questions (another --data_seed, fewer --max_eval_samples) stop the run, naming the file."""
    out = tmp_path / "out"
    args, _ = cli.parse(["--preset", "cpu", "--output_dir", str(out), "--max_eval_samples", "8"])
    files = runner.prepare_data(args, presets.PRESETS["cpu"])
    eval_rows = [json.loads(line) for line in open(files["eval_used"])]
    anchor_rows = [json.loads(line) for line in open(files["anchor_traces"])]

    def write(rel, rows):
        (out / rel).mkdir(parents=True, exist_ok=True)
        with open(out / rel / "predictions.jsonl", "w") as f:
            f.writelines(json.dumps({"question": r["question"], "gold": r["answer_idx"]}) + "\n" for r in rows)

    write("base", eval_rows)
    write("base_anchor", anchor_rows)
    write("runs/rd_only/seed0/calibration_after", eval_rows)
    write("runs/rd_only/seed0/calibration_anchor", anchor_rows)
    store.check_reused(str(out), files)  # the same questions: nothing to say
    write("runs/rd_only/seed0/calibration_after", [eval_rows[1], eval_rows[0], *eval_rows[2:]])
    with pytest.raises(SystemExit, match=r"rd_only/seed0/calibration_after/predictions.jsonl .* question 0\)"):
        store.check_reused(str(out), files)
    write("runs/rd_only/seed0/calibration_after", eval_rows)
    write("base", eval_rows[:7])
    with pytest.raises(SystemExit, match=r"base/predictions.jsonl .*\(7 against 8, first difference at question 7\)"):
        store.check_reused(str(out), files)


def test_run_commit_recorded_or_read_from_the_runs_checkout(tmp_path):
    """A run's commit is its DONE.json's; a run from before DONE.json recorded it gets the commit of the checkout its
    training script lives in (here a git repository made for the test, its sha read back with git by hand), marked as
    read at analysis; with that checkout gone, "not recorded"."""
    repo = tmp_path / "worktree"
    (repo / "examples").mkdir(parents=True)
    (repo / "examples" / "train_medqa.py").write_text("print('train')\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["-C", str(repo), "add", "."], check=True)
    subprocess.run(git + ["-C", str(repo), "commit", "-qm", "fixed"], check=True)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    def run_with(done: dict, name: str) -> runner.Run:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "DONE.json").write_text(json.dumps(done))
        return runner.Run("hytuning", 0, str(folder))

    command = ["python", str(repo / "examples" / "train_medqa.py"), "--seed", "0"]
    assert runner.run_commit(run_with({"command": command, "commit": "abc123"}, "recorded")) == "abc123"
    read = runner.run_commit(run_with({"command": command}, "old"))
    assert read == f"{sha} (read from {repo / 'examples'} at analysis, not recorded by the run)"
    (repo / "examples" / "train_medqa.py").write_text("print('changed')\n")
    assert runner.run_commit(run_with({"command": command}, "dirty")).startswith(f"{sha}+uncommitted (read from")
    gone = ["python", str(tmp_path / "elsewhere" / "train_medqa.py")]
    assert runner.run_commit(run_with({"command": gone}, "gone")) == "not recorded"


def _fake_records(rng, questions, skill):
    """Evaluation records as hytuning-eval writes them (options A-D, gold A), with reasoning log-probabilities that
    are lower where the answer is wrong (``skill``: how much), a gain, and the option log-probabilities."""
    import numpy as np

    out = []
    for q in questions:
        correct = bool(rng.random() < 0.7)
        chosen = "A" if correct else "B"
        lp = [float(x) for x in rng.normal(-1.0, 1.0, 4)]
        lp["ABCD".index(chosen)] += 2.0
        p = np.exp(lp) / np.exp(lp).sum()
        reasoning = [float(x) for x in -rng.exponential(0.3, 6)] + [
            -(rng.exponential(1.0) + (0 if correct else skill))
        ]
        out.append({"question": q, "gold": "A", "chosen": chosen, "correct": correct, "stated": True,
                    "confidence": float(p["ABCD".index(chosen)]), "option_letters": list("ABCD"),
                    "option_logprobs": lp, "reasoning_logprobs": reasoning, "gain": float(rng.normal(0.3, 0.3)),
                    "prg": 0.5})  # fmt: skip
    return out


def test_v3_primary_comparisons_worked_by_hand(tmp_path, monkeypatch):
    """Issue 34's primary comparisons on fabricated run folders (five arms, two seeds): the names resolved by the
    rules fixed in presets (best calibration arm by after_reasoning AUROC, best arm by Brier, rd_only's best
    label-free estimator by AUROC, sampled ones on the sampled questions), each difference recomputed here with
    sklearn / numpy, the weakest_token side after a power fit on the anchor answers found by a grid, and the
    per-estimator tables."""
    import argparse
    from dataclasses import replace

    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    out = tmp_path / "v3"
    eval_q, anchor_q = [f"q{i}" for i in range(40)], [f"a{i}" for i in range(8)]
    arms = {"rd_only": 2.0, "hytuning": 0.0, "hytuning_blind": 0.5, "rd_cal": 3.0, "hytuning_blind_cal": 1.0}
    runs = []

    def write(folder, rows):
        os.makedirs(folder, exist_ok=True)
        runner.write_jsonl(os.path.join(folder, "predictions.jsonl"), rows)

    write(out / "base", _fake_records(rng, eval_q, 0.0))
    write(out / "base_anchor", _fake_records(rng, anchor_q, 0.0))
    for arm, skill in arms.items():
        for seed in (0, 1):
            folder = out / "runs" / arm / f"seed{seed}"
            full = _fake_records(rng, eval_q, skill)
            write(folder / "calibration_after", full)
            write(folder / "calibration_anchor", _fake_records(rng, anchor_q, skill))
            sampled = []
            for r in full[:20]:  # the first 20 questions with 4 samples each
                samples = [{"answer": a, "stated": True, "option_letters": list("ABCD"),
                            "option_logprobs": [float(x) for x in rng.normal(-1, 1, 4)]}
                           for a in rng.choice(list("AB"), 4)]  # fmt: skip
                sampled.append({**r, "samples": samples, "majority": "A"})
            write(folder / "premise" / "step4" / "sampled", sampled)
            with open(folder / "DONE.json", "w") as f:
                json.dump({"arm": arm, "seed": seed, "seconds": 1.0, "command": [], "commit": "abc"}, f)
            with open(folder / "trainer_state.json", "w") as f:
                json.dump({"global_step": 4, "log_history": [{"step": 1, "hytuning/rd_weight": 0.5}]}, f)
            runs.append(runner.Run(arm, seed, str(folder)))
    preset = replace(presets.PRESETS["premise"], seeds=dict.fromkeys(arms, 2), checkpoint_steps=(4,),
                     primary=presets.PRIMARY_V3)  # fmt: skip
    monkeypatch.setitem(presets.PRESETS, "v3-test", preset)
    args = argparse.Namespace(preset="v3-test", output_dir=str(out), n_bootstrap=200, analyse=True,
                              checkpoint_steps=None)  # fmt: skip
    runner.write_jsonl(str(tmp_path / "anchor.jsonl"), [{"question": q} for q in anchor_q])
    result, _, _ = analysis.analyse(args, runs, {"max_steps": 4, "probe_steps": 2}, {}, {
        "anchor_traces": str(tmp_path / "anchor.jsonl")})  # fmt: skip

    def recs(arm, seed, sub="calibration_after"):
        return runner.read_jsonl(str(out / "runs" / arm / f"seed{seed}" / sub / "predictions.jsonl"))

    def weakest(r):
        return float(np.exp(min(r["reasoning_logprobs"])))

    def conf(r, name):
        if name == "weakest_token":
            return weakest(r)
        if name == "reasoning_likelihood":
            return float(np.exp(np.mean(r["reasoning_logprobs"])))
        if name == "prg_gated":
            return r["confidence"] * min(max(r["gain"], 0.0), 1.0)
        if name == "consistency":
            return sum(s["answer"] == r["chosen"] for s in r["samples"]) / len(r["samples"])
        if name == "marginal":
            return float(np.mean([np.exp(s["option_logprobs"])["ABCD".index(r["chosen"])]
                                  / np.exp(s["option_logprobs"]).sum() for s in r["samples"]]))  # fmt: skip
        return r["confidence"]

    def auroc(rows, name):
        return roc_auc_score([r["correct"] for r in rows], [conf(r, name) for r in rows])

    def brier(rows, values):
        return float(np.mean([(v - r["correct"]) ** 2 for r, v in zip(rows, values)]))

    cal = {
        a: np.mean([auroc(recs(a, s), "after_reasoning") for s in (0, 1)]) for a in ("rd_cal", "hytuning_blind_cal")
    }
    trained = {a: np.mean([brier(recs(a, s), [r["confidence"] for r in recs(a, s)]) for s in (0, 1)])
               for a in presets.TRAINED_ARMS}  # fmt: skip
    label_free = {}
    for name in ("weakest_token", "reasoning_likelihood", "prg_gated", "marginal", "consistency"):
        where = "premise/step4/sampled" if name in ("marginal", "consistency") else "calibration_after"
        label_free[name] = np.mean([auroc(recs("rd_only", s, where), name) for s in (0, 1)])
    resolved = result["primary_resolved"]
    assert resolved[presets.BEST_CALIBRATION_ARM] == max(cal, key=cal.get)
    assert resolved[presets.BEST_ARM] == min(trained, key=trained.get)
    assert resolved[presets.BEST_LABEL_FREE] == max(label_free, key=label_free.get)
    primary = {c["name"]: c for c in result["primary"]}
    assert list(primary) == [c.name for c in presets.PRIMARY_V3]

    diff = np.mean([auroc(recs("rd_cal", s), "after_reasoning") - auroc(recs("rd_only", s), "after_reasoning")
                    for s in (0, 1)])  # fmt: skip
    assert primary["rd_cal vs rd_only: auroc"]["diff"] == pytest.approx(diff)
    best_free = resolved[presets.BEST_LABEL_FREE]
    row = primary[f"best calibration arm vs rd_only [{presets.BEST_LABEL_FREE}]: auroc"]
    sampled_only = best_free in ("marginal", "consistency")
    n = 20 if sampled_only else 40
    where = "premise/step4/sampled" if sampled_only else "calibration_after"
    diff = np.mean([auroc(recs(resolved[presets.BEST_CALIBRATION_ARM], s)[:n], "after_reasoning")
                    - auroc(recs("rd_only", s, where), best_free) for s in (0, 1)])  # fmt: skip
    assert row["diff"] == pytest.approx(diff) and row["margin"] == -0.05
    assert row["non_inferior"] == (row["ci95"][0] > -0.05) and row["n_questions"] == n

    # the best arm against rd_only read through weakest_token, power-fitted on each seed's anchor answers (a grid)
    grid = np.exp(np.linspace(np.log(1e-3), np.log(1e3), 20001))
    ref = []
    for s in (0, 1):
        anchor = recs("rd_only", s, "calibration_anchor")
        c, y = np.array([weakest(r) for r in anchor]), np.array([r["correct"] for r in anchor])
        nll = [
            -np.mean(np.where(y, np.log(np.clip(c**a, 1e-12, 1)), np.log1p(-np.clip(c**a, 0, 1 - 1e-12))))
            for a in grid
        ]
        a = grid[int(np.argmin(nll))]
        rows = recs("rd_only", s)
        ref.append(brier(rows, [weakest(r) ** a for r in rows]))
    best = resolved[presets.BEST_ARM]
    arm_brier = np.mean([brier(recs(best, s), [r["confidence"] for r in recs(best, s)]) for s in (0, 1)])
    row = primary["best arm vs rd_only [weakest_token, fitted]: brier"]
    assert row["diff"] == pytest.approx(arm_brier - np.mean(ref), abs=2e-4) and row["arm"] == best
    # per-estimator tables: raw AUROC of every estimator, sampled ones on the sampled questions only
    table = result["table_estimators"]
    for name, value in label_free.items():
        assert table["rd_only"][name]["raw"]["auroc"]["value"] == pytest.approx(value)
    assert (
        "fitted" not in table["rd_only"]["marginal"]
        and table["rd_only"]["marginal"]["raw"]["auroc"]["n_questions"] == 20
    )
    assert table["rd_cal"]["after_reasoning"]["fitted"]["brier"]["value"] == pytest.approx(
        result["table_scaled"]["rd_cal"]["brier"]["value"])  # fmt: skip
    args.argv = ["--preset", "v3-test"]
    text = report.markdown(result, args)
    assert f"{presets.BEST_ARM} = {best}" in text and "| rd_only | marginal |" in text
    assert f"| {best} | rd_only [weakest_token, fitted] | brier |" in text


def test_log_difference_worked_by_hand():
    """Relative above 1, absolute below, timings left out; other steps or other figures: infinitely different."""
    old = [{"step": 1, "loss": 2.0, "grad_norm": 0.5, "step_time": 3.0}, {"step": 2, "loss": 0.01, "x": "a"}]
    new = [{"step": 1, "loss": 2.002, "grad_norm": 0.5004, "step_time": 9.0}, {"step": 2, "loss": 0.0105, "x": "a"}]
    # |2.002 - 2| / 2.002 = 9.99e-4; |0.5004 - 0.5| / 1 = 4e-4; |0.0105 - 0.01| / 1 = 5e-4; step_time ignored
    assert runner.log_difference(new, old) == pytest.approx(0.002 / 2.002)
    assert runner.log_difference(new[:1], old) == float("inf")
    assert runner.log_difference([new[0], {**new[1], "y": 1.0}], old) == float("inf")
    assert runner.log_difference([new[0], {**new[1], "x": "b"}], old) == float("inf")
    nan = [{"step": 1, "loss": float("nan")}]
    assert runner.log_difference(nan, nan) == 0.0 and runner.log_difference(nan, [{"step": 1, "loss": 1.0}]) > 1


def _orphan(folder, threads):
    """A finished premise run restored onto a fresh machine: its final and step-50 evaluations and step 40's single
    pass are there, step 40's sampled and step 30's are not, and no checkpoint is."""
    history = [{"step": s, "loss": 1.0 / s, "grad_norm": 2.0 + s, "step_time": 1.0} for s in range(1, 51)]
    files = {
        "DONE.json": {"arm": "rd_only", "seed": 0, "seconds": 1.0, "command": [], "commit": "abc", "threads": threads},
        "trainer_state.json": {"global_step": 50, "log_history": history},
    }
    for rel in ("calibration_after", "calibration_anchor", "premise/step50/sampled", "premise/step50/extra",
                "premise/step40/full"):  # fmt: skip
        files[f"{rel}/predictions.jsonl"] = "kept\n"
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(content if isinstance(content, str) else json.dumps(content))
    return history


@pytest.mark.parametrize("drift, kept", [(2e-4, True), (2e-3, False)])
def test_orphaned_run_is_trained_again_and_kept_only_if_it_logs_the_same(tmp_path, monkeypatch, drift, kept):
    """A restored run whose checkpoints are gone before all its checkpoint evaluations were made is trained again
    (without its final evaluation, at the threads DONE.json records); a training that logs the first one's figures
    (here within 2e-4) keeps every evaluation and its first log, and only the missing evaluations run, on the new
    checkpoints; one that logs other figures (2e-3) is thrown away with the evaluations, and the run is redone whole.
    Stand-in processes write what the real ones would."""
    folder = tmp_path / "runs" / "rd_only" / "seed0"
    history = _orphan(folder, threads="3")
    calls = []

    def stand_in(cmd, log, jobs, append=False, threads=None):
        calls.append((cmd, threads))
        out = cmd[cmd.index("--output_dir") + 1]
        os.makedirs(out, exist_ok=True)
        if cmd[1] == presets.SCRIPT:  # training: checkpoints and a log drifting by `drift`
            for step in (10, 20, 30, 40, 50):
                os.makedirs(os.path.join(out, f"checkpoint-{step}"), exist_ok=True)
            drifted = [{**h, "grad_norm": h["grad_norm"] * (1 + drift), "step_time": 7.0} for h in history]
            with open(os.path.join(out, "trainer_state.json"), "w") as f:
                json.dump({"global_step": 50, "log_history": drifted}, f)
            if "--skip_eval" not in cmd:
                for rel in ("calibration_after", "calibration_anchor"):
                    os.makedirs(os.path.join(out, rel), exist_ok=True)
                    open(os.path.join(out, rel, "predictions.jsonl"), "w").write("new\n")
        else:
            open(os.path.join(out, "predictions.jsonl"), "w").write("new\n")
        return 1.0

    monkeypatch.setattr(runner, "execute", stand_in)
    run = runner.Run("rd_only", 0, str(folder))
    preset, plan = presets.PRESETS["premise"], {"max_steps": 50, "probe_steps": 20}
    assert runner.orphaned(run, preset, plan)
    names = ("train", "rd_traces", "anchor_traces", "eval_used", "probe", "n_eval", "sampled", "eval_extra")
    files = {k: f"<{k}>" for k in names}
    runner.train(run, preset, files, plan, [], jobs=2)
    (training, threads), *evaluations = calls
    assert training[1] == presets.SCRIPT and "--resume_from_checkpoint" not in training
    evaluated = [c[c.index("--output_dir") + 1] for c, _ in evaluations]
    read = lambda rel: (folder / rel).read_text()  # noqa: E731
    if kept:
        assert threads == "3" and training[-2:] == ["--skip_eval", "true"]
        assert evaluated == [str(folder / "premise" / p) for p in ("step40/sampled", "step30/full", "step30/sampled")]
        models = [c[c.index("--model_name_or_path") + 1] for c, _ in evaluations]
        assert models == [str(folder / "checkpoint-40"), str(folder / "checkpoint-30"), str(folder / "checkpoint-30")]
        for rel in ("calibration_after", "premise/step50/sampled", "premise/step50/extra", "premise/step40/full"):
            assert read(f"{rel}/predictions.jsonl") == "kept\n", rel
        assert json.loads(read("trainer_state.json"))["log_history"] == history  # the first log, put back
        done = json.loads(read("DONE.json"))
        assert done["threads"] == "3" and done["retrained"][0]["log_difference"] == pytest.approx(
            max(2e-4 * (2 + s) / max(2 + s, 1) / (1 + 2e-4) for s in range(1, 51))
        )
        assert not (folder / "trainer_state.first.json").exists()
    else:  # redone whole: trained again with its final evaluation, then every checkpoint evaluation
        retraining, _ = calls[0]
        whole, _ = calls[1]
        assert retraining[-2:] == ["--skip_eval", "true"] and "--skip_eval" not in whole
        assert evaluated[1:] == [str(folder / "premise" / p) for p in
                                 ("step50/sampled", "step50/extra", "step40/full", "step40/sampled", "step30/full",
                                  "step30/sampled")]  # fmt: skip
        for rel in ("calibration_after", "premise/step50/sampled", "premise/step40/full"):
            assert read(f"{rel}/predictions.jsonl") == "new\n", rel
        done = json.loads(read("DONE.json"))
        assert "retrained" not in done and done["threads"] == runner.lane_threads(2)


def test_restore_from_several_folders_first_one_wins(tmp_path):
    """--restore A B: every file either holds, A's where both do; nothing over a file already there."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    both = {a: ["plan.json", "runs/rd_only/seed0/DONE.json"]}
    both[b] = ["plan.json", "runs/rd_only/seed1/DONE.json", "runs/hytuning/seed0/DONE.json"]
    for root, rels in both.items():
        for rel in rels:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(root.name)
    (out / "runs" / "hytuning" / "seed0").mkdir(parents=True)
    (out / "runs" / "hytuning" / "seed0" / "DONE.json").write_text("mine")
    copied = store.restore([str(a), str(b)], str(out))
    assert sorted(copied) == ["plan.json", "runs/rd_only/seed0/DONE.json", "runs/rd_only/seed1/DONE.json"]
    assert (out / "plan.json").read_text() == "a" and (out / "runs/rd_only/seed1/DONE.json").read_text() == "b"
    assert (out / "runs" / "hytuning" / "seed0" / "DONE.json").read_text() == "mine"


def test_first_seed_runs_one_seed_alone(capsys):
    runs, lines = _dry(capsys, "--preset", "premise", "--seeds", "1", "--first_seed", "2")
    assert runs == ["rd_only seed 2"] and "--seed 2 " in lines[0] and "runs/rd_only/seed2" in lines[0]


def test_evidence_v3_arms_differ_only_where_issue_34_names(capsys, tmp_path, monkeypatch):
    """evidence-v3: the five arms at 3 seeds in the premise's regime and data; rd_cal is rd_only plus the calibration
    loss at the pilot's choice, hytuning_blind_cal is hytuning_blind plus it, hytuning_blind is hytuning with the
    answer out of RL; every command is the premise's but for the checkpoints it keeps. An arm whose calibration is
    still pending refuses to start, before anything is written, naming the arms to run meanwhile."""
    runs, lines = _dry(capsys, "--preset", "evidence-v3")
    arms = ("rd_only", "hytuning", "hytuning_blind", "rd_cal", "hytuning_blind_cal")
    assert sorted(runs) == sorted(f"{a} seed {s}" for a in arms for s in range(3))
    assert "Pending" not in lines[-1]
    cal = ["--calibration_target", "weakest_token", "--calibration_weight", "0.01"]
    by_arm = {line.split(" seed")[0]: line.split(" --output_dir ")[1].split(" ", 1)[1] for line in lines[:-1]}
    assert by_arm["rd_only"] == "--mixing rd_only --rewards self_certainty --reward_weights 1.0"
    assert by_arm["rd_cal"] == by_arm["rd_only"] + " " + " ".join(cal)
    recipe = "--rewards self_certainty prg_gated_confidence agreement_brier --reward_weights 0.1 1.0 1.0"
    assert by_arm["hytuning"] == f"--mixing prg {recipe}"
    assert by_arm["hytuning_blind"] == f"--mixing prg --answer_blind_rl true {recipe}"
    assert by_arm["hytuning_blind_cal"] == by_arm["hytuning_blind"] + " " + " ".join(cal)
    _, premise = _dry(capsys, "--preset", "premise")
    common = {line.split(": ", 1)[1].split(" --seed ")[0] for line in lines[:-1]}
    [premise_common] = {line.split(": ", 1)[1].split(" --seed ")[0] for line in premise[:-1]}
    assert common == {premise_common.replace("--save_total_limit 5", "--save_total_limit 1")}
    v3 = presets.PRESETS["evidence-v3"]
    assert v3.primary is presets.PRIMARY_V3 and v3.checkpoint_steps == (50,) and v3.n_eval == 800

    pending = presets.calibration(presets.PENDING, presets.PENDING)
    monkeypatch.setitem(presets.ARMS, "rd_cal", [*presets.ARMS["rd_only"], *pending])
    monkeypatch.setitem(presets.ARMS, "hytuning_blind_cal", [*presets.ARMS["hytuning_blind"], *pending])
    _, lines = _dry(capsys, "--preset", "evidence-v3")
    assert "Pending, not runnable yet: hytuning_blind_cal, rd_cal" in lines[-1]
    out = tmp_path / "v3"
    with pytest.raises(SystemExit, match=r"rd_cal: .* pending .*--arms hytuning rd_only hytuning_blind$"):
        cli.main(["--preset", "evidence-v3", "--output_dir", str(out)])
    assert not out.exists()


def test_v3_calibration_is_the_committed_pilots_choice():
    """The calibration arms carry what the rule chooses from the committed pilot outputs (docs/data/pilot; the share
    pilot did not run), worked here from the pilot's own table: the weights whose greedy anchor accuracy is not
    below rd_only's, the lowest sampled Brier among them."""
    pilot_dir = os.path.join(ROOT, "docs", "data", "pilot")
    with open(os.path.join(pilot_dir, "results.json")) as f:
        rows = json.load(f)["per_arm"]
    floor = rows["rd_only"]["anchor_accuracy"]
    kept = {a: r for a, r in rows.items() if a != "rd_only" and r["anchor_accuracy"] >= floor}
    assert kept, "no pilot run kept rd_only's anchor accuracy: the calibration arms would be dropped"
    arm = min(kept, key=lambda a: (kept[a]["sampled_brier"], kept[a]["weight"]))
    assert presets.V3_CALIBRATION == ("weakest_token", str(kept[arm]["weight"]))
    choice = analysis.calibration_choice(analysis.read_pilot(pilot_dir), None)
    assert (choice["calibration_target"], str(choice["calibration_weight"])) == presets.V3_CALIBRATION


def _pilot_result(target, accuracies, chosen=None):
    """A pilot's results.json as analysis.pilot writes it: rd_only at anchor accuracy 1.0, then one run per weight
    (``accuracies``: weight -> anchor accuracy)."""
    per_arm = {"rd_only": {"anchor_accuracy": 1.0}}
    per_arm.update({f"rd_cal_{target}_{w}": {"anchor_accuracy": a} for w, a in accuracies.items()})
    kept = [w for w, a in accuracies.items() if a >= 1.0]
    result = {"per_arm": per_arm, "rd_only_anchor_accuracy": 1.0, "no_arm_kept_rd_only_accuracy": not kept}
    return {**result, "chosen": f"rd_cal_{target}_{chosen}", "chosen_weight": float(chosen), "chosen_target": target}


def test_calibration_choice_by_the_rule_fixed_before_the_pilots(tmp_path, capsys):
    """Weakest token if one of its runs kept rd_only's anchor accuracy; else share if one of its did; else dropped;
    pending while a pilot the rule needs is partial or missing. Read from the pilots' folders by the command line."""
    broke = dict.fromkeys(presets.PILOT_WEIGHTS, 0.375)
    partial = {w: 0.375 for w in ("0.1", "0.3", "1.0")}
    weakest_kept = {**broke, "0.01": 1.0}
    share_kept = {**broke, "0.03": 1.0, "0.1": 1.0}
    choose = analysis.calibration_choice
    assert choose(_pilot_result("weakest_token", partial, "0.1"), None) == {
        "status": "pending", "waiting_for": "pilot",
        "missing": ["rd_cal_weakest_token_0.01", "rd_cal_weakest_token_0.03"]}  # fmt: skip
    chosen = choose(_pilot_result("weakest_token", weakest_kept, "0.01"), None)
    got = (chosen["status"], chosen["calibration_target"], chosen["calibration_weight"])
    assert got == ("chosen", "weakest_token", 0.01)
    assert choose(_pilot_result("weakest_token", broke, "0.1"), None)["waiting_for"] == "pilot-share"
    share = choose(_pilot_result("weakest_token", broke, "0.1"), _pilot_result("share", share_kept, "0.03"))
    assert (share["status"], share["calibration_target"], share["calibration_weight"], share["from"]) == (
        "chosen", "share", 0.03, "pilot-share")  # fmt: skip
    dropped = choose(_pilot_result("weakest_token", broke, "0.1"), _pilot_result("share", broke, "0.1"))
    assert dropped["status"] == "dropped"
    for name, result in (("pilot", _pilot_result("weakest_token", broke, "0.1")),
                         ("pilot-share", _pilot_result("share", share_kept, "0.03"))):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(result))
    printed = cli.main(["--calibration_choice", str(tmp_path / "pilot"), str(tmp_path / "pilot-share")])
    assert printed == share and json.loads(capsys.readouterr().out) == share
    assert cli.main(["--calibration_choice", str(tmp_path / "pilot"), str(tmp_path / "none")])["status"] == "pending"


def test_profile_step_takes_the_calibration_of_a_pending_arm(monkeypatch):
    """profile_step.py --calibration T W: the calibration arms get it in place of their own, another arm gets it
    added; without it they keep their own, and a pending arm stops before any model loads, naming the flag."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import profile_step

    cal = ["--calibration_target", "share", "--calibration_weight", "0.1"]
    assert profile_step.arm_flags("rd_cal", ["share", "0.1"]) == ["--mixing", "rd_only", *presets.SELF_CERTAINTY, *cal]
    assert profile_step.arm_flags("hytuning_blind_cal", ["share", "0.1"]) == [*presets.ARMS["hytuning_blind"], *cal]
    assert profile_step.arm_flags("hytuning", None) == presets.ARMS["hytuning"]
    assert profile_step.arm_flags("rd_cal_weakest_token_0.3", ["share", "0.1"]) == [*presets.ARMS["rd_only"], *cal]
    assert profile_step.arm_flags("rd_cal", None) == presets.ARMS["rd_cal"]
    pending = presets.calibration(presets.PENDING, presets.PENDING)
    monkeypatch.setitem(presets.ARMS, "rd_cal", [*presets.ARMS["rd_only"], *pending])
    with pytest.raises(SystemExit, match="--arm rd_cal: .* pending; give them: --calibration T W"):
        profile_step.main(["--arm", "rd_cal", "--model", "/nonexistent"])
    with pytest.raises(SystemExit) as bad:  # an unknown arm: argparse's one line and exit 2, not a KeyError
        profile_step.main(["--arm", "rd_call", "--model", "/nonexistent"])
    assert bad.value.code == 2


def test_auroc_curves_and_estimator_grid_worked_by_hand(tmp_path):
    """The probe's AUROC per single-pass estimator over the steps: step 0 from the base model's answers to the probe
    questions, the probes from the run's log, the last step from its final evaluation on the probe questions, each
    recomputed here with sklearn from the records' own numbers; a run whose probes logged no estimator (0.3.0) is
    left out; the figures are written, one reliability panel per arm and estimator."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    questions = [f"q{i}" for i in range(30)]
    probe_file = tmp_path / "probe.jsonl"
    runner.write_jsonl(str(probe_file), [{"question": q} for q in questions[:20]])
    base = _fake_records(rng, questions, 0.5)
    runs, by_arm = [], {}
    for arm, logged in (("rd_only", True), ("hytuning", True), ("rl_only", False)):
        folder = tmp_path / arm
        folder.mkdir()
        probe = {"step": 2, "eval_calibration/accuracy": 0.6, "eval_calibration/after_reasoning/auroc": 0.41}
        if logged:
            probe.update({"eval_calibration/weakest_token/auroc": 0.8, "eval_calibration/reasoning_likelihood/auroc":
                          0.7, "eval_calibration/prg_gated/auroc": 0.45})  # fmt: skip
        history = [{"step": 1, "loss": 1.0}, probe, {"step": 4, "loss": 0.5}]
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4, "log_history": history}))
        runs.append(runner.Run(arm, 0, str(folder)))
        by_arm[arm] = {0: _fake_records(rng, questions, 2.0)}
    series = report.auroc_series(runs, base, by_arm, {"probe": str(probe_file)})
    assert set(series) == {"rd_only/seed0", "hytuning/seed0"}

    def by_sklearn(recs, score):
        sub = recs[:20]
        return roc_auc_score([r["correct"] for r in sub], [score(r) for r in sub])

    weakest = lambda r: float(np.exp(min(r["reasoning_logprobs"])))  # noqa: E731
    points = series["rd_only/seed0"]["weakest_token"]
    assert [s for s, _ in points] == [0, 2, 4] and points[1][1] == 0.8
    assert points[0][1] == pytest.approx(by_sklearn(base, weakest))
    assert points[2][1] == pytest.approx(by_sklearn(by_arm["rd_only"][0], weakest))
    after = series["hytuning/seed0"]["after_reasoning"]
    assert after[1][1] == 0.41 and after[2][1] == pytest.approx(by_sklearn(by_arm["hytuning"][0],
                                                                           lambda r: r["confidence"]))  # fmt: skip
    accuracy = series["hytuning/seed0"]["accuracy"]
    assert accuracy[2][1] == pytest.approx(sum(r["correct"] for r in by_arm["hytuning"][0][:20]) / 20)
    report.auroc_curves(str(tmp_path), series)
    drawn = report.estimator_grid(str(tmp_path), runs[:2], by_arm)
    assert len(drawn) == 2 * 4 and (tmp_path / "auroc_curves.png").stat().st_size > 0
    assert (tmp_path / "reliability_estimators.png").stat().st_size > 0


def test_data_files_are_replaced_whole_or_not_at_all(tmp_path):
    """Two lanes may share an output folder and every start rewrites the data files: a write that fails part way
    (here the second row cannot be serialised) leaves the old file as it was, and no temporary file beside it."""
    path = tmp_path / "traces.jsonl"
    path.write_text('{"question": "old"}\n')
    with pytest.raises(TypeError):
        runner.write_jsonl(str(path), [{"question": "new"}, {"question": {1, 2}}])
    assert path.read_text() == '{"question": "old"}\n'
    assert os.listdir(tmp_path) == ["traces.jsonl"]
    runner.write_jsonl(str(path), [{"question": "new"}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"question": "new"}]


def test_premise_product_of_two_estimators_worked_by_hand(tmp_path):
    """The exploratory product after_reasoning x weakest_token (analysis.PRODUCT): its AUROC per run and checkpoint
    recomputed with sklearn from the records (the option probability of the chosen answer times exp of the lowest
    reasoning log-probability), on the single-pass questions of each checkpoint, and its row in the report."""
    from dataclasses import replace

    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    eval_q = [f"q{i}" for i in range(60)]
    folder = tmp_path / "runs" / "rd_only" / "seed0"
    full = {4: _fake_records(rng, eval_q, 2.0), 2: _fake_records(rng, eval_q, 0.5)}
    for step, rows in full.items():
        where = folder / ("calibration_after" if step == 4 else "premise/step2/full")
        os.makedirs(where)
        runner.write_jsonl(str(where / "predictions.jsonl"), rows)
        sampled = [{**r, "majority": "A", "samples": [{"answer": "A", "stated": True, "option_letters": list("ABCD"),
                                                        "option_logprobs": [0.0, -1.0, -2.0, -3.0]}]}
                   for r in rows[:10]]  # fmt: skip
        os.makedirs(folder / f"premise/step{step}/sampled")
        runner.write_jsonl(str(folder / f"premise/step{step}/sampled/predictions.jsonl"), sampled)
    preset = replace(presets.PRESETS["premise"], checkpoint_steps=(2, 4), extra_eval=0)
    result = analysis.premise([runner.Run("rd_only", 0, str(folder))], preset, {"max_steps": 4}, 200)
    for step, rows in full.items():
        product = [r["confidence"] * np.exp(min(r["reasoning_logprobs"])) for r in rows]
        expected = roc_auc_score([r["correct"] for r in rows], product)
        got = result["per_run"]["rd_only/seed0"][str(step)]["product_auroc"]
        assert got["value"] == pytest.approx(expected) and got["n_questions"] == 60
        assert got["value"] != pytest.approx(
            result["per_run"]["rd_only/seed0"][str(step)]["auroc"]["weakest_token"]["value"]
        )
    text = "\n".join(report.premise_markdown(result))
    value = result["per_run"]["rd_only/seed0"]["4"]["product_auroc"]["value"]
    assert f"| rd_only/seed0 | 4 | {value:.3f} |" in text


def test_errors_by_kind_worked_by_hand():
    """analysis.error_kinds on six hand-made records: two right answers, two that contradict their own check, one
    that follows a wrong check, one with no check; counts, means and AUROCs (right against each kind) by hand."""
    import math

    def record(correct, chosen, check, conf, weakest, options=(0.7, 0.2, 0.1, 0.0)):
        completion = (
            "Tens: 1+2=3, so the sum is 35.\n\n" + (f"Check: {check}.\n" if check else "") + "The answer is X."
        )
        return {"question": "q", "gold": "A", "chosen": chosen, "correct": correct, "stated": True,
                "confidence": conf, "gain": 0.5, "completion": completion,
                "option_letters": ["A", "B", "C", "D"],
                "option_logprobs": [math.log(p) + 3.0 if p else -math.inf for p in options],
                "reasoning_logprobs": [-0.01, math.log(weakest), -0.02]}  # fmt: skip

    recs = [
        record(True, "A", "A 35 yes, B 45 no", 0.9, 0.90),
        record(True, "A", "A 35 yes, B 45 no", 0.8, 0.80),
        record(False, "B", "A 35 yes, B 45 no", 0.85, 0.95, (0.40, 0.45, 0.15, 0.0)),  # contradicts; near tie
        record(False, "C", "A 35 yes, C 36 no", 0.3, 0.35, (0.30, 0.25, 0.45, 0.0)),  # contradicts; gap 0.15
        record(False, "B", "A 35 no, B 45 yes", 0.95, 0.10),  # follows a wrong check
        record(False, "D", None, 0.5, 0.60),  # no check
    ]
    kinds = analysis.error_kinds(recs)
    assert {k: v["n"] for k, v in kinds.items()} == {"right": 2, "contradicts": 2, "follows": 1, "no_check": 1}
    assert kinds["right"]["after_reasoning"] == pytest.approx(0.85)
    assert kinds["contradicts"]["weakest_token"] == pytest.approx(0.65)
    # right (0.9, 0.8) against contradicts (0.85, 0.3): 3 of 4 pairs ordered; weakest (0.9, 0.8) vs (0.95, 0.35): 2
    assert kinds["contradicts"]["after_reasoning_auroc"] == pytest.approx(0.75)
    assert kinds["contradicts"]["weakest_token_auroc"] == pytest.approx(0.5)
    assert kinds["follows"]["after_reasoning_auroc"] == 0.0 and kinds["follows"]["weakest_token_auroc"] == 1.0
    assert kinds["no_check"]["after_reasoning_auroc"] == 1.0 and kinds["no_check"]["weakest_token_auroc"] == 1.0
    assert kinds["contradicts"]["gold_to_stated"] == {"A->B": 1, "A->C": 1}
    # near ties (top two options within 0.1): only the first contradicting one (0.45 vs 0.40); 0.45 vs 0.30 is not,
    # nor 0.7 vs 0.2; a record without scored options is left out of the share
    assert analysis.near_tie_share(recs) == pytest.approx(1 / 6)
    assert analysis.near_tie_share([*recs, {"option_logprobs": None}]) == pytest.approx(1 / 6)
    premise = {"per_run": {"rd_only/seed0": {"4": {"error_kinds": kinds, "near_ties": 1 / 6}}}}
    kinds_table = [line for line in report.error_kinds_markdown(premise) if line.startswith("| rd_only/seed0 | 4 |")]
    assert kinds_table == [
        "| rd_only/seed0 | 4 | 2 (0.850 / 0.850) | 2: 0.750 / 0.500 (A->B 1, A->C 1) | 1: 0.000 / 1.000 | "
        "1: 1.000 / 1.000 | 0.167 | n/a |"
    ]


def test_least_given_letter_worked_by_hand():
    """analysis.least_answered on letter shares worked by hand (evaluation.letter_shares, tested in
    test_evaluation.py): the letter the greedy answers give least often against its gold share, and its cell in the
    errors-by-kind table."""
    from hytuning_trl.evaluation import letter_shares

    rows = [("A", "A"), ("A", "B"), ("B", "B"), ("B", "B"), ("C", "B"), ("D", "D"), ("D", None)]  # (gold, chosen)
    recs = [{"gold": g, "chosen": c, "correct": g == c} for g, c in rows]
    shares = letter_shares(recs)
    # answered / gold: A 1/2, B 4/2, C 0/1, D 1/2
    assert analysis.least_answered(shares) == "C"
    assert analysis.least_answered({k: v for k, v in shares.items() if k != "C"}) == "A"  # a tie goes to the first
    assert analysis.least_answered({}) is None
    scored = {"completion": "", "confidence": 0.5, "gain": None, "reasoning_logprobs": [-0.1]}
    kinds = analysis.error_kinds([{**r, **scored} for r in recs])
    premise = {"per_run": {"rd_cal/seed2": {"50": {"error_kinds": kinds, "near_ties": None, "letters": shares}}}}
    [line] = [line for line in report.error_kinds_markdown(premise) if line.startswith("| rd_cal/seed2 |")]
    assert line.endswith("| n/a | C 0.00 / 0.14 (0.00) |")


def test_collect_leaves_out_what_a_restored_folder_holds(tmp_path, capsys):
    """evidence-v3 restores the premise's rd_only runs: --collect with --restore copies its own runs and any file
    that differs from the restored folder's, not the restored files again (committed once, restored from both)."""
    premise, out, dest = tmp_path / "premise", tmp_path / "out", tmp_path / "dest"
    restored = {
        "plan.json": '{"max_steps": 50}',
        "runs/rd_only/seed0/DONE.json": '{"arm": "rd_only"}',
        "runs/rd_only/seed0/calibration_after/predictions.jsonl": '{"question": "a"}\n',
        "runs/rd_only/seed0/calibration_anchor/predictions.jsonl": '{"question": "b"}\n',
    }
    _write_tree(premise, restored)
    made_here = {
        "runs/rd_only/seed0/trainer_state.json": '{"global_step": 50}',  # not in the restored folder
        "runs/rd_cal/seed0/DONE.json": '{"arm": "rd_cal"}',
        "runs/rd_cal/seed0/calibration_anchor/predictions.jsonl": '{"question": "b"}\n',
        "runs/rd_cal/seed0/calibration_after/predictions.jsonl": '{"question": "a"}\n',  # same text, another run
    }
    _write_tree(out, made_here)
    (out / "plan.json").write_text('{"max_steps": 40}')  # differs from the restored one: collected
    cli.main(["--output_dir", str(out), "--restore", str(premise), "--collect", str(dest)])
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == sorted([*made_here, "plan.json"])
    assert (dest / "plan.json").read_text() == '{"max_steps": 40}'
    assert f"5 files copied to {dest} (the same files in {premise} left out)" in capsys.readouterr().out


def test_metrics_move_verdict_names_which_half_failed():
    """The 0.3.0 check "do the metrics move?" reads as not measured before a hytuning run finishes (evidence-v3's
    partial analyses said "NO: raise the learning rate" then), and a failure names its half: rd_only not moving from
    the base model, or hytuning's PRG weight not moving."""
    verdict = report.metrics_move_verdict
    moving = ["accuracy", "brier"]
    assert verdict({"adaptive_rd_weight_span": None, "rd_only_vs_base_excluding_0": moving, "metrics_move": None}) == (
        "not measured yet (no hytuning run finished)"
    )
    yes = {"adaptive_rd_weight_span": 0.3, "rd_only_vs_base_excluding_0": moving, "metrics_move": True}
    assert verdict(yes) == "yes"
    assert "rd_only does not move" in verdict(
        {"adaptive_rd_weight_span": 0.3, "rd_only_vs_base_excluding_0": [], "metrics_move": False}
    )
    assert "PRG weight stayed within 0.1" in verdict(
        {"adaptive_rd_weight_span": 0.0, "rd_only_vs_base_excluding_0": moving, "metrics_move": False}
    )


def _row(arm, metric, diff, low, high, *, arm_scaled=False, **extra):
    return {
        "arm": arm,
        "reference": "rd_only",
        "metric": metric,
        "diff": diff,
        "ci95": [low, high],
        "n_seeds": 3,
        "arm_scaled": arm_scaled,
        "reference_scaled": arm_scaled,
        "excludes_0": low > 0 or high < 0,
        **extra,
    }


def test_default_recipe_by_the_rule_worked_by_hand():
    """Issue 34, point 6: an arm becomes the default when its raw after_reasoning AUROC or Brier interval favours it
    against rd_only and its accuracy's lower bound is above -0.03; of several, the lowest Brier. Rows read through
    another estimator or after temperature scaling do not count; with no winner, rd_only's best label-free
    estimator is the one to read."""
    brier = {"rd_only": 0.09, "hytuning": 0.30, "hytuning_blind": 0.07, "rd_cal": 0.05, "hytuning_blind_cal": 0.08}
    rows = [
        # hytuning: better AUROC but loses accuracy (lower bound -0.25)
        _row("hytuning", "accuracy", -0.2, -0.25, -0.15),
        _row("hytuning", "auroc", 0.1, 0.02, 0.2),
        _row("hytuning", "brier", 0.2, 0.1, 0.3),
        # hytuning_blind: Brier better, accuracy lower bound -0.02 (kept): beats rd_only
        _row("hytuning_blind", "accuracy", -0.01, -0.02, 0.01),
        _row("hytuning_blind", "auroc", 0.0, -0.1, 0.1),
        _row("hytuning_blind", "brier", -0.02, -0.03, -0.01),
        # rd_cal: AUROC better and accuracy kept; lower Brier than hytuning_blind, so the default
        _row("rd_cal", "accuracy", 0.0, -0.01, 0.01),
        _row("rd_cal", "auroc", 0.2, 0.1, 0.3),
        _row("rd_cal", "brier", 0.0, -0.01, 0.01),
        # hytuning_blind_cal: better only T-scaled or through weakest_token, which do not count
        # (listed first, so that a rule reading them would take them)
        _row("hytuning_blind_cal", "brier", -0.05, -0.06, -0.04, arm_scaled=True),
        _row("hytuning_blind_cal", "auroc", 0.3, 0.2, 0.4, estimator="weakest_token"),
        _row("hytuning_blind_cal", "accuracy", 0.0, -0.01, 0.01),
        _row("hytuning_blind_cal", "auroc", 0.0, -0.1, 0.1),
        _row("hytuning_blind_cal", "brier", 0.0, -0.01, 0.01),
    ]
    result = {
        "partial": False,
        "primary": rows[:6],
        "comparisons": rows[6:],
        "table": {arm: {"brier": {"value": b}} for arm, b in brier.items()},
        "primary_resolved": {presets.BEST_LABEL_FREE: "weakest_token"},
    }
    verdict = analysis.default_recipe(result)
    assert {a: v["beats_rd_only"] for a, v in verdict["per_arm"].items()} == {
        "hytuning": False,
        "hytuning_blind": True,
        "rd_cal": True,
        "hytuning_blind_cal": False,
    }
    assert verdict["per_arm"]["hytuning"]["better_on"] == ["auroc"]
    assert verdict["per_arm"]["hytuning_blind"]["better_on"] == ["brier"]
    assert verdict["per_arm"]["hytuning_blind_cal"]["better_on"] == []
    assert verdict["default"] == "rd_cal" and verdict["read_instead"] is None
    assert "-> the default recipe: rd_cal." in report.default_recipe_markdown(verdict)[-1]

    # no winner: rd_only stays, read through its best label-free estimator; an arm without rows is named
    result["primary"] = rows[:3]
    result["comparisons"] = rows[9:]  # hytuning_blind_cal's rows only
    verdict = analysis.default_recipe(result)
    assert verdict["default"] is None and verdict["read_instead"] == "weakest_token"
    assert verdict["unmeasured"] == ["hytuning_blind", "rd_cal"]
    result["partial"] = True
    said = report.default_recipe_markdown(analysis.default_recipe(result))[-1]
    assert "no arm beats rd_only" in said and "weakest_token" in said and "not the run's verdict" in said
