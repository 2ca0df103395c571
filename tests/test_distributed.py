"""Real multi-process runs on CPU: DDP (torchrun, gloo) and DeepSpeed ZeRO-3 (accelerate), plus LoRA / QLoRA and
interrupted training. Run alone with `pytest -m multiprocess`."""

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import built_once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "tests", "distributed", "hytuning_run.py")
ZERO3 = os.path.join(ROOT, "examples", "accelerate_configs", "deepspeed_zero3_cpu.yaml")
TIMEOUT = 600  # a hang is a failure (a launch checks several things: up to ~4 minutes on a busy 2-core machine)

# one xdist worker runs this file: its module fixtures (one launch each, through conftest.built_once) are built once
pytestmark = pytest.mark.xdist_group("distributed")


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("RANK", None)
    return env


def _run(kind, out, *args) -> subprocess.CompletedProcess:
    if kind == "ddp":
        cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", str(_port()), RUNNER]
    else:
        cmd = ["accelerate", "launch", "--config_file", ZERO3, "--main_process_port", str(_port()), RUNNER]
    cmd += ["--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=ROOT)


def _results(out):
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r.get("world_size") == 2 for r in results if "error" not in r)
    return results


def _checked(out):
    results = _results(out)
    assert [r["world_size"] for r in results] == [2, 2]
    return results


