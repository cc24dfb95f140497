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


def documents(n: int) -> torch.Tensor:
    """Packed documents of uneven lengths (one of a single token), ids sorted."""
    sizes = [n // 5, 1, n // 3]
    sizes.append(n - sum(sizes))
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def check_case(case: dict, rank: int, world: int) -> dict:
    spec = case["spec"]
    attn = attngen.compile(spec)
    n, dtype = case["n"], getattr(torch, case.get("dtype", "float32"))
    gen = torch.Generator().manual_seed(1234)
    q = torch.randn(1, spec.query_heads, n, spec.head_dim, generator=gen).to(dtype)
    k, v = (torch.randn(1, spec.kv_heads, n, spec.head_dim, generator=gen).to(dtype) for _ in range(2))
    dout = torch.randn(1, spec.query_heads, n, spec.head_dim, generator=gen).to(dtype)
    seg = documents(n) if spec.uses_segments else None
    whole = {} if seg is None else dict(seg_q=seg, seg_k=seg)
    # Sinks: replicated; large enough to matter, one head's far below its scores (a row's lse
    # then comes from the keys alone) and one far above (the sink takes nearly all the weight).
    sink = torch.tensor([0.5, -30.0, 4.0, 1.0][:spec.query_heads]) if spec.sink else None
    sinks = [] if sink is None else [sink.clone().requires_grad_(True) for _ in range(2)]
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = attn(*leaves, **whole, return_lse=True, **({"sink": sinks[0]} if sinks else {}))
    out.backward(dout)

    layout = case["layout"]
    cp = context_parallel(attn, layout=layout, strategy=case.get("strategy", "auto"))
    local = [shard(t, dim=2, layout=layout).clone().requires_grad_(True) for t in (q, k, v)]
    segs = {} if seg is None else dict(seg_q=shard(seg, dim=0, layout=layout), seg_k=shard(seg, dim=0, layout=layout))
    out_l, lse_l = cp(*local, **segs, return_lse=True, **({"sink": sinks[1]} if sinks else {}))
    out_l.backward(shard(dout, dim=2, layout=layout))
    if sinks:                       # every rank's d(sink) is the whole sequence's
        check_close(f"{case['id']} rank {rank}/{world} dsink", sinks[1].grad, sinks[0].grad, dtype,
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
        sink_again = {"sink": sinks[0].detach().clone().requires_grad_(True)} if sinks else {}
        cp(*again, **segs, **sink_again).backward(shard(dout, dim=2, layout=layout))
        if sinks and not torch.equal(sink_again["sink"].grad, sinks[1].grad):
            raise AssertionError(f"{case['id']}: dsink differs between two runs")
        for name, a, b in zip(("dq", "dk", "dv"), again, local):
            if not torch.equal(a.grad, b.grad):
                raise AssertionError(f"{case['id']}: {name} differs between two runs")
    if world == 1 and not sinks:    # bitwise the plain call (a sink joins after a host-side merge)
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
