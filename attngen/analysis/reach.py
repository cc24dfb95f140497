"""How far information travels through stacked self-attention layers of one spec.

The graph: positions 0..n-1 (self-attention, q_offset 0), an edge i → j for every allowed pair,
plus i → i for the residual stream. The output at position i after L layers depends on the inputs
at the positions reachable from i by paths of at most L edges:

    R_0(i) = {i},    R_L(i) = union of R_{L-1}(j) over the j that i attends to.

- `receptive_field`: the largest |i - j| with j in R_L(i), over all i;
- `layers_to_full_reach`: the smallest L (at least 1) with R_L(i) equal to everything i can ever
  reach (the transitive closure), for every i. For causal masks that is the last query's count.

Some masks have exact closed forms, tried first (`CLOSED_FORMS`): bands (a side of width w moves
w positions per layer), block-diagonal masks (nothing leaves a block), and masks that are any-of
global tokens and more (every position reaches a global token, which reaches everything). Other
masks are walked breadth-first on the graph, all sources at once: R_L is a bit matrix, and one layer ORs the rows
of the keys each query attends to (numpy's reduceat over the edge list). networkx builds the same
graph (`allowed_graph`) for inspection and as the independent check in the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..spec.predicates import All_, Any_, Band, Blocks, Everything, GlobalTokens, Predicate
from ..spec.spec import Spec
from .cost import allowed_pairs, counted_mask

if TYPE_CHECKING:
    import networkx as nx

MAX_GRAPH_N = 4096             # the graph walk's limit: n² bits and up to n² edges
EDGE_WORDS_AT_ONCE = 1 << 22   # gathered (edge, word) pairs per step, bounds the walk's memory


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
    causal = Band(None, 0)
    blocks = [p for p in parts if isinstance(p, Blocks)]
    if len(blocks) != 1 or any(p != causal for p in parts if p is not blocks[0]):
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


# Exact answers tried in order before the graph walk; each returns None where it does not apply.
CLOSED_FORMS = (_everything_reach, _band_reach, _blocks_reach, _global_reach)


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
