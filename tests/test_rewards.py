"""Internal-feedback rewards: hand-computed values, permutation properties, plumbing, subclassing."""

import math
import pickle
import random
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hytuning_trl import (
    AgreementBrierReward,
    AnswerConfidenceReward,
    EntropyReward,
    InternalFeedbackReward,
    MajorityVoteReward,
    PRGGatedConfidenceReward,
    PRGReward,
    RolloutStats,
    SelfCertaintyReward,
    score_rollouts,
)


class _Backbone(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, vocab)
        self.embed.weight.data = torch.eye(vocab)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


class FixedLogitsLM(nn.Module):
    """The next-token logits after token ``i`` are row ``i`` of a fixed table, whatever came before."""

    def __init__(self, table):
        super().__init__()
        vocab = table.size(0)
        self.config = SimpleNamespace(final_logit_softcapping=None, logit_scale=None, _attn_implementation="eager")
        self.backbone = _Backbone(vocab)
        self.head = nn.Linear(vocab, vocab, bias=False)
        self.head.weight.data = table.t().contiguous()

    def get_decoder(self):
        return self.backbone

    def get_output_embeddings(self):
        return self.head


TABLE = torch.tensor(
    [
        [2.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 3.0, -1.0],
        [0.0, 0.0, 0.0, math.log(3.0)],
    ]
)


def _hand_self_certainty(row):
    row = [float(x) for x in row]
    return math.log(sum(math.exp(z) for z in row)) - sum(row) / len(row) - math.log(len(row))


def _hand_entropy(row):
    z = [math.exp(float(x)) for x in row]
    p = [x / sum(z) for x in z]
    return -sum(q * math.log(q) for q in p)


def test_statistics_on_fixed_logits():
    model = FixedLogitsLM(TABLE)
    # prompt [0], completion [2, 3]: distributions used are those after tokens 0 and 2
    [stats] = score_rollouts(model, [[0]], [[2, 3]], step_spans=[[(0, 1), (1, 2)]], trigger_ids=[1], answer_ids=[[3]])
    expected_sc = (_hand_self_certainty(TABLE[0]) + _hand_self_certainty(TABLE[2])) / 2
    expected_h = (_hand_entropy(TABLE[0]) + _hand_entropy(TABLE[2])) / 2
    assert stats.self_certainty == pytest.approx(expected_sc, abs=1e-6)
    assert stats.entropy == pytest.approx(expected_h, abs=1e-6)
    # the answer 3 always follows the trigger token 1 (uniform row): p = 1/4 at every k
    assert stats.answer_logprobs == pytest.approx([math.log(0.25)] * 3, abs=1e-6)
    stats.prg, stats.answer = 0.0, "x"
    assert SelfCertaintyReward()(completions=["x"], hytuning_stats=[stats]) == [pytest.approx(expected_sc, abs=1e-6)]
    assert EntropyReward()(completions=["x"], hytuning_stats=[stats]) == [pytest.approx(-expected_h, abs=1e-6)]
    assert AnswerConfidenceReward()(completions=["x"], hytuning_stats=[stats]) == [pytest.approx(0.25, abs=1e-6)]
    # after trigger token 3, the answer 3 has p = 3 / (3 + 3) = 1/2
    [s2] = score_rollouts(model, [[0]], [[2]], step_spans=[[(0, 1)]], trigger_ids=[3], answer_ids=[[3]])
    assert math.exp(s2.answer_logprobs[-1]) == pytest.approx(0.5, abs=1e-6)


def _stats(lps, prg=None, answer=None, forced=False, sc=0.1, h=1.0):
    return RolloutStats(
        self_certainty=sc, entropy=h, answer_logprobs=lps, prg=prg, answer=answer, answer_forced=forced
    )


