"""The ring's plan: per rank and ring step, which (query run, key run) pairs hold allowed pairs.

Step s of the ring gives rank r the K/V of rank (r − s) mod world. A pair of runs is *empty* when
the block map of that chunk pair (one tile covering it, no refinement: `block_map`'s "never EMPTY by
mistake") proves no pair allowed; empty pairs are not computed. When the mask does not read
call-time data (no segments), every rank knows every rank's plan, so all agree on the last step
any rank needs: the ring stops there (a sliding window passes K/V only as far as the window
reaches). Segment ids are data: those rings run every step and test emptiness as chunks arrive.

Strategy (`choose_strategy`), by bytes moved per rank in the forward, with C the K+V bytes of one
rank's shard:
- ring: (steps − 1) · C, the chunks in flight while the previous one computes;
- all-gather: (world − 1) · C in one collective, then one kernel call per query run against the
  whole K/V (its own block map skips what the mask leaves out).
The ring never moves more. All-gather is chosen only when it moves the same bytes (no step of the
ring is skippable) and the gathered K/V is no larger than the rank's own q and out (world · Hkv ≤
Hq, GQA/MQA): then one collective replaces world − 1 dependent hops at no cost in bytes or memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..analysis.blockmap import block_map
from ..spec import Spec
from .layout import Run, rank_runs

STRATEGIES = ("auto", "ring", "allgather")


def pair_is_empty(spec: Spec, q_run: Run, k_run: Run, n: int, seg_q=None, seg_k=None) -> bool:
    """True when the mask allows no pair of (q_run's positions, k_run's positions): the chunk pair's
    one-tile block map is EMPTY (a proof; unproven tiles count as non-empty)."""
    bm = block_map(spec, q_run.length, k_run.length, q_run.length, k_run.length, q_offset=q_run.start,
                   k_offset=k_run.start, total_nk=n, seg_q=seg_q, seg_k=seg_k, refine_budget=0)
    return bm.num_full + bm.num_partial == 0


@dataclass(frozen=True)
class RingPlan:
    """Runs of every rank, and (static masks) the non-empty run pairs per (rank, step)."""

    n: int
    world: int
    layout: str
    runs: tuple[tuple[Run, ...], ...]                 # runs[rank]
    pairs: tuple[tuple[tuple, ...], ...] | None        # pairs[rank][step]: ((q index, k index), ..)
    steps: int                                          # ring steps any rank needs (1 .. world)

    def source(self, rank: int, step: int) -> int:
        return (rank - step) % self.world

    def skipped(self) -> int:
        """(rank, step) computations the plan proves empty, over the steps the ring runs."""
        if self.pairs is None:
            return 0
        return sum(1 for r in range(self.world) for s in range(self.world) if not self.pairs[r][s])


@lru_cache(maxsize=64)
def ring_plan(spec: Spec, n: int, world: int, layout: str) -> RingPlan:
    """The plan of `spec` at n positions over `world` ranks (cached: spec, shape and layout only)."""
    runs = tuple(rank_runs(n, r, world, layout) for r in range(world))
    if spec.uses_segments:
        return RingPlan(n, world, layout, runs, None, world)
    pairs = tuple(tuple(
        tuple((a, b) for a, q_run in enumerate(runs[r]) for b, k_run in enumerate(runs[(r - s) % world])
              if not pair_is_empty(spec, q_run, k_run, n))
        for s in range(world)) for r in range(world))
    steps = 1 + max((s for r in range(world) for s in range(world) if pairs[r][s]), default=0)
    return RingPlan(n, world, layout, runs, pairs, steps)


def choose_strategy(spec: Spec, plan: RingPlan, strategy: str) -> str:
    """"ring" or "allgather" (see the module docstring for the rule)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: expected one of {STRATEGIES}")
    if strategy != "auto":
        return strategy
    same_bytes = plan.steps == plan.world
    fits = plan.world * spec.kv_heads <= spec.query_heads
    return "allgather" if plan.world > 1 and same_bytes and fits else "ring"


def bytes_per_step(spec: Spec, n: int, world: int, *, batch: int = 1, element: int = 2) -> dict:
    """Bytes one rank sends per ring step at the longest shard (K and V; the backward also sends
    the float32 dK and dV accumulators), for `docs/distributed.md` and `attngen cost --ranks`."""
    longest = -(-n // (2 * world)) * 2
    kv = 2 * batch * spec.kv_heads * longest * spec.head_dim
    return {"forward": kv * element, "backward": kv * element + kv * 4}
