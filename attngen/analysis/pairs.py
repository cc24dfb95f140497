"""Exact counts of the (query, key) pairs a spec's mask allows, without building the mask.

A mask with a formula in the family of `tiles_formula` (input-free, affine terms in i and j, // and %
by constants, min/max/abs, comparisons, and/or/not, with any built-in leaf but random and segments)
is counted from its tile classes instead: full tiles by their area, the others row by row in cells on
which every floor term is affine (`formula_program.Program.row_counts`), never pair by pair. A
formula outside the family is counted by evaluating it on every pair, in row chunks (exact, O(n²)).

One query row's mask, read as a function of the key j, is *piecewise periodic*: the interval leaves
(band, blocks, global tokens, random blocks, segments) change value only at a few breakpoints per
row, and between two breakpoints the modular leaves (stride, columns) repeat with period M = lcm of
their `every`. So a row's count is a sum over its pieces of "how many j in [a, b) pass", read from
a prefix-sum table over one period, indexed by (which interval leaves hold, i mod M, j mod M). That
is exact for every combination of any/all/not and costs O(rows × breakpoints), vectorised over rows.

Band masks (causal and sliding windows included) also have a closed form, derived with sympy and
printed in `n`; it gives the count when the sizes are the self-attention ones it was derived for.

`reach` (receptive fields) and `cost` (the whole picture) both build on these counts.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from math import lcm

import sympy
import torch

from ..spec.predicates import (LEAF_TYPES, All_, Any_, Band, Blocks, Causal, Columns, Everything,
                               GlobalTokens, Not_, Nothing, Predicate, Random, Segments, Stride)
from ..spec.formula import Formula
from .formula_program import compile_mask
from .tiles_formula import count_pairs
from ..spec.normalize import normalize
from ..spec.spec import Spec, resolve_k_offset, resolve_q_offset

ROW_CHUNK = 1 << 16            # rows counted at once: bounds memory at ~(ROW_CHUNK × breakpoints)
MAX_TABLE = 1 << 24            # entries of the period table before falling back to dense row chunks
DENSE_CHUNK = 1 << 24          # pairs evaluated at once by that fallback

n_symbol = sympy.Symbol("n", integer=True, positive=True)
MODULAR = (Stride, Columns)    # leaves that repeat along a row; every other leaf is intervals


# ---------------------------------------------------------------------------------------------
# Exact count of allowed pairs
# ---------------------------------------------------------------------------------------------
def counted_mask(spec: Spec, *, segments: bool) -> Predicate:
    """The mask whose pairs are counted: linear kinds attend causally or to everything; a segments
    leaf becomes Everything when no segment ids are given (one segment)."""
    if spec.kind != "softmax":
        return Band(None, 0) if spec.causal else Everything()
    mask = spec.effective_mask
    if segments:
        return mask
    return normalize(_replace_segments(mask))


def _replace_segments(p: Predicate) -> Predicate:
    if isinstance(p, Segments):
        return Everything()
    if isinstance(p, (Any_, All_)):
        return type(p)(tuple(_replace_segments(c) for c in p.parts))
    if isinstance(p, Not_):
        return Not_(_replace_segments(p.part))
    return p


def allowed_pairs(spec: Spec, nq: int, nk: int, q_offset: int | None = None, *,
                  seg_q: torch.Tensor | None = None, seg_k: torch.Tensor | None = None,
                  k_offset: int = 0, total_nk: int | None = None) -> int:
    """Exact number of (query, key) pairs the mask allows, for one head and one batch element.

    A segments mask without `seg_q`/`seg_k` counts as one segment. Segment ids are 1-D here.
    k_offset / total_nk: the keys are positions k_offset .. k_offset + nk - 1 of a sequence of
    total_nk keys (a chunk pair of context parallelism; `Spec.eval_context`).
    """
    segmented = seg_q is not None or seg_k is not None
    mask = counted_mask(spec, segments=segmented)
    k_offset, total_nk = resolve_k_offset(nk, k_offset, total_nk)
    q_offset = resolve_q_offset(nq, nk, q_offset, k_offset)
    if isinstance(mask, Everything):
        return nq * nk
    if isinstance(mask, Nothing) or nq == 0 or nk == 0:
        return 0
    formula = pairs_formula(mask)
    if formula is not None and nq == nk and q_offset == 0 and k_offset == 0 and nq >= formula.n_min:
        return formula.value(nq)
    if segmented:
        ids = (seg_q, seg_k)
    elif spec.uses_segments:           # one document: the ids are never read (Segments → Everything)
        ids = (torch.zeros(nq, dtype=torch.int64), torch.zeros(nk, dtype=torch.int64))
    else:
        ids = (None, None)
    ctx = spec.eval_context(nq, nk, q_offset, *ids, k_offset=k_offset, total_nk=total_nk)
    seg = _SegmentRuns(seg_q, seg_k, nq, nk, k_offset) if segmented else None
    with _one_thread():
        return _count_rows(mask, nq, nk, ctx, seg)


@contextmanager
def _one_thread():
    """The counting is many small elementwise ops: torch's thread pool synchronises more than it
    saves, several times over on shared cores (measured: 0.1 s alone, 1-2 s with 2 busy threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def counted_symbolically(mask: Predicate) -> bool | None:
    """For a mask with a formula: True if its pairs are counted from its tile classes (the formula
    family of `tiles_formula`, exact and never pair by pair), False if every pair is evaluated;
    None for a mask without a formula (counted by the period table below)."""
    if not any(isinstance(p, Formula) for p in mask.walk()):
        return None
    return compile_mask(mask) is not None


def _count_rows(mask, nq, nk, ctx, seg) -> int:
    symbolic = counted_symbolically(mask)
    if symbolic:
        return count_pairs(compile_mask(mask), nq, nk, ctx.q_offset, ctx.k_offset)
    if symbolic is False:        # outside the family: exact, but every pair is evaluated
        return _count_dense(mask, nq, nk, ctx)
    leaves = list(dict.fromkeys(p for p in mask.walk() if isinstance(p, LEAF_TYPES)))
    interval = [leaf for leaf in leaves if not isinstance(leaf, MODULAR)]
    modular = [leaf for leaf in leaves if isinstance(leaf, MODULAR)]
    period = lcm(*[leaf.every for leaf in modular]) if modular else 1
    if (1 << len(interval)) * period * (period + 1) > MAX_TABLE:
        return _count_dense(mask, nq, nk, ctx)
    table = _period_table(mask, interval, modular, period).flatten()   # [codes × M × (M + 1)]
    total = 0
    for start in range(0, nq, ROW_CHUNK):
        rows = torch.arange(start, min(nq, start + ROW_CHUNK), dtype=torch.int64) + ctx.q_offset
        total += _count_chunk(rows.unsqueeze(-1), interval, table, period, nk, ctx, seg)
    return total


def _count_chunk(ii, interval, table, period, nk, ctx, seg) -> int:
    """Allowed pairs of the rows at positions ii [R, 1], keys k_offset .. k_offset + nk - 1."""
    first, stop = ctx.k_offset, ctx.k_offset + nk
    cuts = [torch.full_like(ii, first), torch.full_like(ii, stop)]
    cuts += [_breakpoints(leaf, ii, ctx, seg).clamp(first, stop) for leaf in interval]
    cuts = torch.cat(cuts, dim=1).sort(dim=1).values                  # [R, K]
    lo, hi = cuts[:, :-1], cuts[:, 1:]                                 # pieces [lo, hi)
    code = torch.zeros_like(lo)
    for bit, leaf in enumerate(interval):
        code |= _leaf_value(leaf, ii, lo, ctx, seg).to(torch.int64) << bit
    base = (code * period + torch.remainder(ii, period)) * (period + 1)   # each piece's table row
    if period == 1:              # no stride/columns: a piece passes whole or not at all
        return int(((hi - lo) * table.take(base + 1)).sum())

    def upto(x):                 # keys j < x that pass, for the piece's code and the row's phase
        return (x // period) * table.take(base + period) + table.take(base + x % period)

    return int((upto(hi) - upto(lo)).sum())


def _period_table(mask, interval, modular, period) -> torch.Tensor:
    """table[code, i mod M, x] = keys j in [0, x) of one period that pass, where bit k of code
    says whether interval leaf k holds on the piece."""
    ii = torch.arange(period).unsqueeze(-1)
    jj = torch.arange(period).unsqueeze(0)
    grids = {leaf: leaf.evaluate(ii, jj, None) for leaf in modular}
    tables = []
    for code in range(1 << len(interval)):
        consts = {leaf: torch.tensor(bool(code >> bit & 1)) for bit, leaf in enumerate(interval)}
        passes = _evaluate_tree(mask, {**consts, **grids}).expand(period, period)
        tables.append(torch.nn.functional.pad(passes.to(torch.int64).cumsum(1), (1, 0)))
    return torch.stack(tables)


def _evaluate_tree(p: Predicate, values: dict) -> torch.Tensor:
    if isinstance(p, Any_):
        out = torch.tensor(False)
        for c in p.parts:
            out = out | _evaluate_tree(c, values)
        return out
    if isinstance(p, All_):
        out = torch.tensor(True)
        for c in p.parts:
            out = out & _evaluate_tree(c, values)
        return out
    if isinstance(p, Not_):
        return ~_evaluate_tree(p.part, values)
    return values[p]


def _breakpoints(leaf: Predicate, ii: torch.Tensor, ctx, seg) -> torch.Tensor:
    """Keys where `leaf` may change value along row i: [R, m] (unclipped)."""
    if isinstance(leaf, Band):
        sides = ([ii - leaf.left] if leaf.left is not None else []) + \
                ([ii + leaf.right + 1] if leaf.right is not None else [])
        return torch.cat(sides, dim=1)
    if isinstance(leaf, Blocks):
        start = torch.div(ii, leaf.size, rounding_mode="floor") * leaf.size
        return torch.cat([start, start + leaf.size], dim=1)
    if isinstance(leaf, GlobalTokens):
        if leaf.first is not None:
            return torch.full_like(ii, leaf.first)
        tokens = torch.tensor(leaf.tokens, dtype=torch.int64)
        return torch.cat([tokens, tokens + 1]).expand(ii.shape[0], -1)
    if isinstance(leaf, Random):
        first, table = ctx.random_table(leaf)
        drawn = table[torch.div(ii[:, 0], leaf.block, rounding_mode="floor") - first]   # [R, r]
        return torch.cat([drawn * leaf.block, (drawn + 1) * leaf.block], dim=1)
    if isinstance(leaf, Segments):
        return seg.breakpoints(ii - ctx.q_offset)
    raise NotImplementedError(f"no breakpoints for {leaf!r}")


def _leaf_value(leaf, ii, jj, ctx, seg) -> torch.Tensor:
    if isinstance(leaf, Segments):
        return seg.same(ii - ctx.q_offset, jj)
    return leaf.evaluate(ii, jj, ctx).expand(jj.shape)


class _SegmentRuns:
    """Segment ids as runs of equal keys, so that a row's keys in its segment are intervals (of
    key positions: index + k_offset)."""

    def __init__(self, seg_q, seg_k, nq, nk, k_offset=0):
        for name, seg, size in (("seg_q", seg_q, nq), ("seg_k", seg_k, nk)):
            if not isinstance(seg, torch.Tensor) or seg.dim() != 1 or seg.shape[0] != size:
                shape = tuple(seg.shape) if isinstance(seg, torch.Tensor) else None
                raise ValueError(f"cost counts with 1-D segment ids: {name} has shape {shape}, "
                                 f"expected ({size},)")
        self.seg_q, self.seg_k = seg_q.to("cpu", torch.int64), seg_k.to("cpu", torch.int64)
        starts = torch.cat([torch.tensor([True]), self.seg_k[1:] != self.seg_k[:-1]]).nonzero()[:, 0]
        ends = torch.cat([starts[1:], torch.tensor([nk])])
        run_value = self.seg_k[starts]
        self.values, which = torch.unique(run_value, return_inverse=True)
        order = torch.argsort(which, stable=True)
        counts = torch.bincount(which, minlength=len(self.values))
        slot = torch.arange(len(which)) - (torch.cumsum(counts, 0) - counts)[which[order]]
        self.stop = k_offset + nk               # past the last key position: an empty run
        self.runs = torch.full((len(self.values), int(counts.max()), 2), self.stop, dtype=torch.int64)
        self.runs[which[order], slot] = torch.stack([starts[order], ends[order]], dim=1) + k_offset
        self.nk, self.k_offset = nk, k_offset

    def breakpoints(self, row_index):            # [R, 1] → [R, 2 × runs]
        value = self.seg_q[row_index[:, 0]]
        where = torch.searchsorted(self.values, value).clamp(max=len(self.values) - 1)
        runs = self.runs[where]
        runs[self.values[where] != value] = self.stop
        return runs.flatten(1)

    def same(self, row_index, jj):
        index = jj - self.k_offset
        key = self.seg_k[index.clamp(0, self.nk - 1)]
        return (key == self.seg_q[row_index]) & (index >= 0) & (index < self.nk)


def _count_dense(mask, nq, nk, ctx) -> int:
    """Exact fallback for periods too long to tabulate: the mask in row chunks, never whole."""
    rows_at_once = max(1, DENSE_CHUNK // max(nk, 1))
    jj = (torch.arange(nk) + ctx.k_offset).unsqueeze(0)
    total = 0
    for start in range(0, nq, rows_at_once):
        ii = (torch.arange(start, min(nq, start + rows_at_once)) + ctx.q_offset).unsqueeze(-1)
        total += int(mask.evaluate(ii, jj, ctx).sum())
    return total


# ---------------------------------------------------------------------------------------------
# Closed form for bands
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairsFormula:
    """Allowed pairs of an n × n self-attention (q_offset 0) as a polynomial in n, for n >= n_min.

    `general` is written in the band's widths (`symbols` maps each to its value); `expr` has them
    substituted.
    """

    general: sympy.Expr
    expr: sympy.Expr
    symbols: tuple[tuple[str, int], ...]
    n_min: int

    def value(self, n: int) -> int:
        return int(self.expr.subs(n_symbol, n))

    def __str__(self) -> str:
        concrete = sympy.sstr(self.expr)
        if not self.symbols:
            return f"{concrete} (n >= {self.n_min})"
        names = ", ".join(f"{name} = {value}" for name, value in self.symbols)
        general = sympy.sstr(sympy.collect(self.general, n_symbol, sympy.factor))
        return f"{general} with {names}: {concrete} (n >= {self.n_min})"


@lru_cache(maxsize=256)
def pairs_formula(mask: Predicate) -> PairsFormula | None:
    """The closed form of a band's pair count (causal and sliding windows included), else None."""
    if isinstance(mask, Everything):
        return PairsFormula(n_symbol ** 2, n_symbol ** 2, (), 0)
    if isinstance(mask, Causal):
        mask = Band(None, 0)
    if not isinstance(mask, Band):
        return None
    sides = {"left": mask.left, "right": mask.right}
    widths = {k: v for k, v in sides.items() if v}                # 0 and unbounded stay structural
    if len(widths) == 2 and mask.left == mask.right:
        names = {"left": "w", "right": "w"}
    elif len(widths) == 1:
        names = {k: "w" for k in widths}
    else:
        names = {k: k for k in widths}
    syms = {k: sympy.Symbol(names[k], integer=True, positive=True) for k in widths}
    left = None if mask.left is None else syms.get("left", 0)
    right = None if mask.right is None else syms.get("right", 0)
    general = sympy.expand(_band_sum(left, right))
    values = {syms[k]: widths[k] for k in widths}
    shown = tuple(sorted({(names[k], widths[k]) for k in widths}))
    n_min = max([0, *widths.values()])
    return PairsFormula(general, sympy.expand(general.subs(values)), shown, n_min)


def _band_sum(left, right) -> sympy.Expr:
    """Sum over rows i = 0..n-1 of the keys in [max(i - left, 0), min(i + right, n - 1)], for
    n >= both widths (so each clip switches once). None is an unbounded side."""
    i, n = sympy.Symbol("i", integer=True), n_symbol
    if right is None:
        upper = n * (n - 1)
    else:   # min(i + right, n - 1): i + right up to row n - 1 - right, then n - 1
        upper = sympy.summation(i + right, (i, 0, n - 1 - right)) + right * (n - 1)
    if left is None:
        lower = 0
    else:   # max(i - left, 0): 0 up to row left, then i - left
        lower = sympy.summation(i - left, (i, left, n - 1))
    return upper - lower + n
