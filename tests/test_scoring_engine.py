"""The scoring engine at scale: tiled vocabulary projection, one tile alive at a time, LM-head scaling as TRL's."""

import math
import weakref

import pytest
import torch
from conftest import WS, reference_trajectory

from hytuning_trl import score_rollouts
from hytuning_trl._testing import tiny_model
from hytuning_trl.packing import _Head, lm_head_scaling


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, seed=5, hidden_size=32).eval()


def _full_logits_stats(model, prompt, completion):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].double()
    logp = logits.log_softmax(-1)
    return (-math.log(logits.size(-1)) - logp.mean(-1)).mean().item(), -(logp.exp() * logp).sum(-1).mean().item()


@pytest.mark.parametrize("chunk", [7, 64, 1000, 1 << 22])
def test_tiled_statistics_match_full_logits(model, chunk):
    """Bug it catches: an online log-sum-exp that forgets to rescale earlier slices (only visible with several
    vocabulary slices: 7 and 64 logits per tile cut the 400-token vocabulary into many)."""
    prompts, completions = [[3, 4, 5, 6], [9, 8]], [[10, 11, 12, 13, 14], [20, 21, 22]]
    stats = score_rollouts(
        model,
        prompts,
        completions,
        step_spans=[[(0, 2), (2, 5)], [(0, 3)]],
        trigger_ids=[7],
        answer_ids=[[30, 31], [32]],
        vocab_chunk_elems=chunk,
    )
    for s, p, c in zip(stats, prompts, completions):
        sc, ent = _full_logits_stats(model, p, c)
        assert s.self_certainty == pytest.approx(sc, abs=1e-4) and s.entropy == pytest.approx(ent, abs=1e-4)
    # the trajectories against plain forwards built by hand
    steps = [[[10, 11], [12, 13, 14]], [[20, 21, 22]]]
    for s, p, st, a in zip(stats, prompts, steps, ([30, 31], [32])):
        ref = reference_trajectory(model, p, st, [7], a, ws=frozenset())
        assert s.answer_logprobs == pytest.approx(ref, abs=1e-4)


def test_one_tile_of_logits_alive_at_a_time(model, monkeypatch):
    """Bug it catches: a projection that keeps (or returns) every chunk of logits, so memory grows with the number
    of queried positions times the vocabulary."""
    alive: weakref.WeakSet = weakref.WeakSet()
    most = [0]
    original = _Head.project

    def counting(self, *args, **kwargs):
        most[0] = max(most[0], len(alive))  # tiles still alive when the next one is made
        out = original(self, *args, **kwargs)
        alive.add(out)
        return out

    monkeypatch.setattr(_Head, "project", counting)
    prompts = [[3, 4, 5, 6]] * 4
    completions = [[10 + i for i in range(30)]] * 4
    score_rollouts(model, prompts, completions, vocab_chunk_elems=500)  # 120 queries x 400 vocab: many tiles
    assert most[0] == 0


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"logit_scale": 0.5},
        {"output_multiplier": 2.0},
        {"lm_head_multiplier": 0.25},
        {"logits_scaling": 4.0},
        {"final_logit_softcapping": 3.0},
        {"logit_scale": 3.0, "final_logit_softcapping": 2.0},
    ],
    ids=lambda a: ",".join(a) or "plain",
)
def test_lm_head_scaling_matches_trl_fused_head(tokenizer, attrs):
    """The scoring pass reads logit multipliers and softcapping as TRL's fused LM head does: the answer log-probs of
    a plain sequence equal `add_fused_lm_head(model, temperature=1.0)`'s."""
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_model(tokenizer, seed=6, hidden_size=32).eval()
    for key, value in attrs.items():
        setattr(model.config, key, value)
    scale, softcap = lm_head_scaling(model.config)
    assert (scale, softcap) != (1.0, None) or not attrs
    ids = [3, 4, 5, 6, 10, 11, 12]
    [s] = score_rollouts(model, [ids[:4]], [ids[4:]], step_spans=[[]], trigger_ids=[ids[4]], answer_ids=[ids[5:]])
    fused = tiny_model(tokenizer, seed=6, hidden_size=32).eval()
    for key, value in attrs.items():
        setattr(fused.config, key, value)
    add_fused_lm_head(fused, temperature=1.0)
    labels = torch.tensor([[-100] * 5 + ids[5:]])
    with torch.no_grad():
        out = fused(input_ids=torch.tensor([ids]), labels=labels, fused_lm_head=True)
    assert s.answer_logprobs[0] == pytest.approx(out.log_probs[0, 4:].sum().item(), abs=1e-5)


