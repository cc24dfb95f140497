"""Tile classifiers of the leaves whose meaning is closed-form in (i, j): every one exact.

- Band (and Causal, ``Band(None, 0)``): allowed iff ``-right <= d <= left`` with ``d = i - j``. The
  pairs of a tile take every d in [dmin, dmax], so the tile is non-empty iff that interval meets
  the band's and full iff it lies inside it.
- Blocks(b): allowed iff ``i // b == j // b``. A tile spans the query blocks [qb0, qb1] and the key
  blocks [kb0, kb1], each wholly (every block between the ends holds a position of the tile):
  non-empty iff the spans meet, full iff both are the same single block.
- Stride(s): allowed iff ``d mod s == 0``: non-empty iff [dmin, dmax] holds a multiple of s, full
  iff the tile has one d (one pair) and it is a multiple.
- Columns(s, c): a function of j alone: non-empty iff the key tile holds a j with
  ``j mod s >= s - c``, full iff all of its keys do (the residues of a run of keys, without wrap).
- GlobalTokens: ``i in G or j in G``: non-empty iff the query tile or the key tile holds a member,
  full iff one of them holds only members (first g: a range test; tokens: searchsorted counts).
"""
from __future__ import annotations

import torch

from ..spec.predicates import Band, Blocks, Causal, Columns, Everything, GlobalTokens, Nothing, Stride
from .tiles_base import (BIG, Geometry, RowRanges, Verdict, candidates_for, classifier_for, expand_ranges,
                         floor_div, key_tile_span, range_keys, rows_of, sorted_unique)


# -- constants ------------------------------------------------------------------------------
@classifier_for(Everything)
def _everything(pred, geom, qt, kt):
    ones = torch.ones_like(qt, dtype=torch.bool)
    return Verdict(ones, ones)


@classifier_for(Nothing)
def _nothing(pred, geom, qt, kt):
    zeros = torch.zeros_like(qt, dtype=torch.bool)
    return Verdict(zeros, zeros)


@candidates_for(Nothing)
def _nothing_candidates(pred, geom, start, stop):
    return torch.zeros(0, dtype=torch.int64, device=geom.device)


# -- band -----------------------------------------------------------------------------------
def _band_sides(pred) -> tuple[int, int]:
    """(lowest d, highest d) allowed; causal is the band with no left bound and right 0."""
    if isinstance(pred, Causal):
        return 0, BIG
    low = -BIG if pred.right is None else -pred.right
    high = BIG if pred.left is None else pred.left
    return low, high


@classifier_for(Band, Causal)
def _band(pred, geom: Geometry, qt, kt):
    low, high = _band_sides(pred)
    dmin, dmax = geom.d_range(qt, kt)
    nonempty = torch.clamp(dmin, min=low) <= torch.clamp(dmax, max=high)
    full = (dmin >= low) & (dmax <= high)
    return Verdict(nonempty, full)


@candidates_for(Band, Causal)
def _band_candidates(pred, geom: Geometry, start, stop):
    low, high = _band_sides(pred)
    rows = rows_of(geom, start, stop)
    # j = i - d: the keys of query tile t lie in [q_lo - high, q_hi - low].
    return RowRanges(*key_tile_span(geom, geom.q_lo[rows] - high, geom.q_hi[rows] - low))


# -- blocks ---------------------------------------------------------------------------------
@classifier_for(Blocks)
def _blocks(pred, geom: Geometry, qt, kt):
    b = pred.size
    qb0, qb1 = floor_div(geom.q_lo[qt], b), floor_div(geom.q_hi[qt], b)
    kb0, kb1 = floor_div(geom.k_lo[kt], b), floor_div(geom.k_hi[kt], b)
    nonempty = torch.maximum(qb0, kb0) <= torch.minimum(qb1, kb1)
    full = (qb0 == qb1) & (kb0 == kb1) & (qb0 == kb0)
    return Verdict(nonempty, full)


@candidates_for(Blocks)
def _blocks_candidates(pred, geom: Geometry, start, stop):
    b = pred.size
    rows = rows_of(geom, start, stop)
    lo = floor_div(geom.q_lo[rows], b) * b
    hi = floor_div(geom.q_hi[rows], b) * b + b - 1
    return RowRanges(*key_tile_span(geom, lo, hi))


