"""The ring and the all-gather variant, forward and backward, over torch.distributed point-to-point.

Forward (ring), on rank r: step s computes r's query runs against the K/V of rank (r − s) mod world
(one kernel call per non-empty (query run, key run) pair, positions absolute through q_offset,
k_offset and total_nk) while the K/V of the next step are in flight (`batch_isend_irecv`); each query
run's partial (out, lse) are merged exactly through lse (`attngen.merge`).

Backward (ring): the same K/V travel again; each step's dQ adds up locally, and the step's dK/dV
add to an accumulator (float32) that travels with the chunk's K/V one hop behind it, the previous
hop in flight while this step computes. After the last step each accumulator goes home to its
chunk's owner in one more hop. The order of additions is fixed (the owner, then the ranks after it
in ring order), so two runs give the same bits.

All-gather variant: K/V (and segment ids) gathered whole once; one kernel call per query run
against all keys; the backward's dK/dV contributions (every position) return to their owners by
the same ring of accumulators, without K/V travelling.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..runtime.inputs import grad_inputs
from ..runtime.merge import merge
from .layout import Run, local_length, unshard
from .plan import RingPlan, pair_is_empty

KV_TAG, ACC_TAG, HOME_TAG = 1, 2, 3


class Comm:
    """Point-to-point within a process group, by group rank."""

    def __init__(self, group, rank: int, world: int):
        self.group, self.rank, self.world = group, rank, world

    def peer(self, rank: int) -> int:
        rank %= self.world
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def exchange(self, send: list, to: int, recv: list, frm: int, tag: int) -> list:
        """Start sending `send` to group rank `to` and receiving `recv` from `frm`; the works."""
        ops = [dist.P2POp(dist.isend, t, self.peer(to), self.group, tag) for t in send]
        ops += [dist.P2POp(dist.irecv, t, self.peer(frm), self.group, tag) for t in recv]
        return dist.batch_isend_irecv(ops)


def wait(works) -> None:
    for w in works or ():
        w.wait()


def cut(t: torch.Tensor, run: Run) -> torch.Tensor:
    """A run's slice of a rank's local tensor (positions along dim 2; segment ids along the last)."""
    return t.narrow(2 if t.dim() == 4 else t.dim() - 1, run.local, run.length)


def like_rank(t: torch.Tensor, plan: RingPlan, rank: int, dtype=None) -> torch.Tensor:
    """An empty tensor shaped as rank `rank`'s shard of `t`'s kind (positions along dim 2 or last)."""
    n_dim = 2 if t.dim() == 4 else t.dim() - 1
    shape = list(t.shape)
    shape[n_dim] = local_length(plan.n, rank % plan.world, plan.world, plan.layout)
    return torch.empty(shape, dtype=dtype or t.dtype, device=t.device)


class Ring:
    """One call's ring on one rank: the plan, the kernels, the process group."""

    def __init__(self, attn, plan: RingPlan, comm: Comm, device=None, inputs: dict | None = None):
        self.spec = attn.spec
        self.fwd = attn.kernels.launcher("fwd")
        self.bwd = attn.kernels.launcher("bwd")
        self.plan, self.comm = plan, comm
        self.rank = comm.rank
        self.runs = plan.runs[self.rank]
        self.device, self._no_sink = device, None
        self.inputs = inputs or {}                 # whole formula inputs (`inputs.whole_inputs`)
        self.input_grads: dict = {}

    def pairs(self, step: int, seg_q, seg_k_src) -> tuple:
        """Non-empty (query run, key run) index pairs at `step` (segments: tested on the ids)."""
        if self.plan.pairs is not None:
            return self.plan.pairs[self.rank][step]
        src_runs = self.plan.runs[self.plan.source(self.rank, step)]
        return tuple((a, b) for a, qr in enumerate(self.runs) for b, kr in enumerate(src_runs)
                     if not pair_is_empty(self.spec, qr, kr, self.plan.n, cut(seg_q, qr), cut(seg_k_src, kr)))

    def call(self, q_run: Run, k_run: Run, seg_q, seg_k) -> dict:
        segs = {} if seg_q is None else dict(seg_q=cut(seg_q, q_run), seg_k=cut(seg_k, k_run))
        return dict(q_offset=q_run.start, k_offset=k_run.start, total_nk=self.plan.n, total_nq=self.plan.n,
                    **segs, **self.chunk_inputs())

    def chunk_inputs(self) -> dict:
        """The chunk pairs' inputs: the whole formula inputs (`inputs.whole_inputs`), and a sink
        spec's sink at -inf (no share of the denominator): the sink joins each row once, after
        the merge (`attngen.merge(..., sink=)`)."""
        if not self.spec.all_inputs:
            return {}
        if self.spec.sink and self._no_sink is None:
            self._no_sink = torch.full((self.spec.query_heads,), float("-inf"), device=self.device)
        return {"inputs": {**self.inputs, **({"sink": self._no_sink} if self.spec.sink else {})}}

    def add_input_gradients(self, grads) -> None:
        """A chunk pair's shares of the formula inputs' gradients (after dQ, dK, dV), added in call
        order; the sink's share is 0 (it ran as -inf) and left out."""
        for decl, g in zip(grad_inputs(self.spec), grads):
            if decl.name == "sink":
                continue
            acc = self.input_grads.get(decl.name)
            self.input_grads[decl.name] = g.float().clone() if acc is None else acc.add_(g.float())

    def whole_input_gradients(self) -> dict:
        """name → this rank's sum of its chunk pairs' shares (zeros where it ran none)."""
        return {d.name: self.input_grads.get(d.name, torch.zeros_like(self.inputs[d.name], dtype=torch.float32))
                for d in grad_inputs(self.spec) if d.name != "sink"}

    def sink_gradient(self, sink, out, lse, dout) -> torch.Tensor:
        """d(loss)/d(sink[h]) = -sum over rows of exp(sink[h] - lse_i) * (dout_i . out_i): this
        rank's rows, then every rank's share summed in rank order (the same bits every run)."""
        delta = (dout.float() * out.float()).sum(-1)                       # (B, Hq, N_local)
        local = -(torch.exp(sink.float()[None, :, None] - lse) * delta).sum(dim=(0, 2))
        if self.comm.world == 1:
            return local
        shares = [torch.empty_like(local) for _ in range(self.comm.world)]
        dist.all_gather(shares, local, group=self.comm.group)
        total = shares[0].clone()
        for share in shares[1:]:
            total += share
        return total

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, q, k, v, seg_q, seg_k):
        """(out, lse) of this rank's rows over every key of the sequence."""
        plan, rank = self.plan, self.rank
        parts: list[list] = [[] for _ in self.runs]
        current = [k.contiguous(), v.contiguous()] + ([seg_k.contiguous()] if seg_k is not None else [])
        for step in range(plan.steps):
            src = plan.source(rank, step)
            works, incoming = None, None
            if step + 1 < plan.steps:                   # the next chunk in flight while this computes
                incoming = [like_rank(t, plan, plan.source(rank, step + 1)) for t in current]
                works = self.comm.exchange(current, rank + 1, incoming, rank - 1, KV_TAG)
            k_src, v_src = current[0], current[1]
            seg_src = current[2] if seg_k is not None else None
            for a, b in self.pairs(step, seg_q, seg_src):
                q_run, k_run = self.runs[a], plan.runs[src][b]
                parts[a].append(self.fwd.forward(cut(q, q_run), cut(k_src, k_run), cut(v_src, k_run),
                                                 **self.call(q_run, k_run, seg_q, seg_src)))
            wait(works)
            current = incoming if incoming is not None else current
        return self._assemble(q, parts)

    def _assemble(self, q, parts):
        batch, heads, _, head_dim = q.shape
        outs, lses = [], []
        for run, run_parts in zip(self.runs, parts):
            if not run_parts:                            # no allowed key anywhere: out 0, lse -inf
                outs.append(torch.zeros(batch, heads, run.length, head_dim, dtype=q.dtype, device=q.device))
                lses.append(torch.full((batch, heads, run.length), float("-inf"), device=q.device))
            elif len(run_parts) == 1:
                outs.append(run_parts[0][0])
                lses.append(run_parts[0][1])
            else:
                out, lse = merge([p[0] for p in run_parts], [p[1] for p in run_parts])
                outs.append(out)
                lses.append(lse)
        if not outs:
            return torch.zeros_like(q), torch.empty(batch, heads, 0, device=q.device)
        return torch.cat(outs, 2), torch.cat(lses, 2)

    # -- backward ---------------------------------------------------------------------------------
    def backward(self, q, k, v, out, lse, dout, seg_q, seg_k):
        """(dq, dk, dv) of this rank's shard."""
        plan, rank = self.plan, self.rank
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        current = [k.contiguous(), v.contiguous()] + ([seg_k.contiguous()] if seg_k is not None else [])
        acc, acc_works, acc_in = None, None, None
        for step in range(plan.steps):
            src = plan.source(rank, step)
            works, incoming = None, None
            if step + 1 < plan.steps:
                incoming = [like_rank(t, plan, plan.source(rank, step + 1)) for t in current]
                works = self.comm.exchange(current, rank + 1, incoming, rank - 1, KV_TAG)
            k_src, v_src = current[0], current[1]
            seg_src = current[2] if seg_k is not None else None
            dk_step = torch.zeros(k_src.shape, dtype=torch.float32, device=k.device)
            dv_step = torch.zeros(v_src.shape, dtype=torch.float32, device=v.device)
            for a, b in self.pairs(step, seg_q, seg_src):
                q_run, k_run = self.runs[a], plan.runs[src][b]
                dq_p, dk_p, dv_p, *grads = self.bwd.backward(
                    cut(q, q_run), cut(k_src, k_run), cut(v_src, k_run), cut(out, q_run), cut(lse, q_run),
                    cut(dout, q_run), **self.call(q_run, k_run, seg_q, seg_src))
                self.add_input_gradients(grads)
                cut(dq, q_run).add_(dq_p.float())
                cut(dk_step, k_run).add_(dk_p.float())
                cut(dv_step, k_run).add_(dv_p.float())
            if step == 0:
                acc = [dk_step, dv_step]
            else:                                        # the accumulator one hop behind its chunk
                wait(acc_works)
                acc = [acc_in[0].add_(dk_step), acc_in[1].add_(dv_step)]
            if step + 1 < plan.steps:
                acc_in = [like_rank(t, plan, plan.source(rank, step + 1)) for t in acc]
                acc_works = self.comm.exchange(acc, rank + 1, acc_in, rank - 1, ACC_TAG)
            wait(works)
            current = incoming if incoming is not None else current
        dk, dv = self._home(acc, plan.steps - 1)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)

    def _home(self, acc: list, last_step: int) -> list:
        """Send the accumulator held after `last_step` to its owner; receive this rank's own."""
        if last_step == 0:
            return acc
        rank = self.rank
        mine = [like_rank(t, self.plan, rank) for t in acc]
        wait(self.comm.exchange(acc, rank - last_step, mine, rank + last_step, HOME_TAG))
        return mine


