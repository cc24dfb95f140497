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
2. What is left at the root is evaluated pair by pair on the tile with the predicate's own
   `evaluate` (the ground truth), for at most `budget` pair evaluations per map; tiles past the
   budget stay PARTIAL (never wrong, only slower). This runs on the CPU: the tiles are few, and the
   predicates' `evaluate` builds CPU tensors.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..spec.predicates import (All_, Any_, Band, Causal, Columns, EvalContext, Everything, Not_, Nothing,
                               Predicate, Random, Stride)
from . import tiles_leaves, tiles_tables  # noqa: F401  (they register the leaf classifiers)
from .tiles_base import (Geometry, Verdict, candidates_for, candidates_of, classifier_for,
                         sorted_unique, verdict_of)

# Pair evaluations a map may spend settling unproven tiles densely (step 2 above).
REFINE_BUDGET = 1 << 23
# Elements (pairs, or d values) evaluated at once while settling: bounds the working memory.
_CHUNK_ELEMENTS = 1 << 20


def classify(pred: Predicate, geom: Geometry, qt: torch.Tensor, kt: torch.Tensor) -> Verdict:
    """The verdict of `pred` on tile pairs (qt[n], kt[n]), unproven tiles of d- or j-only subtrees
    settled; the root's own unproven tiles are left to `refine`."""
    return verdict_of(pred, geom, qt, kt)


def candidates(pred: Predicate, geom: Geometry, start: int, stop: int) -> torch.Tensor | None:
    """Sorted keys (t * num_k_tiles + u) of a superset of the non-empty tile pairs among query
    tiles start .. stop-1, or None for "every key tile"."""
    return candidates_of(pred, geom, start, stop)


# -- combinators ----------------------------------------------------------------------------
@classifier_for(Any_)
def _any(pred: Any_, geom, qt, kt):
    nonempty = torch.zeros_like(qt, dtype=torch.bool)
    full = torch.zeros_like(nonempty)
    open_parts = torch.zeros_like(qt, dtype=torch.int8)     # parts that may hold an allowed pair
    proven = torch.zeros_like(nonempty)                      # ... and the one of them is proven
    for part in pred.parts:
        v = verdict_of(part, geom, qt, kt)
        nonempty |= v.nonempty
        full |= v.full
        open_parts += v.nonempty.to(torch.int8)
        proven |= v.nonempty & v.exact_mask()
    exact = full | ~nonempty | ((open_parts == 1) & proven)
    return _settle(pred, geom, qt, kt, Verdict(nonempty, full, exact))


@classifier_for(All_)
def _all(pred: All_, geom, qt, kt):
    nonempty = torch.ones_like(qt, dtype=torch.bool)
    full = torch.ones_like(nonempty)
    open_parts = torch.zeros_like(qt, dtype=torch.int8)     # parts that may miss a pair
    proven = torch.zeros_like(nonempty)
    for part in pred.parts:
        v = verdict_of(part, geom, qt, kt)
        nonempty &= v.nonempty
        full &= v.full
        open_parts += (~v.full).to(torch.int8)
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
    return sorted_unique(torch.cat(parts))


@candidates_for(All_)
def _all_candidates(pred: All_, geom, start, stop):
    parts = sorted((p for p in (candidates_of(c, geom, start, stop) for c in pred.parts) if p is not None),
                   key=len)
    if not parts:
        return None
    keys = parts[0]
    for other in parts[1:]:
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
    """Prove the unproven tiles of a d-only or j-only subtree on its 1-D footprint."""
    kind = dependence(pred)
    if kind not in ("d", "j"):
        return verdict
    todo = torch.nonzero(~verdict.exact_mask()).flatten()
    if len(todo) == 0:
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
    ctx = EvalContext(nq=geom.nq, nk=geom.nk, q_offset=geom.q_offset)
    nonempty, full = [], []
    for at in range(0, len(low), step):
        v = low[at:at + step, None] + offsets                   # [n, width]
        valid = v <= high[at:at + step, None]
        allowed = pred.evaluate(*values(v), ctx)
        nonempty.append((allowed & valid).any(1))
        full.append((allowed | ~valid).all(1))
    return torch.cat(nonempty), torch.cat(full)


def refine(pred: Predicate, geom: Geometry, qt, kt, verdict: Verdict, budget: int) -> tuple[Verdict, int]:
    """Settle the root's unproven tiles by evaluating them pair by pair, within `budget` pair
    evaluations. Returns the verdict (exact where settled) and the budget spent."""
    todo = torch.nonzero(~verdict.exact_mask()).flatten()
    area = geom.block_q * geom.block_k * _batch(geom)
    todo = todo[: budget // area].cpu()
    if len(todo) == 0:
        return verdict, 0
    ctx = _cpu_context(geom)
    per_chunk = max(1, _CHUNK_ELEMENTS // (area * _random_width(pred)))
    q_lo, q_hi, k_lo, k_hi = (x.cpu() for x in (geom.q_lo, geom.q_hi, geom.k_lo, geom.k_hi))
    rows, cols = torch.arange(geom.block_q), torch.arange(geom.block_k)
    qt_cpu, kt_cpu = qt.cpu(), kt.cpu()
    for at in range(0, len(todo), per_chunk):
        n = todo[at:at + per_chunk]
        t, u = qt_cpu[n], kt_cpu[n]
        ii = (q_lo[t, None] + rows)[:, :, None]                    # [n, BQ, 1]
        jj = (k_lo[u, None] + cols)[:, None, :]                    # [n, 1, BK]
        valid = (ii <= q_hi[t, None, None]) & (jj <= k_hi[u, None, None])
        ii, jj = torch.minimum(ii, q_hi[t, None, None]), torch.minimum(jj, k_hi[u, None, None])
        allowed = pred.evaluate(ii, jj, _tile_context(ctx, geom, ii, jj))
        allowed = allowed.reshape(-1, len(n), geom.block_q * geom.block_k)   # [B, n, BQ*BK]
        valid = valid.reshape(1, len(n), -1)
        n = n.to(verdict.nonempty.device)
        verdict.nonempty[n] = (allowed & valid).any(-1).any(0).to(verdict.nonempty.device)
        verdict.full[n] = (allowed | ~valid).all(-1).all(0).to(verdict.full.device)
        verdict.exact[n] = True
    return verdict, len(todo) * area


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
    return EvalContext(nq=geom.nq, nk=geom.nk, q_offset=geom.q_offset, seg_rows=seg_q, seg_cols=seg_k,
                       random_table=None if table is None else random_table)


def _tile_context(ctx: EvalContext, geom: Geometry, ii, jj) -> EvalContext:
    """The context for evaluating positions ii, jj: segment ids gathered at those positions."""
    if ctx.seg_rows is None:
        return ctx
    return EvalContext(nq=geom.nq, nk=geom.nk, q_offset=geom.q_offset,
                       seg_rows=ctx.seg_rows[..., ii - geom.q_offset], seg_cols=ctx.seg_cols[..., jj],
                       random_table=ctx.random_table)