def test_rewards_from_hand_stats():
    s = _stats([math.log(0.2), math.log(0.7)], prg=0.5, answer="A")
    low = _stats([math.log(0.9), math.log(0.3)], prg=-0.6, answer="B")
    decided = _stats([math.log(0.95), math.log(0.96)], prg=0.01, answer="A")
    none = _stats(None, prg=None, answer=None)
    batch = [s, low, decided, none]
    assert PRGReward()(hytuning_stats=batch) == [0.5, -0.6, 0.01, None]
    gated = PRGGatedConfidenceReward()(hytuning_stats=batch)
    # p_K * clip(G, 0, 1): G = 0.5 / 0.8 for the rise 0.2 -> 0.7; a fall gives 0; 0.95 -> 0.96 gives G = 0.01 / 0.05
    assert gated == [pytest.approx(0.7 * 0.5 / 0.8), 0.0, pytest.approx(0.96 * 0.2), None]
    # the gate binds: neither max(PRG, 0) (0.5) nor p_K (0.7)
    assert gated[0] != pytest.approx(0.5) and gated[0] != pytest.approx(0.7)
    conf = AnswerConfidenceReward()(hytuning_stats=batch)
    assert conf[:3] == pytest.approx([0.7, 0.3, 0.96]) and conf[3] is None
    assert SelfCertaintyReward()(hytuning_stats=[_stats(None, sc=float("nan"))]) == [None]  # non-finite -> None


def test_gated_confidence_needs_support():
    """Bug it catches: a gate that passes confidence through (p_K) or rewards PRG alone (max(PRG, 0))."""
    unsupported = _stats([math.log(0.9), math.log(0.9), math.log(0.9)], prg=0.0, answer="A")  # decided first
    supported = _stats([math.log(0.3), math.log(0.6), math.log(0.9)], prg=0.6, answer="A")  # built by the steps
    out = PRGGatedConfidenceReward()(hytuning_stats=[unsupported, supported])
    assert out[0] == 0.0 and out[1] == pytest.approx(0.9 * 0.6 / 0.7)
    assert out[0] < out[1]


def test_forced_answers_get_none_unless_asked():
    forced = _stats([math.log(0.3), math.log(0.8)], prg=0.5, answer="C", forced=True)
    for cls in (AnswerConfidenceReward, PRGReward, PRGGatedConfidenceReward):
        assert cls()(hytuning_stats=[forced]) == [None], cls
        assert cls(use_forced=True)(hytuning_stats=[forced])[0] is not None, cls


def test_agreement_brier_by_hand():
    group = [
        _stats([math.log(0.8)], answer="Digoxin toxicity."),
        _stats([math.log(0.6)], answer=" digoxin toxicity"),  # the same answer after normalisation
        _stats([math.log(0.9)], answer="Cholera"),
        _stats([math.log(0.5)], answer=None),
        _stats([math.log(0.7)], answer="Cholera", forced=True),  # forced: neither counted nor scored
    ]
    out = AgreementBrierReward()(hytuning_stats=group, hytuning_num_generations=[5] * 5)
    assert out[0] == pytest.approx(-((0.8 - 2 / 3) ** 2)) and out[1] == pytest.approx(-((0.6 - 2 / 3) ** 2))
    assert out[2] == pytest.approx(-((0.9 - 1 / 3) ** 2)) and out[3] is None and out[4] is None
    # counting the forced answer changes the shares: Cholera 2 of 4
    counted = AgreementBrierReward(use_forced=True)(hytuning_stats=group, hytuning_num_generations=[5] * 5)
    assert counted[2] == pytest.approx(-((0.9 - 2 / 4) ** 2)) and counted[4] == pytest.approx(-((0.7 - 0.5) ** 2))
    # fewer than two stated answers in the group: no reward
    lone = [_stats([math.log(0.8)], answer="A"), _stats([math.log(0.5)], answer=None)]
    assert AgreementBrierReward()(hytuning_stats=lone, hytuning_num_generations=[2, 2]) == [None, None]


def test_majority_vote_groups():
    answers = ["A", "B", "A", None, "C", "C", "D", "D"]
    batch = [_stats(None, answer=a) for a in answers]
    out = MajorityVoteReward()(hytuning_stats=batch, hytuning_num_generations=[4] * 8)
    assert out == [1.0, 0.0, 1.0, None, 1.0, 1.0, 0.0, 0.0]  # tie C/D -> C (sorts first)
    forced = [_stats(None, answer="B", forced=True), _stats(None, answer="A"), _stats(None, answer="B", forced=True)]
    # default: forced answers neither vote nor score
    assert MajorityVoteReward()(hytuning_stats=forced, hytuning_num_generations=[3] * 3) == [None, 1.0, None]
    assert MajorityVoteReward(use_forced=True)(hytuning_stats=forced, hytuning_num_generations=[3] * 3) == [
        1.0,
        0.0,
        1.0,
    ]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["A", "B", "C", None]), min_size=6, max_size=6), st.randoms(use_true_random=False))
