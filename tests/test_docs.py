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


def test_public_names_exported():
    import importlib
    import pkgutil

    for name in hytuning_trl.__all__:
        assert getattr(hytuning_trl, name) is not None
    for info in pkgutil.iter_modules(hytuning_trl.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"hytuning_trl.{info.name}")
        missing = [n for n in getattr(module, "__all__", []) if n != "main" and n not in hytuning_trl.__all__]
        assert not missing, f"hytuning_trl.{info.name} exports {missing}, which hytuning_trl does not"
