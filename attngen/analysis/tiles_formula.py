"""Tile classes of formula masks, exact for the family of `formula_program`, never pair by pair.

A mask whose sympy form compiles to a `Program` (input-free formulas of affine terms in i and j,
``//`` and ``%`` by constants, min/max/abs/where, comparisons and and/or/not, together with any
built-in leaf but random and segments) is classified in three steps per tile pair, vectorised over
the tiles:

1. interval arithmetic over the tile's box (`Program.interval`) proves FULL or EMPTY where it can
   (O(terms + atoms) per tile); the candidates are found the same way, by cutting each query
   tile's key-tile range while the formula may hold on it (O(candidates x log(key tiles)));
2. the tiles still open look for witnesses: an allowed and a refused pair prove PARTIAL. First on
   grids of pairs spread over the tile (`WITNESS_GRIDS`: 3 x 3, then 8 x 8), then on `WITNESSES`
   whole rows counted exactly as in step 3 (a row with an allowed key and one with a refused key);
3. the rest are counted exactly, row by row (`Program.row_counts`: per row the keys are cut into
   cells on which every floor term is affine, and each cell is decided from its atoms' intervals):
   FULL iff the count is the tile's area, EMPTY iff it is 0. O(BQ x cells x atoms^2) per tile, with
   cells per row bounded by the floor terms' steps or periods inside the tile, never BQ x BK
   evaluations.

So the map equals brute force for the family (``exact`` everywhere: no refinement, nothing left
unresolved). Work: O(candidates x (FANOUT log(key tiles) + 73) x atoms) for steps 1-2, plus
O(BQ x cells x atoms^2) per tile that reaches step 3; no step is O(Nq x Nk). Measured on one CPU
core: NATTEN's formula at 1M tokens in tiles of 64 x 64, about 0.5 s; a sliding window written as
a formula, about 0.3-0.6 s. A mask outside the family (products of positions, floats, heads,
inputs, random blocks, segments, ...) gets no rule here: every tile is an unproven PARTIAL (sound,
never FULL or EMPTY by mistake), which `classify.refine` settles by evaluating pairs, at most
`classify.REFINE_BUDGET` (8M) per map; tiles past it stay PARTIAL and count as unresolved.

`count_pairs` uses the same steps (1 and 3) for `attngen cost`: the full tiles' areas plus the
exact counts of the others.
"""
from __future__ import annotations

import torch

from ..spec.formula import Formula
from ..spec.predicates import EvalContext, Predicate
from .formula_program import Program, compile_mask
from .tiles_base import (Geometry, Verdict, candidates_for, classifier_for, expand_ranges, key_slice,
                         rows_of)

WITNESS_GRIDS = (3, 8)     # sides of the witness grids tried on open tiles, cheap first
WITNESSES = 8              # whole rows per open tile counted exactly before all of them are
CELL_VALUES = 1 << 23      # rows x (cuts x atoms) counted at once (bounds the working memory)
FANOUT = 16               # pieces a key-tile range is cut into per bisection step
PREFETCH_PAIRS = 1 << 25   # tile pairs' worth of query tiles whose candidates are found at once
COUNT_BLOCK = 64          # tile side `count_pairs` works with


def program_of(pred: Predicate) -> Program | None:
    """The compiled program of a predicate tree, or None outside the family."""
    return compile_mask(pred)


@classifier_for(Formula)
def _formula(pred: Formula, geom: Geometry, qt, kt):
    program = program_of(pred)
    if program is None:      # sound: every tile may be partial; `refine` settles what it can
        nonempty = torch.ones_like(qt, dtype=torch.bool)
        return Verdict(nonempty, torch.zeros_like(nonempty), torch.zeros_like(nonempty))
    return exact_verdict(program, geom, qt, kt)


