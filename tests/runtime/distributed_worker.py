"""One rank of the context-parallel tests (tests/runtime/test_distributed.py), in its own process:
gloo on 127.0.0.1, every case checked against the whole-sequence call on this rank.

A case: a spec, a layout, a strategy. Every rank draws the same whole q, k, v, dout (one seed),
runs the plain whole-sequence call (out and its gradients), then the context-parallel call on its
shards, and compares its rows per named tensor (out, lse, dq, dk, dv) with the package's tolerance
table. Reports go back through a queue as dicts; an exception is a failed report, not a hang.
"""
from __future__ import annotations

import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

import attngen
from attngen.checking import GRAD_TOLERANCE, check_close
from attngen.distributed import context_parallel, shard, unshard
from attngen.distributed.inputs import sequence_axes


def documents(n: int) -> torch.Tensor:
    """Packed documents of uneven lengths (one of a single token), ids sorted."""
    sizes = [n // 5, 1, n // 3]
    sizes.append(n - sum(sizes))
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def call_time_inputs(spec, n: int, gen: torch.Generator, batch: int = 1) -> dict:
    """Whole-sequence values of the spec's inputs (batch 1): sinks large enough to matter, one
    head's far below its scores and one far above; integer inputs in 0..n/4 (prefix lengths,
    document ids), float ones N(0, 1)."""
    sizes = {"B": batch, "Hq": spec.query_heads, "Hkv": spec.kv_heads, "Nq": n, "Nk": n}
    given = {}
    for d in spec.all_inputs:
        if d.name == "sink":
            given["sink"] = torch.tensor([0.5, -30.0, 4.0, 1.0][:spec.query_heads])
            continue
        shape = [sizes.get(s, s) for s in d.shape]
        dtype = getattr(torch, d.dtype)
        if dtype.is_floating_point:
            given[d.name] = torch.randn(*shape, generator=gen, dtype=dtype)
        elif dtype == torch.bool:
            given[d.name] = torch.randint(0, 2, shape, generator=gen).bool()
        else:
            given[d.name] = torch.randint(0, max(2, n // 4), shape, generator=gen, dtype=dtype)
    return given


def check_decode_case(case: dict, rank: int, world: int) -> dict:
    """Decoding against a cache sharded along the sequence, contiguous (rank r holds `cut` positions)
    or paged: every rank's result against the whole cache's plain decode (float64 reference)."""
    spec, capacity, nq = case["spec"], case["n"], 3
    gen = torch.Generator().manual_seed(99)
    lengths = torch.tensor([capacity, 1, capacity // 2 + 3, 0], dtype=torch.int32)
    q = torch.randn(len(lengths), spec.query_heads, nq, spec.head_dim, generator=gen)
    k, v = (torch.randn(len(lengths), spec.kv_heads, capacity, spec.head_dim, generator=gen) for _ in range(2))
    given = call_time_inputs(spec, capacity, gen, batch=len(lengths))
    start, stop = capacity * rank // world, capacity * (rank + 1) // world
    k_l, v_l, table = k[:, :, start:stop], v[:, :, start:stop], None
    if case.get("paged"):
        from tests.codegen.test_decode import paged
        k_l, v_l, table = paged(k_l.contiguous(), v_l.contiguous(), 16, seed=rank)
    cp = context_parallel(attngen.compile(spec))
    out, lse = cp.decode(q, k_l, v_l, cache_seqlens=lengths, block_table=table, return_lse=True, **given)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            continue
        mine = {name: t[b:b + 1] if name == "prefix" else t for name, t in given.items()}
        want = attngen.reference(spec, q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], q_offset=n - nq, **mine)
        check_close(f"{case['id']} rank {rank}/{world} decode out[{b}]", out[b:b + 1], want[0], torch.float32)
        check_close(f"{case['id']} rank {rank}/{world} decode lse[{b}]", lse[b:b + 1], want[1], torch.float32)
    return {"strategy": "decode", "steps": 1, "skipped": 0}


def check_case(case: dict, rank: int, world: int) -> dict:
    if case.get("decode"):
        return check_decode_case(case, rank, world)
    spec = case["spec"]
    attn = attngen.compile(spec)
    n, dtype = case["n"], getattr(torch, case.get("dtype", "float32"))
    gen = torch.Generator().manual_seed(1234)
    q = torch.randn(1, spec.query_heads, n, spec.head_dim, generator=gen).to(dtype)
    k, v = (torch.randn(1, spec.kv_heads, n, spec.head_dim, generator=gen).to(dtype) for _ in range(2))
    dout = torch.randn(1, spec.query_heads, n, spec.head_dim, generator=gen).to(dtype)
    seg = documents(n) if spec.uses_segments else None
    whole = {} if seg is None else dict(seg_q=seg, seg_k=seg)
    given = call_time_inputs(spec, n, gen)
    learned = [d for d in spec.all_inputs if d.grad]
    plain = {name: t.clone().requires_grad_(True) if any(d.name == name for d in learned) else t
             for name, t in given.items()}
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = attn(*leaves, **whole, return_lse=True, **plain)
    out.backward(dout)

    layout = case["layout"]
    cp = context_parallel(attn, layout=layout, strategy=case.get("strategy", "auto"))
    local = [shard(t, dim=2, layout=layout).clone().requires_grad_(True) for t in (q, k, v)]
    segs = {} if seg is None else dict(seg_q=shard(seg, dim=0, layout=layout), seg_k=shard(seg, dim=0, layout=layout))

    def local_inputs():
        mine = {}
        for d in spec.all_inputs:
            t = given[d.name]
            for axis in sequence_axes(d):
                t = shard(t, dim=axis, layout=layout)
            mine[d.name] = t.clone().requires_grad_(True) if d.grad else t
        return mine

    mine = local_inputs()
    out_l, lse_l = cp(*local, **segs, return_lse=True, **mine)
    out_l.backward(shard(dout, dim=2, layout=layout))
    for d in learned:               # every rank's input gradient is its shard of the whole one
        want = plain[d.name].grad
        for axis in sequence_axes(d):
            want = shard(want, dim=axis, layout=layout)
        check_close(f"{case['id']} rank {rank}/{world} d{d.name}", mine[d.name].grad, want, dtype,
                    table=GRAD_TOLERANCE)
    checks = [("out", out_l, shard(out, dim=2, layout=layout), None),
              ("lse", lse_l, shard(lse, dim=2, layout=layout), None)]
    checks += [(name, l.grad, shard(w.grad, dim=2, layout=layout), GRAD_TOLERANCE)
               for name, l, w in zip(("dq", "dk", "dv"), local, leaves)]
    for name, got, want, table in checks:
        check_close(f"{case['id']} rank {rank}/{world} {name}", got.detach(), want.detach(), dtype,
                    **({} if table is None else {"table": table}))
    check_close(f"{case['id']} rank {rank}/{world} unshard(out)", unshard(out_l.detach(), dim=2, layout=layout),
                out.detach(), dtype)
    report = {"strategy": cp.last_strategy, "steps": cp.last_plan.steps, "skipped": cp.last_plan.skipped()}
    if case.get("repeat"):          # the backward is deterministic: the same bits twice
        again = [shard(t, dim=2, layout=layout).clone().requires_grad_(True) for t in (q, k, v)]
        mine_again = local_inputs()
        cp(*again, **segs, **mine_again).backward(shard(dout, dim=2, layout=layout))
        for name, a, b in zip(("dq", "dk", "dv"), again, local):
            if not torch.equal(a.grad, b.grad):
                raise AssertionError(f"{case['id']}: {name} differs between two runs")
        for d in learned:
            if not torch.equal(mine_again[d.name].grad, mine[d.name].grad):
                raise AssertionError(f"{case['id']}: d{d.name} differs between two runs")
    if world == 1 and not spec.sink:   # bitwise the plain call (a sink joins after a host-side merge)
        for name, got, want in (("out", out_l, out), ("dq", local[0].grad, leaves[0].grad),
                                ("dk", local[1].grad, leaves[1].grad), ("dv", local[2].grad, leaves[2].grad)):
            if not torch.equal(got, want):
                raise AssertionError(f"{case['id']}: 1-rank {name} differs from the plain call")
    return report


def run_rank(rank: int, world: int, port: int, cases: list, queue) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=120))
    except Exception:                                   # noqa: BLE001 - reported, not raised
        queue.put({"rank": rank, "case": "init", "error": traceback.format_exc()})
        return
    try:
        for case in cases:
            start = time.perf_counter()
            try:
                report = check_case(case, rank, world)
                queue.put({"rank": rank, "case": case["id"], "error": None,
                           "seconds": time.perf_counter() - start, **report})
            except Exception:                           # noqa: BLE001 - reported, then stop this rank
                queue.put({"rank": rank, "case": case["id"], "error": traceback.format_exc()})
                return
    finally:
        dist.destroy_process_group()
