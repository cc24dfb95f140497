"""Tile classification of whole predicate trees: combinators, and the refinement of unproven tiles.

Combinators, from their parts' verdicts (each part: FULL, EMPTY, proven PARTIAL or unproven PARTIAL):
- any: non-empty = OR (exact), full = OR. When two or more parts are non-empty and none is full,
  the union may still cover the tile: the verdict PARTIAL is then unproven.
- all: full = AND (exact), non-empty = AND. When two or more parts are not full and none is empty,
  the intersection may still be empty: unproven. (With one non-full part, all is that part.)
- not: swaps them (non-empty = not full, full = not non-empty); proven iff the part's is.

Unproven tiles are then settled, so that the map is exact:
1. A subtree that depends on d = i - j alone (band, causal, stride, and any/all/not of them) is
   evaluated on the tile's d-range, every d of which occurs: ``BQ + BK - 1`` values per tile.
   One that depends on j alone (columns) is evaluated on the tile's keys. Both eagerly, per node.
   Any other subtree in the formula family (`formula_program`: every leaf but random and
   segments, and input-free formulas of affine terms, // and %, min/max/abs, comparisons) is
   settled exactly by `tiles_formula.exact_verdict`, without evaluating every pair.
2. What is left at the root is evaluated with the predicate's own `evaluate` (the ground truth):
   first on a sparse grid of witness pairs per tile (one allowed and one not prove PARTIAL), then,
   for the tiles still open, on every pair; at most `budget` pair evaluations per map. Tiles past
   the budget stay PARTIAL (never wrong, only slower). This runs on the CPU: the tiles are few, and
   the predicates' `evaluate` builds CPU tensors.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..spec.predicates import (All_, Any_, Band, Causal, Columns, EvalContext, Everything, Not_, Nothing,
                               Predicate, Random, Stride)
from . import tiles_leaves, tiles_tables  # noqa: F401  (they register the leaf classifiers)
from .tiles_formula import exact_verdict, program_of  # (registers the formula classifier)
from .tiles_base import (Geometry, RowRanges, Verdict, as_keys, candidates_for, candidates_of,
                         classifier_for, in_ranges, sorted_unique, verdict_of)

# Pair evaluations a map may spend settling unproven tiles at the root (step 2 above).
REFINE_BUDGET = 1 << 23
# Elements (pairs, or d values) evaluated at once while settling: bounds the working memory.
_CHUNK_ELEMENTS = 1 << 20


def classify(pred: Predicate, geom: Geometry, qt: torch.Tensor, kt: torch.Tensor) -> Verdict:
    """The verdict of `pred` on tile pairs (qt[n], kt[n]), unproven tiles of d- or j-only subtrees
    settled; the root's own unproven tiles are left to `refine`."""
    return verdict_of(pred, geom, qt, kt)


def candidates(pred: Predicate, geom: Geometry, start: int, stop: int) -> torch.Tensor:
    """Sorted keys (t * num_k_tiles + u) of a superset of the non-empty tile pairs among query
    tiles start .. stop-1 (every pair of them where the predicate cannot name fewer)."""
    return as_keys(geom, start, stop, candidates_of(pred, geom, start, stop))


# -- combinators ----------------------------------------------------------------------------
@classifier_for(Any_)
def _any(pred: Any_, geom, qt, kt):
    nonempty = torch.zeros_like(qt, dtype=torch.bool)
    full = torch.zeros_like(nonempty)
    open_parts = torch.zeros_like(qt, dtype=torch.int32)     # parts that may hold an allowed pair
    proven = torch.zeros_like(nonempty)                      # ... and the one of them is proven
    for part in pred.parts:
        v = verdict_of(part, geom, qt, kt)
        nonempty |= v.nonempty
        full |= v.full
        open_parts += v.nonempty.to(torch.int32)
        proven |= v.nonempty & v.exact_mask()
    exact = full | ~nonempty | ((open_parts == 1) & proven)
    return _settle(pred, geom, qt, kt, Verdict(nonempty, full, exact))


@classifier_for(All_)
def _all(pred: All_, geom, qt, kt):
    nonempty = torch.ones_like(qt, dtype=torch.bool)
    full = torch.ones_like(nonempty)
    open_parts = torch.zeros_like(qt, dtype=torch.int32)     # parts that may miss a pair
    proven = torch.zeros_like(nonempty)
    for part in pred.parts:
        v = verdict_of(part, geom, qt, kt)
        nonempty &= v.nonempty
        full &= v.full
        open_parts += (~v.full).to(torch.int32)
        proven |= ~v.full & v.exact_mask()
    exact = full | ~nonempty | ((open_parts == 1) & proven)
    return _settle(pred, geom, qt, kt, Verdict(nonempty, full, exact))


@classifier_for(Not_)
def _not(pred: Not_, geom, qt, kt):
    v = verdict_of(pred.part, geom, qt, kt)
    return Verdict(~v.full, ~v.nonempty, v.exact)


