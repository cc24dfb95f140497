"""`shard` and `unshard`: a rank's positions of the sequence, taken and put back.

Chunks, layouts (zigzag, contiguous) and runs are `attngen.analysis.sharding`'s (the cost
command counts work with them too); kernels are called per run, with the run's first position as
`q_offset` or `k_offset`.
"""
from __future__ import annotations

import torch

from ..analysis.sharding import LAYOUTS, Run, check_layout, chunk_bounds, local_length, rank_chunks, rank_runs
from ..errors import ShapeError

__all__ = ["LAYOUTS", "Run", "check_layout", "chunk_bounds", "group_rank_world", "local_length", "rank_chunks",
           "rank_runs", "shard", "shard_for", "unshard"]


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
