"""The random-block draw (BigBird's random attention), device- and tile-independent.

Procedure, for query block ``qb`` (``i // block``, which may be negative when there are more
queries than keys) and ``n = ceil(nk / block)`` key blocks:

1. ``h(t) = splitmix64(splitmix64(seed) ^ splitmix64(qb mod 2**64) ^ splitmix64(t))`` for a
   counter ``t``, all arithmetic modulo 2**64.
2. Robert Floyd's sampling picks ``per_row`` distinct blocks out of ``n``: for ``t`` in
   ``n - per_row .. n - 1``, ``x = h(t) mod (t + 1)``; take ``x`` unless already taken, else ``t``.
3. The row is sorted.

So a row depends on (seed, qb, n, per_row) only: the same on every device, for every tile size, and
a query block keeps its draw when the number of queries changes. ``per_row > n`` is an error.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import SpecError

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_MASK64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def num_key_blocks(nk: int, block: int) -> int:
    return -(-nk // block)


def draw_key_blocks(*, seed: int, per_row: int, block: int, nk: int,
                    first_query_block: int, num_query_blocks: int) -> torch.Tensor:
    """Rows ``first_query_block .. + num_query_blocks - 1`` of the draw: int64 (rows, per_row)."""
    n = num_key_blocks(nk, block)
    if per_row > n:
        raise SpecError("mask.random.per_row", per_row,
                        f"must be <= the number of key blocks ({n} for nk={nk}, block={block})")
    rows = np.arange(first_query_block, first_query_block + num_query_blocks, dtype=np.int64)
    row_hash = _splitmix64(np.full(1, seed, dtype=np.uint64)) ^ _splitmix64(rows.view(np.uint64))
    chosen = np.full((num_query_blocks, per_row), -1, dtype=np.int64)
    for slot, t in enumerate(range(n - per_row, n)):
        h = _splitmix64(row_hash ^ _splitmix64(np.full(1, t, dtype=np.uint64)))
        x = (h % np.uint64(t + 1)).astype(np.int64)
        taken = (chosen[:, :slot] == x[:, None]).any(axis=1)
        chosen[:, slot] = np.where(taken, t, x)
    chosen.sort(axis=1)
    return torch.from_numpy(chosen)


def query_block_span(nq: int, q_offset: int, block: int) -> tuple[int, int]:
    """(first query block, number of query blocks) covering positions q_offset .. q_offset+nq-1."""
    first = q_offset // block
    last = (q_offset + max(nq, 1) - 1) // block
    return first, last - first + 1
