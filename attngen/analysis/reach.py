"""How far information travels through stacked self-attention layers of one spec.

The graph: positions 0..n-1 (self-attention, q_offset 0), an edge i → j for every allowed pair,
plus i → i for the residual stream. The output at position i after L layers depends on the inputs
at the positions reachable from i by paths of at most L edges:

    R_0(i) = {i},    R_L(i) = union of R_{L-1}(j) over the j that i attends to.

- `receptive_field`: the largest |i - j| with j in R_L(i), over all i;
- `layers_to_full_reach`: the smallest L (at least 1) with R_L(i) equal to everything i can ever
  reach (the transitive closure), for every i. For causal masks that is the last query's count.

Bands have closed forms (a side of width w moves w positions per layer). Other masks are walked
breadth-first on the graph, all sources at once: R_L is a bit matrix, and one layer ORs the rows
of the keys each query attends to (numpy's reduceat over the edge list). networkx builds the same
graph (`allowed_graph`) for inspection and as the independent check in the tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from ..spec.predicates import Band, Everything
from ..spec.spec import Spec
from .cost import counted_mask

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
    if isinstance(mask, Everything):
        return Reach(n - 1, 1)
    if isinstance(mask, Band):
        return _band_reach(mask, n, layers)
    if n > MAX_GRAPH_N:
        return Reach(None, None, (f"receptive field: not computed above n={MAX_GRAPH_N} "
                                  "for a mask that is not a band",))
    field, full = _walk(_edges(spec, n), n, layers)
    return Reach(field, full)


def _band_reach(band: Band, n: int, layers: int) -> Reach:
    far = n - 1
    sides = [band.left, band.right]
    field = max(far if w is None else min(layers * w, far) for w in sides)
    needed = [1 if w is None else (0 if w == 0 else -(-far // w)) for w in sides]
    return Reach(field, max(1, *needed))


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
