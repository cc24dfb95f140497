"""What every tile classifier shares: the tile geometry, the verdict type, the registries, and the
helpers that turn per-row key-tile ranges into sorted tile-pair keys.

Words used throughout the block-map analysis:
- query tile ``t`` holds the rows ``[t*BQ, min((t+1)*BQ, nq))``, i.e. positions
  ``i in [q_lo[t], q_hi[t]]`` with ``i = row + q_offset``; key tile ``u`` holds the keys
  ``j in [k_lo[u], k_hi[u]]`` with ``j = index + k_offset`` (k_offset > 0: a chunk of a longer
  sequence, context parallelism). Last tiles are shorter; every tile holds at least one row or key.
- a tile pair ``(t, u)`` is FULL when every (i, j) in it is allowed, EMPTY when none is,
  PARTIAL otherwise. Only existing pairs count: the kernel masks the ragged edge on its own.
- a *key* names a tile pair as one int64, ``t * num_k_tiles + u``; sorted keys are sorted by
  query tile, then key tile, which is the order of the CSR lists.

The registries map a predicate class to two vectorised functions (the spec stage never imports
this package; analysis registers here):
- ``candidates(pred, geom, start, stop)``: a superset of the non-empty tile pairs among query tiles
  ``start .. stop-1``: sorted unique keys, `RowRanges` (one key-tile range per row: what interval
  leaves give, kept unexpanded so that ``all`` filters by it in O(keys)), or None ("every key tile");
- ``classify(pred, geom, qt, kt)``: a `Verdict` for arrays of tile pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

from ..spec.predicates import EvalContext, Predicate

# Stands for an unbounded side of a band or an interval: far beyond any position, far from overflow.
BIG = 2 ** 62

CANDIDATES: dict[type, Callable] = {}
CLASSIFIERS: dict[type, Callable] = {}


def candidates_for(*kinds: type):
    """Register a candidates function for predicate classes `kinds`."""
    def register(fn):
        for kind in kinds:
            CANDIDATES[kind] = fn
        return fn
    return register


def classifier_for(*kinds: type):
    """Register a classify function for predicate classes `kinds`."""
    def register(fn):
        for kind in kinds:
            CLASSIFIERS[kind] = fn
        return fn
    return register


class Verdict(NamedTuple):
    """The class of each tile pair in an array of them.

    `nonempty` False is a proof of EMPTY, `full` True a proof of FULL; never wrong either way.
    A pair with nonempty and not full is PARTIAL as far as the classifier knows: `exact` says
    whether that is proven (True) or a conservative guess (False). ``exact=None`` means all proven.
    """

    nonempty: torch.Tensor
    full: torch.Tensor
    exact: torch.Tensor | None = None

    def exact_mask(self) -> torch.Tensor:
        if self.exact is None:
            return torch.ones_like(self.nonempty)
        return self.exact | self.full | ~self.nonempty


@dataclass(frozen=True, eq=False)
class Geometry:
    """The tiling of one (nq, nk, q_offset, k_offset) problem, with what the predicates need to be
    evaluated.

    `q_lo`/`q_hi` (num_q_tiles,) and `k_lo`/`k_hi` (num_k_tiles,) are the first and last position of
    each tile (int64, on `device`). `cache` holds per-map precomputations (random and segment tables).
    """

    nq: int
    nk: int
    q_offset: int
    block_q: int
    block_k: int
    ctx: EvalContext = field(repr=False)
    device: torch.device = torch.device("cpu")
    k_offset: int = 0
    num_q_tiles: int = field(init=False)
    num_k_tiles: int = field(init=False)
    q_lo: torch.Tensor = field(init=False, repr=False)
    q_hi: torch.Tensor = field(init=False, repr=False)
    k_lo: torch.Tensor = field(init=False, repr=False)
    k_hi: torch.Tensor = field(init=False, repr=False)
    cache: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self):
        set_ = object.__setattr__   # frozen: derived fields are set once, here
        set_(self, "num_q_tiles", -(-self.nq // self.block_q))
        set_(self, "num_k_tiles", -(-self.nk // self.block_k))
        rows = torch.arange(self.num_q_tiles, device=self.device, dtype=torch.int64) * self.block_q
        keys = torch.arange(self.num_k_tiles, device=self.device, dtype=torch.int64) * self.block_k
        set_(self, "q_lo", rows + self.q_offset)
        set_(self, "q_hi", torch.clamp(rows + self.block_q, max=self.nq) - 1 + self.q_offset)
        set_(self, "k_lo", keys + self.k_offset)
        set_(self, "k_hi", torch.clamp(keys + self.block_k, max=self.nk) - 1 + self.k_offset)

    @property
    def k_last(self) -> int:
        """The position of the last key."""
        return self.k_offset + self.nk - 1

    @property
    def num_tiles(self) -> int:
        return self.num_q_tiles * self.num_k_tiles

    def d_range(self, qt: torch.Tensor, kt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dmin, dmax) of d = i - j over each tile pair. The pairs of a rectangle take every d in
        between, so a predicate of d alone is decided on this interval."""
        return self.q_lo[qt] - self.k_hi[kt], self.q_hi[qt] - self.k_lo[kt]

    def split(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tile-pair keys → (query tiles, key tiles)."""
        return torch.div(keys, self.num_k_tiles, rounding_mode="floor"), keys % self.num_k_tiles

    def all_keys(self, start: int, stop: int) -> torch.Tensor:
        return torch.arange(start * self.num_k_tiles, stop * self.num_k_tiles, device=self.device,
                            dtype=torch.int64)


def floor_div(x: torch.Tensor, d: int) -> torch.Tensor:
    return torch.div(x, d, rounding_mode="floor")


def expand_ranges(first: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer ranges [first, last] (empty when first > last) → (counts, their values concatenated).

    O(number of values): one repeat_interleave, no Python loop.
    """
    counts = torch.clamp(last - first + 1, min=0)
    total = int(counts.sum())
    starts = torch.cumsum(counts, 0) - counts
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts,
                                    output_size=total)
    values = torch.arange(total, device=counts.device) - starts[owner] + first[owner]
    return counts, values


