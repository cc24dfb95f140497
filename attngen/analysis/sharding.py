"""Context parallelism's layouts as positions, and the work (allowed pairs) each rank gets.

The sequence of n positions is cut into 2·world chunks as `torch.tensor_split` cuts it (the first
n mod 2·world chunks one position longer). Layouts:
- ``zigzag``: rank r holds chunks r and 2·world−1−r (head and tail: even work under causal masks,
  as Megatron and TransformerEngine balance);
- ``contiguous``: rank r holds chunks 2r and 2r+1, one run of positions.
A rank's local tensor is its chunks concatenated in position order. A *run* is a maximal span of
positions a rank holds contiguously (zigzag's two chunks meet at world = 1).

`rank_work` counts, per rank, the allowed pairs of its rows against every key exactly
(`pairs.allowed_pairs` on each (query chunk, key chunk) pair, never n²), which ring steps have none
(skipped), and the max/mean imbalance: what `attngen cost --ranks` prints.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..spec.spec import Spec
from .pairs import allowed_pairs

LAYOUTS = ("zigzag", "contiguous")


@dataclass(frozen=True)
class Run:
    """Positions start .. stop − 1 of the sequence, at local offset `local` of the rank's tensor."""

    start: int
    stop: int
    local: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    return layout


def chunk_bounds(n: int, chunks: int) -> list[tuple[int, int]]:
    """(start, stop) of each of `chunks` chunks of n positions (tensor_split's sizes)."""
    base, extra = divmod(n, chunks)
    bounds, start = [], 0
    for c in range(chunks):
        stop = start + base + (1 if c < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def rank_chunks(rank: int, world: int, layout: str) -> tuple[int, int]:
    """The two chunk indices rank `rank` holds, in position order."""
    check_layout(layout)
    if layout == "zigzag":
        return rank, 2 * world - 1 - rank
    return 2 * rank, 2 * rank + 1


def rank_runs(n: int, rank: int, world: int, layout: str) -> tuple[Run, ...]:
    """The runs of positions rank `rank` holds, in position order (empty chunks left out)."""
    bounds = chunk_bounds(n, 2 * world)
    runs: list[Run] = []
    local = 0
    for c in rank_chunks(rank, world, layout):
        start, stop = bounds[c]
        if stop == start:
            continue
        if runs and runs[-1].stop == start:             # adjacent chunks: one run
            runs[-1] = Run(runs[-1].start, stop, runs[-1].local)
        else:
            runs.append(Run(start, stop, local))
        local += stop - start
    return tuple(runs)


def local_length(n: int, rank: int, world: int, layout: str) -> int:
    return sum(r.length for r in rank_runs(n, rank, world, layout))


@dataclass(frozen=True)
class RankWork:
    """Allowed pairs per rank (one head, one sequence) and the ring steps that have none."""

    layout: str
    world: int
    n: int
    pairs: tuple[int, ...]              # pairs[rank]
    empty_steps: tuple[int, ...]        # empty_steps[rank]: ring steps with no allowed pair
    ring_steps: int                     # steps the ring runs: the last non-empty step of any rank, + 1

    @property
    def imbalance(self) -> float:
        """max / mean of the ranks' work (1.0: perfectly even)."""
        mean = sum(self.pairs) / self.world
        return max(self.pairs) / mean if mean else 1.0


def chunk_pair_counts(spec: Spec, n: int, world: int) -> list[list[int]]:
    """counts[a][b]: allowed pairs of query chunk a against key chunk b (2·world chunks)."""
    bounds = chunk_bounds(n, 2 * world)
    return [[allowed_pairs(spec, q1 - q0, k1 - k0, q0, k_offset=k0, total_nk=n) if q1 > q0 and k1 > k0 else 0
             for k0, k1 in bounds] for q0, q1 in bounds]


def rank_work(spec: Spec, n: int, world: int, layout: str, counts: list[list[int]] | None = None) -> RankWork:
    """Per rank, its rows' allowed pairs against every key, and its empty ring steps; `counts`:
    `chunk_pair_counts` already made (both layouts share it). Segments count as one document."""
    counts = counts if counts is not None else chunk_pair_counts(spec, n, world)
    chunks = [rank_chunks(r, world, layout) for r in range(world)]
    pairs, empty, last = [], [], 0
    for r in range(world):
        pairs.append(sum(counts[a][b] for a in chunks[r] for src in range(world) for b in chunks[src]))
        step_work = [sum(counts[a][b] for a in chunks[r] for b in chunks[(r - s) % world]) for s in range(world)]
        empty.append(sum(1 for w in step_work if w == 0))
        last = max([last] + [s for s, w in enumerate(step_work) if w])
    return RankWork(layout, world, n, tuple(pairs), tuple(empty), last + 1)
