"""Formulas that read the batch, the heads and call-time inputs, and score formulas, through the
generated kernels (Triton's interpreter) against the float64 reference: out, lse, dq, dk, dv and the
gradient of every `grad: true` input, forward, backward and decode; gradients are deterministic."""
import dataclasses
from pathlib import Path

import pytest
import torch

import attngen as A
from attngen.analysis.blockmap import block_map
from attngen.checking import GRAD_TOLERANCE, TOLERANCE, check_close
from attngen.runtime.launch_backward import reference_gradients

from test_decode import paged

FORMULAS = sorted((Path(__file__).resolve().parents[2] / "specs" / "formulas").glob("*.yaml"))


def shrunk(spec, *, hq=4, hkv=2):
    """A shipped spec with few heads (GQA kept: 2 query heads per kv head) and head dim 16."""
    return dataclasses.replace(spec, query_heads=hq, kv_heads=hkv, head_dim=16,
                               value_head_dim=8 if spec.value_head_dim is not None else None)


def extra(name, **kw):
    return A.Spec(name=name, query_heads=4, kv_heads=2, head_dim=16, **kw)


SHIPPED = [shrunk(A.load_spec(p)) for p in FORMULAS]
EXTRA = [
    # A boolean input read per key, a head test and a causal part: scalar and tile atoms mixed.
    extra("keep_keys", inputs={"keep": {"shape": ["B", "Nk"], "dtype": "bool"}},
          mask="keep[b, j] and (j <= i or h % 2 == 1)"),
    # A learned cap whose derivative reads s; and a per-(b, hk) window length (int64).
    extra("learned_cap", causal=True, inputs={"cap": {"shape": ["Hq"], "dtype": "float32", "grad": True},
                                              "win": {"shape": ["B", "Hkv"], "dtype": "int64"}},
          mask="i - j < win[b, hk]", score="cap[h] * tanh(s / cap[h])"),
    # A read inside an index (nested), indices outside the table (read as 0, no gradient), a
    # score of -inf that masks pairs, and rows left with no key.
    extra("nested_bias", inputs={"pos": {"shape": ["Nk"], "dtype": "int32"},
                                 "bias": {"shape": ["Hkv", 6], "dtype": "float32", "grad": True}},
          mask="i - j < 30", score="where(j > i + 3, -inf, s + 0.5 * bias[hk, pos[j] % 8 - 1])"),
]
CASES = SHIPPED + EXTRA


def make_inputs(spec, batch, nq, nk, gen):
    sizes = {"B": batch, "Hq": spec.query_heads, "Hkv": spec.kv_heads, "Nq": nq, "Nk": nk}
    out = {}
    for d in spec.all_inputs:
        shape = d.sizes(sizes)
        if d.dtype == "float32":
            out[d.name] = torch.rand(shape, generator=gen) + 0.5
        elif d.dtype == "bool":
            out[d.name] = torch.rand(shape, generator=gen) > 0.3
        else:
            out[d.name] = torch.randint(0, nk, shape, generator=gen).to(getattr(torch, d.dtype))
    return out


def qkv(spec, batch, nq, nk, gen, dtype):
    q = torch.randn(batch, spec.query_heads, nq, spec.head_dim, generator=gen).to(dtype)
    k = torch.randn(batch, spec.kv_heads, nk, spec.head_dim, generator=gen).to(dtype)
    v = torch.randn(batch, spec.kv_heads, nk, spec.v_head_dim, generator=gen).to(dtype)
    return q, k, v


