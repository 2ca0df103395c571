"""The private TRL API the trainer relies on, checked in one place: a change in TRL fails here with a clear message
instead of shifting values silently."""

import inspect

import pytest
import trl
from trl import GRPOTrainer

from hytuning_trl import _trl_compat as compat


def test_generate_tuple_by_name():
    generated = compat.unpack_generate(tuple(range(8)))
    assert generated.extra_fields == 5 and generated.completion_ids == 1
    with pytest.raises(RuntimeError, match=r"returned 7 values; .* the 8 of TRL 1\.16 .*extra_fields"):
        compat.unpack_generate(tuple(range(7)))


def test_advantages_key():
    assert compat.advantages({"advantages": 3}) == 3
    with pytest.raises(KeyError, match="no 'advantages'.*prg_gate"):
        compat.advantages({"advantage": 3})


def test_version_range(monkeypatch):
    compat.check_trl_version()  # the installed TRL is the tested one
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    with pytest.raises(ImportError, match=r"tested with TRL 1\.16\.x; TRL 1\.17\.0 is installed.*trl>=1\.16,<1\.17"):
        compat.check_trl_version()


@pytest.mark.parametrize(
    "method,params",
    [
        ("_generate", ["prompts"]),
        ("_calculate_rewards", ["inputs", "prompts", "completions", "completion_ids_list"]),
        ("_generate_single_turn", ["prompt_ids", "images", "multimodal_fields", "num_generations"]),
        ("_generate_and_score_completions", ["inputs"]),
        ("_get_output_dir", ["trial"]),
        ("_prepare_inputs", ["generation_batch"]),
    ],
)
def test_installed_trl_has_the_methods_the_trainer_uses(method, params):
    """Bug it catches: a TRL release that renames or reorders what the overrides call."""
    assert hasattr(GRPOTrainer, method), f"TRL {trl.__version__} has no GRPOTrainer.{method}: update _trl_compat"
    names = [p for p in inspect.signature(getattr(GRPOTrainer, method)).parameters if p != "self"]
    assert names[: len(params)] == params, f"GRPOTrainer.{method}{names}: update hytuning_trl/_trl_compat.py"
