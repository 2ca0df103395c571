"""The docs match the code: the README example runs offline as written, every config field is documented,
every public name is exported."""

import dataclasses
import math
import os
import re

from trl import GRPOConfig

import hytuning_trl
from hytuning_trl import HyTuningConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_example_runs(trained_dir, tmp_path, monkeypatch):
    readme = open(os.path.join(ROOT, "README.md")).read()
    code = re.search(r"## Use\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert 'model_path = "path/to/local/model"' in code and "use_cpu=True, bf16=False" in code
    code = code.replace('"path/to/local/model"', repr(trained_dir)).replace("max_steps=10", "max_steps=2")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    state = namespace["trainer"].state
    assert state.global_step == 2 and math.isfinite(state.log_history[-1]["train_loss"])


def test_every_config_field_is_documented():
    doc = open(os.path.join(ROOT, "docs", "configuration.md")).read()
    own = {f.name for f in dataclasses.fields(HyTuningConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}
    missing = sorted(name for name in own if f"`{name}`" not in doc)
    assert not missing, f"docs/configuration.md does not document {missing}"
    assert "temperature" not in own  # GRPOConfig's is the sampling temperature


def test_public_api_is_documented_and_lean():
    """Bugs it catches: a public name without a line in docs/api.md (or a documented name that is gone), and engine
    internals leaking into the public namespace."""
    doc = open(os.path.join(ROOT, "docs", "api.md")).read().split("## Commands")[0]
    listed = set()
    for line in re.findall(r"^- (.*)$", doc, re.M):
        head = line[: line.index("`: ") + 1] if "`: " in line else line.split(": ")[0]
        listed |= set(re.findall(r"`(\w+)", head))
    exported = set(hytuning_trl.__all__)
    assert exported - listed == set(), f"not in docs/api.md: {sorted(exported - listed)}"
    assert listed - exported == set(), f"documented but not exported: {sorted(listed - exported)}"
    for internal in (
        "Row",
        "run_rows",
        "build_packed_row",
        "to_id_lists",
        "ShardedEndlessIterator",
        "MixingController",
    ):
        assert internal not in exported
    for name in exported:
        assert getattr(hytuning_trl, name) is not None


def test_public_names_resolve_from_their_modules_and_the_commands_start_light():
    """Each exported name is the object its module defines (the lazy table points at the right module), and neither
    `import hytuning_trl` nor the commands' module loads TRL's trainer stack (peft, bitsandbytes, the transformers
    Trainer: about 10 s of imports before a command could say that its input file is missing). Run in a fresh
    interpreter, so what this test process already imported does not count."""
    import importlib
    import subprocess
    import sys

    assert set(hytuning_trl._LOCATIONS) == set(hytuning_trl.__all__)  # the lazy table and __all__ name the same
    for name in hytuning_trl.__all__:
        module = importlib.import_module(f"hytuning_trl.{hytuning_trl._LOCATIONS[name]}")
        assert getattr(hytuning_trl, name) is getattr(module, name), name
        assert getattr(getattr(module, name), "__module__", "hytuning_trl").startswith("hytuning_trl"), name
    probe = (
        "import sys, hytuning_trl, hytuning_trl.cli; "
        "print(sorted(m for m in ('peft', 'bitsandbytes', 'transformers.trainer', 'trl.trainer.grpo_trainer', "
        "'hytuning_trl.trainer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
