"""Attention sinks (`sink: true`, SPEC.md "Attention sinks") through the generated kernels under
Triton's interpreter, against the float64 reference: forward (out, lse), backward (dq, dk, dv and
the sink's gradient), decode (split and not), the operator's call by name with autograd, and
`gradcheck` in float64.

Rows with no allowed key (explicit q_offset below the window, decode lengths of 0) must give 0
and lse = sink[h]; outputs start as NaN under the interpreter, so an unwritten element fails.
"""
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import attngen as A
from attngen.checking import GRAD_TOLERANCE, check_close
from attngen.codegen.aot import resource_usage
from tests.codegen.targets import targets

from test_decode import make_inputs, paged


def spec_of(name, *, hq=4, hkv=2, d=32, **kw):
    return A.Spec(name=name, query_heads=hq, kv_heads=hkv, head_dim=d, sink=True, **kw)


GPT_OSS = A.load_spec(Path(__file__).resolve().parents[2] / "specs" / "formulas" / "gpt_oss_sinks.yaml")
SPECS = [
    spec_of("sink_dense_gqa"),
    spec_of("sink_window_gqa", causal=True, mask=A.band(left=20)),      # gpt-oss: window + sinks
    spec_of("sink_mqa_softcap", hq=3, hkv=1, causal=True, softcap=6.0),
    spec_of("sink_blocks_mha", hq=2, hkv=2, mask=A.blocks(24) | A.global_tokens(2)),   # block-map lists
]
# (nq, nk, q_offset): odd sizes, Nq != Nk both ways, an explicit offset that leaves rows with no key.
SHAPES = [(37, 70, None), (50, 29, None), (33, 45, -9)]


