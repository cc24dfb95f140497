"""Compiled specs as torch operators: torch.compile(fullgraph=True), autograd, torch.export.
Kernels run under Triton's interpreter on CPU at tiny shapes."""
from __future__ import annotations


import pytest
import torch

import attngen
from attngen.runtime import cache
from attngen.runtime.ops import register



class Block(torch.nn.Module):
    """A model that uses an attngen operator between two torch ops."""

    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def forward(self, q, k, v):
        return self.attention(q * 1.5, k, v) * 2.0


def qkv(n: int, nk: int | None = None, *, seed: int = 0, grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, n, 16, generator=g)
    k, v = (torch.randn(1, 1, nk or n, 16, generator=g) for _ in range(2))
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def expected(spec, q, k, v):
    out, _ = attngen.reference(spec, q.detach() * 1.5, k.detach(), v.detach())
    return (out * 2.0).float()


def differentiable_reference(spec, q, k, v, q_offset=None):
    """Dense float64 softmax attention with autograd (attngen.reference detaches its inputs);
    masks and scale only: the specs here use no softcap or ALiBi."""
    q = q.double()
    k, v = (t.double().repeat_interleave(spec.group, 1) for t in (k, v))
    mask = spec.dense_mask(q.shape[2], k.shape[2], q_offset)
    scores = (q @ k.transpose(-1, -2) * spec.softmax_scale).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v