@candidates_for(Formula)
def _formula_candidates(pred: Formula, geom: Geometry, start, stop):
    """The block map asks per chunk of query tiles; the keys are found for `PREFETCH_PAIRS` tile
    pairs' worth of query tiles at once (the bisection's cost is mostly per call) and cached."""
    program = program_of(pred)
    if program is None:
        return None
    cached = geom.cache.get(("formula", program))
    if cached is None or not cached[0] <= start < stop <= cached[1]:
        span = max(stop - start, PREFETCH_PAIRS // max(1, geom.num_k_tiles))
        end = min(geom.num_q_tiles, start + span)
        cached = (start, end, candidate_keys(program, geom, start, end))
        geom.cache[("formula", program)] = cached
    return key_slice(cached[2], geom, start, stop)


def exact_verdict(program: Program, geom: Geometry, qt: torch.Tensor, kt: torch.Tensor) -> Verdict:
    """Exact classes of tile pairs (qt[n], kt[n]) under `program` (steps 1-3 above)."""
    i0, i1, j0, j1 = geom.q_lo[qt], geom.q_hi[qt], geom.k_lo[kt], geom.k_hi[kt]
    may_true, may_false = program.interval(i0, i1, j0, j1)
    nonempty, full = may_true.clone(), ~may_false
    todo = torch.nonzero(may_true & may_false).flatten()
    for side in WITNESS_GRIDS:
        if len(todo):
            some, every = _witnesses(program, side, i0[todo], i1[todo], j0[todo], j1[todo])
            todo = todo[~(some & ~every)]
    if len(todo):
        some, every = _witness_rows(program, i0[todo], i1[todo], j0[todo], j1[todo])
        todo = todo[~(some & ~every)]
    if len(todo):
        counts = box_counts(program, i0[todo], i1[todo], j0[todo], j1[todo])
        area = (i1[todo] - i0[todo] + 1) * (j1[todo] - j0[todo] + 1)
        nonempty[todo] = counts > 0
        full[todo] = counts == area
    return Verdict(nonempty, full)


def _spread(lo, hi, side: int) -> torch.Tensor:
    """`side` positions spread over each [lo, hi], both ends included: [n, side]."""
    steps = torch.linspace(0, 1, side, device=lo.device, dtype=torch.float64)
    return lo[:, None] + ((hi - lo)[:, None] * steps).round().to(torch.int64)


def _witnesses(program: Program, side: int, i0, i1, j0, j1) -> tuple[torch.Tensor, torch.Tensor]:
    """(some allowed, all allowed) on a side x side grid of pairs spread over each box."""
    allowed = program.at(_spread(i0, i1, side)[:, :, None], _spread(j0, j1, side)[:, None, :]).flatten(1)
    return allowed.any(1), allowed.all(1)


def _witness_rows(program: Program, i0, i1, j0, j1) -> tuple[torch.Tensor, torch.Tensor]:
    """(some allowed, all allowed) over WITNESSES whole rows of each box, counted exactly."""
    rows = _spread(i0, i1, WITNESSES).flatten()
    lo, hi = j0.repeat_interleave(WITNESSES), j1.repeat_interleave(WITNESSES)
    counts = _row_counts(program, rows, lo, hi).view(len(i0), WITNESSES)
    return (counts > 0).any(1), (counts == (j1 - j0 + 1)[:, None]).all(1)


def _row_counts(program: Program, ii, j0, j1) -> torch.Tensor:
    """`Program.row_counts` in chunks of rows: a cell holds O(atoms^2) values while counted."""
    atoms = max(1, len(program.atoms))
    step = max(256, CELL_VALUES // ((2 * atoms + 2) * atoms))
    if len(ii) <= step:
        return program.row_counts(ii, j0, j1)
    return torch.cat([program.row_counts(ii[at:at + step], j0[at:at + step], j1[at:at + step])
                      for at in range(0, len(ii), step)])


def box_counts(program: Program, i0, i1, j0, j1) -> torch.Tensor:
    """Exact allowed pairs per box [i0, i1] x [j0, j1] (int64), row by row."""
    rows, values = expand_ranges(i0, i1)
    owner = torch.repeat_interleave(torch.arange(len(i0), device=i0.device), rows, output_size=len(values))
    out = torch.zeros(len(i0), dtype=torch.int64, device=i0.device)
    return out.index_add_(0, owner, _row_counts(program, values, j0[owner], j1[owner]))


def candidate_keys(program: Program, geom: Geometry, start: int, stop: int) -> torch.Tensor:
    """Sorted keys of the tile pairs of query tiles start .. stop-1 that may hold an allowed pair:
    each row's key-tile range is cut in `FANOUT` while interval arithmetic says the formula may
    hold on it, and may not hold everywhere (a range proven allowed everywhere is kept whole):
    O(candidates x FANOUT x log_FANOUT(key tiles)) box evaluations at most."""
    rows = rows_of(geom, start, stop)
    first = torch.zeros_like(rows)
    width = torch.full_like(rows, geom.num_k_tiles)
    found = []
    while len(rows):
        may_true, may_false = program.interval(geom.q_lo[rows], geom.q_hi[rows], geom.k_lo[first],
                                               geom.k_hi[first + width - 1])
        rows, first, width, may_false = rows[may_true], first[may_true], width[may_true], may_false[may_true]
        done = (width == 1) | ~may_false          # one tile, or a range allowed everywhere: all its tiles
        counts, cols = expand_ranges(first[done], first[done] + width[done] - 1)
        found.append(rows[done].repeat_interleave(counts) * geom.num_k_tiles + cols)
        rows, first, width = rows[~done], first[~done], width[~done]
        # cut each range into up to FANOUT pieces of equal width (the last one shorter)
        piece = -torch.div(-width, FANOUT, rounding_mode="floor")
        parts = -torch.div(-width, piece, rounding_mode="floor")
        rows, offset = rows.repeat_interleave(parts), _within(parts) * piece.repeat_interleave(parts)
        first, width = first.repeat_interleave(parts) + offset, width.repeat_interleave(parts)
        piece = piece.repeat_interleave(parts)
        width = torch.minimum(piece, width - offset)
    if not found:
        return torch.zeros(0, dtype=torch.int64, device=geom.device)
    return torch.sort(torch.cat(found)).values


def _within(counts: torch.Tensor) -> torch.Tensor:
    """0, 1, .., counts[n] - 1 for each n, concatenated."""
    total = int(counts.sum())
    return torch.arange(total, device=counts.device) - (torch.cumsum(counts, 0) - counts).repeat_interleave(
        counts, output_size=total)


def count_pairs(program: Program, nq: int, nk: int, q_offset: int, k_offset: int = 0,
                block: int = COUNT_BLOCK) -> int:
    """Exact number of allowed pairs of rows q_offset .. q_offset + nq - 1 against keys
    k_offset .. k_offset + nk - 1: full tiles by their area, open ones counted row by row."""
    if nq == 0 or nk == 0:
        return 0
    ctx = EvalContext(nq=nq, nk=nk, q_offset=q_offset, k_offset=k_offset)
    geom = Geometry(nq, nk, q_offset, block, block, ctx, k_offset=k_offset)
    step = max(1, (1 << 20) // geom.num_k_tiles)
    total = 0
    for start in range(0, geom.num_q_tiles, step):
        keys = candidate_keys(program, geom, start, min(start + step, geom.num_q_tiles))
        qt, kt = geom.split(keys)
        i0, i1, j0, j1 = geom.q_lo[qt], geom.q_hi[qt], geom.k_lo[kt], geom.k_hi[kt]
        may_true, may_false = program.interval(i0, i1, j0, j1)
        full = may_true & ~may_false
        total += int(((i1 - i0 + 1) * (j1 - j0 + 1))[full].sum())
        todo = may_true & may_false
        total += int(box_counts(program, i0[todo], i1[todo], j0[todo], j1[todo]).sum())
    return total
