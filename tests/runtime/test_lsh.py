"""LSH attention (`lsh: {buckets, seed, rounds}`, SPEC.md "Content-based sparsity").

Unit tier: the spec field, its refusals, and the float64 reference's rule on hand-made cases.
Interpreter tier: the kernel spec's generated kernels over bucket-sorted rows (forward, lse,
gradients) against the float64 reference that applies the rule itself, at odd sizes, Nq != Nk,
explicit q_offset, GQA/MQA, float32 and bfloat16, rounds 1 and 2, causal and band masks, mask and
score formulas reading b, h and inputs (a grad input too), packed documents (segments), random
masks; the tiles the kernels visit; torch.compile; decode (contiguous and paged, with inputs);
the refusals of select:, varlen and context parallelism.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attngen
from attngen import Spec
from attngen.errors import SpecError
from attngen.reference import reference
from attngen.reference_lsh import lsh_buckets, lsh_pairs
from attngen.spec import band, load_spec, segments
from test_select import _check_forward, check_compiled, check_decode, check_gradients, qkv

LSH_SPEC = Path(__file__).resolve().parents[2] / "specs" / "select" / "reformer_lsh.yaml"


def lsh_spec(name, *, buckets=4, rounds=2, seed=0, query_heads=4, kv_heads=2, head_dim=16, **fields) -> Spec:
    return Spec(name=name, query_heads=query_heads, kv_heads=kv_heads, head_dim=head_dim,
                lsh={"buckets": buckets, "seed": seed, "rounds": rounds}, **fields)


# -- the spec field -------------------------------------------------------------------------------
def test_lsh_field_yaml_python_and_hash():
    text = "name: r\nheads: {query: 4, kv: 2}\nhead_dim: 16\ncausal: true\nlsh: {buckets: 8, seed: 3, rounds: 2}\n"
    spec = load_spec(text)
    assert spec == lsh_spec("other", buckets=8, seed=3, rounds=2, causal=True)
    assert load_spec(spec.to_dict()) == spec
    plain = Spec(query_heads=4, kv_heads=2, head_dim=16, causal=True)
    assert "lsh" not in plain.canonical()             # specs without lsh hash as before
    hashes = {s.content_hash() for s in (spec, plain, lsh_spec("x", buckets=8, seed=4, rounds=2, causal=True),
                                         lsh_spec("x", buckets=8, seed=3, rounds=1, causal=True),
                                         lsh_spec("x", buckets=6, seed=3, rounds=2, causal=True))}
    assert len(hashes) == 5
    defaults = load_spec("heads: 2\nhead_dim: 16\nlsh: {buckets: 4}\n").lsh
    assert defaults.to_dict() == {"buckets": 4, "seed": 0, "rounds": 1}


@pytest.mark.parametrize("value, field", [
    pytest.param({"buckets": 7}, "lsh.buckets", id="odd-buckets"),
    pytest.param({"buckets": 0}, "lsh.buckets", id="zero-buckets"),
    pytest.param({"seed": 1}, "lsh.buckets", id="buckets-missing"),
    pytest.param({"buckets": 4, "rounds": 0}, "lsh.rounds", id="rounds-0"),
    pytest.param({"buckets": 4, "seed": -1}, "lsh.seed", id="negative-seed"),
    pytest.param({"buckets": 4, "seed": 1.5}, "lsh.seed", id="float-seed"),
    pytest.param({"buckets": 4, "hashes": 2}, "lsh.hashes", id="unknown-key"),
    pytest.param([4, 0], "lsh", id="not-a-mapping"),
])
def test_lsh_refused_naming_the_field(value, field):
    with pytest.raises(SpecError) as err:
        Spec(query_heads=2, kv_heads=1, head_dim=16, lsh=value)
    assert err.value.field == field


@pytest.mark.parametrize("fields, field, words", [
    pytest.param(dict(select={"top": 2, "block": 16}), "lsh", "select", id="with-select"),
])
def test_lsh_refuses_what_it_cannot_combine_with(fields, field, words):
    with pytest.raises(SpecError, match=words) as err:
        lsh_spec("refused", **fields)
    assert err.value.field == field


def test_lsh_refused_on_linear_and_located_in_yaml():
    with pytest.raises(SpecError, match="lsh"):
        load_spec({"heads": 2, "head_dim": 16, "kind": "linear", "feature_map": "elu1", "lsh": {"buckets": 4}})
    with pytest.raises(SpecError, match=r":4:\d+: lsh.buckets"):
        load_spec("heads: 2\nhead_dim: 16\nlsh:\n  buckets: 5\n")


# -- the reference's rule, by hand --------------------------------------------------------------------
def test_reference_buckets_are_the_spec_formula():
    x = torch.randn(1, 2, 9, 16, generator=torch.Generator().manual_seed(1))
    rot = torch.randn(3, 16, 4, generator=torch.Generator().manual_seed(7))
    got = lsh_buckets(x, 8, 7, 3)
    for r in range(3):
        proj = x @ rot[r]
        assert torch.equal(got[r], torch.cat([proj, -proj], -1).argmax(-1))
    zero = torch.zeros(1, 1, 1, 16)                   # all projections 0: the first maximum, bucket 0
    assert lsh_buckets(zero, 8, 7, 3).flatten().tolist() == [0, 0, 0]
    assert (got >= 0).all() and (got < 8).all()


def test_reference_pairs_are_mask_and_some_round():
    spec = lsh_spec("ref_pairs", rounds=2, causal=True, query_heads=2, kv_heads=1)
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 2, 6, 16, generator=gen), torch.randn(1, 1, 7, 16, generator=gen)
    mask = spec.dense_mask(6, 7)
    got = lsh_pairs(spec, q, k, mask)
    bq, bk = lsh_buckets(q, 4, 0, 2), lsh_buckets(k, 4, 0, 2)
    for h in range(2):
        for i in range(6):
            for j in range(7):
                same = any(bq[r, 0, h, i] == bk[r, 0, 0, j] for r in range(2))
                assert bool(got[0, h, i, j]) == (bool(mask[i, j]) and same)


# -- kernels under the interpreter --------------------------------------------------------------------
FORWARD_CASES = [
    pytest.param(dict(causal=True, alibi=True), 37, 53, None, torch.float32, id="causal-alibi-gqa-rounds2-nq37-nk53"),
    pytest.param(dict(rounds=1, mask=band(5), query_heads=2, kv_heads=2), 41, 70, 12, torch.bfloat16,
                 id="band-mha-rounds1-q_offset12-bf16"),
    pytest.param(dict(causal=True, query_heads=3, kv_heads=1, buckets=2), 29, 29, -4, torch.float32,
                 id="causal-mqa-q_offset-4-empty-rows", marks=pytest.mark.slow),
    pytest.param(dict(mask="(i - j) % 3 != 1", buckets=6), 45, 31, None, torch.bfloat16,
                 id="formula-mask-bf16", marks=pytest.mark.slow),
    pytest.param(dict(causal=True, head_dim={"qk": 24, "v": 16}, softcap=5.0), 40, 40, None, torch.float32,
                 id="dv-ne-dqk-softcap", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("fields, nq, nk, q_offset, dtype", FORWARD_CASES)
def test_forward_matches_reference(fields, nq, nk, q_offset, dtype, torch_rng, request):
    spec = lsh_spec("lsh_fwd_" + request.node.callspec.id.replace("-", "_"), **fields)
    q, k, v = qkv(spec, nq, nk, torch_rng, dtype=dtype)
    _check_forward(spec, q, k, v, q_offset=q_offset)


@pytest.mark.parametrize("dtype, fields", [
    pytest.param(torch.float32, dict(causal=True, alibi=True), id="fp32-causal-alibi-gqa-rounds2"),
    pytest.param(torch.bfloat16, dict(mask=band(left=9, right=3), rounds=1, query_heads=2, kv_heads=1),
                 id="bf16-band-mqa-rounds1"),
])
def test_gradients_match_reference(dtype, fields, torch_rng, request):
    spec = lsh_spec("lsh_bwd_" + request.node.callspec.id.replace("-", "_"), **fields)
    check_gradients(spec, *qkv(spec, 35, 47, torch_rng, dtype=dtype, batch=1), torch_rng, q_offset=15)


def test_sinks_join_once_forward_backward_and_decode(torch_rng):
    """A sink counts once per row after the rounds merge (rows with no key: lse = sink); its
    gradient and q, k, v's match the reference."""
    from attngen.checking import GRAD_TOLERANCE, check_close
    from attngen.runtime.launch_backward import reference_gradients
    spec = lsh_spec("lsh_sink", causal=True, sink=True, query_heads=2, kv_heads=1)
    q, k, v = qkv(spec, 23, 31, torch_rng, batch=1)
    sink = torch.randn(2, generator=torch_rng)
    _check_forward(spec, q, k, v, q_offset=-3, sink=sink)          # the first rows see no key
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, sink)]
    out = attngen.compile(spec)(*leaves[:3], q_offset=-3, sink=leaves[3])
    dout = torch.randn(out.shape, generator=torch_rng)
    got = torch.autograd.grad(out, leaves, dout)
    want = reference_gradients(spec, q, k, v, dout, q_offset=-3, inputs={"sink": sink})
    for name, g, w in zip(("dq", "dk", "dv", "dsink"), got, want):
        check_close(name, g, w, torch.float32, table=GRAD_TOLERANCE)
    cache_k, cache_v = torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
    empty = torch.tensor([0], dtype=torch.int32)                     # a sequence with no key yet
    out, lse = attngen.compile(spec).decode(q[:, :, :2], cache_k, cache_v, cache_seqlens=empty, return_lse=True,
                                            sink=sink)
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(lse[0, :, 0], sink)


