"""Tile classifiers of the leaves that read a table: random blocks and segment ids.

Random(r, R, seed), exact. A tile spans query blocks [qb0, qb1] and key blocks [kb0, kb1] wholly,
so it is non-empty iff one of its query blocks drew one of its key blocks, and full iff every one of
its query blocks drew every one of its key blocks. The drawn (query block, key block) pairs are
mapped onto tile pairs once per map: O(drawn pairs x tiles a block touches), never O(nq x nk).

Segments, from the call's seg_q / seg_k ((n,) or (B, n); a batched map is valid for every batch
row: non-empty if non-empty in one row, full if full in all). Ids are first compacted (an
order-preserving renumbering, O(n log n)), then per tile the min and max id are taken (O(n)).
- full, exact for any ids: the query tile and the key tile both hold one id, the same one.
- non-empty, exact when every row of seg_q and seg_k is sorted (non-decreasing; packed documents):
  a run of a sorted sequence holds every id of that sequence between its min and max, so the tiles
  share an id iff an id present in both sequences lies in the overlap of their [min, max]: one
  searchsorted per pair. When ids are not sorted, the (tile, id) incidences are joined on the id if
  the join has at most `SEGMENT_JOIN_LIMIT` entries (exact); past that, the same overlap test is
  used as a conservative bound (marked inexact; the block map may refine those tiles).
"""
from __future__ import annotations

import torch

from ..errors import ShapeError
from ..spec.predicates import Random, Segments
from .tiles_base import (Geometry, RowRanges, Verdict, candidates_for, classifier_for, expand_ranges, floor_div,
                         key_slice, key_tile_span, lookup, range_keys, rows_of, sorted_unique)

# Most (query tile, key tile, id) incidences the exact join of unsorted segment ids may build.
SEGMENT_JOIN_LIMIT = 1 << 22


# -- random -----------------------------------------------------------------------------------
def _random_tiles(pred: Random, geom: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted keys of the non-empty tile pairs, full flag of each), computed once per map."""
    cached = geom.cache.get(("random", pred))
    if cached is not None:
        return cached
    size, n_k = pred.block, geom.num_k_tiles
    first_block, table = geom.ctx.random_table(pred)
    table = table.to(geom.device)
    rows = torch.arange(table.shape[0], device=geom.device).repeat_interleave(pred.per_row)
    drawn = table.flatten()
    # Drawn key blocks → the key tiles they touch, with how many drawn blocks each (row, key tile) has.
    counts, key_tile = expand_ranges(*key_tile_span(geom, drawn * size, drawn * size + size - 1))
    pairs, hits = torch.unique(rows.repeat_interleave(counts) * n_k + key_tile, return_counts=True)
    row, key_tile = floor_div(pairs, n_k), pairs % n_k
    blocks_in_key_tile = floor_div(geom.k_hi, size) - floor_div(geom.k_lo, size) + 1
    row_full = hits == blocks_in_key_tile[key_tile]
    # Query blocks → the query tiles they touch (positions clipped to the queries that exist).
    block = row + first_block
    lo = torch.clamp(block * size, min=geom.q_offset) - geom.q_offset
    hi = torch.clamp(block * size + size - 1, max=geom.q_offset + geom.nq - 1) - geom.q_offset
    counts, query_tile = expand_ranges(floor_div(lo, geom.block_q), floor_div(hi, geom.block_q))
    keys = query_tile * n_k + key_tile.repeat_interleave(counts)
    tile_keys, inverse = torch.unique(keys, return_inverse=True)
    full_rows = torch.zeros(len(tile_keys), dtype=torch.int64, device=geom.device)
    full_rows.index_add_(0, inverse, row_full.repeat_interleave(counts).to(torch.int64))
    blocks_in_query_tile = floor_div(geom.q_hi, size) - floor_div(geom.q_lo, size) + 1
    full = full_rows == blocks_in_query_tile[floor_div(tile_keys, n_k)]
    geom.cache[("random", pred)] = tile_keys, full
    return tile_keys, full


@classifier_for(Random)
def _random(pred, geom: Geometry, qt, kt):
    tile_keys, full = _random_tiles(pred, geom)
    found, idx = lookup(tile_keys, qt * geom.num_k_tiles + kt)
    return Verdict(found, found & full[idx] if len(full) else found)


@candidates_for(Random)
def _random_candidates(pred, geom: Geometry, start, stop):
    return key_slice(_random_tiles(pred, geom)[0], geom, start, stop)


# -- segments ---------------------------------------------------------------------------------
def _tile_min_max(seg: torch.Tensor, block: int, num_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile (B, num_tiles) min and max of seg (B, n); the ragged last tile repeats its last id."""
    pos = torch.clamp(torch.arange(num_tiles * block, device=seg.device), max=seg.shape[-1] - 1)
    tiles = seg[:, pos].view(seg.shape[0], num_tiles, block)
    return tiles.amin(-1), tiles.amax(-1)


