"""Shared fixtures: a tiny tokenizer, a tiny model pre-trained on scripted traces (once per session), datasets."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from hytuning_trl._testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    """A tiny Llama that writes traces with steps, answers and EOS (trained once, ~10 s)."""
    from hytuning_trl._testing import save_trained_tiny_model

    return save_trained_tiny_model(str(tmp_path_factory.mktemp("tiny-trained")))


@pytest.fixture
def trained_model(trained_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(trained_dir)


@pytest.fixture
def trained_tokenizer(trained_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trained_dir)


@pytest.fixture(scope="session")
def mcq():
    from hytuning_trl._testing import scripted_examples

    return scripted_examples(48, seed=11)


@pytest.fixture
def train_dataset(mcq):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": e["prompt"], "options": e["options"]} for e in mcq])


@pytest.fixture
def distill_dataset():
    from datasets import Dataset

    from hytuning_trl._testing import scripted_examples

    return Dataset.from_list(
        [{"prompt": e["prompt"], "completion": e["completion"]} for e in scripted_examples(16, 7)]
    )


def make_args(tmp_path, **overrides):
    from hytuning_trl import HyTuningConfig

    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=96,
        max_steps=3,
        logging_steps=1,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        answer_options=["A", "B", "C", "D"],
        seed=0,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return HyTuningConfig(**kwargs)


TRAINER_KWARGS = ("model", "reward_funcs", "train_dataset", "distill_dataset", "callbacks", "peft_config")


@pytest.fixture
def build_trainer(tmp_path, trained_model, trained_tokenizer, train_dataset, distill_dataset):
    """``build_trainer(**overrides)``: a HyTuningTrainer on the shared tiny model and datasets; trainer arguments
    (model, reward_funcs, datasets, callbacks, peft_config) are taken from the overrides, the rest go to the config."""

    def build(**overrides):
        from hytuning_trl import HyTuningTrainer

        kwargs = {"model": trained_model, "train_dataset": train_dataset, "distill_dataset": distill_dataset}
        kwargs.update({k: overrides.pop(k) for k in TRAINER_KWARGS if k in overrides})
        return HyTuningTrainer(args=make_args(tmp_path, **overrides), processing_class=trained_tokenizer, **kwargs)

    return build
