"""Block maps: which (query tile, key tile) pairs are FULL, PARTIAL or EMPTY, for tile skipping.

Query tile t covers rows [t*BQ, min((t+1)*BQ, nq)), i.e. positions i = row + q_offset; key tile u
covers keys [u*BK, min((u+1)*BK, nk)). A pair is FULL if every existing (i, j) in it is allowed,
EMPTY if none is, PARTIAL otherwise. Kernels skip EMPTY tiles, run FULL ones without a mask and
PARTIAL ones with it; so a map may call a tile PARTIAL that is FULL or EMPTY (slower), but never
FULL or EMPTY by mistake. The mask is never evaluated on all nq x nk pairs.

Two paths:
- interval specs (band, causal, blocks, and all of them: `intervals.key_interval` is not None):
  the ranges come in closed form from L(i0), R(i1), L(i1), R(i0) (`tiles_interval`), and the CSR
  lists are those ranges expanded: O(query tiles + non-empty tiles). Exact.
- any other spec: per chunk of query tiles, the candidate tile pairs (a superset of the non-empty
  ones, from each leaf) are classified (`classify`), then tiles whose PARTIAL verdict is unproven
  are settled by evaluating the predicate on them, within a budget. O(candidates); candidates are
  every tile pair only where a leaf cannot name fewer (stride narrower than a key tile, not, ...).

Exact (map == brute force; ``unresolved == 0``) by construction, with no refinement:
- every leaf alone: band, causal, blocks, stride, columns, global (first and tokens), random, and
  segments with sorted ids (1-D or batched); unsorted segment ids too while their id join is small
  (`tiles_tables.SEGMENT_JOIN_LIMIT`);
- interval specs (band, causal, blocks and all of them: the closed-form path);
- any/all/not of band, causal and stride (d-only: settled on each tile's d-range, e.g. Sparse
  Transformer strided); any/all/not of columns (j-only);
- any/all/not of these on every tile where each `any` has at most one non-empty part (or a full
  one) and each `all` at most one non-full part (or an empty one): then the combination is that
  part.
Everything else (Longformer, BigBird, Sparse Transformer fixed with misaligned tiles, packed
documents with causal, ...) is exact once the remaining tiles are settled by evaluating the
predicate on them (`classify.refine`: witnesses first, then every pair), within `refine_budget`
pair evaluations (default `classify.REFINE_BUDGET`, 8M: at least ~500 tiles of 128x128, far more
when witnesses settle them). Past the budget those tiles stay PARTIAL and `unresolved` counts them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ShapeError
from ..spec.spec import Spec
from .classify import REFINE_BUDGET, candidates, classify, refine
from .tiles_base import Geometry
from .tiles_data import data_bounded_keys, reads_data
from .tiles_interval import TileRanges, is_interval, ranges_to_csr, tile_ranges

# Tile pairs classified at once on the general path (bounds the working memory).
_CHUNK_PAIRS = 1 << 21


@dataclass(frozen=True, eq=False)
class BlockMap:
    """CSR lists, per row, of the PARTIAL and the FULL tiles (int32, ascending within each row).

    Rows are query tiles and entries key tiles; in a `transposed()` map (``by_key``) rows are key
    tiles and entries query tiles. Tiles in neither list are EMPTY. `unresolved` counts PARTIAL
    tiles that were not proven partial (0 means the map is exact).
    """

    geometry: Geometry
    partial_ptr: torch.Tensor
    partial_idx: torch.Tensor
    full_ptr: torch.Tensor
    full_idx: torch.Tensor
    by_key: bool = False
    interval: bool = False
    unresolved: int = 0
    _ranges: TileRanges | None = field(default=None, repr=False)

    @property
    def num_rows(self) -> int:
        g = self.geometry
        return g.num_k_tiles if self.by_key else g.num_q_tiles

    @property
    def num_cols(self) -> int:
        g = self.geometry
        return g.num_q_tiles if self.by_key else g.num_k_tiles

    @property
    def lists(self) -> tuple:
        """(partial_ptr, partial_idx, full_ptr, full_idx): what the kernels that walk lists read."""
        return (self.partial_ptr, self.partial_idx, self.full_ptr, self.full_idx)

    @property
    def num_full(self) -> int:
        return len(self.full_idx)

    @property
    def num_partial(self) -> int:
        return len(self.partial_idx)

    @property
    def num_empty(self) -> int:
        return self.num_rows * self.num_cols - self.num_full - self.num_partial

    def __repr__(self) -> str:
        g = self.geometry
        return (f"BlockMap(nq={g.nq}, nk={g.nk}, q_offset={g.q_offset}, k_offset={g.k_offset}, "
                f"block_q={g.block_q}, "
                f"block_k={g.block_k}, by_key={self.by_key}, full={self.num_full}, "
                f"partial={self.num_partial}, empty={self.num_empty}, unresolved={self.unresolved})")

    def tiles_of(self, tile: int) -> tuple[list[int], list[int]]:
        """(partial tiles, full tiles) of one row: a query tile (a key tile if `by_key`)."""
        if not 0 <= tile < self.num_rows:
            raise IndexError(f"tile {tile} is out of range: the map has {self.num_rows} rows")
        p0, p1 = self.partial_ptr[tile:tile + 2].tolist()
        f0, f1 = self.full_ptr[tile:tile + 2].tolist()
        return self.partial_idx[p0:p1].tolist(), self.full_idx[f0:f1].tolist()

    def transposed(self) -> "BlockMap":
        """The same classes listed per key tile (query tiles ascending): for the backward pass."""
        partial = _transpose(self.partial_ptr, self.partial_idx, self.num_cols)
        full = _transpose(self.full_ptr, self.full_idx, self.num_cols)
        return BlockMap(self.geometry, *partial, *full, by_key=not self.by_key, interval=self.interval,
                        unresolved=self.unresolved)

    def ranges(self) -> TileRanges | None:
        """For interval specs, per row the non-empty and the full tiles as ranges (see
        `tiles_interval` for the convention); None for other specs, whose rows may have gaps."""
        if not self.interval:
            return None
        if self._ranges is not None:
            return self._ranges
        return _ranges_of_csr(self)

    def dense_classes(self) -> torch.Tensor:
        """int8 (rows, cols): 0 empty, 1 partial, 2 full. For tests and pictures at small sizes."""
        out = torch.zeros(self.num_rows, self.num_cols, dtype=torch.int8, device=self.partial_idx.device)
        for ptr, idx, value in ((self.partial_ptr, self.partial_idx, 1), (self.full_ptr, self.full_idx, 2)):
            out[_row_of_each(ptr), idx.to(torch.int64)] = value
        return out


def block_map(spec: Spec, nq: int, nk: int, block_q: int, block_k: int, *, q_offset: int | None = None,
              seg_q: torch.Tensor | None = None, seg_k: torch.Tensor | None = None,
              refine_budget: int = REFINE_BUDGET, k_offset: int = 0,
              total_nk: int | None = None) -> BlockMap:
    """The block map of `spec` at these sizes and tiles (see the module docstring).

    seg_q / seg_k: the segment ids of a segments mask, (n,) or (B, n); the map is built on their
    device and is valid for every batch row. refine_budget: pair evaluations allowed for settling
    tiles the structural rules leave unproven (0: structural rules only). k_offset / total_nk: the
    keys are positions k_offset .. k_offset + nk - 1 of a sequence of total_nk keys (a chunk pair
    of context parallelism; `Spec.eval_context`); key tiles count from the chunk's first key.
    """
    for name, value in (("nq", nq), ("nk", nk), ("block_q", block_q), ("block_k", block_k)):
        low = 1 if name.startswith("block") else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ShapeError(f"{name}={value!r} must be an integer >= {low}")
    if reads_data(spec.effective_mask):       # the batch, heads or inputs: from the input-free bounds
        geom, partial, full, unresolved = data_bounded_keys(spec, lambda bound_spec: block_map(
            bound_spec, nq, nk, block_q, block_k, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k,
            refine_budget=refine_budget, k_offset=k_offset, total_nk=total_nk))
        return BlockMap(geom, *_keys_to_csr(geom, [partial]), *_keys_to_csr(geom, [full]), unresolved=unresolved)
    device = seg_q.device if isinstance(seg_q, torch.Tensor) else torch.device("cpu")
    ctx = spec.eval_context(nq, nk, q_offset, seg_q, seg_k, device=device, k_offset=k_offset,
                            total_nk=total_nk)
    geom = Geometry(nq, nk, ctx.q_offset, block_q, block_k, ctx, device, k_offset=ctx.k_offset)
    pred = spec.effective_mask
    if is_interval(pred):
        ranges = tile_ranges(pred, geom)
        return BlockMap(geom, *ranges_to_csr(ranges), interval=True, _ranges=ranges)
    return _general_map(pred, geom, refine_budget)


def _general_map(pred, geom: Geometry, budget: int) -> BlockMap:
    full_keys, partial_keys, unresolved = [], [], 0
    step = max(1, _CHUNK_PAIRS // max(1, geom.num_k_tiles))
    for start in range(0, geom.num_q_tiles if geom.num_k_tiles else 0, step):
        stop = min(start + step, geom.num_q_tiles)
        keys = candidates(pred, geom, start, stop)
        qt, kt = geom.split(keys)
        verdict = classify(pred, geom, qt, kt)
        verdict, spent = refine(pred, geom, qt, kt, verdict, budget)
        budget -= spent
        unresolved += int((~verdict.exact_mask()).sum())
        full_keys.append(keys[verdict.full])
        partial_keys.append(keys[verdict.nonempty & ~verdict.full])
    return BlockMap(geom, *_keys_to_csr(geom, partial_keys), *_keys_to_csr(geom, full_keys),
                    unresolved=unresolved)


def _keys_to_csr(geom: Geometry, chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int64, device=geom.device)
    rows, cols = geom.split(keys)
    return _ptr(torch.bincount(rows, minlength=geom.num_q_tiles)), cols.to(torch.int32)


def _ptr(counts: torch.Tensor) -> torch.Tensor:
    ptr = torch.zeros(len(counts) + 1, dtype=torch.int64, device=counts.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr.to(torch.int32)


def _row_of_each(ptr: torch.Tensor) -> torch.Tensor:
    counts = (ptr[1:] - ptr[:-1]).to(torch.int64)
    return torch.repeat_interleave(torch.arange(len(counts), device=ptr.device), counts)


def _transpose(ptr: torch.Tensor, idx: torch.Tensor, num_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR by row → CSR by column, O(nnz log nnz): a stable sort keeps each column's rows ascending."""
    cols = idx.to(torch.int64)
    order = torch.sort(cols, stable=True).indices
    return _ptr(torch.bincount(cols, minlength=num_cols)), _row_of_each(ptr)[order].to(torch.int32)