def check_case(spec, nq, nk, q_offset, dtype, *, seed=0, batch=2):
    """Forward and backward of the compiled op against the float64 reference, every tensor named."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv(spec, batch, nq, nk, gen, dtype)
    inputs = make_inputs(spec, batch, nq, nk, gen)
    grads = [d.name for d in spec.all_inputs if d.grad]
    leaves = [t.requires_grad_(True) for t in (q, k, v)] + [inputs[n].requires_grad_(True) for n in grads]
    out, lse = A.compile(spec)(q, k, v, q_offset=q_offset, return_lse=True, **inputs)
    want_out, want_lse = A.reference(spec, q.detach(), k.detach(), v.detach(), q_offset=q_offset,
                                     **{n: t.detach() for n, t in inputs.items()})
    check_close("out", out, want_out, dtype)
    check_close("lse", lse, want_lse, torch.float32 if dtype == torch.float32 else dtype)
    dout = torch.randn(out.shape, generator=gen).to(dtype)
    got = torch.autograd.grad(out, leaves, dout)
    want = reference_gradients(spec, *(t.detach().double() for t in (q, k, v)), dout.double(), q_offset=q_offset,
                               inputs={n: t.detach().double() if t.is_floating_point() else t for n, t in inputs.items()})
    for name, g, w in zip(["dq", "dk", "dv"] + [f"d{n}" for n in grads], got, want):
        # Input gradients are float32 sums over every pair: judged at float32's tolerance only in fp32.
        check_close(name, g, w, dtype, table=GRAD_TOLERANCE)
    return got


# Each case at one of two odd shapes (Nq < Nk with the default offset; Nq > Nk with an explicit
# one), alternating; both shapes and every 16-bit case run with ATTNGEN_SLOW=1.
SHAPES = [(21, 35, None), (27, 19, 4)]
FP32_CASES = [pytest.param(s, shape, id=f"{s.name}-nq{shape[0]}-nk{shape[1]}-off{shape[2]}",
                           marks=() if (n + k) % 2 == 0 else pytest.mark.slow)
              for n, s in enumerate(CASES) for k, shape in enumerate(SHAPES)]
FAST_16_BIT = ("t5_relative_bias", "prefix_lm_per_sequence", "learned_cap")


@pytest.mark.parametrize("spec, shape", FP32_CASES)
def test_fp32(spec, shape):
    check_case(spec, *shape, torch.float32)


@pytest.mark.parametrize("spec, dtype", [
    pytest.param(s, dt, id=f"{s.name}-{str(dt)[6:]}", marks=() if s.name in FAST_16_BIT else pytest.mark.slow)
    for s, dt in zip(CASES, [torch.bfloat16, torch.float16] * len(CASES))])
def test_16_bit(spec, dtype):
    check_case(spec, 23, 29, None, dtype, seed=1)


def test_input_gradients_are_deterministic():
    """Two backward runs give the same bits (per-program shares summed in a fixed order)."""
    spec = next(s for s in CASES if s.name == "t5_relative_bias")
    gen = torch.Generator().manual_seed(3)
    q, k, v = qkv(spec, 2, 21, 35, gen, torch.float32)
    inputs = make_inputs(spec, 2, 21, 35, gen)
    attn = A.compile(spec)
    out, lse = attn(q, k, v, return_lse=True, **inputs)
    dout = torch.randn(out.shape, generator=gen)
    runs = [attn.kernels.backward_impl(q, k, v, out, lse, dout, None, None, None, inputs) for _ in range(2)]
    assert len(runs[0]) == 4 and all(torch.equal(a, b) for a, b in zip(*runs))


def test_gradcheck_float64():
    """float64 calls go through the reference (`_ReferencePrecision`): gradcheck checks that path's
    gradients, inputs included; the kernels' float32 gradients are compared with it above."""
    spec = next(s for s in CASES if s.name == "alibi_symmetric_learned")
    spec = dataclasses.replace(spec, query_heads=2, kv_heads=1, head_dim=4)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (t.requires_grad_(True) for t in qkv(spec, 1, 3, 4, gen, torch.float64))
    slope = (torch.rand(2, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    attn = A.compile(spec)
    assert torch.autograd.gradcheck(lambda q, k, v, slope: attn(q, k, v, slope=slope), (q, k, v, slope))


@pytest.mark.parametrize("spec", [s for s in CASES if s.name in (
    "prefix_lm_per_sequence", "t5_relative_bias", "gemma2_softcap_per_head", "learned_cap", "keep_keys")],
    ids=lambda s: s.name)
def test_decode(spec):
    gen = torch.Generator().manual_seed(0)
    batch, nq, capacity = 3, 2, 37
    q, k, v = qkv(spec, batch, nq, capacity, gen, torch.float32)
    inputs = make_inputs(spec, batch, nq, capacity, gen)
    seqlens = torch.tensor([capacity, 21, 9], dtype=torch.int32)
    attn = A.compile(spec)
    kp, vp, table = paged(k, v, 16)
    for cache in ((k, v, None), (kp, vp, table)):
        # Inputs with an Nk axis are sized by the cache's capacity (a paged cache's: its pages).
        capacity_of = cache[0].shape[2] if cache[2] is None else table.shape[1] * 16
        given = {d.name: torch.nn.functional.pad(inputs[d.name], (0, capacity_of - capacity))
                 if d.shape[-1] == "Nk" else inputs[d.name] for d in spec.all_inputs}
        out, lse = attn.decode(q, cache[0], cache[1], cache_seqlens=seqlens, block_table=cache[2],
                               return_lse=True, **given)
        for b, n in enumerate(seqlens.tolist()):
            # This sequence's inputs: its row of a B axis, its first n keys of an Nk axis.
            mine = {d.name: inputs[d.name][tuple(slice(b, b + 1) if s == "B" else slice(0, n) if s == "Nk"
                                                 else slice(None) for s in d.shape)] for d in spec.all_inputs}
            want_out, want_lse = A.reference(spec, q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], **mine)
            check_close(f"out[{b}]", out[b:b + 1], want_out, torch.float32)
            check_close(f"lse[{b}]", lse[b:b + 1], want_lse, torch.float32)


@pytest.mark.parametrize("spec", [s for s in CASES if s.mask_inputs or s.name == "keep_keys"], ids=lambda s: s.name)
def test_block_map_is_sound_for_any_data(spec):
    """FULL tiles are allowed everywhere and EMPTY tiles nowhere, whatever the inputs, batch and
    head (the map is built once per shape from the mask's input-free bounds)."""
    nq, nk, size = 50, 70, 16
    classes = block_map(spec, nq, nk, size, size, q_offset=5).dense_classes()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        dense = spec.dense_mask(nq, nk, 5, inputs=make_inputs(spec, 2, nq, nk, gen), batch=2)
        dense = dense.expand(2, spec.query_heads, nq, nk).reshape(-1, nq, nk) if dense.dim() > 2 else dense[None]
        for allowed in dense:
            padded = torch.nn.functional.pad(allowed, (0, -nk % size, 0, -nq % size))
            valid = torch.nn.functional.pad(torch.ones(nq, nk, dtype=torch.bool), (0, -nk % size, 0, -nq % size))
            tiles = padded.reshape(-1, size, padded.shape[1] // size, size).transpose(1, 2)
            valid = valid.reshape(tiles.shape[0], size, tiles.shape[1], size).transpose(1, 2)
            assert not (tiles.any(-1).any(-1) & (classes == 0)).any(), "an EMPTY tile holds an allowed pair"
            assert ((tiles | ~valid).all(-1).all(-1) | (classes != 2)).all(), "a FULL tile holds a masked pair"
