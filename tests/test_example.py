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
    card = (out / "README.md").read_text()  # the HyTuning card, with the final figures and the warning
    assert "Not for clinical use" in card and "2604.08454" in card and "Mixing rule: `prg`" in card
    assert f"Base model: `{trained_dir}`" in card and "| accuracy |" in card
    saved = json.loads((out / "calibration_summary.json").read_text())
    assert saved["after"] == summary["after"]
    # the RD weight over the steps: in the summary and as a figure beside the reliability diagrams
    assert [t["step"] for t in saved["mixing_trajectory"]] == [1, 2]
    assert all(0.05 <= t["rd_weight"] <= 0.9 for t in saved["mixing_trajectory"])
    assert (out / "rd_weight.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_from_checkpoint(example, trained_dir, tmp_path):
    """A user's interrupted run resumes with --resume_from_checkpoint true: a 2-step run saved at step 2, then the
    same command with --max_steps 4 finishes at step 4 with the mixing state of checkpoint-2 restored (the first
    resumed step uses the weight the checkpoint set for it)."""
    out = tmp_path / "run"
    common = [
        "--model_name_or_path", trained_dir, "--output_dir", str(out), "--skip_eval", "true",
        "--max_completion_length", "32", "--distill_max_length", "1024", "--save_strategy", "steps",
        "--save_steps", "2", "--rewards", "self_certainty", "--reward_weights", "1.0",
    ]  # fmt: skip
    first = example.main(*example.parse([*common, "--max_steps", "2"]))
    assert first["resumed_from"] is None and [t["step"] for t in first["mixing_trajectory"]] == [1, 2]
    saved = json.loads((out / "checkpoint-2" / "hytuning_state.json").read_text())
    second = example.main(*example.parse([*common, "--max_steps", "4", "--resume_from_checkpoint", "true"]))
    assert second["resumed_from"] == str(out / "checkpoint-2")
    trajectory = second["mixing_trajectory"]
    assert [t["step"] for t in trajectory] == [1, 2, 3, 4]
    assert trajectory[:2] == first["mixing_trajectory"]  # the history before the interruption, restored
    assert trajectory[2]["rd_weight"] == pytest.approx(saved["rd_weight"], abs=1e-12)
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    state = json.loads((out / "checkpoint-4" / "hytuning_state.json").read_text())
    assert state["generation_rounds"] == 4 and state["anchor_fingerprint"] == saved["anchor_fingerprint"]
    # the same command again, as after a stop during the final evaluation: checkpoint-4 is loaded, no step 5
    third = example.main(*example.parse([*common, "--max_steps", "4", "--resume_from_checkpoint", "true"]))
    assert third["resumed_from"] == str(out / "checkpoint-4") and third["mixing_trajectory"] == trajectory
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert not (out / "checkpoint-5").exists()


def test_bad_trace_columns(example, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "solution": "s"}) + "\n")
    script_args, _, _ = example.parse(["--distill_file", str(bad), "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="distill_prompt_column"):
        example.build_distill_dataset(script_args)


RECIPES = sorted(os.listdir(os.path.join(ROOT, "examples", "recipes")))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_parse_and_divide_for_8_processes(example, recipe):
    path = os.path.join(ROOT, "examples", "recipes", recipe)
    script_args, training_args, model_args = example.parse(["--config", path, "--use_cpu", "true", "--bf16", "false"])
    assert training_args.mixing in ("prg", "prg_gap", "constant", "chord", "rl_only", "rd_only")
    assert all(name in example.REWARDS for name in script_args.rewards)
    assert training_args.reward_weights is None or len(training_args.reward_weights) == len(script_args.rewards)
    # TRL: the generation batch (per device x processes x steps per generation) must split into whole groups
    steps_per_generation = training_args.steps_per_generation or training_args.gradient_accumulation_steps
    generation_batch = training_args.per_device_train_batch_size * 8 * steps_per_generation
    assert generation_batch % training_args.num_generations == 0, (recipe, generation_batch)
    if recipe != "cpu_default.yaml":  # real runs: real traces, bounded checkpoints, a tracker that is installed
        assert script_args.distill_dataset_name and not script_args.allow_sample_traces
        assert training_args.save_total_limit and training_args.report_to in ([], ["none"], "none")
        assert model_args.dtype == "float32" or model_args.use_peft  # fp32 master weights unless LoRA


def test_default_recipe_is_the_base_layer(example):
    """Bug it catches: one argument dropping the whole default recipe (TRL defaults: no options, batch 8)."""
    script_args, training_args, _ = example.parse(["--mixing", "constant"])
    assert training_args.mixing == "constant"
    assert training_args.answer_options == list("ABCD") and training_args.max_completion_length == 128
    assert training_args.per_device_train_batch_size == 4 and script_args.allow_sample_traces
    gpu = os.path.join(ROOT, "examples", "recipes", "qwen2.5_1.5b_medqa.yaml")
    script_args, training_args, _ = example.parse(["--config", gpu, "--use_cpu", "true", "--bf16", "false"])
    assert training_args.max_completion_length == 768 and not script_args.allow_sample_traces  # --config replaces


def test_sample_traces_refused_unless_asked(example, tmp_path):
    gpu = os.path.join(ROOT, "examples", "recipes", "qwen2.5_1.5b_medqa.yaml")
    script_args, _, _ = example.parse(["--config", gpu, "--use_cpu", "true", "--bf16", "false"])
    script_args.distill_dataset_name = None  # as if a user dropped the real traces: the sample is the fallback
    with pytest.raises(ValueError, match="allow_sample_traces"):
        example.build_distill_dataset(script_args)
    script_args.allow_sample_traces = True
    assert len(example.build_distill_dataset(script_args)) == 24


MEERKAT_ROWS = [  # the dmis-lab/meerkat-instructions MedQA-CoT layout: id + system/user/assistant messages
    {
        "id": "medqa-cot_0",
        "messages": [
            {"role": "system", "content": "The following is a multiple-choice question about medical knowledge."},
            {
                "role": "user",
                "content": "A 7-year-old boy has cola-colored urine two weeks after a sore throat. What is the most "
                "likely diagnosis? (A) Minimal change disease (B) IgA nephropathy (C) Post-streptococcal "
                "glomerulonephritis (D) Membranous nephropathy",
            },
            {
                "role": "assistant",
                "content": "The urine color points to hematuria, a nephritic picture. The two-week latency after a "
                "throat infection is typical of group A streptococcus. IgA nephropathy follows infection within days. "
                "Therefore, the answer is (C) Post-streptococcal glomerulonephritis.",
            },
        ],
    },
    {
        "id": "medqa-cot_1",
        "messages": [
            {"role": "user", "content": "Which vessel? (A) LAD (B) RCA"},
            {
                "role": "assistant",
                "content": "Inferior leads.\n\nThe RCA supplies the inferior wall.\n\nThe answer is B.",
            },
        ],
    },
    {  # no readable answer: skipped
        "id": "medqa-cot_2",
        "messages": [
            {"role": "user", "content": "Which? (A) x (B) y"},
            {"role": "assistant", "content": "It could be either one."},
        ],
    },
]


def test_meerkat_converter(example, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import convert_meerkat_medqa_cot as conv

    traces, skipped = conv.convert(MEERKAT_ROWS)
    assert [t["answer_idx"] for t in traces] == ["C", "B"]
    # Bug it catches: "1 rows skipped: no readable options or answer", without the row or which was missing
    assert skipped == ["row 'medqa-cot_2': the answer states no option of ['A', 'B'] ('The answer is B.' expected)"]
    first = traces[0]
    assert first["question"].endswith("most likely diagnosis?") and first["options"]["C"].startswith("Post-strep")
    steps = first["reasoning"].split("\n\n")
    assert len(steps) == 3 and steps[0].startswith("The urine color") and "answer is" not in first["reasoning"]
    assert traces[1]["reasoning"] == "Inferior leads.\n\nThe RCA supplies the inferior wall."
    # the command, as a user runs it, on a local copy in that layout
    src, dst = tmp_path / "medqa-cot.jsonl", tmp_path / "traces.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in MEERKAT_ROWS))
    assert conv.main(["--input", str(src), "--output", str(dst)]) == 0
    assert [json.loads(line)["answer_idx"] for line in dst.read_text().splitlines()] == ["C", "B"]
    # the example reads chat rows directly and turns them into traces that end in the answer statement
    script_args, _, _ = example.parse(["--distill_file", str(src)])
    distill = example.build_distill_dataset(script_args)
    assert len(distill) == 2 and distill[0]["completion"][0]["content"].endswith("The answer is C.")