@candidates_for(Any_)
def _any_candidates(pred: Any_, geom, start, stop):
    parts = [candidates_of(p, geom, start, stop) for p in pred.parts]
    if any(p is None for p in parts):
        return None
    return sorted_unique(torch.cat([as_keys(geom, start, stop, p) for p in parts]))


@candidates_for(All_)
def _all_candidates(pred: All_, geom, start, stop):
    """The smallest key set, filtered by every range (O(keys)) and every other key set; ranges
    alone intersect as ranges."""
    parts = [p for p in (candidates_of(c, geom, start, stop) for c in pred.parts) if p is not None]
    ranges = [p for p in parts if isinstance(p, RowRanges)]
    key_sets = sorted((p for p in parts if not isinstance(p, RowRanges)), key=len)
    if not key_sets:
        if not ranges:
            return None
        return RowRanges(torch.stack([r.first for r in ranges]).amax(0),
                         torch.stack([r.last for r in ranges]).amin(0))
    keys = key_sets[0]
    for r in ranges:
        keys = keys[in_ranges(geom, start, keys, r)]
    for other in key_sets[1:]:
        keys = keys[torch.isin(keys, other)]
    return keys


# -- settling unproven tiles ----------------------------------------------------------------
@lru_cache(maxsize=None)
def dependence(pred: Predicate) -> str | None:
    """"d" if `pred` depends on i - j alone, "j" if on j alone, "const" if on neither, else None."""
    if isinstance(pred, (Band, Causal, Stride)):
        return "d"
    if isinstance(pred, Columns):
        return "j"
    if isinstance(pred, (Everything, Nothing)):
        return "const"
    if isinstance(pred, (Any_, All_, Not_)):
        kinds = {dependence(c) for c in pred.children()} - {"const"}
        return "const" if not kinds else (kinds.pop() if len(kinds) == 1 else None)
    return None


def _settle(pred, geom: Geometry, qt, kt, verdict: Verdict) -> Verdict:
    """Prove the unproven tiles of a d-only or j-only subtree on its 1-D footprint, and of any
    other subtree in the formula family (`tiles_formula`) by its exact per-tile steps."""
    todo = torch.nonzero(~verdict.exact_mask()).flatten()
    if len(todo) == 0:
        return verdict
    kind = dependence(pred)
    if kind not in ("d", "j"):
        program = program_of(pred)
        if program is not None:
            exact = exact_verdict(program, geom, qt[todo], kt[todo])
            _record(verdict, todo, exact.nonempty, exact.full)
        return verdict
    if kind == "d":
        low, high = geom.d_range(qt[todo], kt[todo])
        values = lambda v: (v, torch.zeros_like(v))           # noqa: E731  evaluate(i=d, j=0)
    else:
        low, high = geom.k_lo[kt[todo]], geom.k_hi[kt[todo]]
        values = lambda v: (torch.zeros_like(v), v)           # noqa: E731  evaluate(i=0, j=j)
    nonempty, full = _run_1d(pred, geom, low.cpu(), high.cpu(), values)
    verdict.nonempty[todo] = nonempty.to(verdict.nonempty.device)
    verdict.full[todo] = full.to(verdict.full.device)
    verdict.exact[todo] = True
    return verdict