def _round_allowed(spec, q, k, q_offset, inputs=None, seg=(None, None)):
    """bool (R, B, Hq, Nq, Nk): pairs the mask allows whose FIRST shared bucket is in round r."""
    lsh = spec.lsh
    bq = lsh_buckets(q, lsh.buckets, lsh.seed, lsh.rounds)
    bk = lsh_buckets(k, lsh.buckets, lsh.seed, lsh.rounds).repeat_interleave(spec.group, dim=2)
    same = bq[..., :, None] == bk[..., None, :]
    mask = spec.dense_mask(q.shape[2], k.shape[2], q_offset, *seg, inputs=inputs or {}, batch=q.shape[0])
    seen = torch.zeros_like(same[0])
    out = []
    for r in range(lsh.rounds):
        out.append(same[r] & ~seen & mask)
        seen |= same[r]
    return torch.stack(out), bq, bk


def _check_lists(spec, runner, q, k, q_offset, bm, bn, inputs=None, seg=(None, None)):
    """Per round, the lists hold exactly the tiles (of the bucket-sorted rows) holding a pair
    allowed in that round, FULL exactly where every real pair is; returns each round's per-row
    list lengths."""
    heads, nq, nk = spec.query_heads, q.shape[2], k.shape[2]
    tq, tk = -(-nq // bm), -(-nk // bn)
    allowed, _, _ = _round_allowed(spec, q, k, q_offset, inputs, seg)
    real = torch.nn.functional.pad(torch.ones(nq, nk, dtype=torch.bool), (0, tk * bn - nk, 0, tq * bm - nq))
    lengths = []
    for r, rnd in enumerate(runner.plan(q, k, q_offset, inputs, *seg)):
        ptr_p, idx_p, ptr_f, idx_f, rows = rnd.tiles.lists(bm, bn)
        lengths.append((ptr_p[1:] - ptr_p[:-1]) + (ptr_f[1:] - ptr_f[:-1]))
        visited, full = (torch.zeros(heads, tq, tk, dtype=torch.bool) for _ in range(2))
        for ptr, idx, seen in ((ptr_p, idx_p, visited), (ptr_f, idx_f, visited), (ptr_f, idx_f, full)):
            for row in range(len(ptr) - 1):
                seen.view(-1, tk)[row, idx[ptr[row]:ptr[row + 1]].long()] = True
        perm_q, perm_k = rnd.perm_q[0], rnd.perm_k[0]                              # (Hq, N)
        in_order = torch.stack([allowed[r, 0, h][perm_q[h]][:, perm_k[h]] for h in range(heads)])
        padded = torch.nn.functional.pad(in_order, (0, tk * bn - nk, 0, tq * bm - nq))
        holds = padded.view(heads, tq, bm, tk, bn).any(dim=(2, 4))
        assert torch.equal(visited, holds), f"round {r}"
        every = (padded | ~real).view(heads, tq, bm, tk, bn).all(dim=(2, 4)) & holds
        assert torch.equal(full, every), f"round {r}"
    return lengths


def test_tiles_visited_are_the_tiles_holding_an_allowed_pair(torch_rng):
    """The kernel's own COUNT_TILES count per round is its lists' length, and the lists are exact."""
    spec = lsh_spec("lsh_tiles", causal=True, rounds=2, query_heads=2, kv_heads=1)
    nq, nk, q_offset = 70, 90, 20
    q, k, v = qkv(spec, nq, nk, torch_rng, batch=1)
    runner = attngen.compile(spec).kernels.lsh()
    _, _, counts = runner.forward(q, k, v, q_offset, count_tiles=True)
    cfg = runner.fwd.config(16, q.dtype, q.device)
    lengths = _check_lists(spec, runner, q, k, q_offset, cfg.block_m, cfg.block_n)
    for count, length in zip(counts, lengths):
        assert torch.equal(count.long(), length.long())
    assert sum(int(c.sum()) for c in counts) > 0


@pytest.mark.parametrize("fields, tiles", [
    pytest.param(dict(causal=True, rounds=3, buckets=2), (16, 16), id="causal-3-rounds-counted"),
    pytest.param(dict(mask=band(left=20, right=7), rounds=2, buckets=4), (32, 16), id="band-counted"),
    pytest.param(dict(mask=attngen.blocks(24) & band(left=30), rounds=1, buckets=2), (16, 32), id="blocks-runs"),
    pytest.param(dict(mask="(i + j) % 5 != 0", rounds=2, buckets=2), (16, 16), id="formula-settled"),
    pytest.param(dict(rounds=5, buckets=2), (16, 16), id="no-mask-5-rounds-settled-past-4"),
])
def test_lists_are_exact_on_every_path(fields, tiles, torch_rng):
    """The three ways the lists are made (runs, runs with earlier rounds counted, pairs settled)
    give the tiles holding an allowed pair, FULL where all are; no kernel runs."""
    from attngen.runtime.lsh import LshAttention
    spec = lsh_spec("lsh_lists", query_heads=2, kv_heads=1, **fields)
    q, k, _ = qkv(spec, 83, 61, torch_rng, batch=1)
    for q_offset in (0, 30):
        _check_lists(spec, LshAttention(spec, None), q, k, q_offset, *tiles)


# Prefix-LM per sequence with a T5-like learned relative bias (issue 16: lsh with formulas and inputs).
PREFIX_T5 = dict(mask="j <= i or j < prefix[b]", score="s + rel[h, min(max(i - j, -8), 8) + 8]",
                 inputs={"prefix": {"shape": ["B"], "dtype": "int32"},
                         "rel": {"shape": ["Hq", 17], "dtype": "float32", "grad": True}})


def prefix_t5_inputs(spec, batch, gen):
    return {"prefix": torch.tensor([5, 20, 0][:batch], dtype=torch.int32),
            "rel": torch.randn(spec.query_heads, 17, generator=gen)}


def check_with_inputs(spec, q, k, v, inputs, gen, *, q_offset, grads=True):
    """Forward, lse, dq/dk/dv and the grad inputs' gradients against the float64 reference."""
    from attngen.checking import GRAD_TOLERANCE, check_close
    from attngen.runtime.launch_backward import reference_gradients
    _check_forward(spec, q, k, v, q_offset=q_offset, **inputs)
    if not grads:
        return
    names = [d.name for d in spec.inputs if d.grad]
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, *(inputs[n] for n in names))]
    out = attngen.compile(spec)(*leaves[:3], q_offset=q_offset, **{**inputs, **dict(zip(names, leaves[3:]))})
    dout = torch.randn(out.shape, generator=gen).to(q.dtype)
    got = torch.autograd.grad(out, leaves, dout)
    want = reference_gradients(spec, q, k, v, dout, q_offset=q_offset, inputs=inputs)
    for name, g, w in zip(("dq", "dk", "dv", *("d" + n for n in names)), got, want, strict=True):
        check_close(name, g, w, q.dtype, table=GRAD_TOLERANCE)


