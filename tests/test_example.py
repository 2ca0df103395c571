"""examples/train_medqa.py: its main function on a tiny local model, 2 steps, with the before/after report."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_medqa", os.path.join(ROOT, "examples", "train_medqa.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_medqa"] = module
    spec.loader.exec_module(module)
    return module


def test_default_recipe_parses(example):
    script_args, training_args, model_args = example.parse([])
    assert training_args.mixing == "prg" and training_args.use_cpu and training_args.answer_options == list("ABCD")
    assert training_args.output_dir == "outputs/medqa-hytuning" and script_args.max_eval_samples == 20
    assert model_args.model_name_or_path is None  # the SmolLM2 default
    assert os.path.exists(script_args.train_file) and os.path.exists(script_args.distill_file)


def test_main_runs_on_tiny_model(example, trained_dir, tmp_path):
    out = tmp_path / "run"
    args = example.parse(
        [
            "--config",
            example.DEFAULT_RECIPE,
            "--model_name_or_path",
            trained_dir,
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--max_completion_length",
            "48",
            "--max_eval_samples",
            "4",
            "--eval_max_new_tokens",
            "32",
            "--eval_batch_size",
            "4",
            "--distill_max_length",
            "1024",
            "--rewards",
            "self_certainty",
            "prg",
            "majority_vote",
            "--reward_weights",
            "0.1",
            "1.0",
            "1.0",
        ]
    )
    summary = example.main(*args)
    assert set(summary) >= {"before", "after", "seconds"}
    for stage in ("calibration_before", "calibration_after"):
        report = json.loads((out / stage / "calibration.json").read_text())
        assert report["n"] == 4 and 0 <= report["metrics"]["ece"] <= 1
        assert (out / stage / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "reliability_before_after.png").exists() and (out / "model.safetensors").exists()
    saved = json.loads((out / "calibration_summary.json").read_text())
    assert saved["after"] == summary["after"]
    # the RD weight over the steps: in the summary and as a figure beside the reliability diagrams
    assert [t["step"] for t in saved["mixing_trajectory"]] == [1, 2]
    assert all(0.05 <= t["rd_weight"] <= 0.9 for t in saved["mixing_trajectory"])
    assert (out / "rd_weight.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_trace_columns(example, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "solution": "s"}) + "\n")
    script_args, _, _ = example.parse(["--distill_file", str(bad), "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="distill_prompt_column"):
        example.build_distill_dataset(script_args)


@pytest.mark.parametrize("recipe", sorted(os.listdir(os.path.join(ROOT, "examples", "recipes"))))
def test_recipes_parse(example, recipe):
    path = os.path.join(ROOT, "examples", "recipes", recipe)
    script_args, training_args, model_args = example.parse(["--config", path, "--use_cpu", "true", "--bf16", "false"])
    assert training_args.mixing in ("prg", "prg_gap", "constant", "chord", "rl_only", "rd_only")
    assert training_args.reward_weights is None or len(training_args.reward_weights) == len(script_args.rewards)
    assert all(name in example.REWARDS for name in script_args.rewards)
