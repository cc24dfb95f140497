"""Decode kernels on a shard of a sequence's cache (`k_offset`, `max_total`), merged through lse:
what `attngen.distributed` does across ranks (there: tests/runtime/test_distributed.py), here the
shards run in one process and are checked, merged, against the float64 reference of the whole
cache. Shards are cut at positions that are not tile multiples; some sequences end before the last
shard starts (its keys: none) or inside the first.
"""
import pytest
import torch

import attngen as A
from attngen.checking import check_close
from tests.codegen.test_decode import launcher, make_inputs, paged

SPECS = [
    A.Spec(name="shard_causal_gqa", query_heads=4, kv_heads=2, head_dim=32, causal=True),
    A.Spec(name="shard_window_alibi", query_heads=4, kv_heads=1, head_dim=32, causal=True, mask=A.band(left=30),
           alibi=True),
    A.Spec(name="shard_bigbird", query_heads=2, kv_heads=2, head_dim=32,
           mask=A.band(6) | A.global_tokens(2) | A.random(2, 16, seed=3)),
    A.Spec(name="shard_sinks_window", query_heads=4, kv_heads=2, head_dim=32, causal=True, mask=A.band(left=40),
           sink=True),
    A.load_spec({"name": "shard_prefix_formula", "heads": {"query": 4, "kv": 2}, "head_dim": 32,
                 "inputs": {"prefix": {"shape": ["B"], "dtype": "int32"},
                            "slope": {"shape": ["Hq"], "dtype": "float32"}},
                 "mask": "j <= i or j < prefix[b]", "score": "s - slope[h] * abs(i - j)"}),
]
# Three shards of a 160-position cache: 37, 64 and 59 positions; paged shards hold whole pages of 16.
CUTS = {"contiguous": (0, 37, 101, 160), "paged": (0, 48, 112, 160)}


def inputs_for(spec, batch, gen):
    given = {}
    for d in spec.all_inputs:
        if d.name == "sink":
            given["sink"] = torch.tensor([0.5, -30.0, 4.0, 1.0][:spec.query_heads])
        elif d.name == "prefix":
            given["prefix"] = torch.randint(0, 120, (batch,), generator=gen, dtype=torch.int32)
        else:
            given[d.name] = torch.rand(spec.query_heads, generator=gen) * 0.2
    return given


@pytest.mark.parametrize("layout", ["contiguous", pytest.param("paged", marks=pytest.mark.slow)])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_shards_merge_to_the_whole_cache(spec, layout):
    cuts = CUTS[layout]
    nq, capacity = 3, cuts[-1]
    seqlens = torch.tensor([160, 20, 101, 0, 137], dtype=torch.int32)
    batch = len(seqlens)
    q, k, v = make_inputs(spec, batch, nq, capacity, torch.float32, seed=5)
    given = inputs_for(spec, batch, torch.Generator().manual_seed(1))
    run = launcher(spec)
    no_sink = {"sink": torch.full((spec.query_heads,), float("-inf"))} if spec.sink else {}
    outs, lses = [], []
    for start, stop in zip(cuts, cuts[1:]):
        k_s, v_s = k[:, :, start:stop], v[:, :, start:stop]
        table = None
        if layout == "paged":
            k_s, v_s, table = paged(k_s.contiguous(), v_s.contiguous(), 16, seed=start)
        out, lse = run.decode(q, k_s, v_s, cache_seqlens=seqlens, block_table=table, inputs={**given, **no_sink},
                              k_offset=start, max_total=capacity)
        outs.append(out)
        lses.append(lse)
    out, lse = A.merge(outs, lses, sink=given.get("sink"))
    for b, n in enumerate(seqlens.tolist()):
        if n == 0:                  # no key: out 0, lse -inf (the sink's logit with sinks)
            assert torch.equal(out[b], torch.zeros_like(out[b]))
            empty = given["sink"][:, None].expand(-1, nq) if spec.sink else torch.full_like(lse[b], float("-inf"))
            assert torch.equal(lse[b], empty)
            continue
        whole = {name: (t[b:b + 1] if name == "prefix" else t) for name, t in given.items()}
        want_out, want_lse = A.reference(spec, q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                         q_offset=n - nq, **whole)
        check_close(f"out[{b}] (n={n})", out[b:b + 1], want_out, torch.float32)
        check_close(f"lse[{b}] (n={n})", lse[b:b + 1], want_lse, torch.float32)


def test_a_shard_refuses_lengths_past_the_whole_capacity():
    spec = SPECS[0]
    q, k, v = make_inputs(spec, 1, 1, 40, torch.float32)
    with pytest.raises(A.ShapeError, match=r"must lie in 0\.\.100"):
        launcher(spec).decode(q, k, v, cache_seqlens=torch.tensor([101], dtype=torch.int32), k_offset=60,
                              max_total=100)
    with pytest.raises(A.ShapeError, match="k_offset"):
        launcher(spec).decode(q, k, v, cache_seqlens=torch.tensor([10], dtype=torch.int32), k_offset=-1)