@pytest.mark.parametrize("dtype, fields, nq, nk, q_offset", [
    pytest.param(torch.float32, dict(query_heads=2, kv_heads=1), 29, 35, 6, id="fp32-gqa-rounds2-nq29-nk35-q_offset6"),
    pytest.param(torch.float32, dict(), 37, 45, None, id="fp32-4-2-heads-rounds2-nq37-nk45", marks=pytest.mark.slow),
    pytest.param(torch.bfloat16, dict(rounds=1, alibi=True, query_heads=3, kv_heads=1), 33, 29, None,
                 id="bf16-mqa-alibi-rounds1", marks=pytest.mark.slow),
])
def test_prefix_lm_with_learned_bias_matches_reference(dtype, fields, nq, nk, q_offset, torch_rng, request):
    """A mask reading b and an input, a score reading h and a grad input (and ALiBi before it):
    the kernel spec reads them through the flattened row's lsh_b / lsh_h and the user's tensors."""
    spec = lsh_spec("lsh_t5_" + request.node.callspec.id.replace("-", "_"), **PREFIX_T5, **fields)
    q, k, v = qkv(spec, nq, nk, torch_rng, dtype=dtype)
    check_with_inputs(spec, q, k, v, prefix_t5_inputs(spec, 2, torch_rng), torch_rng, q_offset=q_offset)


