"""The installed console commands, run as a user runs them: exit status and output."""

import json
import math
import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)


def _run(command, *args, timeout=300):
    exe = os.path.join(BIN, command)
    assert os.path.exists(exe), f"{command} is not installed next to {sys.executable}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mcq_rows(mcq, n, reasoning=False):
    keys = ("question", "options", "answer_idx") + (("reasoning",) if reasoning else ())
    return [{k: e[k] for k in keys} for e in mcq[:n]]


def _assert_clean_failure(out, command, needle):
    """Bug it catches: a traceback or a silent exit 0 on bad input."""
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith(f"{command}: error")]
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_hytuning_eval_success(tmp_path, trained_dir, mcq):
    data = _write_jsonl(tmp_path / "heldout.jsonl", _mcq_rows(mcq, 5))
    out_dir = tmp_path / "report"
    out = _run(
        "hytuning-eval",
        "--model_name_or_path", trained_dir, "--dataset_name", data, "--output_dir", out_dir,
        "--max_new_tokens", 64, "--batch_size", 3, "--mcq_instruction", "Reason, then name the letter.",
    )  # fmt: skip
    # Bug it catches: main() returning its result dict, which the console wrapper prints and exits 1 on.
    assert out.returncode == 0, out.stderr
    assert "{'" not in out.stdout and "stated only" in out.stdout
    report = json.loads((out_dir / "calibration.json").read_text())
    assert report["n"] == 5 and report["settings"]["max_new_tokens"] == 64 and len(report["bins"]) == 15
    assert report["metrics"]["stated_only"] is None or report["metrics"]["stated_only"]["n"] <= 5
    assert (out_dir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 5
    assert report["settings"]["instruction"] == "Reason, then name the letter."
    for p in predictions:  # post-hoc calibration reads these: one log-probability per option, normalised
        assert p["option_letters"] == sorted(p["option_letters"]) and len(p["option_logprobs"]) == 4
        probs = [math.exp(lp) for lp in p["option_logprobs"]]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert probs[p["option_letters"].index(p["chosen"])] == pytest.approx(p["confidence"], abs=1e-6)


def test_hytuning_eval_bad_input(tmp_path, mcq):
    """Bad questions are reported before a model is loaded (the model folder does not exist)."""
    trained_dir = tmp_path / "no-model"
    out = _run("hytuning-eval", "--model_name_or_path", trained_dir, "--dataset_name", tmp_path / "missing.jsonl")
    _assert_clean_failure(out, "hytuning-eval", "missing.jsonl")
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer_idx": "A"}])
    out = _run("hytuning-eval", "--model_name_or_path", trained_dir, "--dataset_name", bad)
    _assert_clean_failure(out, "hytuning-eval", "'options'")
    # Bug it catches: "Expecting ',' delimiter: line 2 column 1" for the file's 4th line, with no file name
    broken = _broken_jsonl(tmp_path / "broken.jsonl", _mcq_rows(mcq, 2))
    out = _run("hytuning-eval", "--model_name_or_path", trained_dir, "--dataset_name", broken)
    _assert_clean_failure(out, "hytuning-eval", f"{broken}, line 4: not valid JSON")
    # Bug it catches: --max_samples 0 read as "no questions" here and as "all" by hytuning-prg
    good = _write_jsonl(tmp_path / "good.jsonl", _mcq_rows(mcq, 8))
    out = _run("hytuning-eval", "--model_name_or_path", trained_dir, "--dataset_name", good, "--max_samples", 0)
    _assert_clean_failure(out, "hytuning-eval", "--max_samples must be at least 1")


def _broken_jsonl(path, rows):
    """Two rows, a blank line, then a row cut in the middle: the 4th line of the file is not JSON."""
    lines = [json.dumps(r) for r in rows[:2]] + ["", json.dumps(rows[0])[:-5]]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hytuning_prg_success(tmp_path, trained_dir, mcq):
    traces = _write_jsonl(tmp_path / "traces.jsonl", _mcq_rows(mcq, 6, reasoning=True))
    out_dir = tmp_path / "prg"
    out = _run(
        "hytuning-prg",
        "--model_name_or_path", trained_dir, "--traces_file", traces, "--output_dir", out_dir, "--n_bootstrap", 50,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "steps_shuffled" in out.stdout and "{'" not in out.stdout
    report = json.loads((out_dir / "validity.json").read_text())
    assert [r["corruption"] for r in report["validity"]] == [
        "steps_shuffled",
        "steps_from_other_question",
        "last_step_removed",
    ]
    records = [json.loads(line) for line in (out_dir / "trajectories.jsonl").read_text().splitlines()]
    assert len(records) == report["summary"]["n_traces"] and all(len(r["p_gold"]) == r["K"] + 1 for r in records)
    assert (out_dir / "prg_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "missing.jsonl"),
        ("columns", "'reasoning'"),
        ("letter", "at least two distinct options"),
        ("broken", ", line 4: not valid JSON"),
        ("zero", "--max_samples must be at least 1"),
    ],
)
def test_hytuning_prg_bad_input(tmp_path, mcq, case, needle):
    """Bad traces are reported before a model is loaded: the model folder here does not exist, so an error found only
    after loading it would name the model instead."""
    args = ["--model_name_or_path", tmp_path / "no-model", "--output_dir", tmp_path / "o"]
    if case == "missing":
        args += ["--traces_file", tmp_path / "missing.jsonl"]
    elif case == "columns":
        args += ["--traces_file", _write_jsonl(tmp_path / "t.jsonl", [{"question": "q"}])]
    elif case == "letter":
        traces = [{"prompt": "q", "completion": "a.\n\nb.\nThe answer is A."}]
        args += ["--traces_file", _write_jsonl(tmp_path / "t.jsonl", traces), "--answer_options", "A"]
    elif case == "broken":
        args += ["--traces_file", _broken_jsonl(tmp_path / "t.jsonl", _mcq_rows(mcq, 2, reasoning=True))]
    else:
        args += ["--traces_file", _write_jsonl(tmp_path / "t.jsonl", _mcq_rows(mcq, 8, reasoning=True))]
        args += ["--max_samples", 0]
    _assert_clean_failure(_run("hytuning-prg", *args), "hytuning-prg", needle)


def test_model_folder_missing_or_empty_is_named(tmp_path, mcq, capsys):
    """A model folder that is missing or holds no model is named as such (transformers alone says "Repo id must be in
    the form 'repo_name'" for the first and "You need to have sentencepiece or tiktoken installed" for the second)."""
    from hytuning_trl.cli import main

    data = _write_jsonl(tmp_path / "q.jsonl", _mcq_rows(mcq, 2))
    (tmp_path / "empty").mkdir()
    for folder, needle in ((tmp_path / "gone", "No such model folder"), (tmp_path / "empty", "holds no model")):
        assert main(["--model_name_or_path", str(folder), "--dataset_name", str(data)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hytuning-eval: error: ") and needle in lines[0], lines
        assert str(folder) in lines[0]
