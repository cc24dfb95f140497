"""Context parallelism: one sequence across the ranks of a torch.distributed group.

    from attngen.distributed import context_parallel, shard, unshard
    cp = context_parallel(attn, group=None, layout="zigzag")     # or "contiguous"
    q_l, k_l, v_l = (shard(x, dim=2, layout="zigzag") for x in (q, k, v))
    out_l = cp(q_l, k_l, v_l)                                     # this rank's rows, with a backward
    out = unshard(out_l, dim=2, layout="zigzag")

`cp.decode(q, k_cache_l, v_cache_l, cache_seqlens=lengths)` decodes against a KV cache sharded
along the sequence (`decode.py`).

`out_l` equals the same rows of `attn(q, k, v)` on the whole sequence, with every mask (positions
stay absolute), and its gradients the same rows of the whole-sequence gradients. Segment ids are
sharded like q/k/v (`shard(seg, dim=0)` for (N,), `dim=1` for (B, N)) and passed as usual.
Layouts: `layout.py`; which chunk pairs run and ring or all-gather: `plan.py`; the ring: `ring.py`;
docs/distributed.md for launching and the bytes moved.
"""
from __future__ import annotations

import torch

from ..errors import ShapeError
from ..runtime.inputs import call_inputs, grad_inputs
from ..runtime.merge import merge
from .decode import sharded_decode
from .inputs import local_gradient, whole_inputs
from .layout import LAYOUTS, chunk_bounds, check_layout, group_rank_world, local_length, rank_runs, shard, unshard
from .plan import STRATEGIES, RingPlan, bytes_per_step, choose_strategy, ring_plan
from .ring import AllGather, Comm, Ring

__all__ = ["ContextParallel", "LAYOUTS", "STRATEGIES", "RingPlan", "bytes_per_step", "chunk_bounds",
           "context_parallel", "rank_runs", "ring_plan", "shard", "unshard"]


class _ContextParallelFunction(torch.autograd.Function):
    """out_l, lse_l of the ring (or all-gather) with its backward; lse is not differentiable.
    Sinks: the chunk pairs run without them and the sink joins each row once, here; the backward
    reads the rows' final out and lse, and d(sink) comes from those rows alone. `grad_locals`:
    this rank's tensors of the `grad: true` formula inputs (their gradients: `inputs.py`)."""

    @staticmethod
    def forward(ctx, runner, q, k, v, seg_q, seg_k, sink, *grad_locals):
        gathered = ()
        if isinstance(runner, AllGather):
            gathered = runner.gather(k, v, seg_k)
            out, lse = runner.forward_gathered(q, *gathered[:2], seg_q, gathered[2])
        else:
            out, lse = runner.forward(q, k, v, seg_q, seg_k)
        if sink is not None:
            out, lse = merge([out], [lse], sink=sink)
        ctx.save_for_backward(q, k, v, out, lse, seg_q, seg_k, sink, *gathered)
        ctx.runner = runner
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        runner = ctx.runner
        dout = dout.contiguous()
        q, k, v, out, lse, seg_q, seg_k, sink, *gathered = ctx.saved_tensors
        dsink = None if sink is None else runner.sink_gradient(sink, out, lse, dout)
        if gathered:
            k_all, v_all, seg_all = gathered
            dq, dk, dv = runner.backward_gathered(q, k_all, v_all, out, lse, dout, seg_q, seg_all, k, v)
        else:
            dq, dk, dv = runner.backward(q, k, v, out, lse, dout, seg_q, seg_k)
        comm, layout = runner.comm, runner.plan.layout
        whole = runner.whole_input_gradients()
        dinputs = [local_gradient(d, whole[d.name], world=comm.world, group=comm.group, layout=layout)
                   for d in grad_inputs(runner.spec) if d.name != "sink"]
        return (None, dq, dk, dv, None, None, dsink, *dinputs)