@pytest.mark.slow
def test_grad_input_with_batch_and_kv_head_axes(torch_rng):
    """A grad input with axes B (zero-padded to B·Hq rows for the kernels, its gradient cut back)
    and Hkv (a fixed size in the kernel spec), read through lsh_b / lsh_hk."""
    spec = lsh_spec("lsh_bias_b_hk", query_heads=2, kv_heads=1, causal=True, score="s + bias[b, hk, j]",
                    inputs={"bias": {"shape": ["B", "Hkv", "Nk"], "dtype": "float32", "grad": True}})
    q, k, v = qkv(spec, 21, 27, torch_rng)
    check_with_inputs(spec, q, k, v, {"bias": torch.randn(2, 1, 27, generator=torch_rng)}, torch_rng, q_offset=6)


def test_decode_with_inputs_per_sequence(torch_rng):
    """Decode hands each sequence its own rows of the inputs' B axis."""
    from attngen.checking import check_close
    spec = lsh_spec("lsh_t5_decode", query_heads=2, kv_heads=1, **PREFIX_T5)
    q = torch.randn(2, 2, 3, 16, generator=torch_rng)
    k, v = (torch.randn(2, 1, 32, 16, generator=torch_rng) for _ in range(2))
    inputs = {"prefix": torch.tensor([4, 20], dtype=torch.int32), "rel": torch.randn(2, 17, generator=torch_rng)}
    seqlens = torch.tensor([13, 32], dtype=torch.int32)
    out, lse = attngen.compile(spec).decode(q, k, v, cache_seqlens=seqlens, return_lse=True, **inputs)
    for b, n in enumerate(seqlens.tolist()):
        want_out, want_lse = reference(spec, q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], decode=True,
                                       prefix=inputs["prefix"][b:b + 1], rel=inputs["rel"])
        check_close(f"out[{b}]", out[b:b + 1], want_out, torch.float32)
        check_close(f"lse[{b}]", lse[b:b + 1], want_lse, torch.float32)