def _run_1d(pred, geom: Geometry, low, high, values) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate `pred` on every integer of [low[n], high[n]]: (any allowed, all allowed)."""
    width = int((high - low).max()) + 1
    step = max(1, _CHUNK_ELEMENTS // width)
    offsets = torch.arange(width)
    ctx = EvalContext(nq=geom.nq, nk=geom.nk, q_offset=geom.q_offset, k_offset=geom.k_offset)
    nonempty, full = [], []
    for at in range(0, len(low), step):
        v = low[at:at + step, None] + offsets                   # [n, width]
        valid = v <= high[at:at + step, None]
        allowed = pred.evaluate(*values(v), ctx)
        nonempty.append((allowed & valid).any(1))
        full.append((allowed | ~valid).all(1))
    return torch.cat(nonempty), torch.cat(full)


def refine(pred: Predicate, geom: Geometry, qt, kt, verdict: Verdict, budget: int) -> tuple[Verdict, int]:
    """Settle the root's unproven tiles within `budget` pair evaluations; returns the verdict (exact
    where settled) and the evaluations spent.

    First a sparse grid of witnesses per tile (``_WITNESSES`` rows x columns): a tile where one is
    allowed and one is not is PARTIAL, proven; that settles most of them (a diagonal, a document
    boundary, a random block beside a band) for a fraction of the cost. The rest, FULL or EMPTY in
    truth or with a pattern finer than the grid, are evaluated on every pair.
    """
    todo = torch.nonzero(~verdict.exact_mask()).flatten().cpu()
    if len(todo) == 0:
        return verdict, 0
    batch = _batch(geom)
    ctx = _cpu_context(geom)
    grid_rows, grid_cols = _grid(geom.block_q), _grid(geom.block_k)
    area = len(grid_rows) * len(grid_cols) * batch
    todo = todo[: budget // area]
    spent = len(todo) * area
    allowed_any, allowed_all = _evaluate_tiles(pred, geom, ctx, qt, kt, todo, grid_rows, grid_cols)
    proven = allowed_any & ~allowed_all
    _record(verdict, todo[proven], torch.ones_like(proven[proven]), torch.zeros_like(proven[proven]))
    todo = todo[~proven]
    area = geom.block_q * geom.block_k * batch
    todo = todo[: (budget - spent) // area]
    spent += len(todo) * area
    rows, cols = torch.arange(geom.block_q), torch.arange(geom.block_k)
    _record(verdict, todo, *_evaluate_tiles(pred, geom, ctx, qt, kt, todo, rows, cols))
    return verdict, spent


_WITNESSES = 9


def _grid(block: int) -> torch.Tensor:
    """Up to `_WITNESSES` offsets spread over a tile side, both ends included."""
    return torch.unique(torch.linspace(0, block - 1, min(block, _WITNESSES)).round().to(torch.int64))


def _record(verdict: Verdict, at: torch.Tensor, nonempty: torch.Tensor, full: torch.Tensor) -> None:
    at = at.to(verdict.nonempty.device)
    verdict.nonempty[at] = nonempty.to(verdict.nonempty.device)
    verdict.full[at] = full.to(verdict.full.device)
    verdict.exact[at] = True


def _evaluate_tiles(pred, geom: Geometry, ctx, qt, kt, todo, rows, cols) -> tuple[torch.Tensor, torch.Tensor]:
    """(any allowed, all allowed) over the pairs (q_lo + rows, k_lo + cols) of each tile `todo`.

    Offsets past a ragged tile's end are clamped onto its last row or key: a repeated existing pair
    changes neither any nor all. Batched segments: any over the batch rows, all over them."""
    if len(todo) == 0:
        none = torch.zeros(0, dtype=torch.bool)
        return none, none
    q_lo, q_hi, k_lo, k_hi = (x.cpu() for x in (geom.q_lo, geom.q_hi, geom.k_lo, geom.k_hi))
    t_all, u_all = qt.cpu()[todo], kt.cpu()[todo]
    per_chunk = max(1, _CHUNK_ELEMENTS // (len(rows) * len(cols) * _batch(geom) * _random_width(pred)))
    out_any, out_all = [], []
    for at in range(0, len(todo), per_chunk):
        t, u = t_all[at:at + per_chunk, None, None], u_all[at:at + per_chunk, None, None]
        ii = torch.minimum(q_lo[t] + rows[:, None], q_hi[t])             # [n, R, 1]
        jj = torch.minimum(k_lo[u] + cols[None, :], k_hi[u])             # [n, 1, C]
        allowed = pred.evaluate(ii, jj, _tile_context(ctx, geom, ii, jj))
        allowed = allowed.reshape(-1, len(t), len(rows) * len(cols))    # [B, n, R*C]
        out_any.append(allowed.any(-1).any(0))
        out_all.append(allowed.all(-1).all(0))
    return torch.cat(out_any), torch.cat(out_all)


def _batch(geom: Geometry) -> int:
    rows = geom.ctx.seg_rows
    return 1 if rows is None or rows.dim() < 3 else rows.shape[0]


def _random_width(pred: Predicate) -> int:
    """Random's evaluate compares against every drawn block: that many times the memory."""
    return max([p.per_row for p in pred.walk() if isinstance(p, Random)], default=1)


def _cpu_context(geom: Geometry) -> EvalContext:
    """The call's context with its tables on the CPU; segment ids kept whole as (.., n)."""
    ctx = geom.ctx
    table = ctx.random_table

    def random_table(pred):
        first, drawn = table(pred)
        return first, drawn.cpu()

    seg_q = None if ctx.seg_rows is None else ctx.seg_rows.squeeze(-1).cpu()
    seg_k = None if ctx.seg_cols is None else ctx.seg_cols.squeeze(-2).cpu()
    return EvalContext(nq=geom.nq, nk=geom.nk, q_offset=geom.q_offset, k_offset=geom.k_offset,
                       seg_rows=seg_q, seg_cols=seg_k, random_table=None if table is None else random_table)


def _tile_context(ctx: EvalContext, geom: Geometry, ii, jj) -> EvalContext:
    """The context for evaluating positions ii, jj: segment ids gathered at those positions."""
    if ctx.seg_rows is None:
        return ctx
    return EvalContext(nq=geom.nq, nk=geom.nk, q_offset=geom.q_offset, k_offset=geom.k_offset,
                       seg_rows=ctx.seg_rows[..., ii - geom.q_offset],
                       seg_cols=ctx.seg_cols[..., jj - geom.k_offset],
                       random_table=ctx.random_table)