# -- stride ---------------------------------------------------------------------------------
@classifier_for(Stride)
def _stride(pred, geom: Geometry, qt, kt):
    s = pred.every
    dmin, dmax = geom.d_range(qt, kt)
    nonempty = floor_div(dmax, s) * s >= dmin
    full = (dmin == dmax) & (torch.remainder(dmin, s) == 0)
    return Verdict(nonempty, full)


@candidates_for(Stride)
def _stride_candidates(pred, geom: Geometry, start, stop):
    """The diagonals d = m*s that cross each query tile. A stride no wider than a key tile meets
    (nearly) every tile, so it names none (None)."""
    s = pred.every
    if s <= geom.block_k:
        return None
    rows = rows_of(geom, start, stop)
    q_lo, q_hi = geom.q_lo[rows], geom.q_hi[rows]
    # d ranges over [q_lo - k_last, q_hi - k_offset]; its multiples of s are m*s for m in [m_lo, m_hi].
    m_lo = -floor_div(-(q_lo - geom.k_last), s)
    m_hi = floor_div(q_hi - geom.k_offset, s)
    counts, m = expand_ranges(m_lo, m_hi)
    owner = torch.repeat_interleave(torch.arange(len(rows), device=geom.device), counts, output_size=len(m))
    d = m * s
    first, last = key_tile_span(geom, q_lo[owner] - d, q_hi[owner] - d)
    return sorted_unique(range_keys(geom, rows[owner], first, last))


# -- columns --------------------------------------------------------------------------------
def _columns_per_key_tile(pred, geom: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(non-empty, full) per key tile: the key tile's residues run r0, r0+1, .. (mod s)."""
    s, low = pred.every, pred.every - pred.width
    r0 = torch.remainder(geom.k_lo, s)
    first_hit = torch.where(r0 >= low, geom.k_lo, geom.k_lo + (low - r0))
    nonempty = first_hit <= geom.k_hi
    full = (r0 >= low) & (r0 + (geom.k_hi - geom.k_lo) <= s - 1)
    return nonempty, full


@classifier_for(Columns)
def _columns(pred, geom: Geometry, qt, kt):
    nonempty, full = _columns_per_key_tile(pred, geom)
    return Verdict(nonempty[kt], full[kt])


@candidates_for(Columns)
def _columns_candidates(pred, geom: Geometry, start, stop):
    nonempty, _ = _columns_per_key_tile(pred, geom)
    hit = torch.nonzero(nonempty).flatten()
    if len(hit) == geom.num_k_tiles:
        return None
    rows = rows_of(geom, start, stop)
    return (rows[:, None] * geom.num_k_tiles + hit[None, :]).flatten()


# -- global tokens ----------------------------------------------------------------------------
def _members_in(pred: GlobalTokens, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(holds a member, holds only members) for position runs [lo, hi]."""
    if pred.first is not None:
        g = pred.first
        return (lo <= g - 1) & (hi >= 0), (lo >= 0) & (hi <= g - 1)
    tokens = torch.tensor(pred.tokens, dtype=torch.int64, device=lo.device)
    count = torch.searchsorted(tokens, hi, right=True) - torch.searchsorted(tokens, lo)
    return count > 0, count == hi - lo + 1         # tokens are distinct


@classifier_for(GlobalTokens)
def _global(pred, geom: Geometry, qt, kt):
    q_has, q_all = _members_in(pred, geom.q_lo, geom.q_hi)
    k_has, k_all = _members_in(pred, geom.k_lo, geom.k_hi)
    return Verdict(q_has[qt] | k_has[kt], q_all[qt] | k_all[kt])


@candidates_for(GlobalTokens)
def _global_candidates(pred, geom: Geometry, start, stop):
    """A query tile holding a global query meets every key tile; any other meets the key tiles
    holding a global key."""
    rows = rows_of(geom, start, stop)
    q_has, _ = _members_in(pred, geom.q_lo[rows], geom.q_hi[rows])
    k_has, _ = _members_in(pred, geom.k_lo, geom.k_hi)
    hit = torch.nonzero(k_has).flatten()
    if len(hit) == geom.num_k_tiles:
        return None
    counts = torch.where(q_has, geom.num_k_tiles, len(hit))
    # Each row's n-th candidate: key tile n (a global row) or the n-th key tile with a global key.
    counts, n = expand_ranges(torch.zeros_like(counts), counts - 1)
    owner = torch.repeat_interleave(rows, counts, output_size=len(n))
    if len(hit):
        n = torch.where(q_has.repeat_interleave(counts), n, hit[torch.clamp(n, max=len(hit) - 1)])
    return owner * geom.num_k_tiles + n