def test_lists_exact_with_a_mask_reading_the_batch_head_and_inputs(torch_rng):
    """The settled path evaluates the mask per flattened row (its batch and head, the user's inputs)."""
    from attngen.runtime.lsh import LshAttention
    spec = lsh_spec("lsh_lists_inputs", query_heads=2, kv_heads=1, mask="j <= i + h or j < prefix[b]",
                    inputs={"prefix": {"shape": ["B"], "dtype": "int32"}})
    q, k, _ = qkv(spec, 53, 41, torch_rng, batch=1)
    _check_lists(spec, LshAttention(spec, None), q, k, 7, 16, 16, {"prefix": torch.tensor([9], dtype=torch.int32)})


@pytest.mark.parametrize("dtype, fields, nq, nk, q_offset, batched", [
    pytest.param(torch.float32, dict(query_heads=2, kv_heads=1), 31, 31, None, True, id="fp32-causal-gqa-2d-ids"),
    pytest.param(torch.bfloat16, dict(rounds=1), 27, 40, 13, False, id="bf16-causal-nq27-nk40-q_offset13-1d-ids",
                 marks=pytest.mark.slow),
])
def test_packed_documents_match_reference(dtype, fields, nq, nk, q_offset, batched, torch_rng, request):
    """A segments mask (packed documents): the ids travel through each round's permutation as the
    inputs lsh_docq / lsh_dock (the kernel spec's own `segments` holds the buckets)."""
    from attngen.checking import GRAD_TOLERANCE, check_close
    from attngen.runtime.launch_backward import reference_gradients
    spec = lsh_spec("lsh_docs_" + request.node.callspec.id.replace("-", "_"), causal=True, mask=segments(), **fields)
    q, k, v = qkv(spec, nq, nk, torch_rng, dtype=dtype)
    ids = torch.tensor([[0] * 10 + [1] * 12 + [2] * 9, [0] * 20 + [1] * 11]) if batched else None
    seg = (ids, ids) if batched else (torch.arange(nq) // 9, (torch.arange(nk) - 13).clamp(min=0) // 9)
    _check_forward(spec, q, k, v, q_offset=q_offset, seg_q=seg[0], seg_k=seg[1])
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = attngen.compile(spec)(*leaves, q_offset=q_offset, seg_q=seg[0], seg_k=seg[1])
    dout = torch.randn(out.shape, generator=torch_rng).to(dtype)
    got = torch.autograd.grad(out, leaves, dout)
    want = reference_gradients(spec, q, k, v, dout, q_offset=q_offset, seg_q=seg[0], seg_k=seg[1])
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        check_close(name, g, w, dtype, table=GRAD_TOLERANCE)


@pytest.mark.slow
def test_random_mask_matches_reference(torch_rng):
    """A random mask: each permuted query row's drawn key blocks travel as an input (B·Hq, Nq, per_row)."""
    spec = lsh_spec("lsh_random", query_heads=2, kv_heads=1, mask=attngen.random(2, 8, 3) | band(3))
    q, k, v = qkv(spec, 29, 45, torch_rng)
    _check_forward(spec, q, k, v, q_offset=5)
    check_gradients(spec, q, k, v, torch_rng, q_offset=5)


def test_lists_exact_with_packed_documents(torch_rng):
    from attngen.runtime.lsh import LshAttention
    spec = lsh_spec("lsh_lists_docs", query_heads=2, kv_heads=1, causal=True, mask=segments())
    q, k, _ = qkv(spec, 45, 45, torch_rng, batch=1)
    ids = torch.arange(45) // 14
    _check_lists(spec, LshAttention(spec, None), q, k, 0, 16, 16, seg=(ids, ids))
    spec = lsh_spec("lsh_lists_random", query_heads=2, kv_heads=1, mask=attngen.random(1, 16, 2) & band(20))
    _check_lists(spec, LshAttention(spec, None), q, k, 9, 16, 16)


def test_torch_compile_fullgraph_forward_and_backward(torch_rng):
    spec = lsh_spec("lsh_compiled", causal=True, rounds=2, query_heads=2, kv_heads=1)
    check_compiled(spec, *qkv(spec, 27, 33, torch_rng, batch=1))


def test_float64_runs_the_reference(torch_rng):
    spec = lsh_spec("lsh_f64", causal=True)
    q, k, v = (t.double() for t in qkv(spec, 12, 15, torch_rng, batch=1))
    out = attngen.compile(spec)(q, k, v)
    torch.testing.assert_close(out, reference(spec, q, k, v)[0], rtol=0, atol=0)


# -- decode ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nq, paged, dtype", [
    pytest.param(1, False, torch.float32, id="nq1-contiguous-fp32"),
    pytest.param(3, True, torch.bfloat16, id="nq3-paged-bf16"),
    pytest.param(5, False, torch.bfloat16, id="nq5-contiguous-bf16", marks=pytest.mark.slow),
])
def test_decode_per_sequence(nq, paged, dtype, torch_rng):
    """Each sequence's new tokens' buckets against its cache keys' buckets; lengths 1 (or Nq),
    odd and full, against the reference on that sequence's keys."""
    check_decode(lsh_spec(f"lsh_decode_{nq}_{int(paged)}_{str(dtype)[6:]}", causal=True, rounds=2), nq, paged,
                 dtype, torch_rng, capacity=48, odd=29)


