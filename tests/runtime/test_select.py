"""Content-based selection (`select: {top, block}`, SPEC.md "Content-based sparsity").

Unit tier: the spec field and the float64 reference's rule on hand-made cases. Interpreter tier:
the generated selection kernels and the list-walking attention kernels (forward, lse, gradients)
against the float64 reference that applies the rule itself, at odd sizes, Nq != Nk, explicit
q_offset, GQA/MQA, float32 and bfloat16, ties, and under torch.compile.
"""
from __future__ import annotations

import pytest
import torch

import attngen
from attngen import Spec
from attngen.checking import GRAD_TOLERANCE, check_close
from attngen.errors import SpecError
from attngen.reference import reference
from attngen.reference_select import selected_pairs
from attngen.runtime.launch_backward import reference_gradients
from attngen.spec import band, load_spec, segments


def select_spec(name, *, top=2, block=16, query_heads=4, kv_heads=2, head_dim=16, **fields) -> Spec:
    return Spec(name=name, query_heads=query_heads, kv_heads=kv_heads, head_dim=head_dim,
                select={"top": top, "block": block}, **fields)


def qkv(spec: Spec, nq: int, nk: int, gen, *, dtype=torch.float32, batch=2):
    def make(heads, n, d):
        return torch.randn(batch, heads, n, d, generator=gen).to(dtype)
    return (make(spec.query_heads, nq, spec.head_dim), make(spec.kv_heads, nk, spec.head_dim),
            make(spec.kv_heads, nk, spec.v_head_dim))


# -- the spec field -------------------------------------------------------------------------------
def test_select_field_yaml_python_and_hash():
    text = "name: moba\nheads: {query: 4, kv: 2}\nhead_dim: 16\ncausal: true\nselect: {top: 4, block: 64}\n"
    spec = load_spec(text)
    assert spec == select_spec("other", top=4, block=64, causal=True)
    assert load_spec(spec.to_dict()) == spec
    plain = Spec(query_heads=4, kv_heads=2, head_dim=16, causal=True)
    assert spec.content_hash() != plain.content_hash()
    assert spec.content_hash() != select_spec("x", top=3, block=64, causal=True).content_hash()
    assert "select" not in plain.canonical()          # specs without select hash as before


@pytest.mark.parametrize("value, field", [
    pytest.param({"top": 0, "block": 64}, "select.top", id="top-0"),
    pytest.param({"top": 2, "block": 48}, "select.block", id="block-not-power-of-two"),
    pytest.param({"top": 2, "block": 8}, "select.block", id="block-below-16"),
    pytest.param({"top": 2}, "select.block", id="block-missing"),
    pytest.param({"top": 2, "block": 64, "rows": 3}, "select.rows", id="unknown-key"),
    pytest.param([2, 64], "select", id="not-a-mapping"),
])
def test_select_refused_naming_the_field(value, field):
    with pytest.raises(SpecError) as err:
        Spec(query_heads=2, kv_heads=1, head_dim=16, select=value)
    assert err.value.field == field


def test_select_refused_on_linear_and_located_in_yaml():
    with pytest.raises(SpecError, match="select"):
        load_spec({"heads": 2, "head_dim": 16, "kind": "linear", "feature_map": "elu1",
                   "select": {"top": 1, "block": 16}})
    with pytest.raises(SpecError, match=r":4:\d+: select.block"):
        load_spec("heads: 2\nhead_dim: 16\nselect:\n  block: 20\n  top: 1\n")


