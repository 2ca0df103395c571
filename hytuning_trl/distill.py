"""Reasoning distillation (RD): the supervised traces, their sharded endless iterator, and the RD loss.

The RD loss of a batch of traces is the NLL of the completion (reasoning + answer) given the prompt, averaged over
the batch's completion tokens, from UNTEMPERED logits (TRL's fused head divides by the sampling temperature; this
loss goes through the model's own forward). With ``chord_phi`` each token is weighted by ``phi(p) = p (1 - p)``, p
detached (CHORD, arXiv 2508.11408)::

    L_RD = - sum_t w_t log p(y_t | y_<t, x) / sum_t 1,      w_t = 1 or p_t (1 - p_t)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DistillExample",
    "ShardedEndlessIterator",
    "collate_distill",
    "rd_loss",
    "split_anchor",
    "tokenize_distill_dataset",
]


@dataclass
class DistillExample:
    """One tokenized RD trace."""

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_text: str
    options: Any = None
    truncated: bool = False  # the completion lost its end to distill_max_length


def check_distill_dataset(dataset: Any, mixing: str, name: str = "distill_dataset") -> None:
    """Fail before training, naming the problem and the fix."""
    if mixing == "rl_only":
        return
    if dataset is None:
        raise ValueError(
            f"mixing={mixing!r} needs `distill_dataset` (prompt-completion traces for the RD head). Pass one, or use "
            "mixing='rl_only' to train on internal feedback alone."
        )
    if not hasattr(dataset, "column_names") and not isinstance(dataset, list):
        raise ValueError(f"`{name}` must be a datasets.Dataset (or a list of dicts) with 'prompt' and 'completion'.")
    columns = dataset.column_names if hasattr(dataset, "column_names") else (list(dataset[0]) if dataset else [])
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: it needs at least one trace per process and batch.")
    for column in ("prompt", "completion"):
        if column not in columns:
            raise ValueError(
                f"`{name}` lacks the {column!r} column (it has {columns}). It must be in TRL's "
                "prompt-completion format: rename your columns, e.g. dataset.rename_column('question', 'prompt') and "
                "dataset.rename_column('solution', 'completion')."
            )


def tokenize_distill_dataset(
    dataset: Any, tokenizer: Any, max_length: int, chat_template_kwargs: dict | None = None
) -> list[DistillExample]:
    """Tokenize prompt-completion traces (plain or conversational) the way GRPO tokenizes prompts.

    Plain text: the prompt is tokenized with special tokens, the completion without, and EOS is appended.
    Conversational: TRL's ``apply_chat_template`` renders both. A trace longer than ``max_length`` loses the end of
    its completion (a prompt alone that long keeps its last ``max_length // 2`` tokens).
    """
    from trl.data_utils import apply_chat_template, is_conversational

    examples = []
    for row in dataset:
        example = {"prompt": row["prompt"], "completion": row["completion"]}
        if is_conversational(example):
            rendered = apply_chat_template(example, tokenizer, **(chat_template_kwargs or {}))
            prompt_ids = tokenizer(rendered["prompt"], add_special_tokens=False)["input_ids"]
            completion_ids = tokenizer(rendered["completion"], add_special_tokens=False)["input_ids"]
            text = example["completion"][-1]["content"] if example["completion"] else ""
        else:
            prompt_ids = tokenizer(example["prompt"])["input_ids"]
            completion_ids = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
            if tokenizer.eos_token_id is not None and (
                not completion_ids or completion_ids[-1] != tokenizer.eos_token_id
            ):
                completion_ids = completion_ids + [tokenizer.eos_token_id]
            text = example["completion"]
        if len(prompt_ids) >= max_length:
            prompt_ids = prompt_ids[-(max_length // 2) :]
        truncated = len(prompt_ids) + len(completion_ids) > max_length
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
        examples.append(DistillExample(prompt_ids, completion_ids, text, row.get("options"), truncated))
    return examples


class ShardedEndlessIterator:
    """Endless batches of indices: each process reads a disjoint shard of a fresh permutation every epoch.

    Epoch ``e`` permutes ``range(n)`` with a generator seeded by ``seed + e``, drops the remainder that does not fill
    ``world_size * batch_size``, and gives process ``rank`` every ``world_size``-th index from ``rank`` on. All
    processes therefore see the same number of batches per epoch, and no index twice within an epoch. The position
    (``epoch``, ``position``) is all the state there is: it is saved in checkpoints.
    """

    def __init__(self, num_examples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if num_examples < batch_size * world_size:
            raise ValueError(
                f"The distill dataset has {num_examples} traces, fewer than distill_per_device_batch_size "
                f"({batch_size}) x processes ({world_size}) = {batch_size * world_size}. Add traces or lower "
                "`distill_per_device_batch_size`."
            )
        self.num_examples, self.batch_size, self.rank, self.world_size, self.seed = (
            num_examples,
            batch_size,
            rank,
            world_size,
            seed,
        )
        self.batches_per_epoch = num_examples // (batch_size * world_size)
        self.epoch = 0
        self.position = 0
        self._shard: list[int] | None = None

    def shard(self, epoch: int) -> list[int]:
        """The indices this process reads in ``epoch``, in order."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.num_examples, generator=generator)
        used = perm[: self.batches_per_epoch * self.batch_size * self.world_size]
        return used[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._shard = self.epoch + 1, 0, None
        if self._shard is None:
            self._shard = self.shard(self.epoch)
        start = self.position * self.batch_size
        self.position += 1
        return self._shard[start : start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"rd_epoch": self.epoch, "rd_position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._shard = int(state["rd_epoch"]), int(state["rd_position"]), None


def collate_distill(examples: list[DistillExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on the completion's tokens)."""
    length = max(len(e.prompt_ids) + len(e.completion_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    completion_mask = torch.zeros((len(examples), length), dtype=torch.long)
    prompt_lengths = []
    for i, e in enumerate(examples):
        ids = e.prompt_ids + e.completion_ids
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        completion_mask[i, len(e.prompt_ids) : len(ids)] = 1
        prompt_lengths.append(len(e.prompt_ids))
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "prompt_lengths": torch.tensor(prompt_lengths),
    }


@dataclass
class RDLossOutput:
    """The RD loss to back-propagate and what to log about it."""

    loss: torch.Tensor
    nll_sum: float  # sum of the (unweighted) token NLLs, finite terms only
    num_tokens: int
    nonfinite: bool


def rd_loss(model: nn.Module, batch: dict[str, torch.Tensor], chord_phi: bool = False) -> RDLossOutput:
    """NLL of the completion given the prompt, untempered, averaged over the batch's completion tokens.

    Only the logits from the first completion position on are computed (``logits_to_keep``), and they are turned
    into log-probabilities one sequence at a time. A non-finite loss becomes 0 and carries no gradient (a backward
    through NaN activations poisons every gradient, even multiplied by 0); it is reported in ``nonfinite``.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    completion_mask = batch["completion_mask"]
    length = input_ids.size(1)
    first = int(batch["prompt_lengths"].min()) - 1  # position predicting the earliest completion token
    keep = length - first
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False)
    logits = outputs.logits[:, -keep:]
    labels = input_ids[:, first + 1 :]
    mask = completion_mask[:, first + 1 :].bool()
    token_logps = torch.stack(
        [-F.cross_entropy(logits[i, :-1].float(), labels[i], reduction="none") for i in range(logits.size(0))]
    )
    terms = -token_logps
    if chord_phi:
        p = token_logps.detach().exp()
        terms = terms * p * (1 - p)
    selected = terms[mask]
    n_tokens = int(mask.sum())
    finite = torch.isfinite(selected)
    if bool(finite.all()):
        loss = selected.sum() / max(n_tokens, 1)
        nonfinite = False
    else:
        # Any backward through the non-finite forward would put NaN in the gradients (0 * NaN is NaN), so the RD
        # term becomes a plain zero; the GRPO term still runs the same backward on every process.
        loss = torch.zeros((), device=selected.device, dtype=selected.dtype)
        nonfinite = True
    raw = (-token_logps.detach())[mask]
    nll_sum = float(raw[torch.isfinite(raw)].sum())
    return RDLossOutput(loss=loss, nll_sum=nll_sum, num_tokens=n_tokens, nonfinite=nonfinite)


def split_anchor(num_examples: int, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """Split ``min(holdout, num_examples // 4)`` traces off as the held-out anchor, with the seed.

    Returns ``(train_indices, anchor_indices)``, both sorted; the anchor is never trained on.
    """
    n_anchor = min(int(holdout), num_examples // 4)
    perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(int(seed))).tolist()
    anchor = sorted(perm[:n_anchor])
    held = set(anchor)
    return [i for i in range(num_examples) if i not in held], anchor
