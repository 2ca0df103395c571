"""Shared fixtures: a tiny tokenizer, a tiny model pre-trained on scripted traces (once per session), datasets."""

import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist the workers share the cores: each gets its share for torch and for the processes its tests start
# (two workers each running torch on every core slow each other down several times over).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)


def pytest_collection_modifyitems(config, items):
    """The tests marked ``slow`` first (a stable sort: the rest keep their order). Under pytest-xdist a worker takes
    the next test when it is free, so a long test collected late ends the run alone while the other worker idles;
    first, the long ones run beside the multi-process file (one unit, sent first) and the short ones fill in."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tokenizer():
    from hytuning_trl._testing import tiny_tokenizer

    return tiny_tokenizer()


def built_once(tmp_path_factory, name: str, build):
    """The folder ``name`` that ``build(folder)`` fills, built once per test session, whichever xdist worker asks
    first and however often a fixture is set up again: the others wait on a file lock and read what it wrote.

    Under xdist each worker has its own base temp folder inside the session's; the folder goes in the session's, so
    the workers share it (without xdist, in the run's own). Expensive things (the trained tiny model, a two-process
    launch) are built here so that a module fixture set up a second time costs nothing."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    """A tiny Llama that writes traces with steps, answers and EOS (trained once per session, ~10 s)."""
    from hytuning_trl._testing import save_trained_tiny_model

    return str(built_once(tmp_path_factory, "tiny-trained", lambda folder: save_trained_tiny_model(str(folder))))


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


BASE_ARGS = dict(
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
    prg_every=1,  # an anchor round every round: the tests read it at every step (the package's default is 4)
)


def grpo_only(kwargs: dict) -> dict:
    """``kwargs`` without HyTuning's own fields, for a plain ``GRPOConfig`` reference."""
    from trl import GRPOConfig

    return {k: v for k, v in kwargs.items() if k in GRPOConfig.__dataclass_fields__}


def make_args(tmp_path, **overrides):
    from hytuning_trl import HyTuningConfig

    return HyTuningConfig(**{"output_dir": str(tmp_path / "out"), **BASE_ARGS, **overrides})


TRAINER_KWARGS = (
    "model",
    "reward_funcs",
    "train_dataset",
    "distill_dataset",
    "anchor_dataset",
    "callbacks",
    "peft_config",
    "rollout_func",
)


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


WS = frozenset({5, 6})  # token ids the tests treat as whitespace-only


@torch.no_grad()
def reference_trajectory(model, prompt, steps, trigger, answer=None, options=None, index=None, ws=WS):
    """lp_k from one plain ``model(input_ids)`` forward per k over [x, s_1..s_k, t, a], assembled here: the context
    loses the whitespace-only tokens that end it (not below the previous branch point, and keeping one token)."""
    out, floor = [], 1
    for k in range(len(steps) + 1):
        context = list(prompt) + [t for step in steps[:k] for t in step]
        while len(context) > floor and context[-1] in ws:
            context.pop()
        floor = len(context)
        seq = context + list(trigger) + list(answer or [])
        logp = model(torch.tensor([seq])).logits[0].double().log_softmax(-1)
        query = len(context) + len(trigger) - 1
        if options is not None:
            logits = model(torch.tensor([seq])).logits[0, query, options].double()
            out.append(logits.log_softmax(-1)[index].item())
        else:
            out.append(sum(logp[query + j, a].item() for j, a in enumerate(answer)))
    return out
