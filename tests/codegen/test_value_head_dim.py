"""A value head dim unlike the query/key one (`head_dim: {qk, v}`, SPEC.md "Value head dimension",
DeepSeek MLA shapes) through the generated kernels under Triton's interpreter, against the float64
reference: forward (out is (B, Hq, Nq, Dv)), backward (dv of Dv, dq and dk of Dqk), decode; and the
spec file specs/formulas/deepseek_mla.yaml compiled for sm_80/sm_90 without spills.

q/k tiles are padded to BLOCK_D and v/out/dO/dV tiles to BLOCK_DV separately; odd dims (40, 24)
pad both, 192 pads to 256.
"""
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import attngen as A
from attngen.checking import GRAD_TOLERANCE, check_close
from attngen.codegen.emit import generate

from test_decode import paged
from test_sinks import gradients, spill_free, tensors
from tests.codegen.targets import targets

MLA = A.load_spec(Path(__file__).resolve().parents[2] / "specs" / "formulas" / "deepseek_mla.yaml")


def spec_of(name, qk, v, *, hq=4, hkv=2, **kw):
    return A.Spec(name=name, query_heads=hq, kv_heads=hkv, head_dim={"qk": qk, "v": v}, **kw)


SPECS = [
    spec_of("mla_causal_40_24", 40, 24, causal=True),                          # Dv < Dqk, both odd
    spec_of("mla_wide_v_16_48", 16, 48, hq=3, hkv=1, mask=A.band(left=9, right=3)),   # Dv > Dqk, MQA
    spec_of("mla_lists_sink", 24, 40, hq=2, hkv=2, mask=A.blocks(16) | A.global_tokens(1), sink=True),
]


def forward(spec, q, k, v, sink, **call):
    inputs = {"sink": sink} if spec.sink else {}
    out, lse = A.compile(spec).launcher().forward(q, k, v, inputs=inputs, **call)
    want_out, want_lse = A.reference(spec, q, k, v, **inputs, **call)
    assert out.shape == (*q.shape[:3], spec.v_head_dim)
    return (out, lse), (want_out, want_lse)


@pytest.mark.parametrize("shape", [(37, 70, None), (50, 29, None), (33, 45, -9)],
                         ids=lambda s: f"nq{s[0]}-nk{s[1]}-off{s[2]}")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_forward_fp32(spec, shape):
    nq, nk, q_offset = shape
    q, k, v, _, sink = tensors(spec, nq, nk, torch.float32)
    got, want = forward(spec, q, k, v, sink, q_offset=q_offset)
    check_close("out", got[0], want[0], torch.float32)
    check_close("lse", got[1], want[1], torch.float32)


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.name)
def test_backward_fp32(spec):
    q, k, v, dout, sink = tensors(spec, 37, 53, torch.float32)
    got, want = _gradients(spec, q, k, v, dout)
    assert [g.shape for g in got[:3]] == [q.shape, k.shape, v.shape]
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        check_close(name, g, w, torch.float32, table=GRAD_TOLERANCE)


def _gradients(spec, q, k, v, dout, q_offset=-3):
    kernels = A.compile(spec).kernels
    out, lse = A.reference(spec, q, k, v, q_offset=q_offset)
    got = kernels.backward_impl(q, k, v, out.to(q.dtype), lse.float(), dout, q_offset)
    want = kernels.backward_impl(*(t.double() for t in (q, k, v)), None, None, dout.double(), q_offset)
    return got, want


def test_backward_with_sink_and_lists():
    spec = SPECS[2]
    q, k, v, dout, sink = tensors(spec, 37, 53, torch.float32)
    got, want = gradients(spec, q, k, v, dout, sink, -3)
    for name, g, w in zip(("dq", "dk", "dv", "dsink"), got, want):
        check_close(name, g, w, torch.float32, table=GRAD_TOLERANCE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deepseek_mla_spec_file(dtype):
    """specs/formulas/deepseek_mla.yaml (Dqk 192 tiled as 256, Dv 128) with two heads: forward
    and every gradient."""
    spec = replace(MLA, query_heads=2, kv_heads=2)
    q, k, v, dout, _ = tensors(spec, 35, 47, dtype, batch=1)
    got, want = forward(spec, q, k, v, None)
    check_close("out", got[0], want[0], dtype)
    check_close("lse", got[1], want[1], dtype)
    grads, want_grads = _gradients(spec, q, k, v, dout, None)
    for name, g, w in zip(("dq", "dk", "dv"), grads, want_grads):
        check_close(name, g, w, dtype, table=GRAD_TOLERANCE)


def test_header_names_both_dims():
    source = generate(replace(MLA, query_heads=2, kv_heads=2), "fwd").source
    assert "# head dim            192 (tiled as 256); values 128 (tiled as 128)" in source
    assert "BLOCK_D = tl.constexpr(256)" in source and "BLOCK_DV = tl.constexpr(128)" in source


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("spec", [SPECS[0], SPECS[2]], ids=lambda s: s.name)
def test_decode(spec, splits):
    capacity, nq, batch = 70, 3, 3
    g = torch.Generator().manual_seed(2)
    q = torch.randn(batch, spec.query_heads, nq, spec.head_dim, generator=g)
    k = torch.randn(batch, spec.kv_heads, capacity, spec.head_dim, generator=g)
    v = torch.randn(batch, spec.kv_heads, capacity, spec.v_head_dim, generator=g)
    inputs = {"sink": torch.randn(spec.query_heads, generator=g)} if spec.sink else {}
    seqlens = torch.tensor([0, 33, capacity], dtype=torch.int32)
    kp, _, table = paged(k, k, 16)
    _, vp, _ = paged(v, v, 16)
    out, lse = A.compile(spec).launcher("decode").decode(q, kp, vp, cache_seqlens=seqlens, block_table=table,
                                                          num_splits=splits, inputs=inputs)
    assert out.shape == (batch, spec.query_heads, nq, spec.v_head_dim)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    for b, n in ((1, 33), (2, capacity)):
        want_out, want_lse = A.reference(spec, q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                         q_offset=n - nq, **inputs)
        check_close(f"out[{b}]", out[b:b + 1], want_out, torch.float32)
        check_close(f"lse[{b}]", lse[b:b + 1], want_lse, torch.float32)


def test_call_and_gradcheck_float64():
    spec = spec_of("mla_call", 12, 8, hq=2, hkv=1, causal=True)
    attn = A.compile(spec)
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, 5, 12, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 7, 12, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: attn(q, k, v), (q, k, v))
    out = attn(q.float(), k.float(), v.float())
    assert out.shape == (1, 2, 5, 8)
    check_close("out", out, A.reference(spec, q, k, v)[0], torch.float32)
    with pytest.raises(A.ShapeError, match="v has shape"):
        attn(q.float(), k.float(), k.float())


@pytest.mark.compile
@pytest.mark.parametrize("kernel", ["fwd", "bwd", "decode"])
@pytest.mark.parametrize("target", targets(MLA.name))
def test_deepseek_mla_compiles_without_spills(target, kernel):
    spill_free(MLA, target, kernel)