def test_rewards_permute_with_completions(answers, rnd):
    group = [
        _stats([math.log(0.1 + 0.1 * i), math.log(0.2 + 0.1 * i)], prg=0.1 * i - 0.2, answer=a, sc=0.01 * i, h=i)
        for i, a in enumerate(answers)
    ]
    perm = list(range(6))
    rnd.shuffle(perm)
    shuffled = [group[i] for i in perm]
    for reward in (
        SelfCertaintyReward(),
        EntropyReward(),
        PRGReward(),
        PRGGatedConfidenceReward(),
        MajorityVoteReward(),
        AgreementBrierReward(),
    ):
        kwargs = {"hytuning_num_generations": [6] * 6}
        base = reward(hytuning_stats=group, **kwargs)
        out = reward(hytuning_stats=shuffled, **kwargs)
        assert out == [base[i] for i in perm]


def test_clear_error_without_statistics():
    with pytest.raises(ValueError, match="HyTuningTrainer"):
        SelfCertaintyReward()(prompts=["p"], completions=["c"], completion_ids=[[1]])


def test_clear_error_in_plain_grpo(tmp_path, trained_model, trained_tokenizer, train_dataset):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=16,
        max_steps=1,
        report_to=[],
    )
    trainer = GRPOTrainer(
        model=trained_model,
        reward_funcs=[SelfCertaintyReward()],
        args=args,
        train_dataset=train_dataset,
        processing_class=trained_tokenizer,
    )
    with pytest.raises(ValueError, match="use HyTuningTrainer|Train with HyTuningTrainer"):
        trainer.train()


def test_picklable_and_named():
    for cls in (
        SelfCertaintyReward,
        EntropyReward,
        AnswerConfidenceReward,
        PRGReward,
        PRGGatedConfidenceReward,
        AgreementBrierReward,
    ):
        reward = pickle.loads(pickle.dumps(cls()))
        assert reward.__name__ == cls.__dict__["__name__"] and reward.__name__.islower()
    assert pickle.loads(pickle.dumps(MajorityVoteReward(use_forced=False))).use_forced is False


class VerbalisedBrier(InternalFeedbackReward):
    """A user reward: negative Brier score of the answer probability against the group's majority answer."""

    __name__ = "verbalised_brier"
    group_wise = True

    def score_group(self, group):
        votes = MajorityVoteReward().score_group(group)
        return [
            None if v is None or s.answer_confidence is None else -((s.answer_confidence - v) ** 2)
            for s, v in zip(group, votes)
        ]


def test_user_subclass_trains_and_logs(build_trainer):
    trainer = build_trainer(reward_funcs=[SelfCertaintyReward(), VerbalisedBrier()], max_steps=2)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    values = [h["rewards/verbalised_brier/mean"] for h in logs if h["rewards/verbalised_brier/mean"] is not None]
    assert values and all(-1.0 <= v <= 0.0 for v in values)


def _majority_worker(rank, world, init_file, answers, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    assert dist.get_world_size() == 2
    half = len(answers) // 2
    local = [_stats(None, answer=a) for a in answers[rank * half : (rank + 1) * half]]
    out = MajorityVoteReward()(hytuning_stats=local, hytuning_num_generations=[len(answers)] * len(local))
    gathered = [None, None]
    dist.all_gather_object(gathered, out)
    if rank == 0:
        torch.save(gathered, result_file)
    dist.destroy_process_group()


@pytest.mark.multiprocess
def test_majority_vote_across_two_processes(tmp_path):
    # one group of 6 completions split 3 / 3 over two processes; the majority "B" lives mostly on process 1
    answers = ["A", "B", None, "B", "B", "A"]
    result = tmp_path / "out.pt"
    torch.multiprocessing.spawn(
        _majority_worker, args=(2, str(tmp_path / "init"), answers, str(result)), nprocs=2, join=True
    )
    gathered = torch.load(result)
    assert gathered[0] + gathered[1] == [0.0, 1.0, None, 1.0, 1.0, 0.0]
    # a single process seeing only its half would have voted "A" for process 0
    assert MajorityVoteReward()(hytuning_stats=[_stats(None, answer=a) for a in answers[:3]]) == [1.0, 0.0, None]
    random.seed(0)