def tensors(spec, nq, nk, dtype, *, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, spec.query_heads, nq, spec.head_dim, generator=g).to(dtype)
    k = torch.randn(batch, spec.kv_heads, nk, spec.head_dim, generator=g).to(dtype)
    v = torch.randn(batch, spec.kv_heads, nk, spec.v_head_dim, generator=g).to(dtype)
    dout = torch.randn(batch, spec.query_heads, nq, spec.v_head_dim, generator=g).to(dtype)
    sink = torch.randn(spec.query_heads, generator=g) * 2.0
    return q, k, v, dout, sink


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"nq{s[0]}-nk{s[1]}-off{s[2]}")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_forward_fp32(spec, shape):
    nq, nk, q_offset = shape
    q, k, v, _, sink = tensors(spec, nq, nk, torch.float32)
    out, lse = A.compile(spec).launcher().forward(q, k, v, q_offset=q_offset, inputs={"sink": sink})
    want_out, want_lse = A.reference(spec, q, k, v, q_offset=q_offset, sink=sink)
    check_close("out", out, want_out, torch.float32)
    check_close("lse", lse, want_lse, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gpt_oss_spec_file(dtype):
    """specs/formulas/gpt_oss_sinks.yaml (window 128, sinks) with its group of 8 on one kv head:
    forward, and every gradient, past the window's width."""
    spec = replace(GPT_OSS, query_heads=8, kv_heads=1)
    q, k, v, dout, sink = tensors(spec, 77, 190, dtype, batch=1)
    out, lse = A.compile(spec).launcher().forward(q, k, v, inputs={"sink": sink})
    want_out, want_lse = A.reference(spec, q, k, v, sink=sink)
    check_close("out", out, want_out, dtype)
    check_close("lse", lse, want_lse, dtype)
    got, want = gradients(spec, q, k, v, dout, sink, None)
    for name, g, w in zip(("dq", "dk", "dv", "dsink"), got, want):
        check_close(name, g, w, dtype, table=GRAD_TOLERANCE)


def test_rows_without_keys_give_zero_and_the_sink():
    spec = SPECS[1]
    q, k, v, _, sink = tensors(spec, 33, 45, torch.float32)
    out, lse = A.compile(spec).launcher().forward(q, k, v, q_offset=-9, inputs={"sink": sink})
    # Rows 0..8 sit at positions -9..-1: causal allows no key.
    assert torch.equal(out[:, :, :9], torch.zeros_like(out[:, :, :9]))
    assert torch.equal(lse[:, :, :9], sink[None, :, None].expand(2, -1, 9))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_forward_16bit(dtype):
    spec = SPECS[1]
    q, k, v, _, sink = tensors(spec, 37, 70, dtype)
    out, lse = A.compile(spec).launcher().forward(q, k, v, inputs={"sink": sink})
    want_out, want_lse = A.reference(spec, q, k, v, sink=sink)
    assert out.dtype == dtype
    check_close("out", out, want_out, dtype)
    check_close("lse", lse, want_lse, dtype)


def gradients(spec, q, k, v, dout, sink, q_offset):
    """The kernels' (dq, dk, dv, dsink) from the reference's out and lse, and the float64 ones."""
    kernels = A.compile(spec).kernels
    out, lse = A.reference(spec, q, k, v, q_offset=q_offset, sink=sink)
    got = kernels.backward_impl(q, k, v, out.to(q.dtype), lse.float(), dout, q_offset, None, None, {"sink": sink})
    want = kernels.backward_impl(*(t.double() for t in (q, k, v)), None, None, dout.double(), q_offset,
                                 None, None, {"sink": sink.double()})
    return got, want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("spec", [SPECS[1], SPECS[3]], ids=lambda s: s.name)
def test_backward(spec, dtype):
    q, k, v, dout, sink = tensors(spec, 37, 53, dtype)
    got, want = gradients(spec, q, k, v, dout, sink, -3)
    assert len(got) == 4 and got[3].dtype == torch.float32 and got[3].shape == sink.shape
    for name, g, w in zip(("dq", "dk", "dv", "dsink"), got, want):
        check_close(name, g, w, dtype, table=GRAD_TOLERANCE)


def test_sink_gradient_is_deterministic():
    spec = SPECS[0]
    q, k, v, dout, sink = tensors(spec, 70, 40, torch.float32)
    first, _ = gradients(spec, q, k, v, dout, sink, None)
    again, _ = gradients(spec, q, k, v, dout, sink, None)
    assert torch.equal(first[3], again[3])


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("spec", [SPECS[1], SPECS[2]], ids=lambda s: s.name)
def test_decode(spec, splits):
    capacity, nq = 90, 3
    q, k, v = make_inputs(spec, 3, nq, capacity, torch.float32)
    sink = torch.randn(spec.query_heads, generator=torch.Generator().manual_seed(5))
    seqlens = torch.tensor([0, 41, capacity], dtype=torch.int32)
    kp, vp, table = paged(k, v, 16)
    out, lse = A.compile(spec).launcher("decode").decode(q, kp, vp, cache_seqlens=seqlens, block_table=table,
                                                          num_splits=splits, inputs={"sink": sink})
    # A sequence with no key: output 0 and lse = sink[h], counted once whatever the splits.
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(lse[0], sink[:, None].expand(-1, nq))
    for b, n in ((1, 41), (2, capacity)):
        want_out, want_lse = A.reference(spec, q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                         q_offset=n - nq, sink=sink)
        check_close(f"out[{b}]", out[b:b + 1], want_out, torch.float32)
        check_close(f"lse[{b}]", lse[b:b + 1], want_lse, torch.float32)


def test_call_by_name_with_autograd():
    spec = SPECS[1]
    attn = A.compile(spec)
    q, k, v, dout, sink = tensors(spec, 29, 41, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, sink)]
    out, lse = attn(*leaves[:3], sink=leaves[3], return_lse=True)
    out.backward(dout)
    want_out, want_lse = A.reference(spec, q, k, v, sink=sink)
    check_close("out", out, want_out, torch.float32)
    check_close("lse", lse, want_lse, torch.float32)
    _, want = gradients(spec, q, k, v, dout, sink, None)
    for name, leaf, w in zip(("dq", "dk", "dv", "dsink"), leaves, want):
        check_close(name, leaf.grad, w, torch.float32, table=GRAD_TOLERANCE)
    # A sink that does not require grad gets none; q's gradient is the same.
    q2 = q.clone().requires_grad_()
    attn(q2, k, v, sink=sink).backward(dout)
    assert torch.equal(q2.grad, leaves[0].grad)
    with pytest.raises(A.ShapeError, match="missing input 'sink'"):
        attn(q, k, v)
    with pytest.raises(A.ShapeError, match="input 'sink' has shape"):
        attn(q, k, v, sink=sink[:2])


def test_operator_fake_and_real_agree():
    spec = spec_of("sink_opcheck", causal=True)
    attn = A.compile(spec)
    q, k, v, _, sink = tensors(spec, 20, 28, torch.float32, batch=1)
    torch.library.opcheck(attn.op, (q, k, v, 8, None, None, [sink]),
                          test_utils=("test_schema", "test_faketensor"))


def test_gradcheck_float64():
    spec = spec_of("sink_gradcheck", hq=2, hkv=1, d=8, causal=True, mask=A.band(left=4))
    attn = A.compile(spec)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 1, 9, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    sink = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, s: attn(q, k, v, sink=s, q_offset=-2), (q, k, v, sink))


def spill_free(spec, target, kernel):
    """Every kernel of `kernel` compiled for `target` (fp16) as a launch compiles it: no spills."""
    compiled = A.compile(spec).compile_for(target, torch.float16, kernel=kernel)
    kernels = getattr(compiled, "kernels", {kernel: compiled})
    if kernel == "decode":           # the merge of the splits adds the sink: compiled too
        kernels["merge"] = A.compile(spec).launcher("decode").compile_for(target, torch.float16, kernel="merge")
    for role, one in kernels.items():
        usage = resource_usage(one)
        assert usage.local == 0 and usage.stack == 0 and usage.registers <= 255, f"{role} {target}: {usage}"


@pytest.mark.compile
@pytest.mark.parametrize("kernel", ["fwd", "bwd", "decode"])
@pytest.mark.parametrize("target", targets(GPT_OSS.name))
def test_compiles_without_spills(target, kernel):
    spill_free(GPT_OSS, target, kernel)
