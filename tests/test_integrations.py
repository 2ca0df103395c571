"""TRL features around the trainer: every loss type with the RD head, the vLLM colocate path, and clear refusals."""

import math

import pytest

from hytuning_trl import InternalFeedbackReward, score_rollouts

LOSS_TYPES = {
    "grpo": "token",
    "dr_grpo": "token",
    "dapo": "token",
    "bnpo": "token",
    "cispo": "token",
    "sapo": "token",
    "luspo": "sequence",
    "vespo": "token",
}


def test_loss_types_cover_trl():
    """Bug it catches: a TRL release adding a loss type this suite never trains."""
    from trl import GRPOConfig

    help_text = GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    offered = set(
        help_text.split("Supported values are ")[1].split(".")[0].replace("and", ",").replace("'", "").split(",")
    )
    assert {o.strip() for o in offered if o.strip()} == set(LOSS_TYPES)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_every_loss_type_trains_with_the_rd_head(build_trainer, loss_type):
    trainer = build_trainer(
        max_steps=1,
        mixing="constant",
        rd_weight=0.5,
        loss_type=loss_type,
        importance_sampling_level=LOSS_TYPES[loss_type],
        learning_rate=1e-3,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    [h] = [h for h in trainer.state.log_history if "loss" in h]
    assert math.isfinite(h["loss"]) and "hytuning/rd_nll" in h
    assert any((p.detach() - before[n]).abs().max() > 0 for n, p in trainer.model.named_parameters())


class FakeVLLMGeneration:
    """A CPU stand-in for TRL's VLLMGeneration (colocate mode): fixed completions and log-probs that are NOT the
    policy's (-7.0 per token), so statistics taken from them would show."""

    instances: list = []

    def __init__(self, model, accelerator, processing_class, mode, **kwargs):
        assert mode == "colocate"
        self.tokenizer = processing_class
        self.syncs = 0
        FakeVLLMGeneration.instances.append(self)

    def sync_weights(self):
        self.syncs += 1

    def generate(self, prompts, images, num_generations, profiler=None):
        texts = ["we look.\n\nso the heart is likely.\nThe answer is A.", "the lung.\nThe answer is B."]
        # colocate mode: one completion per (already repeated) local prompt
        eos = [self.tokenizer.eos_token_id]
        completions = [
            self.tokenizer(texts[i % 2], add_special_tokens=False)["input_ids"] + eos for i in range(len(prompts))
        ]
        prompt_ids = list(prompts)
        logprobs = [[[-7.0] for _ in c] for c in completions]
        return prompt_ids, completions, logprobs, None


class Capture(InternalFeedbackReward):
    __name__ = "capture"
    seen: list = []
    prompts: list = []

    def __call__(self, prompts=None, completions=None, completion_ids=None, hytuning_stats=None, **kwargs):
        Capture.seen.append((completion_ids, hytuning_stats))
        Capture.prompts = list(prompts)
        return [0.0] * len(completions)


@pytest.mark.slow
def test_vllm_colocate_path_scores_with_the_policy(build_trainer, trained_tokenizer, monkeypatch):
    """With TRL's vLLM generation (stand-in), `hytuning_stats` reach the rewards and come from the policy's own
    forward: they equal a scoring pass run here on the same ids, whatever log-probs vLLM reported."""
    import trl.trainer.grpo_trainer as grpo_module

    monkeypatch.setattr(grpo_module, "VLLMGeneration", FakeVLLMGeneration)
    Capture.seen.clear()
    trainer = build_trainer(
        max_steps=1,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_importance_sampling_correction=False,
        reward_funcs=[Capture()],
        learning_rate=0.0,
    )
    trainer.train()
    assert FakeVLLMGeneration.instances[-1].syncs >= 1
    [(completion_ids, stats)] = Capture.seen
    assert len(stats) == len(completion_ids) == 4
    prompts = [trained_tokenizer(p)["input_ids"] for p in Capture.prompts]
    parsed = [trainer.answer_extractor.parse(c, {"A": 1, "B": 2, "C": 3, "D": 4}) for c in completion_ids]
    ref = score_rollouts(
        trainer.model,
        prompts,
        [list(c) for c in completion_ids],
        step_spans=[p.spans for p in parsed],
        trigger_ids=trainer._trigger_ids,
        answer_ids=[p.answer_ids for p in parsed],
        option_ids=[p.option_ids for p in parsed],
        whitespace_ids=trainer._whitespace_ids,
    )
    for s, r, c in zip(stats, ref, completion_ids):
        assert s.completion_ids == list(c) and not s.answer_forced and s.num_steps >= 1
        assert s.answer_logprobs == pytest.approx(r.answer_logprobs, abs=1e-5)
        assert s.self_certainty == pytest.approx(r.self_certainty, abs=1e-5)
        assert s.self_certainty > 0 and 0.0 < s.answer_confidence < 1.0  # not vLLM's -7.0 per token


def lookup(term: str) -> str:
    """Look a term up.

    Args:
        term: the term.
    """
    return term


@pytest.mark.parametrize(
    "extra,match",
    [({"tools": [lookup]}, "tools"), ({"environment_factory": object}, "environment_factory")],
)
def test_refuses_tools_and_environments(tmp_path, trained_model, trained_tokenizer, train_dataset, extra, match):
    from conftest import make_args

    from hytuning_trl import HyTuningTrainer

    with pytest.raises(ValueError, match=match):
        HyTuningTrainer(
            model=trained_model,
            args=make_args(tmp_path, mixing="rl_only"),
            train_dataset=train_dataset,
            processing_class=trained_tokenizer,
            **extra,
        )


def test_refuses_fsdp(build_trainer, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP"):
        build_trainer()


def test_refuses_vision_processors(tmp_path, trained_model, trained_tokenizer, train_dataset):
    from conftest import make_args

    from hytuning_trl import HyTuningTrainer

    class Processor:  # what a vision-language processor carries
        image_processor = object()
        tokenizer = trained_tokenizer

    with pytest.raises(ValueError, match="vision"):
        HyTuningTrainer(
            model=trained_model,
            args=make_args(tmp_path, mixing="rl_only"),
            train_dataset=train_dataset,
            processing_class=Processor(),
        )
