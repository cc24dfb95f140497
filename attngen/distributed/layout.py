"""Which positions of the sequence each rank holds: chunks, runs, `shard` and `unshard`.

The sequence of n positions is cut into 2·world chunks, as `torch.tensor_split` cuts it (the first
n mod 2·world chunks one position longer). Layouts:
- ``zigzag``: rank r holds chunks r and 2·world−1−r (head and tail: even work under causal masks,
  as Megatron and TransformerEngine balance);
- ``contiguous``: rank r holds chunks 2r and 2r+1, one run of positions.
A rank's local tensor is its chunks concatenated in position order. A *run* is a maximal span of
positions a rank holds contiguously (zigzag's two chunks meet at world = 1); kernels are called per
run, with the run's first position as `q_offset` or `k_offset`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ShapeError

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


def group_rank_world(group) -> tuple[int, int]:
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("attngen.distributed needs torch.distributed initialised "
                           "(torch.distributed.init_process_group)")
    return dist.get_rank(group), dist.get_world_size(group)


def shard(x: torch.Tensor, *, dim: int = 2, group=None, layout: str = "zigzag") -> torch.Tensor:
    """This rank's positions of `x` (the whole sequence along `dim`), chunks concatenated in
    position order. q, k, v: dim 2; segment ids (N,) dim 0, (B, N) dim 1."""
    rank, world = group_rank_world(group)
    return shard_for(x, rank, world, dim=dim, layout=layout)


def shard_for(x: torch.Tensor, rank: int, world: int, *, dim: int = 2, layout: str = "zigzag") -> torch.Tensor:
    """`shard` for an explicit rank and world size (no process group needed)."""
    n = x.shape[dim]
    runs = rank_runs(n, rank, world, layout)
    return torch.cat([x.narrow(dim, r.start, r.length) for r in runs], dim=dim)


def unshard(x_local: torch.Tensor, *, dim: int = 2, group=None, layout: str = "zigzag") -> torch.Tensor:
    """The whole sequence along `dim` on every rank, from each rank's `shard` (all-gather). The
    whole length is the sum of the local lengths, so uneven chunks come back in place."""
    import torch.distributed as dist
    rank, world = group_rank_world(group)
    dim = dim % x_local.dim()
    size = torch.tensor([x_local.shape[dim]], dtype=torch.int64, device=x_local.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    n = sum(sizes)
    for r in range(world):
        if sizes[r] != local_length(n, r, world, layout):
            raise ShapeError(f"unshard: rank {r} holds {sizes[r]} positions along dim {dim}, but a "
                             f"{layout} shard of {n} positions over {world} ranks holds "
                             f"{local_length(n, r, world, layout)}")
    longest = max(sizes)
    padded = torch.zeros(*x_local.shape[:dim], longest, *x_local.shape[dim + 1:], dtype=x_local.dtype,
                         device=x_local.device)
    padded.narrow(dim, 0, sizes[rank]).copy_(x_local)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    out = torch.empty(*x_local.shape[:dim], n, *x_local.shape[dim + 1:], dtype=x_local.dtype,
                      device=x_local.device)
    for r in range(world):
        for run in rank_runs(n, r, world, layout):
            out.narrow(dim, run.start, run.length).copy_(gathered[r].narrow(dim, run.local, run.length))
    return out
