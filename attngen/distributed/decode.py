"""Decoding against a KV cache sharded along the sequence (issue 15; SPEC.md, context parallelism).

Rank r's cache holds positions offset_r .. offset_r + capacity_r - 1 of every sequence, offset_r
being the capacities of the ranks before it (a contiguous cut: a cache grows at its end, so the
last rank's shard fills last). q (the Nq new tokens), `cache_seqlens` (the whole lengths) and the
inputs are the same on every rank. Each rank runs the ordinary decode kernels on its shard, with
its keys' absolute positions (`k_offset`) and the sequence's length for the queries' positions,
so every mask, score and random draw means what it means on the whole cache; the ranks' (out,
lse) are gathered and merged exactly through lse, in rank order, the sink joining each row once.
Every rank returns the whole result. Bytes moved per call: (world - 1) x B x Hq x Nq x (Dv + 1)
values per rank, independent of the cache length.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..errors import ShapeError
from ..runtime.inputs import call_inputs
from ..runtime.merge import merge
from .inputs import formula_inputs, sequence_axes
from .layout import group_rank_world


def shard_offsets(capacity: int, *, group, device) -> tuple[int, int]:
    """(this rank's first position, the whole capacity): the ranks' capacities, gathered."""
    rank, world = group_rank_world(group)
    if world == 1:
        return 0, capacity
    mine = torch.tensor([capacity], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    sizes = [int(t) for t in every]
    return sum(sizes[:rank]), sum(sizes)


def cache_capacity(k_cache: torch.Tensor, block_table) -> int:
    if not isinstance(k_cache, torch.Tensor) or k_cache.dim() != 4:
        raise ShapeError(f"k_cache must be a 4-dim tensor, got {getattr(k_cache, 'shape', type(k_cache))}")
    if block_table is None:
        return k_cache.shape[2]
    if not isinstance(block_table, torch.Tensor) or block_table.dim() != 2:
        raise ShapeError(f"block_table must be a (B, max_pages) tensor, got {getattr(block_table, 'shape', None)}")
    return block_table.shape[1] * k_cache.shape[1]


def sharded_decode(attn, q, k_cache, v_cache, *, cache_seqlens, block_table=None, group=None,
                   inputs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of `attn.decode` over the whole sharded cache, on every rank (module docstring)."""
    spec = attn.spec
    given = dict(inputs or {})
    for d in formula_inputs(spec):
        if sequence_axes(d):
            raise ShapeError(f"input {d.name!r} has a sequence axis ({', '.join(map(str, d.shape))}): a sharded "
                             "decode takes replicated inputs only; decode on one device")
    if cache_seqlens is None:
        raise ShapeError("a sharded cache needs cache_seqlens: each sequence's whole length")
    k_offset, max_total = shard_offsets(cache_capacity(k_cache, block_table), group=group, device=q.device)
    sink = None
    if spec.sink:          # the shards run without it; it joins each row once, after the merge
        sink = call_inputs(spec, {"sink": given.get("sink")}, batch=q.shape[0], nq=q.shape[2],
                           nk=max_total, device=q.device)["sink"]
        given["sink"] = torch.full_like(sink, float("-inf"))
    out, lse = attn.kernels.launcher("decode").decode(
        q, k_cache, v_cache, cache_seqlens=cache_seqlens, block_table=block_table, inputs=given,
        k_offset=k_offset, max_total=max_total)
    _, world = group_rank_world(group)
    outs, lses = [out], [lse]
    if world > 1:
        outs = [torch.empty_like(out) for _ in range(world)]
        lses = [torch.empty_like(lse) for _ in range(world)]
        dist.all_gather(outs, out.contiguous(), group=group)
        dist.all_gather(lses, lse.contiguous(), group=group)
    if world == 1 and sink is None:
        return out, lse
    return merge(outs, lses, sink=sink)