# -- what is refused at call time ---------------------------------------------------------------
def test_varlen_and_context_parallel_are_refused_with_the_reason(torch_rng):
    spec = lsh_spec("lsh_refusals", causal=True)
    attn = attngen.compile(spec)
    with pytest.raises(Exception, match="lsh"):
        attn.varlen(torch.randn(5, 4, 16), torch.randn(5, 2, 16), torch.randn(5, 2, 16),
                    torch.tensor([0, 5], dtype=torch.int32), torch.tensor([0, 5], dtype=torch.int32))
    from attngen.distributed import context_parallel
    with pytest.raises(ValueError, match="lsh"):
        context_parallel(attn)
    with pytest.raises(Exception, match="seg_q"):
        attn(*qkv(spec, 8, 8, torch_rng, batch=1), seg_q=torch.zeros(8, dtype=torch.int32),
             seg_k=torch.zeros(8, dtype=torch.int32))


def test_shipped_lsh_spec_runs(torch_rng):
    """specs/select/reformer_lsh.yaml with its mask, buckets and rounds kept, fewer and smaller heads."""
    spec = load_spec(LSH_SPEC)
    small = Spec(name=f"{spec.name}_small", query_heads=2, kv_heads=2, head_dim=16, causal=spec.causal,
                 mask=spec.mask, lsh=spec.lsh)
    q, k, v = qkv(small, 45, 45, torch_rng, batch=1)
    _check_forward(small, q, k, v)


def test_show_draws_each_rounds_sorted_tiles_and_cost_notes_the_data(capsys):
    from attngen.analysis.cost import cost
    from attngen.cli.main import main
    assert main(["show", str(LSH_SPEC), "--n", "512", "--block", "32", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "seed 1" in text and "round 0:" in text and "round 1:" in text and "visited" in text
    notes = " ".join(cost(load_spec(LSH_SPEC), n=1024).notes)
    assert "lsh: 8 buckets, 2 rounds" in notes and "23.4%" in notes
