"""Work split across processes and put back together: each process takes every ``world``-th item from its rank,
padded to the same count (under ZeRO-3 every process must run the same number of forwards), and the results are
gathered in the original order with the padding dropped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["gather_in_order", "gather_objects", "shard_indices"]


def shard_indices(n: int, rank: int, world: int) -> tuple[list[int], list[bool]]:
    """This process's indices (every ``world``-th from ``rank``), padded by repeating one of them to
    ``ceil(n / world)``, and which entries are real (padding is computed and then dropped)."""
    per_rank = math.ceil(n / world) if n else 0
    mine = list(range(rank, n, world))
    real = [True] * len(mine)
    pad = per_rank - len(mine)
    mine += [mine[-1] if mine else 0] * pad
    return mine, real + [False] * pad


def gather_in_order(indices: Sequence[int], results: Sequence[Any], real: Sequence[bool] | None = None) -> list[Any]:
    """Every process's ``(index, result)`` pairs gathered (``accelerate.utils.gather_object``), padding dropped, in
    index order: the results as if one process had computed them all."""
    from accelerate.utils import gather_object

    real = [True] * len(indices) if real is None else real
    tagged = gather_object([(i, r) for i, r, keep in zip(indices, results, real) if keep])
    by_index = dict(tagged)
    return [by_index[i] for i in sorted(by_index)]


def gather_objects(local: list[Any]) -> tuple[list[Any], int]:
    """All processes' lists, concatenated in rank order, and where this process's part starts (the gathered order
    TRL's group statistics use: a group is a consecutive block of it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(local), 0
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(local))
    offset = sum(len(p) for p in parts[: dist.get_rank()])
    return [x for p in parts for x in p], offset
