"""benchmarks/gpu_check.py on a CPU: the dry run executes every part at small sizes; without CUDA the real run
refuses to start; the wheel list for the GPU machine is pinned and its transformers check stops on a high floor."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_wheels  # noqa: E402


def _run(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_dry_run_executes_every_part(tmp_path):
    out = tmp_path / "dry.json"
    proc = _run("--dry_run", "--output", str(out), "--work_dir", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] and set(result["parts"]) == {"equivalence", "scoring", "training"}
    assert all(p["status"] == "ok" for p in result["parts"].values())
    rows = result["parts"]["equivalence"]["result"]["rows"]
    assert {r["dtype"] for r in rows} == {"bfloat16", "float16"}
    assert all(r["within_tolerance"] and r["tolerance"] == 5e-2 for r in rows)
    scoring = result["parts"]["scoring"]["result"]
    assert set(scoring["median_s"]) == {"packed", "naive", "plain_forward"}
    assert scoring["packed_over_naive"] == pytest.approx(scoring["median_s"]["packed"] / scoring["median_s"]["naive"])
    training = result["parts"]["training"]["result"]
    assert set(training) == {"full", "lora", "checkpointing"}
    for variant in training.values():
        assert len(variant["grpo"]["step_times_s"]) == len(variant["hytuning"]["step_times_s"]) == 2
        assert variant["hytuning"]["anchor_rounds"] == 1  # prg_every 2: the own-reasoning anchor at round 0
    assert "[training] ok" in proc.stdout and result["versions"]["trl"] == "1.16.0"


def test_refuses_without_cuda(tmp_path):
    proc = _run("--output", str(tmp_path / "x.json"), timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout
    assert not (tmp_path / "x.json").exists()


def test_wheel_list_is_pinned_and_the_floor_checked(tmp_path):
    pins = gpu_wheels.requirements(os.path.join(ROOT, "benchmarks", "gpu_requirements.txt"))
    assert pins and all("==" in p for p in pins) and "trl==1.16.0" in pins
    assert gpu_wheels.transformers_floor_problem() is None  # the package accepts the GPU machine's 5.17
    high = tmp_path / "pyproject.toml"
    high.write_text('[project]\nname = "x"\ndependencies = ["transformers>=5.20"]\n')
    assert "excludes 5.17" in gpu_wheels.transformers_floor_problem(str(high))