def test_packed_probe_tolerance_follows_dtype(tokenizer):
    """On a GPU, bf16 attention kernels make the packed mask and separate forwards differ by rounding (~1e-2), not by
    a wrong mask: the probe keeps the single pass (tolerance 5e-2 in bf16, 1e-3 in fp32). On this CPU the two agree
    to ~1e-3 in bf16, so the run below shows the bf16 path end to end and the tolerance is checked as a function."""
    import warnings

    from hytuning_trl.scoring import probe_tolerance

    assert probe_tolerance(torch.float32) == 1e-3
    assert probe_tolerance(torch.bfloat16) == probe_tolerance(torch.float16) == 5e-2

    model = tiny_model(tokenizer, seed=7, hidden_size=64).eval()
    ref = score_rollouts(
        model, [[1, 2, 3]], [[10, 11, 12, 13]], step_spans=[[(0, 2), (2, 4)]], trigger_ids=[7], answer_ids=[[9]]
    )
    model = model.to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback would warn
        [s] = score_rollouts(
            model, [[1, 2, 3]], [[10, 11, 12, 13]], step_spans=[[(0, 2), (2, 4)]], trigger_ids=[7], answer_ids=[[9]]
        )
    assert model._hytuning_packed_mask_ok is True
    assert s.answer_logprobs == pytest.approx(ref[0].answer_logprobs, abs=0.1)


def test_dtensor_head_is_gathered(tmp_path):
    """Under FSDP2 the head is a DTensor; the projection uses it whole (a one-process mesh on CPU, gloo)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from hytuning_trl.packing import _full_tensor

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        weight = torch.randn(12, 5)
        sharded = distribute_tensor(weight, init_device_mesh("cpu", (1,)), [Shard(0)])
        assert isinstance(sharded, DTensor)
        whole = _full_tensor(sharded)
        assert not isinstance(whole, DTensor) and torch.equal(whole, weight)
        assert _full_tensor(weight) is weight and _full_tensor(None) is None
    finally:
        if started:
            dist.destroy_process_group()


class _MaskHook:
    """Raises ``error`` from the model's forward whenever it is given a 4D attention mask (the packed layout)."""

    def __init__(self, error):
        self.error = error

    def __call__(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            raise self.error


@pytest.mark.parametrize(
    "error,refused",
    [
        (ValueError("custom 4D masks are not supported by this attention"), True),  # a refusal: fall back, warn
        (NotImplementedError("4D mask"), True),
        (TypeError("a bug in the packed path"), False),  # a bug: it raises, never a silent 5x slowdown
        (IndexError("a bug in the packed path"), False),
    ],
)
def test_packed_probe_catches_only_refusals(tokenizer, error, refused):
    from hytuning_trl.scoring import packed_scoring_verdict

    model = tiny_model(tokenizer, seed=2, hidden_size=32).eval()
    model.model.register_forward_pre_hook(_MaskHook(error), with_kwargs=True)
    call = dict(step_spans=[[(0, 2)]], trigger_ids=[7], answer_ids=[[30]])
    if refused:
        with pytest.warns(UserWarning, match="does not take the packed 4D attention mask"):
            [stats] = score_rollouts(model, [[3, 4, 5]], [[10, 11, 12]], **call)
        assert packed_scoring_verdict(model) is False and len(stats.answer_logprobs) == 2  # the naive path ran
    else:
        with pytest.raises(type(error), match="a bug in the packed path"):
            score_rollouts(model, [[3, 4, 5]], [[10, 11, 12]], **call)
        assert packed_scoring_verdict(model) is None  # no verdict cached from a bug


def test_option_logprobs_against_plain_forwards(model):
    """The options column of the scoring pass (every option's renormalised log-probability at every k) against one
    plain forward per k over [x, s_1..s_k, t], assembled by hand. Bug it catches: the options renormalised over the
    wrong positions, or the column of another option returned."""
    prompts, completions = [[3, 4, 5, 6], [9, 8]], [[10, 11, 12, 13, 14], [20, 21, 22]]
    spans = [[(0, 2), (2, 5)], [(0, 3)]]
    options = [40, 41, 42, 43]
    stats = score_rollouts(
        model,
        prompts,
        completions,
        step_spans=spans,
        trigger_ids=[7],
        answer_ids=[[42], [40]],
        option_ids=options,
        whitespace_ids=WS,  # the prompt [3, 4, 5, 6] ends with two of them: branch 0 goes before both
    )
    for s, prompt, completion, sample_spans in zip(stats, prompts, completions, spans):
        steps = [completion[a:b] for a, b in sample_spans]
        by_option = [reference_trajectory(model, prompt, steps, [7], options=options, index=j) for j in range(4)]
        for k, row in enumerate(s.option_logprobs):
            assert row == pytest.approx([by_option[j][k] for j in range(4)], abs=1e-5)
    assert stats[0].answer_logprobs == pytest.approx([row[2] for row in stats[0].option_logprobs], abs=1e-12)