def key_tile_span(geom: Geometry, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key positions [lo, hi] (any integers) → the key tiles [first, last] that hold them
    (first > last when no existing key lies in [lo, hi])."""
    lo_c = torch.clamp(lo - geom.k_offset, min=0)            # positions → key indices
    hi_c = torch.clamp(hi - geom.k_offset, max=geom.nk - 1)
    first = floor_div(lo_c, geom.block_k)
    last = floor_div(hi_c, geom.block_k)
    return first, torch.where(lo_c <= hi_c, last, first - 1)


def range_keys(geom: Geometry, rows: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Per query tile `rows[n]` the key tiles [first[n], last[n]] → tile-pair keys, in row order.

    Sorted and unique when `rows` is ascending and unique (one range per row)."""
    counts, cols = expand_ranges(first, last)
    owner = torch.repeat_interleave(rows, counts, output_size=len(cols))
    return owner * geom.num_k_tiles + cols


class RowRanges(NamedTuple):
    """Candidate key tiles ``first[r] .. last[r]`` of query tile ``start + r`` (int64)."""

    first: torch.Tensor
    last: torch.Tensor


def as_keys(geom: Geometry, start: int, stop: int, cand) -> torch.Tensor:
    """A candidate set of query tiles start .. stop-1 as sorted keys."""
    if cand is None:
        return geom.all_keys(start, stop)
    if isinstance(cand, RowRanges):
        return range_keys(geom, rows_of(geom, start, stop), cand.first, cand.last)
    return cand


def in_ranges(geom: Geometry, start: int, keys: torch.Tensor, ranges: RowRanges) -> torch.Tensor:
    """Which keys (of query tiles from `start`) lie in their row's range."""
    row, col = geom.split(keys)
    row = row - start
    return (col >= ranges.first[row]) & (col <= ranges.last[row])


def sorted_unique(keys: torch.Tensor) -> torch.Tensor:
    return torch.unique(keys, sorted=True)


def rows_of(geom: Geometry, start: int, stop: int) -> torch.Tensor:
    return torch.arange(start, stop, device=geom.device, dtype=torch.int64)


def key_slice(sorted_keys: torch.Tensor, geom: Geometry, start: int, stop: int) -> torch.Tensor:
    """The part of a sorted key table that belongs to query tiles start .. stop-1."""
    bounds = torch.tensor([start * geom.num_k_tiles, stop * geom.num_k_tiles], device=sorted_keys.device,
                          dtype=torch.int64)
    lo, hi = torch.searchsorted(sorted_keys, bounds).tolist()
    return sorted_keys[lo:hi]


def lookup(sorted_keys: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(found, index) of each key in a sorted unique table (index clamped where not found)."""
    if len(sorted_keys) == 0:
        return torch.zeros_like(keys, dtype=torch.bool), torch.zeros_like(keys)
    idx = torch.clamp(torch.searchsorted(sorted_keys, keys), max=len(sorted_keys) - 1)
    return sorted_keys[idx] == keys, idx


def verdict_of(pred: Predicate, geom: Geometry, qt: torch.Tensor, kt: torch.Tensor) -> Verdict:
    """Dispatch to the registered classifier of `pred`'s class."""
    try:
        fn = CLASSIFIERS[type(pred)]
    except KeyError:
        raise NotImplementedError(f"no tile classifier for {type(pred).__name__}") from None
    return fn(pred, geom, qt, kt)


def candidates_of(pred: Predicate, geom: Geometry, start: int, stop: int):
    """Dispatch to the registered candidates function (None, "every key tile", if there is none)."""
    fn = CANDIDATES.get(type(pred))
    return None if fn is None else fn(pred, geom, start, stop)