# -- the reference's rule, by hand --------------------------------------------------------------------
def _one_hot_case(nq=32, nk=64, block=16):
    """q rows all e0; key block kb's keys are kb-dependent multiples of e0: gate = kb's scale."""
    q = torch.zeros(1, 1, nq, 4)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, nk, 4)
    scales = torch.tensor([3.0, 1.0, 5.0, 2.0])[: -(-nk // block)]
    k[0, 0, :, 0] = scales.repeat_interleave(block)[:nk]
    return q, k


def test_reference_picks_top_blocks_plus_own():
    spec = select_spec("ref_top", top=1, query_heads=1, kv_heads=1, head_dim=4)
    q, k = _one_hot_case()
    allowed = selected_pairs(spec, q, k, torch.ones(32, 64, dtype=torch.bool), q_offset=32)
    blocks = allowed[0, 0, ::16, ::16]               # (query block, key block)
    # query block 0 holds positions 32..47 (key block 2), block 1 positions 48..63 (key block 3);
    # the top-1 block is 2 (score 5) for both
    assert blocks.tolist() == [[False, False, True, False], [False, False, True, True]]


def test_reference_candidates_come_from_the_mask():
    spec = select_spec("ref_cand", top=1, query_heads=1, kv_heads=1, head_dim=4, causal=True)
    q, k = _one_hot_case()
    mask = spec.dense_mask(32, 64, q_offset=0)
    allowed = selected_pairs(spec, q, k, mask, q_offset=0)
    # rows 0..15 (block 0) may only see key block 0; rows 16..31 blocks 0, 1: top-1 among those is
    # block 0 (score 3 > 1), plus its own block 1
    assert allowed[0, 0, ::16, ::16].tolist() == [[True, False, False, False], [True, True, False, False]]
    assert not (allowed & ~mask).any()


def test_reference_ties_go_to_the_lower_block():
    spec = select_spec("ref_ties", top=2, query_heads=1, kv_heads=1, head_dim=4)
    q = torch.ones(1, 1, 16, 4)
    k = torch.ones(1, 1, 80, 4)                       # every key block has the same score
    allowed = selected_pairs(spec, q, k, torch.ones(16, 80, dtype=torch.bool), q_offset=64)
    assert allowed[0, 0, 0, ::16].tolist() == [True, True, False, False, True]     # 0, 1 + own 4


def test_reference_partial_blocks_average_what_they_have():
    spec = select_spec("ref_partial", top=1, query_heads=1, kv_heads=1, head_dim=4)
    q = torch.ones(1, 1, 16, 4)
    k = torch.zeros(1, 1, 40, 4)
    k[0, 0, :32] = 1.0                                # blocks 0, 1 have mean 1
    k[0, 0, 32:] = 1.5                                # block 2 has 8 keys of 1.5: its mean is 1.5
    allowed = selected_pairs(spec, q, k, torch.ones(16, 40, dtype=torch.bool), q_offset=0)
    assert allowed[0, 0, 0, ::16].tolist() == [True, False, True]                  # own 0 + top 2


def test_reference_top_above_candidates_is_the_mask(torch_rng):
    spec = select_spec("ref_all", top=64, causal=True)
    q, k, v = qkv(spec, 37, 53, torch_rng)
    plain = Spec(query_heads=4, kv_heads=2, head_dim=16, causal=True)
    torch.testing.assert_close(reference(spec, q, k, v)[0], reference(plain, q, k, v)[0], rtol=0, atol=0)


# -- kernels under the interpreter --------------------------------------------------------------------
def _check_forward(spec, q, k, v, **call):
    attn = attngen.compile(spec)
    out, lse = attn(q, k, v, return_lse=True, **call)
    want_out, want_lse = reference(spec, q, k, v, **call)
    check_close("out", out, want_out, q.dtype)
    check_close("lse", lse, want_lse, torch.float32 if q.dtype == torch.float32 else q.dtype)


FORWARD_CASES = [
    pytest.param(dict(causal=True), 70, 150, None, torch.float32, id="causal-gqa-nq70-nk150"),
    pytest.param(dict(causal=True, block=32, top=1), 61, 61, 5, torch.float32, id="causal-q_offset5-block32"),
    pytest.param(dict(), 45, 99, None, torch.bfloat16, id="no-mask-bf16"),
    pytest.param(dict(mask=band(left=40, right=0), query_heads=3, kv_heads=1), 80, 80, None, torch.float32,
                 id="sliding-window-mqa"),
    pytest.param(dict(causal=True, mask=band(left=50), top=3, query_heads=2, kv_heads=2), 33, 120, 100,
                 torch.bfloat16, id="band-mha-q_offset100-bf16"),
    pytest.param(dict(causal=True, head_dim={"qk": 24, "v": 16}, block=32), 40, 90, None, torch.float32,
                 id="dv-ne-dqk"),
]


@pytest.mark.parametrize("fields, nq, nk, q_offset, dtype", FORWARD_CASES)
def test_forward_matches_reference(fields, nq, nk, q_offset, dtype, torch_rng, request):
    spec = select_spec("sel_fwd_" + request.node.callspec.id.replace("-", "_"), **fields)
    q, k, v = qkv(spec, nq, nk, torch_rng, dtype=dtype)
    _check_forward(spec, q, k, v, q_offset=q_offset)


def test_forward_segments_per_batch_row(torch_rng):
    spec = select_spec("sel_fwd_segments", mask=segments(), causal=True)
    q, k, v = qkv(spec, 50, 50, torch_rng)
    seg = torch.tensor([[0] * 20 + [1] * 30, [0] * 45 + [1] * 5])
    _check_forward(spec, q, k, v, seg_q=seg, seg_k=seg)


def test_selection_is_sparse_and_matches_the_rule(torch_rng):
    """The kernels' own lists: exactly the tiles holding an allowed pair of the reference."""
    spec = select_spec("sel_lists", causal=True, top=1)
    q, k, _ = qkv(spec, 64, 96, torch_rng)
    launcher = attngen.compile(spec).launcher("fwd")
    selection = launcher.select(q, k, 32, None, None)
    ptr_p, idx_p, ptr_f, idx_f, rows = selection.lists(16, 16)
    visited = torch.zeros(2, 2, rows, 6, dtype=torch.bool)
    for ptr, idx in ((ptr_p, idx_p), (ptr_f, idx_f)):
        for row in range(len(ptr) - 1):
            visited.view(-1, 6)[row, idx[ptr[row]:ptr[row + 1]].long()] = True
    allowed = selected_pairs(spec, q, k, spec.dense_mask(64, 96), q_offset=32)       # (B, Hq, nq, nk)
    per_kv = allowed.view(2, 2, 2, 64, 96).any(dim=2)                               # the group's union
    holds = per_kv.view(2, 2, 4, 16, 6, 16).any(dim=(3, 5))
    assert torch.equal(visited, holds)
    assert holds.sum() < spec.dense_mask(64, 96).view(4, 16, 6, 16).any(dim=(1, 3)).sum() * 4


def test_kernel_tile_count_is_the_lists(torch_rng):
    """The forward's own COUNT_TILES count per (batch, query head, query tile) is its lists' length:
    what benchmarks/select_tiles.py counts from the lists."""
    spec = select_spec("sel_counts", causal=True, top=1)
    q, k, v = qkv(spec, 64, 96, torch_rng)
    launcher = attngen.compile(spec).launcher("fwd")
    _, _, counts = launcher.forward(q, k, v, count_tiles=True)
    cfg = launcher.config(16, q.dtype, q.device)
    ptr_p, _, ptr_f, _, rows = launcher.select(q, k, 32, None, None).lists(cfg.block_m, cfg.block_n)
    per_row = (ptr_p[1:] - ptr_p[:-1]) + (ptr_f[1:] - ptr_f[:-1])                  # (b, hk, tile)
    want = per_row.view(2, 2, 1, rows).expand(2, 2, spec.group, rows).reshape(-1)   # (b, h, tile)
    assert torch.equal(counts.cpu().long(), want.long())


def test_ties_in_the_kernels_go_to_the_lower_block(torch_rng):
    spec = select_spec("sel_ties", top=2, query_heads=2, kv_heads=1)
    q = torch.randn(1, 2, 16, 16, generator=torch_rng)
    block = torch.randn(1, 1, 16, 16, generator=torch_rng)
    k = block.repeat(1, 1, 5, 1)                      # five equal key blocks: five equal scores
    v = torch.randn(1, 1, 80, 16, generator=torch_rng)
    selection = attngen.compile(spec).launcher("fwd").select(q, k, 64, None, None)
    assert selection.chosen[0, 0, 0].tolist() == [True, True, False, False, True]
    _check_forward(spec, q, k, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gradients_match_reference(dtype, torch_rng):
    spec = select_spec(f"sel_bwd_{str(dtype)[6:]}", causal=True, top=1, block=32)
    check_gradients(spec, *qkv(spec, 45, 77, torch_rng, dtype=dtype), torch_rng, q_offset=20)


def check_gradients(spec, q, k, v, torch_rng, *, q_offset):
    """dq, dk, dv of the compiled spec against the reference's, for a random dout (also test_lsh.py's)."""
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = attngen.compile(spec)(*leaves, q_offset=q_offset)
    dout = torch.randn(out.shape, generator=torch_rng).to(q.dtype)
    got = torch.autograd.grad(out, leaves, dout)
    want = reference_gradients(spec, q, k, v, dout, q_offset=q_offset)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        check_close(name, g, w, q.dtype, table=GRAD_TOLERANCE)


def test_torch_compile_fullgraph_runs_the_selection_inside_the_op(torch_rng):
    spec = select_spec("sel_compiled", causal=True, top=1)
    check_compiled(spec, *qkv(spec, 40, 56, torch_rng))


def check_compiled(spec, q, k, v):
    """torch.compile(fullgraph=True) of a model calling the spec: forward and gradients against the
    reference (also test_lsh.py's)."""
    attn = attngen.compile(spec)
    model = torch.compile(lambda q, k, v: attn(q, k, v) * 2.0, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = model(*leaves)
    check_close("out", out, reference(spec, q, k, v)[0] * 2.0, torch.float32)
    out.sum().backward()
    want = reference_gradients(spec, q, k, v, torch.full(out.shape, 2.0))
    for name, leaf, w in zip(("dq", "dk", "dv"), leaves, want):
        check_close(name, leaf.grad, w, torch.float32, table=GRAD_TOLERANCE)


# -- decode ---------------------------------------------------------------------------------------------
def _pages(t, page_size, order):
    """A (B, Hkv, capacity, D) cache as pages (num_pages, page_size, Hkv, D) placed by `order`
    (a permutation of the B * pages per sequence), unused slots NaN; and the block table."""
    batch, hkv, capacity, d = t.shape
    per_seq = -(-capacity // page_size)
    t = torch.nn.functional.pad(t, (0, 0, 0, per_seq * page_size - capacity))
    t = t.reshape(batch, hkv, per_seq, page_size, d).permute(0, 2, 3, 1, 4).reshape(-1, page_size, hkv, d)
    out = torch.full_like(t, float("nan"))
    out[order] = t
    return out, order.reshape(batch, per_seq).to(torch.int32)


@pytest.mark.parametrize("nq, paged, dtype", [
    pytest.param(1, False, torch.float32, id="nq1-contiguous-fp32"),
    pytest.param(5, False, torch.bfloat16, id="nq5-contiguous-bf16"),
    pytest.param(3, True, torch.float32, id="nq3-paged-fp32"),
])
def test_decode_per_sequence(nq, paged, dtype, torch_rng):
    """Each sequence's new tokens are one query block; lengths 1 (or Nq), odd and full."""
    check_decode(select_spec(f"sel_decode_{nq}_{int(paged)}_{str(dtype)[6:]}", causal=True, top=2), nq, paged,
                 dtype, torch_rng, capacity=112, odd=77)


def check_decode(spec, nq, paged, dtype, torch_rng, *, capacity, odd):
    """Decode of 3 sequences of lengths Nq, `odd` and `capacity` (a contiguous cache, or pages in
    random order) against the reference on each sequence's keys (also test_lsh.py's)."""
    q = torch.randn(3, spec.query_heads, nq, spec.head_dim, generator=torch_rng).to(dtype)
    k, v = (torch.randn(3, spec.kv_heads, capacity, spec.head_dim, generator=torch_rng).to(dtype) for _ in range(2))
    seqlens = torch.tensor([nq, odd, capacity], dtype=torch.int32)
    attn = attngen.compile(spec)
    if paged:
        order = torch.randperm(3 * capacity // 16, generator=torch_rng)
        (k_pages, table), (v_pages, _) = _pages(k, 16, order), _pages(v, 16, order)
        out, lse = attn.decode(q, k_pages, v_pages, cache_seqlens=seqlens, block_table=table, return_lse=True)
    else:
        out, lse = attn.decode(q, k, v, cache_seqlens=seqlens, return_lse=True)
    for b, n in enumerate(seqlens.tolist()):
        want_out, want_lse = reference(spec, q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], decode=True)
        check_close(f"out[{b}] (n={n})", out[b:b + 1], want_out, dtype)
        check_close(f"lse[{b}] (n={n})", lse[b:b + 1], want_lse, torch.float32 if dtype == torch.float32 else dtype)


# -- cost, show, the shipped specs ------------------------------------------------------------------
def test_cost_bound_holds_and_is_top_blocks_per_query(torch_rng):
    from attngen.analysis.cost import cost
    spec = select_spec("sel_cost", top=2, causal=True, query_heads=2, kv_heads=1)
    for nq, nk, q_offset in ((80, 80, 0), (37, 101, None), (50, 70, 3)):
        c = cost(spec, n=nq, nk=nk, q_offset=q_offset)
        q_offset = nk - nq if q_offset is None else q_offset
        for seed in range(3):
            q, k, _ = qkv(spec, nq, nk, torch.Generator().manual_seed(seed), batch=1)
            allowed = selected_pairs(spec, q, k, spec.dense_mask(nq, nk, q_offset=q_offset), q_offset)
            assert int(allowed[0, 0].sum()) <= c.selected_pairs_bound <= c.allowed_pairs
    # no mask, aligned: every query sees its own block and exactly top others (all full blocks)
    plain = select_spec("sel_cost_plain", top=2, query_heads=2, kv_heads=1)
    assert cost(plain, n=64, nk=64).selected_pairs_bound == 64 * 3 * 16
    # the last key block holds 4 keys: its query block (own) takes 4, the others the top 2 full blocks
    assert cost(plain, n=64, nk=68, q_offset=0).selected_pairs_bound == 64 * 3 * 16


def test_show_draws_a_selection(capsys):
    from attngen.cli.main import main
    assert main(["show", "specs/select/moba.yaml", "--n", "1024", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "seed 1" in text and "visited" in text
    assert main(["show", "specs/gqa.yaml", "--n", "256", "--seed", "1"]) == 2


SELECT_SPECS = [p for p in sorted((__import__("pathlib").Path(__file__).resolve().parents[2] / "specs" / "select")
                                  .glob("*.yaml")) if load_spec(p).select is not None]      # lsh: test_lsh.py


@pytest.mark.parametrize("path", SELECT_SPECS, ids=lambda p: p.stem)
def test_shipped_select_specs_run(path, torch_rng):
    """Each specs/select file, with its mask, select and grouping kept but fewer and smaller heads."""
    spec = load_spec(path)
    small = Spec(name=f"{spec.name}_small", query_heads=2 * min(spec.group, 2), kv_heads=2, head_dim=16,
                 causal=spec.causal, mask=spec.mask, select={"top": 2, "block": 16})
    q, k, v = qkv(small, 57, 75, torch_rng, batch=1)
    _check_forward(small, q, k, v)


def test_context_parallel_refuses_select():
    from attngen.distributed import context_parallel
    with pytest.raises(ValueError, match="select"):
        context_parallel(select_spec("sel_cp", causal=True))
