"""How far information travels through stacked self-attention layers of one spec.

The graph: positions 0..n-1 (self-attention, q_offset 0), an edge i → j for every allowed pair,
plus i → i for the residual stream. The output at position i after L layers depends on the inputs
at the positions reachable from i by paths of at most L edges:

    R_0(i) = {i},    R_L(i) = union of R_{L-1}(j) over the j that i attends to.

- `receptive_field`: the largest |i - j| with j in R_L(i), over all i;
- `layers_to_full_reach`: the smallest L (at least 1) with R_L(i) equal to everything i can ever
  reach (the transitive closure), for every i. For causal masks that is the last query's count.

Some masks have exact closed forms, tried first (`CLOSED_FORMS`): bands (a side of width w moves
w positions per layer), block-diagonal masks (nothing leaves a block), masks that are any-of
global tokens and more (every position reaches a global token, which reaches everything), the
Sparse Transformer's strided pattern band | stride (exact when causal; bidirectional where the
bounds of unbounded-line offsets and of monotone paths meet) and its fixed pattern blocks | columns
(everything settles in two layers). Each returns None where it cannot prove its answer. Other
masks are walked breadth-first on the graph, all sources at once: R_L is a bit matrix, and one layer ORs the rows
of the keys each query attends to (numpy's reduceat over the edge list). networkx builds the same
graph (`allowed_graph`) for inspection and as the independent check in the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..spec.predicates import (All_, Any_, Band, Blocks, Columns, Everything, GlobalTokens, Predicate,
                               Stride)
from ..spec.spec import Spec
from .pairs import allowed_pairs, counted_mask

if TYPE_CHECKING:
    import networkx as nx

MAX_GRAPH_N = 4096             # the graph walk's limit: n² bits and up to n² edges
EDGE_WORDS_AT_ONCE = 1 << 22   # gathered (edge, word) pairs per step, bounds the walk's memory
CAUSAL = Band(None, 0)         # the causal mask, as normalisation writes it


@dataclass(frozen=True)
class Reach:
    receptive_field: int | None
    layers_to_full_reach: int | None
    notes: tuple[str, ...] = ()


def reach(spec: Spec, *, n: int, layers: int) -> Reach:
    """Receptive field after `layers` stacked layers and the layers until full reach, over n
    positions. A segments mask counts as one segment. None where n is past `MAX_GRAPH_N` for a mask
    without a closed form."""
    if layers < 1 or n < 1:
        raise ValueError(f"reach needs n >= 1 and layers >= 1, got n={n}, layers={layers}")
    mask = counted_mask(spec, segments=False)
    for rule in CLOSED_FORMS:
        found = rule(spec, mask, n, layers)
        if found is not None:
            return found
    if n > MAX_GRAPH_N:
        return Reach(None, None, (f"receptive field: not computed above n={MAX_GRAPH_N} for a mask "
                                  "without a closed form (bands, blocks, global tokens have one)",))
    field, full = _walk(_edges(spec, n), n, layers)
    return Reach(field, full)


def _everything_reach(spec: Spec, mask: Predicate, n: int, layers: int) -> Reach | None:
    """Every pair allowed: one layer reaches everything."""
    return Reach(n - 1, 1) if isinstance(mask, Everything) else None


def _band_reach(spec: Spec, band: Predicate, n: int, layers: int) -> Reach | None:
    """A side of width w moves w positions per layer; an unbounded side reaches its end at once."""
    if not isinstance(band, Band):
        return None
    far = n - 1
    sides = [band.left, band.right]
    field = max(far if w is None else min(layers * w, far) for w in sides)
    needed = [1 if w is None else (0 if w == 0 else -(-far // w)) for w in sides]
    return Reach(field, max(1, *needed))


def _blocks_reach(spec: Spec, mask: Predicate, n: int, layers: int) -> Reach | None:
    """blocks(b), causal or not: a position reaches its own block (up to itself) in one layer and
    never leaves it, so the field is the longest block's span, min(b, n) - 1."""
    parts = mask.parts if isinstance(mask, All_) else (mask,)
    blocks = [p for p in parts if isinstance(p, Blocks)]
    if len(blocks) != 1 or any(p != CAUSAL for p in parts if p is not blocks[0]):
        return None
    return Reach(min(blocks[0].size, n) - 1, 1)