def reference_backward(spec):
    """A stand-in for `backward_impl`: dense float64 gradients in closed form (operators run
    below autograd, so it cannot differentiate the reference)."""
    calls = []

    def backward_impl(q, k, v, out, lse, dout, q_offset=None, seg_q=None, seg_k=None, inputs=None):
        calls.append((tuple(lse.shape), q_offset))
        batch, group, scale = q.shape[0], spec.group, spec.softmax_scale
        q64, do = q.double(), dout.double()
        k64, v64 = (t.double().repeat_interleave(group, 1) for t in (k, v))
        mask = spec.dense_mask(q.shape[2], k.shape[2], q_offset)
        p = torch.softmax((q64 @ k64.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf")), -1)
        p = p.nan_to_num(0.0)
        dp = do @ v64.transpose(-1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        dq = ds @ k64 * scale
        dk, dv = ds.transpose(-1, -2) @ q64 * scale, p.transpose(-1, -2) @ do
        fold = lambda t: t.view(batch, spec.kv_heads, group, *t.shape[2:]).sum(2)   # noqa: E731
        return dq.to(q.dtype), fold(dk).to(k.dtype), fold(dv).to(v.dtype)
    return backward_impl, calls


def test_compile_fullgraph_forward_with_varying_shapes(small_spec):
    op = register(small_spec("op_fwd", causal=True, mask={"band": 9}))
    model = torch.compile(Block(op), fullgraph=True, backend="aot_eager")
    for n, nk in ((32, 32), (24, 40)):            # bottom-right alignment: q_offset = nk - n
        q, k, v = qkv(n, nk)
        torch.testing.assert_close(model(q, k, v), expected(op.spec, q, k, v), atol=1e-4, rtol=1e-4)
    assert cache.STATS["builds"] == 1, "a new shape generated the kernel again"


def test_compile_fullgraph_backward_wiring(small_spec, monkeypatch):
    """dout, q_offset and lse reach backward_impl; its gradients reach the leaves. The kernel
    behind backward_impl is replaced by the reference here (the real one: next test)."""
    op = register(small_spec("op_bwd_wiring", mask={"band": 5}))
    stand_in, calls = reference_backward(op.spec)
    monkeypatch.setattr(op.kernels, "backward_impl", stand_in)
    model = torch.compile(Block(op), fullgraph=True, backend="aot_eager")
    q, k, v = qkv(24, 32, grad=True)
    (model(q, k, v) * torch.linspace(-1, 1, 16)).sum().backward()
    assert calls == [((1, 2, 24), 8)]
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = differentiable_reference(op.spec, leaves[0] * 1.5, *leaves[1:])
    ((ref * 2.0) * torch.linspace(-1, 1, 16).double()).sum().backward()
    for name, got, want in zip("qkv", (q, k, v), leaves):
        torch.testing.assert_close(got.grad, want.grad.float(), atol=1e-4, rtol=1e-4, msg=f"d{name}")


def test_compile_fullgraph_backward_kernels(small_spec):
    op = register(small_spec("op_bwd_kernels", causal=True))
    model = torch.compile(Block(op), fullgraph=True, backend="aot_eager")
    q, k, v = qkv(32, grad=True, seed=3)
    model(q, k, v).sum().backward()
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    (differentiable_reference(op.spec, leaves[0] * 1.5, *leaves[1:]) * 2.0).sum().backward()
    for name, got, want in zip("qkv", (q, k, v), leaves):
        torch.testing.assert_close(got.grad, want.grad.float(), atol=1e-4, rtol=1e-4, msg=f"d{name}")


def test_inductor_fullgraph_forward(small_spec):
    op = register(small_spec("op_inductor", mask={"band": 4}))
    model = torch.compile(Block(op), fullgraph=True)
    q, k, v = qkv(32)
    torch.testing.assert_close(model(q, k, v), expected(op.spec, q, k, v), atol=1e-4, rtol=1e-4)


def test_export_with_a_dynamic_length(small_spec):
    op = register(small_spec("op_export", causal=True))
    n = torch.export.Dim("n", min=2, max=64)
    shapes = {"q": {2: n}, "k": {2: n}, "v": {2: n}}
    program = torch.export.export(Block(op), qkv(32), dynamic_shapes=shapes)
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert torch.ops.attngen.op_export.default in targets
    for length in (32, 17):
        q, k, v = qkv(length, seed=length)
        torch.testing.assert_close(program.module()(q, k, v), expected(op.spec, q, k, v),
                                   atol=1e-4, rtol=1e-4)


def test_operator_outputs_and_fake_shapes(small_spec):
    op = register(small_spec("op_shapes", mask={"band": 2}))
    q, k, v = qkv(20, 28)
    out, lse = torch.ops.attngen.op_shapes(q, k, v, 8, None, None)
    want_out, want_lse = attngen.reference(op.spec, q, k, v)
    torch.testing.assert_close(out, want_out.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lse, want_lse.float(), atol=1e-4, rtol=1e-4)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (q, k, v)]
        f_out, f_lse = torch.ops.attngen.op_shapes(*fake, 8, None, None)
    assert (f_out.shape, f_out.dtype, f_out.stride()) == (out.shape, out.dtype, out.stride())
    assert (f_lse.shape, f_lse.dtype) == (lse.shape, lse.dtype) == ((1, 2, 20), torch.float32)
    assert torch.library.opcheck(torch.ops.attngen.op_shapes.default, (q, k, v, 8, None, None),
                                 test_utils=("test_schema", "test_faketensor"))


def test_same_spec_same_operator_and_names_unique_by_content(small_spec):
    first = register(small_spec("op_named", causal=True))
    assert register(small_spec("op_named", mask={"band": {"right": 0}})) is first   # same meaning
    other = register(small_spec("op_named", mask={"band": 3}))
    assert other is not first and other.name.startswith("op_named_") and len(other.name) == 17
    assert torch.ops.attngen.op_named.default is first.op
    assert getattr(torch.ops.attngen, other.name).default is other.op


def test_load_returns_operators_by_spec_name(tmp_path, small_spec):
    import yaml
    for name, fields in (("load_a", {"causal": True}), ("load_b", {"mask": {"band": 3}})):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(small_spec(name, **fields)))
    kernels = attngen.load(tmp_path)
    assert list(kernels) == ["load_a", "load_b"] and kernels["load_a"] is kernels.load_a
    q, k, v = qkv(16)
    want, _ = attngen.reference(kernels.load_b.spec, q, k, v)
    torch.testing.assert_close(kernels.load_b(q, k, v), want.float(), atol=1e-4, rtol=1e-4)
    assert torch.ops.attngen.load_a.default is kernels.load_a.op
    (tmp_path / "clash.yaml").write_text(yaml.safe_dump(small_spec("load_a", mask={"band": 1})))
    with pytest.raises(ValueError, match="load_a"):
        attngen.load(tmp_path)


def test_linear_spec_as_an_operator(small_spec):
    op = register(small_spec("op_linear", kind="linear", feature_map="elu1", causal=True))
    model = torch.compile(Block(op), fullgraph=True, backend="aot_eager")
    q, k, v = qkv(20, seed=5)
    torch.testing.assert_close(model(q, k, v), expected(op.spec, q, k, v), atol=1e-4, rtol=1e-4)
    out, lse = torch.ops.attngen.op_linear(q, k, v, 0, None, None)
    assert lse.shape == (0,) and lse.dtype == torch.float32
    with pytest.raises(ValueError, match="no lse"):
        op(q, k, v, return_lse=True)


def test_dynamic_shapes_trace_once_and_generate_once(small_spec):
    """The fake implementation adds no guard on the lengths: one trace serves every shape, and the
    kernel is generated once (first shape: Nq != Nk, else torch's duck sizing ties them)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    op = register(small_spec("op_dynamic", causal=True, mask={"band": 6}))
    counter = CompileCounterWithBackend("aot_eager")
    model = torch.compile(Block(op), fullgraph=True, dynamic=True, backend=counter)
    for n, nk in ((24, 40), (17, 50), (33, 33), (5, 5)):
        q, k, v = qkv(n, nk, seed=n)
        torch.testing.assert_close(model(q, k, v), expected(op.spec, q, k, v), atol=1e-4, rtol=1e-4,
                                   msg=f"n={n} nk={nk}")
    assert counter.frame_count == 1, "a new length retraced the model"
    assert cache.STATS["builds"] == 1, "a new length generated the kernel again"


def test_linear_backward_through_the_operator(small_spec):
    from attngen.reference_linear import linear_reference

    op = register(small_spec("op_linear_bwd", kind="linear", feature_map="elu1", causal=True))
    model = torch.compile(Block(op), fullgraph=True, backend="aot_eager")
    q, k, v = qkv(20, 28, seed=7, grad=True)
    weight = torch.linspace(-1, 1, 16)
    (model(q, k, v) * weight).sum().backward()
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    repeat = lambda t: t.repeat_interleave(op.spec.group, 1)          # noqa: E731
    ref = linear_reference(op.spec, leaves[0] * 1.5, repeat(leaves[1]), repeat(leaves[2]))
    ((ref * 2.0) * weight.double()).sum().backward()
    for name, got, want in zip("qkv", (q, k, v), leaves):
        assert got.grad is not None and torch.isfinite(got.grad).all(), f"d{name}"
        torch.testing.assert_close(got.grad, want.grad.float(), atol=1e-4, rtol=1e-4, msg=f"d{name}")


class Decoder(torch.nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, q, k_cache, v_cache, lengths):
        return self.op.decode(q * 1.5, k_cache, v_cache, cache_seqlens=lengths)


def test_decode_operator_under_compile_and_export(small_spec):
    op = register(small_spec("op_decode", causal=True, mask={"band": {"left": 9}}))
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 2, 3, 16, generator=g)
    k_cache, v_cache = (torch.randn(2, 1, 40, 16, generator=g) for _ in range(2))
    lengths = torch.tensor([37, 5], dtype=torch.int32)

    def check(out, what):
        for b, n in enumerate(lengths.tolist()):      # sequence b: its first n keys, q at n - 3..n - 1
            want, _ = attngen.reference(op.spec, q[b:b + 1] * 1.5, k_cache[b:b + 1, :, :n],
                                        v_cache[b:b + 1, :, :n], q_offset=n - 3)
            torch.testing.assert_close(out[b:b + 1], want.float(), atol=1e-4, rtol=1e-4, msg=f"{what} b={b}")

    model = torch.compile(Decoder(op), fullgraph=True, backend="aot_eager")
    check(model(q, k_cache, v_cache, lengths), "compiled")
    program = torch.export.export(Decoder(op), (q, k_cache, v_cache, lengths))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert torch.ops.attngen.op_decode_decode.default in targets
    check(program.module()(q, k_cache, v_cache, lengths), "exported")
    out, lse = op.decode(q, k_cache, v_cache, cache_seqlens=lengths, return_lse=True)
    assert lse.shape == (2, 2, 3) and lse.dtype == torch.float32 and out.is_contiguous()
    torch.library.opcheck(op.decode_op, (q, k_cache, v_cache, lengths, None),
                          test_utils=("test_schema", "test_faketensor"))
    # The fake implementation refuses a bad head dim while tracing (dynamo wraps the ShapeError).
    with pytest.raises(Exception, match=r"expected \(B, 2, Nq, 16\) for spec 'op_decode'"):
        torch.compile(Decoder(op), fullgraph=True, backend="aot_eager")(q[..., :8], k_cache, v_cache, lengths)


def test_decode_only_where_a_decode_kernel_exists(small_spec):
    from attngen.errors import CompileError

    segmented = register(small_spec("op_no_decode_seg", mask={"segments": True}))
    linear = register(small_spec("op_no_decode_lin", kind="linear", feature_map="elu1"))
    assert segmented.decode_op is None and linear.decode_op is None
    assert not hasattr(torch.ops.attngen, "op_no_decode_seg_decode")
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 1, 8, 16)
    with pytest.raises(CompileError, match="segments"):
        segmented.decode(q, k, k)
    with pytest.raises(CompileError, match="linear"):
        linear.decode(q, k, k)


def test_a_spec_named_like_another_specs_operator_gets_its_own_name(small_spec):
    first = register(small_spec("op_suffix", causal=True))
    clash = register(small_spec("op_suffix_decode", mask={"band": 2}))
    assert first.decode_op is torch.ops.attngen.op_suffix_decode.default
    assert clash.name.startswith("op_suffix_decode_") and clash.op is not first.decode_op


def test_compiled_callable_traces_before_any_eager_call(small_spec):
    """What users write: `attn = attngen.compile(spec)` inside a module, then torch.compile
    (fullgraph, dynamic) and torch.export of the module before attn ever ran eagerly; forward and
    backward on the real kernels, varying lengths traced once; decode the same."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()           # Block's code object was traced by earlier tests (recompile limit)
    attn = attngen.compile(small_spec("first_traced", causal=True, mask={"band": 5}))
    assert isinstance(attn, attngen.runtime.ops.CompiledAttention) and attngen.compile(attn.spec) is attn
    assert cache.STATS["builds"] == 0, "compile() generated kernels before the first call"
    counter = CompileCounterWithBackend("aot_eager")
    model = torch.compile(Block(attn), fullgraph=True, dynamic=True, backend=counter)
    for n, nk in ((21, 30), (13, 40), (35, 35)):
        q, k, v = qkv(n, nk, seed=n, grad=True)
        out = model(q, k, v)
        torch.testing.assert_close(out, expected(attn.spec, q, k, v), atol=1e-4, rtol=1e-4, msg=f"n={n}")
        dout = torch.randn_like(out)
        out.backward(dout)
        leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
        ref = differentiable_reference(attn.spec, leaves[0] * 1.5, leaves[1], leaves[2])
        grads = torch.autograd.grad(ref, leaves, (dout * 2.0).double())
        for name, got, exp in zip("qkv", (q.grad, k.grad, v.grad), grads):
            torch.testing.assert_close(got, exp.float(), atol=1e-4, rtol=1e-4, msg=f"d{name} n={n}")
    assert counter.frame_count == 1, "a new length retraced the model"

    n = torch.export.Dim("n", min=2, max=64)
    shapes = {"q": {2: n}, "k": {2: n}, "v": {2: n}}
    program = torch.export.export(Block(attn), qkv(32), dynamic_shapes=shapes)
    assert attn.op in [node.target for node in program.graph.nodes if node.op == "call_function"]
    q, k, v = qkv(19, seed=3)
    torch.testing.assert_close(program.module()(q, k, v), expected(attn.spec, q, k, v), atol=1e-4, rtol=1e-4)

    class Decoder(torch.nn.Module):
        def forward(self, q, k_cache, v_cache, lengths):
            return attn.decode(q, k_cache, v_cache, cache_seqlens=lengths)
    g = torch.Generator().manual_seed(5)
    q1, k_cache, v_cache = torch.randn(2, 2, 1, 16, generator=g), *(torch.randn(2, 1, 24, 16, generator=g)
                                                                    for _ in range(2))
    lengths = torch.tensor([24, 7], dtype=torch.int32)
    eager = attn.decode(q1, k_cache, v_cache, cache_seqlens=lengths)
    traced = torch.compile(Decoder(), fullgraph=True, backend="aot_eager")(q1, k_cache, v_cache, lengths)
    exported = torch.export.export(Decoder(), (q1, k_cache, v_cache, lengths)).module()(q1, k_cache, v_cache, lengths)
    for b, length in enumerate(lengths.tolist()):
        want, _ = attngen.reference(attn.spec, q1[b:b + 1], k_cache[b:b + 1, :, :length], v_cache[b:b + 1, :, :length])
        for got in (eager, traced, exported):
            torch.testing.assert_close(got[b:b + 1], want.float(), atol=1e-4, rtol=1e-4)