def _launch(kind, out, *args) -> None:
    proc = _run(kind, out, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _same_lam_every_step(results):
    lams = [[h["hytuning/rd_weight"] for h in r["logs"]] for r in results]
    assert lams[0] == lams[1] and len(lams[0]) == len(results[0]["logs"])
    return lams[0]


def _traces_sharded(results):
    by_epoch = {}
    for rank, r in enumerate(results):
        for epoch, batch in r["seen_traces"]:
            by_epoch.setdefault((epoch, rank), []).extend(batch)
    epochs = {e for e, _ in by_epoch}
    for e in epochs:
        a, b = by_epoch.get((e, 0), []), by_epoch.get((e, 1), [])
        assert not set(a) & set(b), f"epoch {e}: a trace was read by both processes"
        assert len(set(a)) == len(a) and len(set(b)) == len(b)


@pytest.fixture(scope="module")
def ddp_run(trained_dir, tmp_path_factory):
    """One torchrun launch: 3 steps saving at step 2, then, in the same processes, a fresh trainer resumed from
    checkpoint-2 to step 3 (``then0``), one resumed from it at max_steps 2 (``then1``) and the example script
    (``example/``: :func:`test_example_script_two_processes`)."""

    def launch(out):
        ckpt = out / "checkpoint-2"
        args = ["--model", trained_dir, "--scripted", "--inject_nonfinite", "--save_steps", "2", "--max_steps", "3"]
        args += ["--token_budget", "200", "--anchor_rows", "5", "--then", f"resume={ckpt},save_steps=0"]
        args += [f"resume={ckpt},max_steps=2,save_steps=0", "--example", *_example_args(trained_dir, out / "example")]
        _launch("ddp", out, *args)

    out = built_once(tmp_path_factory, "ddp", launch)
    results = _checked(out)
    resumed = [_results(out / f"then{i}") for i in (0, 1)]
    return out, results, resumed


@functools.cache
def _hand_own_anchor(trained_dir: str, questions: str) -> tuple:
    """:func:`test_anchor.hand_own_anchor` on the initial model, once per model and questions (the DDP and the
    ZeRO-3 launch ask it of the same 5 questions)."""
    from test_anchor import hand_own_anchor
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    trigger = tokenizer("\nThe answer is", add_special_tokens=False)["input_ids"]
    rows = [tuple(q) for q in json.loads(questions)]  # as the processes wrote them
    model = AutoModelForCausalLM.from_pretrained(trained_dir)
    return tuple(hand_own_anchor(model, tokenizer, rows, 64, trigger))


def _own_anchor_by_hand(trained_dir, results):
    """The first own-reasoning anchor round, computed here by hand on the initial model (greedy generate, plain
    forwards), against what both processes logged: the 5 questions were sharded 3 + 2 (padded to 3 each)."""
    questions = results[0]["anchor_questions"]
    assert len(questions) == 5 and results[1]["anchor_questions"] == questions
    expected = _hand_own_anchor(str(trained_dir), json.dumps(questions))
    for r in results:
        first = r["logs"][0]
        for name, value in zip(("anchor_gain", "anchor_accuracy", "anchor_stated", "anchor_brier"), expected):
            assert first[f"hytuning/{name}"] == pytest.approx(value, abs=1e-4), (r["rank"], name)


@pytest.mark.multiprocess
def test_ddp_trains_in_lockstep(ddp_run):
    _, results, _ = ddp_run
    lams = _same_lam_every_step(results)
    assert lams[0] == 0.5 and len(set(lams)) > 1
    assert results[0]["step_counts"] and set(results[0]["step_counts"]) == {1}  # different step counts per process
    assert set(results[1]["step_counts"]) == {4}
    _traces_sharded(results)
    assert results[0]["batches_per_epoch"] == 3  # 12 training traces (the anchor is 5 question rows) / (2 x 2)
    for r in results:
        assert r["finite"] and all(h["loss"] == h["loss"] for h in r["logs"])
    # injected: a NaN PRG on process 0 and a NaN RD loss on process 1, both counted, identical on both processes
    logs = results[0]["logs"]
    assert sum(h["hytuning/prg_nonfinite"] for h in logs) >= 1
    assert sum(h["hytuning/rd_nonfinite"] for h in logs) >= 1
    assert [h["hytuning/rd_nonfinite"] for h in logs] == [h["hytuning/rd_nonfinite"] for h in results[1]["logs"]]


@pytest.mark.multiprocess
def test_ddp_resume_restores_state(ddp_run):
    out, _, (resumed, _) = ddp_run
    saved = json.loads((out / "checkpoint-2" / "hytuning_state.json").read_text())
    for r in resumed:
        assert r["restored"] == saved  # the own-reasoning anchor's EMA among it, exactly
        assert r["global_step"] == 3
    assert saved["rd_position"] == 2 and saved["generation_rounds"] == 2 and saved["anchor_gain_ema"] is not None


@pytest.mark.multiprocess
def test_ddp_resume_at_max_steps_trains_nothing(ddp_run):
    """Resumed at a checkpoint already at max_steps, every process loads it and trains no step (transformers would
    take one more before its loop checks max_steps)."""
    out, _, (_, at_max) = ddp_run
    ckpt = out / "checkpoint-2"
    saved = json.loads((ckpt / "hytuning_state.json").read_text())
    history = json.loads((ckpt / "trainer_state.json").read_text())["log_history"]
    for r in at_max:
        assert r["global_step"] == 2 and r["step_counts"] == []
        assert r["final_mixing"] == {k: v for k, v in saved.items() if k not in ("rd_epoch", "rd_position")}
        assert r["logs"] == [h for h in history if "loss" in h]


@pytest.mark.multiprocess
def test_ddp_own_anchor_by_hand(ddp_run, trained_dir):
    _own_anchor_by_hand(trained_dir, ddp_run[1])


@pytest.fixture(scope="module")
def zero3_run(trained_dir, tmp_path_factory):
    """One ZeRO-3 launch on 2 processes: 3 steps with answer-blind RL and the calibration loss, saving at step 3; then,
    in the same processes, a resume from that finished checkpoint (``then0``), a 2-step run of the trace anchor with
    3 anchor traces (``then1``), LoRA with real generation for 2 steps (``then2``) and the same with gradient
    checkpointing on (``then3``, refused), and the example script (``example/``)."""

    def launch(out):
        args = ["--model", trained_dir, "--scripted", "--max_steps", "3", "--anchor_rows", "5", "--answer_blind"]
        args += ["--calibration_weight", "1.0", "--token_budget", "200", "--save_steps", "3"]
        args += ["--then", f"resume={out / 'checkpoint-3'},save_steps=0"]
        plain = "anchor_rows=0,answer_blind=false,calibration_weight=0,save_steps=0"
        args += [f"anchor_signal=trace,max_steps=2,{plain}"]
        lora = f"peft=true,scripted=false,token_budget=16384,{plain}"
        args += [
            f"{lora},max_steps=2,no_gradient_checkpointing=true",
            f"{lora},max_steps=1,no_gradient_checkpointing=false",
        ]
        args += ["--example", *_example_args(trained_dir, out / "example")]
        _launch("zero3", out, *args)

    out = built_once(tmp_path_factory, "zero3", launch)
    return out, _checked(out)


@pytest.mark.multiprocess
def test_zero3_two_processes(zero3_run, trained_dir):
    """ZeRO-3 on 2 processes with answer-blind RL and the calibration loss on (the LM head called as a module inside
    the GRPO forward's loss): the anchor by hand, the same RD weight and the same reduced answer-blind and calibration
    figures on both processes at every step, traces sharded, everything finite; a finished run is refused on resume."""
    out, results = zero3_run
    for key in ("hytuning/answer_blind_share", "hytuning/calibration_loss", "hytuning/calibration_share"):
        values = [[h[key] for h in r["logs"]] for r in results]
        assert values[0] == values[1] and len(values[0]) == 3, key
        assert all(v > 0 for v in values[0]), key
    _own_anchor_by_hand(trained_dir, results)
    lams = _same_lam_every_step(results)
    assert len(set(lams)) > 1
    assert set(results[0]["step_counts"]) == {1} and set(results[1]["step_counts"]) == {4}
    _traces_sharded(results)
    assert all(r["finite"] for r in results)
    # resumed at its final checkpoint, ZeRO-3 refuses (transformers would train one step more) and names the fix
    for r in _results(out / "then0"):
        assert "its training is finished" in r["error"] and "raise max_steps" in r["error"]


@pytest.mark.multiprocess
def test_zero3_trace_anchor_uneven_shards_by_hand(zero3_run, trained_dir):
    """The v2 round (anchor_signal='trace') under ZeRO-3 with 3 anchor traces on 2 processes (2 + 1, padded to 2
    each): the first logged gain on both processes equals the mean gain of the 3 traces computed here by hand on the
    initial model (plain forwards; the padded copy is scored and dropped, not counted twice). Run third in the
    ZeRO-3 launch, on the model loaded again."""
    import math

    from conftest import reference_trajectory
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hytuning_trl.answers import whitespace_token_ids

    out, _ = zero3_run
    results = _results(out / "then1")
    assert [r["world_size"] for r in results] == [2, 2] and [r["global_step"] for r in results] == [2, 2]
    traces = results[0]["anchor_traces"]
    assert len(traces) == 3 and results[1]["anchor_traces"] == traces
    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    model = AutoModelForCausalLM.from_pretrained(trained_dir).eval()
    trigger = tokenizer("\nThe answer is", add_special_tokens=False)["input_ids"]
    gains = []
    with torch.no_grad():
        for prompt, steps, options, index in traces:
            lp = reference_trajectory(
                model, prompt, steps, trigger, options=options, index=index, ws=whitespace_token_ids(tokenizer)
            )
            p0, pk = math.exp(lp[0]), math.exp(lp[-1])
            gains.append(0.0 if abs(pk - p0) < 1e-6 else (pk - p0) / (1 - p0) if pk > p0 else (pk - p0) / p0)
    for r in results:
        assert r["logs"][0]["hytuning/anchor_gain"] == pytest.approx(sum(gains) / 3, abs=1e-4), r["rank"]


@pytest.mark.multiprocess
def test_zero3_lora_real_generation(zero3_run, trained_dir):
    """LoRA under ZeRO-3 with real generation (``then2`` of the ZeRO-3 launch, on the model loaded again): the adapter
    learns and is saved with HyTuning's card; the same run with gradient checkpointing on (``then3``) is refused with
    the fix named."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = zero3_run
    results = _results(out / "then2")
    assert [r["global_step"] for r in results] == [2, 2]
    _same_lam_every_step(results)
    assert all(r["lora"] and r["finite"] for r in results)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained_dir), out / "then2" / "adapter")
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert b and any(p.abs().sum() > 0 for p in b)  # the adapter learned something (lora_B starts at zero)
    card = (out / "then2" / "adapter" / "README.md").read_text()  # HyTuning's card, not PEFT's generic one
    assert "LoRA adapter post-trained with HyTuning" in card and "Not for clinical use" in card
    assert f"Base model: `{trained_dir}`" in card
    for r in _results(out / "then3"):
        assert "gradient_checkpointing=False" in r["error"]


def test_lora_adapter_round_trip(tmp_path, trained_dir, trained_tokenizer, build_trainer):
    """LoRA without ZeRO-3: the saved adapter loads back onto the base model and gives the same outputs."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    trainer = build_trainer(
        max_steps=2,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    ids = torch.tensor([trained_tokenizer("Question 1: which organ is affected")["input_ids"]])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained_dir), tmp_path / "adapter")
        got = reloaded.eval()(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(trained_dir)(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-5)
    assert not torch.allclose(expected, plain, atol=1e-5)  # the adapter changed the model


def test_qlora_cpu_gradients_after_generation(
    tmp_path, trained_dir, trained_tokenizer, train_dataset, distill_dataset
):
    """4-bit bitsandbytes + LoRA trains on CPU, and LoRA gradients after a generation are not silently zero."""
    bnb = pytest.importorskip("bitsandbytes")
    from conftest import make_args
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hytuning_trl import HyTuningTrainer

    model = AutoModelForCausalLM.from_pretrained(
        trained_dir,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
        dtype=torch.float32,
    )
    trainer = HyTuningTrainer(
        model=model,
        args=make_args(tmp_path, max_steps=2, max_completion_length=32),
        train_dataset=train_dataset,
        distill_dataset=distill_dataset,
        processing_class=trained_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    layers = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)
    grads = []
    for name, p in trainer.model.named_parameters():
        if "lora_B" in name:
            p.register_hook(lambda g: grads.append(g.abs().sum().item()))
    trainer.train()  # every step generates (no-grad forwards) before its backward
    assert grads and sum(grads) > 0, "LoRA gradients are all zero after generation"


@pytest.mark.multiprocess
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_training_leaves_loadable_checkpoint(trained_dir, tmp_path, sig):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        RUNNER,
        "--model",
        trained_dir,
        "--out",
        str(out),
        "--save_steps",
        "1",
        "--max_steps",
        "500",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    deadline = time.time() + TIMEOUT
    while not (out / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0  # it was interrupted, not finished
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    last = checkpoints[-1]
    assert len(checkpoints) >= 2
    AutoModelForCausalLM.from_pretrained(last)
    state = json.loads((last / "hytuning_state.json").read_text())
    trainer_state = json.loads((last / "trainer_state.json").read_text())
    assert state["generation_rounds"] == trainer_state["global_step"]


RECIPE = os.path.join(ROOT, "examples", "recipes", "cpu_default.yaml")


def _example_args(trained_dir, out) -> list[str]:
    """The documented example's arguments for the multi-process launches: 1 step, 6 eval questions before and after."""
    return [
        "--config", RECIPE, "--model_name_or_path", str(trained_dir), "--output_dir", str(out), "--max_steps", "1",
        "--per_device_train_batch_size", "2", "--max_completion_length", "32", "--max_eval_samples", "6",
        "--eval_batch_size", "2", "--distill_max_length", "1024",
    ]  # fmt: skip


@pytest.mark.multiprocess
@pytest.mark.parametrize("kind", ["ddp", "zero3"])
def test_example_script_two_processes(request, kind):
    """examples/train_medqa.py's own parse and main (the script's ``__main__``) on 2 CPU processes, last in the DDP and
    the ZeRO-3 launch (torchrun; accelerate launch with the ZeRO-3 config, as documented), with the before and after
    evaluations sharded across the processes. Bug it catches: the evaluation loading the model on one process while
    ZeRO-3, registered globally by the config, partitions it with collectives the other process never joins (a hang:
    the timeout fails the launch)."""
    out = request.getfixturevalue(f"{kind}_run")[0] / "example"
    for stage in ("calibration_before", "calibration_after"):
        report = json.loads((out / stage / "calibration.json").read_text())
        assert report["n"] == 6 and report["settings"]["processes"] == 2  # every question, answered by both shards
        assert report["settings"]["max_new_tokens"] == 32  # the training length
        assert len((out / stage / "predictions.jsonl").read_text().splitlines()) == 6
    assert "Not for clinical use" in (out / "README.md").read_text()
    summary = json.loads((out / "calibration_summary.json").read_text())
    assert [t["step"] for t in summary["mixing_trajectory"]] == [1]