def _global_reach(spec: Spec, mask: Predicate, n: int, layers: int) -> Reach | None:
    """any(global tokens, ...) without causal: every position attends a global token g and g
    attends every position, so two layers reach everything. With position 0 or n - 1 global, the
    pair (n - 1, 0) or (0, n - 1) is allowed: the field is n - 1 from the first layer. One layer
    reaches everything only if every row allows every key but itself (counted, never built; a
    few single rows are counted first, as one incomplete row settles it at a fraction of the cost)."""
    parts = mask.parts if isinstance(mask, Any_) else (mask,)
    ends = {0, n - 1}
    if not any(isinstance(p, GlobalTokens) and (p.first is not None or ends & set(p.tokens))
               for p in parts):
        return None
    if n == 1:
        return Reach(0, 1)
    with_diagonal = Spec(query_heads=1, kv_heads=1, head_dim=1, mask=Any_((mask, Band(0, 0))))
    if any(allowed_pairs(with_diagonal, 1, n, row) < n for row in (n - 1, n // 2, 0)):
        return Reach(n - 1, 2)
    return Reach(n - 1, 1 if allowed_pairs(with_diagonal, n, n, 0) == n * n else 2)


def _union_of(mask: Predicate, first: type | tuple[type, ...], second: type):
    """(first part, second part, causal) where mask is any(first, second), causal or not."""
    causal = isinstance(mask, All_) and len(mask.parts) == 2 and CAUSAL in mask.parts
    if causal:
        mask = next(p for p in mask.parts if p != CAUSAL)
    if not isinstance(mask, Any_) or len(mask.parts) != 2:
        return None
    x = next((p for p in mask.parts if isinstance(p, first)), None)
    y = next((p for p in mask.parts if isinstance(p, second)), None)
    return None if x is None or y is None else (x, y, causal)


def _farthest(last: int, every: int, head: int, before: int, after: int) -> int:
    """The largest D in [0, last] within [0, head] or some [k*every - before, k*every + after], k >= 1."""
    k = (last + before) // every
    return max(min(head, last), min(k * every + after, last) if k >= 1 else 0)


def _covers(last: int, every: int, head: int, before: int, after: int) -> bool:
    """Whether [0, head] and the [k*every - before, k*every + after], k >= 1, cover all of [0, last]:
    the first point past the head is either a gap, or sits in an interval whose end + 1 is the
    first gap (unless the intervals chain, before + after >= every - 1)."""
    if head >= last:
        return True
    k, rho = divmod(head + 1, every)
    if rho >= every - before:
        k += 1                                     # covered by the next interval
    elif k < 1 or rho > after:
        return False
    return before + after >= every - 1 or k * every + after + 1 > last


def _fewest(last: int, every: int, sets) -> int | None:
    """The smallest L >= 1 whose `sets(L)` = (head, before, after) covers [0, last] (growing in L),
    by bisection; None where L = last + 1 does not."""
    if not _covers(last, every, *sets(last + 1)):
        return None
    lo, hi = 1, last + 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _covers(last, every, *sets(mid)) else (mid + 1, hi)
    return lo


def _strided_reach(spec: Spec, mask: Predicate, n: int, layers: int) -> Reach | None:
    """any(band(a, b), stride(s)), causal or not. A path of L hops with at least one stride jump
    moves by (the sum of its band hops) + a multiple of s, so on the unbounded line the offsets are
    [-La, Lb] and [-(L-1)a, (L-1)b] + sZ: an upper bound (the ends 0, n - 1 only remove paths).
    A monotone path (jump, then band hops the same way) never leaves [i, j], so the offsets
    [0, Lb] and [ks, ks + (L-1)b] (and mirrored with a) are reached by every pair: a lower bound.
    Causal, every hop goes left and every path is monotone: the bounds agree and are exact.
    Otherwise the answer is given only where both bounds meet (field and full reach)."""
    found = _union_of(mask, Band, Stride)
    if found is None:
        return None
    band, stride, causal = found
    last, every = n - 1, stride.every
    cap = lambda w: last if w is None else min(w, last)       # a side past n - 1 is unbounded
    a, b = cap(band.left), 0 if causal else cap(band.right)
    if last < every:       # no stride pair but the diagonal: the band alone
        return _band_reach(spec, Band(a, b), n, layers)
    if a + b == 0:         # stride jumps only: one hop reaches the whole residue class
        return Reach(last - last % every, 1)
    L = layers
    monotone = lambda w: (lambda k: (k * w, 0, (k - 1) * w))
    unbounded = lambda w, v: (lambda k: (k * w, (k - 1) * v, (k - 1) * w))
    sides = [(a, b)] if causal else [(a, b), (b, a)]          # (this side's width, the other's)
    lower = max(_farthest(last, every, *monotone(w)(L)) for w, _ in sides)
    full = [_fewest(last, every, monotone(w)) for w, _ in sides]
    if causal:
        return Reach(lower, full[0])
    upper = max(_farthest(last, every, *unbounded(w, v)(L)) for w, v in sides)
    fewest = [_fewest(last, every, unbounded(w, v)) for w, v in sides] + \
        [_end_to_end(last, every, w, v) for w, v in sides]
    if upper != lower or None in full or max(full) != max(fewest):
        return None
    return Reach(lower, max(full))


def _end_to_end(last: int, every: int, w: int, v: int) -> int:
    """At least how many hops take 0 to n - 1 (band hops of w forward, v back): a path's first
    band hops end in [0, h0 w], its last ones start in [last - h2 w, last], and between its first
    and last jump the band hops shift the residue by at most h1 v back (two jumps, so h1 + 2 hops
    more): band only, or one jump and r = last mod s forward, or two jumps and s - r back."""
    r = last % every
    ways = [-(-last // w) if w else last + 1, 1 + (-(-r // w) if w else (0 if r == 0 else last + 1))]
    if v:
        ways.append(2 + -(-(every - r) // v))
    return min(ways)


def _fixed_reach(spec: Spec, mask: Predicate, n: int, layers: int) -> Reach | None:
    """any(blocks(l), columns(every e, width c)), causal or not (blocks(1) is band 0). Columns
    depend on the key alone: every query reaches each column C (up to itself if causal) in one hop,
    and a column p adds its block (up to p if causal) in the second; nothing new after that, since
    a block only leads to its own block and to C. So the field is the widest of the block span and
    the farthest column (L = 1), or the farthest block holding a column (L >= 2), and one layer is
    enough unless some block's columns do not fill what a column there adds (counted per block)."""
    found = _union_of(mask, (Blocks, Band), Columns)
    if found is None or (isinstance(found[0], Band) and found[0] != Band(0, 0)):
        return None
    blocks, columns, causal = found
    size = blocks.size if isinstance(blocks, Blocks) else 1
    last, every, first_column = n - 1, columns.every, columns.every - columns.width
    span = min(size, n) - 1
    if first_column > last:                       # no column below n: blocks alone
        return Reach(span, 1)
    below = lambda x: (x // every) * columns.width + np.maximum(x % every - first_column, 0)
    last_column = last if last % every >= first_column else last - last % every - 1
    block_end = min((last_column // size + 1) * size, n) - 1
    first_block = first_column // size * size                # start of the first column's block
    reached = (last - first_column, last - first_block) if causal else \
        (max(last - first_column, last_column), max(last - first_block, block_end))   # L = 1, L >= 2
    starts = np.arange(0, n, size, dtype=np.int64)
    ends = np.minimum(starts + size, n)
    count = below(ends) - below(starts)                   # columns in each block
    if causal:     # a column p of an earlier block adds [block start, p]: the columns must be a prefix
        starts, count = starts[:-1], count[:-1]
        bad = (count > 0) & (below(starts + count) - below(starts) != count)
    else:          # a column adds its whole block: it must be columns throughout
        bad = (count > 0) & (count < ends - starts) & (len(starts) > 1)
    return Reach(max(span, reached[min(layers, 2) - 1]), 2 if bad.any() else 1)


# Exact answers tried in order before the graph walk; each returns None where it does not apply.
CLOSED_FORMS = (_everything_reach, _band_reach, _blocks_reach, _global_reach, _strided_reach,
                _fixed_reach)


def _dense(spec: Spec, n: int) -> torch.Tensor:
    """The n × n mask the graph is made of (n <= MAX_GRAPH_N), segments as one segment."""
    mask = counted_mask(spec, segments=False)
    ctx = spec.eval_context(n, n, 0) if not spec.uses_segments else \
        spec.eval_context(n, n, 0, torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64))
    ii = torch.arange(n).unsqueeze(-1)
    return mask.evaluate(ii, torch.arange(n).unsqueeze(0), ctx)


def _edges(spec: Spec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row_start, keys): the CSR form of the graph, residual edges i → i included."""
    adjacency = _dense(spec, n) | torch.eye(n, dtype=torch.bool)
    rows, keys = adjacency.nonzero(as_tuple=True)        # row-major, so grouped by row
    row_start = torch.searchsorted(rows, torch.arange(n))
    return row_start.numpy(), keys.numpy()


def allowed_graph(spec: Spec, n: int) -> nx.DiGraph:
    """The graph of allowed pairs over n positions: an edge i → j where query i may attend key j
    (no residual edges)."""
    import networkx as nx     # a quarter second to import; `attngen cost` answers without it

    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    rows, keys = _dense(spec, n).nonzero(as_tuple=True)
    graph.add_edges_from(zip(rows.tolist(), keys.tolist()))
    return graph


def _walk(edges, n: int, layers: int) -> tuple[int, int]:
    """Breadth-first from every source at once; returns (field after `layers`, full-reach layers)."""
    row_start, keys = edges
    positions = np.arange(n)
    reached = np.zeros((n, (n + 63) // 64), dtype=np.uint64)            # [n, words]: R_L as bits
    reached[positions, positions // 64] = np.left_shift(np.uint64(1), (positions % 64).astype(np.uint64))
    lowest, highest = positions.copy(), positions.copy()               # min / max of R_L(i)
    field_at = {0: 0}
    level = 0
    while True:
        grown = _one_layer(reached, row_start, keys)
        if np.array_equal(grown, reached):
            break
        reached, level = grown, level + 1
        lowest = np.minimum.reduceat(lowest[keys], row_start)
        highest = np.maximum.reduceat(highest[keys], row_start)
        field_at[level] = int(max((positions - lowest).max(), (highest - positions).max()))
    return field_at[min(layers, level)], max(1, level)


def _one_layer(reached: np.ndarray, row_start: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """R_L(i) = OR of R_{L-1}(j) over the keys j of row i, in chunks of rows."""
    n, words = reached.shape
    out = np.empty_like(reached)
    row_end = np.append(row_start[1:], len(keys))
    first = 0
    while first < n:
        last = first + 1      # grow the chunk while its gathered rows stay within the budget
        while last < n and (row_end[last] - row_start[first]) * words <= EDGE_WORDS_AT_ONCE:
            last += 1
        lo, hi = row_start[first], row_end[last - 1]
        gathered = reached[keys[lo:hi]]
        out[first:last] = np.bitwise_or.reduceat(gathered, row_start[first:last] - lo, axis=0)
        first = last
    return out