def _segment_ids(geom: Geometry) -> tuple[torch.Tensor, torch.Tensor, int]:
    """seg_q (B, nq) and seg_k (B, nk) renumbered 0..V-1 in order, and V."""
    seg_q = geom.ctx.seg_rows.squeeze(-1).reshape(-1, geom.nq)
    seg_k = geom.ctx.seg_cols.squeeze(-2).reshape(-1, geom.nk)
    if seg_q.shape[0] != seg_k.shape[0]:
        if min(seg_q.shape[0], seg_k.shape[0]) != 1:
            raise ShapeError(f"seg_q has {seg_q.shape[0]} rows and seg_k {seg_k.shape[0]}: "
                             "batched segment ids need the same batch (or one of them 1-D)")
        batch = max(seg_q.shape[0], seg_k.shape[0])     # a 1-D one is shared by every row
        seg_q, seg_k = seg_q.expand(batch, -1), seg_k.expand(batch, -1)
    values = torch.unique(torch.cat([seg_q.flatten(), seg_k.flatten()]))
    return (torch.searchsorted(values, seg_q.contiguous()), torch.searchsorted(values, seg_k.contiguous()),
            len(values))


def _is_sorted(seg: torch.Tensor) -> bool:
    return bool((seg[:, 1:] >= seg[:, :-1]).all())


def _segment_table(geom: Geometry) -> dict:
    cached = geom.cache.get("segments")
    if cached is not None:
        return cached
    seg_q, seg_k, num_values = _segment_ids(geom)
    batch = seg_q.shape[0]
    offset = torch.arange(batch, device=geom.device)[:, None] * num_values   # ids of row b: b*V + id
    q_min, q_max = _tile_min_max(seg_q, geom.block_q, geom.num_q_tiles)
    k_min, k_max = _tile_min_max(seg_k, geom.block_k, geom.num_k_tiles)
    q_ids, k_ids = sorted_unique(seg_q + offset), sorted_unique(seg_k + offset)
    table = dict(q_min=q_min, q_max=q_max, k_min=k_min, k_max=k_max, offset=offset,
                 common=q_ids[torch.isin(q_ids, k_ids)], mode="overlap", join=None)
    if _is_sorted(seg_q) and _is_sorted(seg_k):
        table["mode"] = "sorted"
    else:
        join = _join_on_ids(geom, seg_q + offset, seg_k + offset)
        if join is not None:
            table.update(mode="join", join=join)
    geom.cache["segments"] = table
    return table


def _tile_id_pairs(ids: torch.Tensor, block: int, num_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct (id, tile) incidences of ids (B, n), sorted by id: (ids, tiles)."""
    tile = floor_div(torch.arange(ids.shape[-1], device=ids.device), block).expand_as(ids)
    pairs = sorted_unique((ids * num_tiles + tile).flatten())
    return floor_div(pairs, num_tiles), pairs % num_tiles


def _join_on_ids(geom: Geometry, q_ids: torch.Tensor, k_ids: torch.Tensor) -> torch.Tensor | None:
    """Sorted keys of the tile pairs sharing an id (exact), or None if the join is too large."""
    q_id, q_tile = _tile_id_pairs(q_ids, geom.block_q, geom.num_q_tiles)
    k_id, k_tile = _tile_id_pairs(k_ids, geom.block_k, geom.num_k_tiles)
    lo = torch.searchsorted(k_id, q_id)
    hi = torch.searchsorted(k_id, q_id, right=True)
    if int((hi - lo).sum()) > SEGMENT_JOIN_LIMIT:
        return None
    counts, at = expand_ranges(lo, hi - 1)
    return sorted_unique(q_tile.repeat_interleave(counts) * geom.num_k_tiles + k_tile[at])


@classifier_for(Segments)
def _segments(pred, geom: Geometry, qt, kt):
    tab = _segment_table(geom)
    q_min, q_max = tab["q_min"][:, qt], tab["q_max"][:, qt]          # [B, pairs]
    k_min, k_max = tab["k_min"][:, kt], tab["k_max"][:, kt]
    full = ((q_min == q_max) & (k_min == k_max) & (q_min == k_min)).all(0)
    if tab["mode"] == "join":
        return Verdict(lookup(tab["join"], qt * geom.num_k_tiles + kt)[0], full)
    # An id present in both sequences inside the overlap of the two [min, max] (ids offset by row).
    lo = torch.maximum(q_min, k_min) + tab["offset"]
    hi = torch.minimum(q_max, k_max) + tab["offset"]
    common = tab["common"]
    if len(common) == 0:
        nonempty = torch.zeros_like(full)
    else:
        at = torch.clamp(torch.searchsorted(common, lo.contiguous()), max=len(common) - 1)
        nonempty = ((lo <= hi) & (common[at] >= lo) & (common[at] <= hi)).any(0)
    exact = None if tab["mode"] == "sorted" else torch.zeros_like(full)
    return Verdict(nonempty | full, full, exact)


@candidates_for(Segments)
def _segments_candidates(pred, geom: Geometry, start, stop):
    tab = _segment_table(geom)
    if tab["mode"] == "join":
        return key_slice(tab["join"], geom, start, stop)
    if tab["mode"] != "sorted":
        return None
    rows = rows_of(geom, start, stop)
    # Sorted ids: key tile mins and maxes rise with the tile, so the key tiles whose [min, max]
    # meets the query tile's form one range per batch row.
    q_min = tab["q_min"][:, rows].contiguous()
    q_max = tab["q_max"][:, rows].contiguous()
    first = torch.searchsorted(tab["k_max"].contiguous(), q_min)
    last = torch.searchsorted(tab["k_min"].contiguous(), q_max, right=True) - 1
    if first.shape[0] == 1:
        return RowRanges(first[0], last[0])
    return sorted_unique(range_keys(geom, rows.repeat(first.shape[0]), first.flatten(), last.flatten()))