class ContextParallel:
    """`attn` over the ranks of `group`: call it with this rank's shards (see the module docstring).

    strategy: "auto" (ring, or all-gather where it moves no more bytes: `plan.choose_strategy`),
    "ring" or "allgather". Context parallelism is self-attention over one sequence: q, k and v
    hold the same positions (Nq = Nk, q_offset 0)."""

    def __init__(self, attn, *, group=None, layout: str = "zigzag", strategy: str = "auto"):
        if not hasattr(attn, "kernels"):          # a spec (file, dict or Spec): compile it
            import attngen
            attn = attngen.compile(attn)
        if attn.spec.kind != "softmax":
            raise ValueError(f"spec {attn.spec.name!r} is {attn.spec.kind} attention: context "
                             "parallelism merges softmax partials through lse")
        if attn.spec.select is not None:          # a chunk alone cannot choose the whole row's blocks
            raise ValueError(f"spec {attn.spec.name!r} selects key blocks by content (select:): its "
                             "selection needs every key of the sequence at once; context parallelism "
                             "does not support it yet")
        if attn.spec.lsh is not None:             # a chunk's queries would be sorted against its keys only
            raise ValueError(f"spec {attn.spec.name!r} hashes queries and keys into buckets (lsh:): it sorts "
                             "every key of the sequence at once; context parallelism does not support it yet")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r}: expected one of {STRATEGIES}")
        self.attn, self.group, self.layout, self.strategy = attn, group, check_layout(layout), strategy
        self.last_plan: RingPlan | None = None
        self.last_strategy: str | None = None

    def __call__(self, q, k, v, *, seg_q=None, seg_k=None, return_lse: bool = False, **inputs):
        rank, world = group_rank_world(self.group)
        n = self._sequence_length(q, rank, world)
        for name, t in (("k", k), ("v", v)):
            if t.shape[2] != q.shape[2]:
                raise ShapeError(f"{name} holds {t.shape[2]} positions on rank {rank}, q holds {q.shape[2]}: "
                                 "context parallelism shards one sequence (Nq = Nk) the same way")
        plan = ring_plan(self.attn.spec, n, world, self.layout)
        strategy = choose_strategy(self.attn.spec, plan, self.strategy)
        self.last_plan, self.last_strategy = plan, strategy
        sink, whole, grad_locals = self._inputs(inputs, q, n)
        runner = (AllGather if strategy == "allgather" else Ring)(self.attn, plan, Comm(self.group, rank, world),
                                                                   q.device, whole)
        out, lse = _ContextParallelFunction.apply(runner, q, k, v, seg_q, seg_k, sink, *grad_locals)
        return (out, lse) if return_lse else out

    def decode(self, q, k_cache, v_cache, *, cache_seqlens, block_table=None, return_lse: bool = False,
               **inputs):
        """`attn.decode` against a KV cache sharded along the sequence: this rank's cache (contiguous
        (B, Hkv, C_r, D) or paged with its block_table) holds positions offset_r .. offset_r + C_r - 1,
        offset_r the capacities of the ranks before it; q, cache_seqlens (whole lengths) and inputs
        are the same on every rank, and every rank gets the whole result (`decode.py`)."""
        out, lse = sharded_decode(self.attn, q, k_cache, v_cache, cache_seqlens=cache_seqlens,
                                  block_table=block_table, group=self.group, inputs=inputs)
        return (out, lse) if return_lse else out

    def _inputs(self, given: dict, q, n: int) -> tuple:
        """(sink or None, whole formula inputs, this rank's grad: true input tensors)."""
        spec = self.attn.spec
        whole = whole_inputs(spec, given, n=n, batch=q.shape[0], group=self.group, layout=self.layout,
                             device=q.device)
        sink = call_inputs(spec, {"sink": given.get("sink")}, batch=q.shape[0], nq=n, nk=n,
                           device=q.device)["sink"] if spec.sink else None
        grad_locals = [given[d.name] for d in grad_inputs(spec) if d.name != "sink"]
        return sink, whole, grad_locals

    def _sequence_length(self, q, rank: int, world: int) -> int:
        """The whole length: the sum of the ranks' shards (one small all-reduce: a shard's length
        alone does not say it), checked against the layout."""
        import torch.distributed as dist
        if not isinstance(q, torch.Tensor) or q.dim() != 4:
            raise ShapeError(f"q must be a (B, Hq, N_local, D) tensor, got {getattr(q, 'shape', type(q))}")
        total = torch.tensor([q.shape[2]], dtype=torch.int64, device=q.device)
        dist.all_reduce(total, group=self.group)
        n = int(total)
        if n < 2 * world:
            raise ShapeError(f"a sequence of {n} positions cannot be cut into 2 x {world} chunks")
        want = local_length(n, rank, world, self.layout)
        if q.shape[2] != want:
            raise ShapeError(f"q holds {q.shape[2]} positions on rank {rank}; a {self.layout} shard of "
                             f"{n} positions over {world} ranks holds {want} (use attngen.distributed.shard)")
        return n


def context_parallel(attn, group=None, layout: str = "zigzag", *, strategy: str = "auto") -> ContextParallel:
    """`attn` (a compiled spec, or a spec) over the ranks of `group` (see `ContextParallel`)."""
    return ContextParallel(attn, group=group, layout=layout, strategy=strategy)
