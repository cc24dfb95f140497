"""Closed-form tile ranges of interval predicates (band, causal, blocks, and all of them).

`attngen.analysis.intervals` gives the bounds L(i) <= j <= R(i) as sympy; here they are evaluated
in exact int64 arithmetic (no floats: ``floor(i / b)`` in float32 is wrong past 2**24). Both
bounds never decrease as i grows, and every interval here holds i itself (bands have left, right
>= 0; i's block holds i), so the intervals of consecutive queries leave no gap between them. For a
query tile holding positions i0..i1 therefore:
- its allowed keys are exactly [L(i0), R(i1)] (clipped to the keys that exist);
- the keys allowed for all its queries are exactly [L(i1), R(i0)].
A key tile is non-empty iff it meets the first and full iff it lies inside the second: exact.

Range convention, shared with the kernels (`TileRanges`): per row, ``first..last`` are the non-empty
tiles and ``full_first..full_last`` the full ones, a sub-range of them. An empty full range is
``(last + 1, last)`` and an empty row is ``(0, -1)``, so the three runs ``first .. full_first - 1``
(partial), ``full_first .. full_last`` (full) and ``full_last + 1 .. last`` (partial) always
partition the row's non-empty tiles.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..spec.predicates import All_, Band, Blocks, Causal, Everything, Predicate
from .intervals import key_interval
from .tiles_base import BIG, Geometry, expand_ranges, floor_div


class TileRanges(NamedTuple):
    """Per row (query tile; key tile in a transposed map), int32: the non-empty tiles
    ``first..last`` and, inside them, the full tiles ``full_first..full_last``."""

    first: torch.Tensor
    last: torch.Tensor
    full_first: torch.Tensor
    full_last: torch.Tensor


def key_bounds(pred: Predicate, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(L, R) at int64 `positions` (±2**62 for an open side), or None if this module cannot
    evaluate `pred` exactly (then the block map takes the general path)."""
    if isinstance(pred, Everything):
        return torch.full_like(positions, -BIG), torch.full_like(positions, BIG)
    if isinstance(pred, Causal):
        return torch.full_like(positions, -BIG), positions
    if isinstance(pred, Band):
        low = torch.full_like(positions, -BIG) if pred.left is None else positions - pred.left
        high = torch.full_like(positions, BIG) if pred.right is None else positions + pred.right
        return low, high
    if isinstance(pred, Blocks):
        start = floor_div(positions, pred.size) * pred.size
        return start, start + pred.size - 1
    if isinstance(pred, All_) and pred.parts:
        bounds = [key_bounds(p, positions) for p in pred.parts]
        if any(b is None for b in bounds):
            return None
        low, high = bounds[0]
        for lo, hi in bounds[1:]:
            low, high = torch.maximum(low, lo), torch.minimum(high, hi)
        return low, high
    return None


def is_interval(pred: Predicate) -> bool:
    """`pred` is an interval predicate (`key_interval`) that `key_bounds` evaluates exactly."""
    probe = torch.zeros(1, dtype=torch.int64)
    return key_interval(pred) is not None and key_bounds(pred, probe) is not None


def tile_ranges(pred: Predicate, geom: Geometry) -> TileRanges:
    """Per query tile, the non-empty and full key-tile ranges (int32), from L and R alone."""
    # L(i0), R(i0), L(i1), R(i1) as key indices (position - k_offset)
    low_first, high_first = (b - geom.k_offset for b in key_bounds(pred, geom.q_lo))
    low_last, high_last = (b - geom.k_offset for b in key_bounds(pred, geom.q_hi))
    lo = torch.clamp(low_first, min=0)
    hi = torch.clamp(high_last, max=geom.nk - 1)
    nonempty = lo <= hi
    first = torch.where(nonempty, floor_div(lo, geom.block_k), 0)
    last = torch.where(nonempty, floor_div(hi, geom.block_k), -1)
    # Full: key tile u with k_lo[u] >= L(i1) and k_hi[u] <= R(i0); the last tile ends at nk - 1.
    full_first = floor_div(torch.clamp(low_last, min=0) + geom.block_k - 1, geom.block_k)
    full_last = torch.where(high_first >= geom.nk - 1, geom.num_k_tiles - 1,
                            floor_div(torch.clamp(high_first, min=-1) + 1, geom.block_k) - 1)
    full_first, full_last = torch.maximum(full_first, first), torch.minimum(full_last, last)
    no_full = full_first > full_last
    full_first = torch.where(no_full, last + 1, full_first)
    full_last = torch.where(no_full, last, full_last)
    return TileRanges(*(x.to(torch.int32) for x in (first, last, full_first, full_last)))


def ranges_to_csr(ranges: TileRanges) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(partial_ptr, partial_idx, full_ptr, full_idx) int32 CSR, each row's tiles ascending."""
    first, last, full_first, full_last = (x.to(torch.int64) for x in ranges)
    full_counts, full_idx = expand_ranges(full_first, full_last)
    # Partial tiles: the run before the full ones and the run after, interleaved row by row.
    lo = torch.stack([first, full_last + 1], 1).flatten()
    hi = torch.stack([full_first - 1, last], 1).flatten()
    partial_counts, partial_idx = expand_ranges(lo, hi)
    partial_counts = partial_counts.view(-1, 2).sum(1)
    return (_ptr(partial_counts), partial_idx.to(torch.int32), _ptr(full_counts), full_idx.to(torch.int32))


def _ptr(counts: torch.Tensor) -> torch.Tensor:
    ptr = torch.zeros(len(counts) + 1, dtype=torch.int64, device=counts.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr.to(torch.int32)