class AllGather(Ring):
    """K/V gathered whole once; the same kernels called per query run against every key."""

    def gather(self, k, v, seg_k):
        group, layout = self.comm.group, self.plan.layout
        whole = [unshard(t, dim=2, group=group, layout=layout) for t in (k, v)]
        seg = None if seg_k is None else unshard(seg_k, dim=seg_k.dim() - 1, group=group, layout=layout)
        return whole[0], whole[1], seg

    def whole_run(self) -> Run:
        return Run(0, self.plan.n, 0)

    def forward_gathered(self, q, k_all, v_all, seg_q, seg_all):
        everything = self.whole_run()
        parts = [[self.fwd.forward(cut(q, run), k_all, v_all, **self.call(run, everything, seg_q, seg_all))]
                 for run in self.runs]
        return self._assemble(q, parts)

    def backward_gathered(self, q, k_all, v_all, out, lse, dout, seg_q, seg_all, like_k, like_v):
        everything = self.whole_run()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk_all = torch.zeros(k_all.shape, dtype=torch.float32, device=q.device)
        dv_all = torch.zeros(v_all.shape, dtype=torch.float32, device=q.device)
        for run in self.runs:
            dq_p, dk_p, dv_p, *grads = self.bwd.backward(cut(q, run), k_all, v_all, cut(out, run), cut(lse, run),
                                                     cut(dout, run), **self.call(run, everything, seg_q, seg_all))
            self.add_input_gradients(grads)
            cut(dq, run).add_(dq_p.float())
            dk_all.add_(dk_p.float())
            dv_all.add_(dv_p.float())
        dk, dv = self._reduce_to_owners([dk_all, dv_all])
        return dq.to(q.dtype), dk.to(like_k.dtype), dv.to(like_v.dtype)

    def _reduce_to_owners(self, whole: list) -> list:
        """Each owner's positions summed over ranks, in ring order (deterministic): the
        accumulator of owner o starts at o and gains each following rank's share."""
        plan, rank, world = self.plan, self.rank, self.plan.world

        def share(owner: int) -> list:
            return [torch.cat([t.narrow(2, r.start, r.length) for r in plan.runs[owner % world]], 2)
                    for t in whole]

        acc = share(rank)
        for step in range(1, world):
            incoming = [like_rank(t, plan, rank - step) for t in acc]
            wait(self.comm.exchange(acc, rank + 1, incoming, rank - 1, ACC_TAG))
            acc = [a.add_(s) for a, s in zip(incoming, share(rank - step))]
        return self._home(acc, world - 1)
