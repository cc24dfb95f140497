"""The generated backward kernels under Triton's interpreter (CPU), against torch autograd through
the float64 reference, per named gradient (dq, dk, dv); plus the transposed intervals and the
key-major kernel's closed-form query-tile ranges against brute force.

Shapes are tiny and odd (37 x 53 by default, tiles of 16) so that every tile kind appears: ragged
last tiles, partial and full tiles, rows with no key.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sympy
import torch

import attngen
from attngen import Spec
from attngen.analysis.configs import TileConfig
from attngen.analysis.intervals import evaluate_bound, key_interval, query_interval
from attngen.analysis.lowering_backward import BackwardConfig, lower_backward
from attngen.checking import GRAD_TOLERANCE, check_close
from attngen.codegen.emit import generate
from attngen.reference import _softmax_reference
from attngen.spec import All_, band, blocks, causal, columns, global_tokens, segments, stride
from attngen.spec.predicates import i, j

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
SOFTMAX_SPECS = [s for s in attngen.load_specs(SPECS_DIR) if s.kind == "softmax"]
TILES16 = BackwardConfig(TileConfig(16, 16, 4, 1), TileConfig(16, 16, 4, 1))
# Key-major and query-major tiles that differ: two different block maps, ranges at two tile sizes.
TILES_MIXED = BackwardConfig(TileConfig(16, 32, 4, 1), TileConfig(32, 16, 4, 1))


# -- helpers ------------------------------------------------------------------------------------
def small(spec: Spec, *, head_dim: int = 16, kv_heads: int | None = None, query_heads: int | None = None,
          **changes) -> Spec:
    """The spec with the same mask and modifiers and few heads: MHA stays MHA, MQA stays MQA, GQA
    keeps its group when it is small (up to 4) and two kv heads."""
    if query_heads is None:
        if spec.kv_heads == spec.query_heads:
            query_heads, kv_heads = 2, 2
        elif spec.kv_heads == 1:
            query_heads, kv_heads = 3, 1
        else:
            kv_heads = 2
            query_heads = 2 * min(spec.group, 4)
    fields = dict(name=spec.name, query_heads=query_heads, kv_heads=kv_heads, head_dim=head_dim,
                  causal=spec.causal, mask=spec.mask, scale=spec.scale, softcap=spec.softcap,
                  alibi=spec.alibi)
    fields.update(changes)
    return Spec(**fields)


def tensors(spec: Spec, nq: int, nk: int, gen: torch.Generator, *, dtype=torch.float32, batch: int = 1,
            bnhd: bool = False):
    """q, k, v, dout; with `bnhd`, transposed views of (B, N, H, D) tensors (non-contiguous)."""
    def make(heads, n):
        if bnhd:
            return torch.randn(batch, n, heads, spec.head_dim, generator=gen).to(dtype).transpose(1, 2)
        return torch.randn(batch, heads, n, spec.head_dim, generator=gen).to(dtype)
    return (make(spec.query_heads, nq), make(spec.kv_heads, nk), make(spec.kv_heads, nk),
            make(spec.query_heads, nq))


def autograd_reference(spec, q, k, v, dout, *, q_offset=None, seg_q=None, seg_k=None):
    """(dq, dk, dv) float64 by torch autograd through the reference (K, V repeated in the graph)."""
    leaves = [t.detach().to(torch.float64).requires_grad_(True) for t in (q, k, v)]
    q64, k64, v64 = leaves
    out, _ = _softmax_reference(spec, q64, k64.repeat_interleave(spec.group, 1),
                                v64.repeat_interleave(spec.group, 1), q_offset, seg_q, seg_k)
    return torch.autograd.grad(out, leaves, dout.to(torch.float64), allow_unused=True)


def kernel_gradients(spec, q, k, v, dout, *, config=TILES16, **call):
    """The generated kernels' (dq, dk, dv), from the reference's out and lse (backward alone)."""
    out, lse = attngen.reference(spec, q, k, v, **call)
    return attngen.compile(spec).kernels.backward_impl(q, k, v, out.to(q.dtype), lse.to(torch.float32), dout,
                                                       config=config, **call)


def check_gradients(spec, q, k, v, dout, *, config=TILES16, **call):
    got = kernel_gradients(spec, q, k, v, dout, config=config, **call)
    want = autograd_reference(spec, q, k, v, dout, **call)
    for name, g, w, x in zip(("dq", "dk", "dv"), got, want, (q, k, v)):
        assert g.shape == x.shape and g.dtype == x.dtype, f"{name}: {g.shape} {g.dtype}"
        assert g.stride() == x.stride(), f"{name} has strides {g.stride()}, its input {x.stride()}"
        check_close(name, g, w, x.dtype, table=GRAD_TOLERANCE)
    return got


# -- every shipped softmax spec ------------------------------------------------------------------
# (nq, nk) per spec where the default 37 x 53 would not show its structure (or is refused: bigbird
# draws 3 random key blocks of 64, so it needs at least 3 key blocks).
SIZES = {"bigbird": (45, 197), "sparse_fixed": (41, 139), "sparse_strided": (37, 141),
         "block_local": (37, 150)}


# float32 for every spec, and one 16-bit dtype each (alternating: a sampled product, not the full one).
EVERY_SPEC_CASES = [pytest.param(s, torch.float32, id=f"{s.name}-fp32") for s in SOFTMAX_SPECS] + [
    pytest.param(s, dtype, id=f"{s.name}-{str(dtype)[6:]}")
    for s, dtype in zip(SOFTMAX_SPECS, [torch.float16, torch.bfloat16] * len(SOFTMAX_SPECS))]


@pytest.mark.parametrize("spec, dtype", EVERY_SPEC_CASES)
def test_every_spec(spec, dtype, torch_rng):
    spec = small(spec, head_dim=24 if spec.name == "gemma2_softcap" else 16)
    nq, nk = SIZES.get(spec.name, (37, 53))
    call = {}
    if spec.uses_segments:
        call = dict(seg_q=torch.tensor([0] * 10 + [1] * 20 + [2] * (nq - 30)),
                    seg_k=torch.tensor([0] * 20 + [1] * 25 + [2] * (nk - 45)))
    check_gradients(spec, *tensors(spec, nq, nk, torch_rng, dtype=dtype), **call)


# -- masks small enough to show partial, full and empty tiles at these sizes -------------------
SMALL_MASKS = [
    pytest.param(dict(causal=True), id="causal"),
    pytest.param(dict(mask=band(left=9, right=4)), id="band-9-4"),
    pytest.param(dict(mask=band(left=6), causal=True), id="sliding-window-6"),
    pytest.param(dict(mask=blocks(12)), id="blocks-12"),
    pytest.param(dict(mask=All_((blocks(20), band(left=7, right=2)))), id="blocks20-and-band"),
    pytest.param(dict(mask=band(left=8) | global_tokens(first=3)), id="longformer-like"),
    pytest.param(dict(mask=band(left=10) | stride(7), causal=True), id="strided-like"),
    pytest.param(dict(mask=blocks(16) | columns(16, 3), causal=True), id="fixed-like"),
]


@pytest.mark.parametrize("mask", SMALL_MASKS)
@pytest.mark.parametrize("config", [pytest.param(TILES16, id="t16"), pytest.param(TILES_MIXED, id="mixed")])
def test_small_masks(mask, config, torch_rng):
    spec = Spec(name="small", query_heads=4, kv_heads=2, head_dim=16, **mask)
    check_gradients(spec, *tensors(spec, 37, 53, torch_rng), config=config)


# -- head grouping, layouts, dtypes --------------------------------------------------------------
@pytest.mark.parametrize("heads", [pytest.param((6, 2), id="gqa-3"), pytest.param((4, 1), id="mqa"),
                                   pytest.param((3, 3), id="mha")])
def test_grouping(heads, torch_rng):
    spec = Spec(name="g", query_heads=heads[0], kv_heads=heads[1], head_dim=16, mask=band(left=11, right=5))
    check_gradients(spec, *tensors(spec, 37, 53, torch_rng, batch=2))


@pytest.mark.parametrize("mask", [pytest.param(dict(causal=True), id="ranges"),
                                  pytest.param(dict(mask=band(left=5) | global_tokens(first=2)), id="lists")])
def test_non_contiguous_bnhd(mask, torch_rng):
    spec = Spec(name="nc", query_heads=4, kv_heads=2, head_dim=16, **mask)
    q, k, v, dout = tensors(spec, 37, 53, torch_rng, batch=2, bnhd=True)
    assert not q.is_contiguous() and not dout.is_contiguous()
    check_gradients(spec, q, k, v, dout)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes(dtype, torch_rng):
    spec = Spec(name="d", query_heads=4, kv_heads=2, head_dim=32, causal=True, softcap=20.0)
    check_gradients(spec, *tensors(spec, 37, 53, torch_rng, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_lists(dtype, torch_rng):
    spec = Spec(name="d", query_heads=2, kv_heads=1, head_dim=16, mask=band(left=6) | global_tokens(first=2),
                causal=True, alibi=True)
    check_gradients(spec, *tensors(spec, 37, 53, torch_rng, dtype=dtype))


# -- positions, modifiers, segments --------------------------------------------------------------
@pytest.mark.parametrize("q_offset", [0, 7, -9, 60])
def test_q_offset(q_offset, torch_rng):
    spec = Spec(name="o", query_heads=2, kv_heads=1, head_dim=16, mask=band(left=12), causal=True)
    check_gradients(spec, *tensors(spec, 37, 53, torch_rng), q_offset=q_offset)


@pytest.mark.parametrize("mask", [pytest.param(dict(causal=True), id="causal"),
                                  pytest.param(dict(mask=band(left=3, right=3) | stride(50)), id="lists")])
def test_empty_rows_have_zero_gradient(mask, torch_rng):
    # q_offset -20: the first 20 rows have positions < 0 and, under causal or a narrow band far from
    # the keys, see no key (lse = -inf). Their dq is exactly 0; nothing is NaN.
    spec = Spec(name="e", query_heads=2, kv_heads=1, head_dim=16, **mask)
    q, k, v, dout = tensors(spec, 37, 19, torch_rng)
    out, lse = attngen.reference(spec, q, k, v, q_offset=-20)
    empty = torch.isinf(lse[0, 0])
    assert empty.any()
    dq, dk, dv = check_gradients(spec, q, k, v, dout, q_offset=-20)
    assert torch.equal(dq[:, :, empty], torch.zeros_like(dq[:, :, empty]))


@pytest.mark.parametrize("mask", [pytest.param(dict(causal=True, alibi=True), id="causal-alibi"),
                                  pytest.param(dict(mask=band(left=3, right=3) | stride(50)), id="lists")])
@pytest.mark.parametrize("head_dim", [16, 24])
def test_whole_query_tiles(mask, head_dim, torch_rng):
    # nq = 64, a multiple of the dK/dV kernel's query tile (EVEN_M): its lse2 load has no +inf for
    # rows past nq. q_offset -20 leaves rows with no key (lse2 = +inf from the preprocess, p = 0
    # even where ALiBi makes scores large); head dim 24 is padded.
    spec = Spec(name="w", query_heads=4, kv_heads=2, head_dim=head_dim, **mask)
    q, k, v, dout = tensors(spec, 64, 40, torch_rng)
    assert torch.isinf(attngen.reference(spec, q, k, v, q_offset=-20)[1]).any()
    check_gradients(spec, q, k, v, dout, q_offset=-20)
    check_gradients(spec, q, k, v, dout, q_offset=-20, config=TILES_MIXED)


@pytest.mark.parametrize("heads", [pytest.param((6, 2), id="gqa"), pytest.param((5, 5), id="mha-5-heads")])
def test_softcap_and_alibi(heads, torch_rng):
    spec = Spec(name="sa", query_heads=heads[0], kv_heads=heads[1], head_dim=16, causal=True,
                mask=band(left=20), softcap=3.0, alibi=True, scale=0.4)
    q, k, v, dout = tensors(spec, 37, 53, torch_rng)
    check_gradients(spec, q * 3, k * 3, v, dout)      # large scores: the cap's derivative matters


@pytest.mark.parametrize("batched", [False, True])
def test_segments(batched, torch_rng):
    spec = Spec(name="s", query_heads=4, kv_heads=2, head_dim=16, mask=segments(), causal=True)
    q, k, v, dout = tensors(spec, 37, 53, torch_rng, batch=2)
    seg_k = torch.tensor([0] * 17 + [1] * 21 + [2] * 15)
    seg_q = seg_k[-37:].clone()
    if batched:
        seg_q = torch.stack([seg_q, torch.sort(torch.randint(0, 4, (37,), generator=torch_rng)).values])
        seg_k = torch.stack([seg_k, torch.sort(torch.randint(0, 4, (53,), generator=torch_rng)).values])
    check_gradients(spec, q, k, v, dout, seg_q=seg_q, seg_k=seg_k)


def test_no_queries_or_no_keys():
    spec = Spec(name="z", query_heads=2, kv_heads=1, head_dim=16, causal=True)
    attn = attngen.compile(spec)
    for nq, nk in ((0, 5), (5, 0)):
        q, k, v = torch.randn(1, 2, nq, 16), torch.randn(1, 1, nk, 16), torch.randn(1, 1, nk, 16)
        lse = torch.full((1, 2, nq), float("-inf"))
        dq, dk, dv = attn.kernels.backward_impl(q, k, v, torch.zeros_like(q), lse, torch.ones_like(q))
        for g, x in ((dq, q), (dk, k), (dv, v)):
            assert g.shape == x.shape and not g.isnan().any() and not g.any()


# -- autograd ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [pytest.param(dict(causal=True), id="ranges"),
                                  pytest.param(dict(mask=band(left=4) | global_tokens(first=2), causal=True),
                                               id="lists")])
def test_sum_backward_through_compile(mask, torch_rng):
    # The whole chain: the forward kernel saves out and lse, the backward kernels run on .backward().
    spec = Spec(name="a", query_heads=4, kv_heads=2, head_dim=16, **mask)
    q, k, v, _ = tensors(spec, 29, 41, torch_rng)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    attngen.compile(spec)(*leaves).sum().backward()
    want = autograd_reference(spec, q, k, v, torch.ones_like(q))
    for name, leaf, w in zip(("dq", "dk", "dv"), leaves, want):
        check_close(name, leaf.grad, w, torch.float32, table=GRAD_TOLERANCE)


def test_gradcheck_float64_reference_precision(torch_rng):
    # float64 takes the reference-precision path (the kernels take fp16/bf16/fp32): forward by the
    # reference, backward by autograd through it. The kernels themselves are checked above.
    spec = Spec(name="gc", query_heads=2, kv_heads=1, head_dim=8, mask=band(left=3), causal=True,
                softcap=4.0, alibi=True)
    attn = attngen.compile(spec)
    q, k, v = (torch.randn(1, h, n, 8, generator=torch_rng, dtype=torch.float64).requires_grad_(True)
               for h, n in ((2, 7), (1, 9), (1, 9)))
    assert torch.autograd.gradcheck(lambda *x: attn(*x, q_offset=-1), (q, k, v))


# -- the transposed interval and the key-major kernel's query-tile ranges -------------------------
INTERVAL_MASKS = [
    causal(), band(left=3, right=5), band(left=4), band(right=2), band(left=0, right=0), blocks(4),
    blocks(5) & causal(), All_((blocks(8), band(left=2, right=1))),
    All_((blocks(6), band(right=3), blocks(9))),
] + [s.effective_mask for s in SOFTMAX_SPECS if key_interval(s.effective_mask) is not None]


def _normalised(pred):
    return Spec(name="n", query_heads=1, kv_heads=1, head_dim=16, mask=pred).effective_mask


@pytest.mark.parametrize("pred", [pytest.param(p, id=repr(p)[:40]) for p in INTERVAL_MASKS])
def test_query_interval_against_dense_mask(pred):
    pred = _normalised(pred)
    low, high = query_interval(pred)
    spec = Spec(name="n", query_heads=1, kv_heads=1, head_dim=16, mask=pred)
    # Positions i in [-40, 160) against keys j in [0, 120): every transposed interval fits inside.
    dense = spec.dense_mask(200, 120, -40)
    keys = torch.arange(120)
    lo = evaluate_bound(low.subs(j, i), keys).clamp(-40, 159)
    hi = evaluate_bound(high.subs(j, i), keys).clamp(-40, 159)
    positions = torch.arange(200)[:, None] - 40
    want = (positions >= lo[None]) & (positions <= hi[None])
    assert torch.equal(dense, want)


GEOMETRIES = [(37, 53, 16, 16, None), (53, 37, 16, 32, None), (40, 40, 32, 16, -9), (23, 70, 16, 16, 50),
              (64, 48, 16, 16, 0), (30, 30, 16, 16, 100)]


def _key_major_ranges(source: str, nq, nk, q_offset, block_m, block_n, k_offset=0):
    """Run the generated dK/dV kernel's range lines, and the source's tile-range helpers they call,
    in Python (they use only //, + and tl.minimum/maximum/where/cdiv on non-negative integers, where
    Python and Triton agree) for every key tile."""
    lines = source.splitlines()
    start = next(n for n, line in enumerate(lines) if line.strip().startswith("first_key ="))
    stop = next(n for n in range(start, len(lines))
                if lines[n].strip().startswith("full_first, full_stop = full_tile_span("))
    code = "\n".join(line.strip() for line in lines[start:stop + 1])
    helpers = [node for node in ast.parse(source).body
               if isinstance(node, ast.FunctionDef) and node.name in ("tile_span", "full_tile_span")]
    for node in helpers:
        node.decorator_list = []                                    # plain Python, not @triton.jit
    helpers = compile(ast.Module(helpers, type_ignores=[]), "<tile-range helpers>", "exec")

    class tl:
        maximum, minimum = staticmethod(max), staticmethod(min)
        where = staticmethod(lambda c, a, b: a if c else b)
        cdiv = staticmethod(lambda a, b: -(-a // b))
        constexpr = int

    out = []
    for key_tile in range(-(-nk // block_n)):
        scope = dict(tl=tl, key_tile=key_tile, nq=nq, nk=nk, q_offset=q_offset, k_offset=k_offset,
                     BLOCK_M=block_m, BLOCK_N=block_n, floor_div=lambda a, b: a // b, floor_mod=lambda a, b: a % b)
        exec(helpers, scope)
        exec(code, scope)
        out.append((scope["first_tile"], scope["full_first"], scope["full_stop"], scope["stop_tile"]))
    return out


@pytest.mark.parametrize("pred", [pytest.param(p, id=repr(p)[:40]) for p in INTERVAL_MASKS])
@pytest.mark.parametrize("k_offset", [pytest.param(0, id="keys-from-0"), pytest.param(29, id="keys-from-29")])
def test_key_major_ranges_against_brute_force(pred, k_offset):
    """k_offset > 0: keys are a chunk of a longer sequence (context parallelism)."""
    spec = Spec(name="r", query_heads=1, kv_heads=1, head_dim=16, mask=_normalised(pred))
    source = generate(spec, "bwd", check=True).source
    for nq, nk, bq, bk, q_offset in GEOMETRIES:
        dense = spec.dense_mask(nq, nk, q_offset, k_offset=k_offset)
        q_offset = spec.eval_context(nq, nk, q_offset, k_offset=k_offset).q_offset
        for key_tile, (first, full_first, full_stop, stop) in enumerate(
                _key_major_ranges(source, nq, nk, q_offset, bq, bk, k_offset)):
            cols = dense[:, key_tile * bk:(key_tile + 1) * bk]
            for query_tile in range(-(-nq // bq)):
                block = cols[query_tile * bq:(query_tile + 1) * bq]
                want = "full" if block.all() else ("partial" if block.any() else "empty")
                got = ("full" if full_first <= query_tile < full_stop else
                       "partial" if first <= query_tile < stop else "empty")
                assert got == want, (nq, nk, bq, bk, q_offset, key_tile, query_tile)


# -- IR and source -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name) for s in SOFTMAX_SPECS])
def test_lowering_and_emit(spec):
    g = lower_backward(spec, check=True)
    assert g.facts["kernel"] == "bwd" and g.content_hash() != generate(spec, "fwd").graph.content_hash()
    source = attngen.emit(spec, kernel="bwd")
    assert f"GROUP = tl.constexpr({spec.group})" in source        # dK/dV sum the group's query heads
    assert f"attngen backward kernels for spec '{spec.name}'" in source
    assert "attngen emit SPEC --kernel bwd" in source
    for role in ("preprocess", "dkdv", "dq"):
        assert f"def attngen_bwd_{spec.name}_{role}(" in source
    assert ("by_key_partial_ptr" in source) == (g.facts["iteration"] == "lists")
    assert str(sympy.sympify(g.facts["query_bounds"][0])) in source if g.facts["query_bounds"] else True