def _ranges_of_csr(bm: BlockMap) -> TileRanges:
    """Ranges read off the CSR lists (valid where each row's tiles are contiguous: interval specs)."""
    def ends(ptr, idx):
        count = (ptr[1:] - ptr[:-1]).to(torch.int64)
        idx = idx.to(torch.int64)
        if len(idx) == 0:
            return count, torch.zeros_like(count), torch.zeros_like(count)
        lo = idx[torch.clamp(ptr[:-1].to(torch.int64), max=len(idx) - 1)]
        hi = idx[torch.clamp(ptr[1:].to(torch.int64) - 1, min=0)]
        return count, lo, hi

    p_count, p_lo, p_hi = ends(bm.partial_ptr, bm.partial_idx)
    f_count, f_lo, f_hi = ends(bm.full_ptr, bm.full_idx)
    big = bm.num_cols + 1
    first = torch.minimum(torch.where(p_count > 0, p_lo, big), torch.where(f_count > 0, f_lo, big))
    last = torch.maximum(torch.where(p_count > 0, p_hi, -1), torch.where(f_count > 0, f_hi, -1))
    empty = last < 0
    first, last = torch.where(empty, 0, first), torch.where(empty, -1, last)
    full_first = torch.where(f_count > 0, f_lo, last + 1)
    full_last = torch.where(f_count > 0, f_hi, last)
    return TileRanges(*(x.to(torch.int32) for x in (first, last, full_first, full_last)))
