"""Linear attention kernels under Triton's interpreter: out, dq, dk, dv against the float64 reference.

Tiny odd shapes (lengths 37 and 53, not multiples of the interpreter's chunk of 32), each feature
map, causal and not, GQA/MQA, every dtype, q_offset on both sides, non-contiguous inputs.
"""
from __future__ import annotations

import pytest
import torch

import attngen as A
from attngen.checking import GRAD_TOLERANCE, check_close
from attngen.errors import ShapeError, SpecError
from attngen.reference import reference
from attngen.reference_linear import linear_reference
from attngen.spec import spec_from_yaml

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16


def linear_spec(feature_map="elu1", *, causal=True, heads=(4, 2), head_dim=16, **kw):
    fm = A.FeatureMap(**feature_map) if isinstance(feature_map, dict) else A.FeatureMap(feature_map)
    return A.Spec(name="lin", kind="linear", query_heads=heads[0], kv_heads=heads[1], head_dim=head_dim,
                  causal=causal, feature_map=fm, **kw)


def inputs(spec, nq, nk, dtype, gen, *, batch=2):
    d = spec.head_dim
    q = torch.randn(batch, spec.query_heads, nq, d, generator=gen)
    k = torch.randn(batch, spec.kv_heads, nk, d, generator=gen)
    v = torch.randn(batch, spec.kv_heads, nk, d, generator=gen)
    dout = torch.randn(batch, spec.query_heads, nq, d, generator=gen)
    return [t.to(dtype) for t in (q, k, v)], dout.to(dtype)


def reference_grads(spec, q, k, v, dout, q_offset=None):
    """out, dq, dk, dv by torch autograd through the float64 reference (K, V repeated in the graph)."""
    leaves = [t.detach().to(torch.float64).requires_grad_(True) for t in (q, k, v)]
    out = linear_reference(spec, leaves[0], leaves[1].repeat_interleave(spec.group, dim=1),
                           leaves[2].repeat_interleave(spec.group, dim=1), q_offset=q_offset)
    out.backward(dout.to(torch.float64))
    return [out.detach()] + [t.grad for t in leaves]


def kernel_grads(spec, q, k, v, dout, q_offset=None):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = A.compile(spec)(*leaves, q_offset=q_offset)
    out.backward(dout)
    return [out.detach()] + [t.grad for t in leaves]


def check_all(spec, q, k, v, dout, dtype, q_offset=None):
    got = kernel_grads(spec, q, k, v, dout, q_offset)
    want = reference_grads(spec, q, k, v, dout, q_offset)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    check_close("out", got[0], want[0], dtype)
    for name, g, w in zip(("dq", "dk", "dv"), got[1:], want[1:]):
        check_close(name, g, w, dtype, table=GRAD_TOLERANCE)


CASES = [
    pytest.param("elu1", True, (4, 2), FP32, id="elu1-causal-gqa-fp32"),
    pytest.param("elu1", False, (4, 2), FP32, id="elu1-full-gqa-fp32"),
    pytest.param("relu", True, (3, 1), FP32, id="relu-causal-mqa-fp32"),
    pytest.param("relu", False, (2, 2), FP32, id="relu-full-mha-fp32"),
    pytest.param("elu1", True, (2, 2), FP16, id="elu1-causal-mha-fp16"),
    pytest.param("elu1", False, (4, 1), BF16, id="elu1-full-mqa-bf16"),
    pytest.param("relu", True, (4, 2), BF16, id="relu-causal-gqa-bf16"),
    pytest.param("relu", False, (4, 2), FP16, id="relu-full-gqa-fp16"),
    pytest.param({"name": "favor", "features": 16, "seed": 1}, True, (4, 2), FP32, id="favor16-causal-gqa-fp32"),
    pytest.param({"name": "favor", "features": 32, "seed": 2}, False, (2, 1), FP32, id="favor32-full-mqa-fp32"),
    pytest.param({"name": "favor", "features": 32, "seed": 3}, True, (2, 2), FP16, id="favor32-causal-fp16"),
    pytest.param({"name": "favor", "features": 16, "seed": 4}, False, (2, 2), BF16, id="favor16-full-bf16"),
]


@pytest.mark.parametrize("feature_map, causal, heads, dtype", CASES)
def test_forward_and_gradients_match_the_reference(feature_map, causal, heads, dtype, torch_rng):
    spec = linear_spec(feature_map, causal=causal, heads=heads)
    (q, k, v), dout = inputs(spec, 37, 53, dtype, torch_rng)
    check_all(spec, q, k, v, dout, dtype)


@pytest.mark.parametrize("feature_map, nq, nk, q_offset", [
    pytest.param("elu1", 37, 53, -5, id="rows-before-key-0"),
    pytest.param("relu", 37, 23, None, id="more-queries-than-keys"),
    pytest.param("elu1", 37, 23, 40, id="rows-after-every-key"),
    pytest.param({"name": "favor", "features": 16, "seed": 5}, 53, 37, 3, id="favor-offset-3"),
    pytest.param({"name": "favor", "features": 16, "seed": 6}, 1, 53, None, id="favor-decode-one-row"),
    pytest.param("relu", 37, 53, -60, id="every-row-empty"),
])
def test_causal_alignment_and_q_offset(feature_map, nq, nk, q_offset, torch_rng):
    spec = linear_spec(feature_map, causal=True, heads=(2, 1))
    (q, k, v), dout = inputs(spec, nq, nk, FP32, torch_rng, batch=1)
    check_all(spec, q, k, v, dout, FP32, q_offset)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_transposed_views_work_without_copies(causal, torch_rng):
    # (B, N, H, D) tensors viewed as (B, H, N, D): strides, not copies.
    spec = linear_spec({"name": "favor", "features": 16, "seed": 7}, causal=causal, heads=(4, 2), head_dim=24)
    q = torch.randn(2, 37, 4, 24, generator=torch_rng).transpose(1, 2)
    k = torch.randn(2, 53, 2, 24, generator=torch_rng).transpose(1, 2)
    v = torch.randn(2, 53, 2, 24, generator=torch_rng).transpose(1, 2)
    dout = torch.randn(2, 37, 4, 24, generator=torch_rng).transpose(1, 2)
    assert not q.is_contiguous()
    check_all(spec, q, k, v, dout, FP32)


def test_scale_multiplies_queries_before_the_feature_map(torch_rng):
    spec = linear_spec("elu1", causal=False, heads=(2, 2), scale=0.5)
    (q, k, v), dout = inputs(spec, 37, 53, FP32, torch_rng, batch=1)
    check_all(spec, q, k, v, dout, FP32)
    plain = linear_spec("elu1", causal=False, heads=(2, 2))
    want, _ = reference(plain, q * 0.5, k, v)
    check_close("out", A.compile(spec)(q, k, v), want, FP32)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_eps_in_the_normaliser(causal, torch_rng):
    # relu with a large eps (it shows in every row), and query rows that are negative everywhere:
    # phi(q) = 0, so the normaliser is eps alone and out, dq are exactly 0, never NaN.
    spec = linear_spec("relu", causal=causal, heads=(4, 2), eps=0.25)
    (q, k, v), dout = inputs(spec, 37, 53, FP32, torch_rng, batch=1)
    q[:, :, 3] = -q[:, :, 3].abs() - 0.1
    check_all(spec, q, k, v, dout, FP32)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = A.compile(spec)(*leaves)
    out.backward(dout)
    assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3]))
    assert torch.equal(leaves[0].grad[:, :, 3], torch.zeros_like(out[:, :, 3]))
    default = linear_spec("relu", causal=causal, heads=(4, 2))
    assert (out - A.compile(default)(q, k, v)).abs().max() > 1e-3     # eps reached the kernel


def test_favor_kernel_uses_the_draw_of_its_seed(torch_rng):
    # The same inputs through seeds 0 and 1 differ; each matches the reference of its own draw.
    (q, k, v), _ = inputs(linear_spec("elu1"), 37, 53, FP32, torch_rng, batch=1)
    outs = []
    for seed in (0, 1):
        spec = linear_spec({"name": "favor", "features": 16, "seed": seed}, causal=False)
        out = A.compile(spec)(q, k, v)
        check_close("out", out, reference(spec, q, k, v)[0], FP32)
        outs.append(out)
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_empty_lengths(torch_rng):
    spec = linear_spec("elu1", causal=True, heads=(2, 1))
    (q, k, v), _ = inputs(spec, 5, 0, FP32, torch_rng, batch=1)
    assert torch.equal(A.compile(spec)(q, k, v), torch.zeros_like(q))
    (q, k, v), _ = inputs(spec, 0, 5, FP32, torch_rng, batch=1)
    assert A.compile(spec)(q, k, v).shape == q.shape


def test_bad_inputs_are_refused_with_names_and_shapes(torch_rng):
    spec = linear_spec("elu1", heads=(4, 2))
    (q, k, v), dout = inputs(spec, 9, 9, FP32, torch_rng, batch=1)
    attn = A.compile(spec)
    with pytest.raises(ShapeError, match=r"k has shape \(1, 4, 9, 16\), expected \(1, 2, 9, 16\)"):
        attn(q, k.repeat_interleave(2, dim=1), v)
    with pytest.raises(ShapeError, match="v has dtype torch.float16"):
        attn(q, k, v.half())
    with pytest.raises(ShapeError, match="q has dtype torch.int64"):
        attn(q.long(), k.long(), v.long())
    with pytest.raises(ShapeError, match="q_offset must be an int"):
        attn(q, k, v, q_offset=1.5)
    with pytest.raises(ShapeError, match=r"dout has shape \(1, 4, 8, 16\)"):
        attn.launcher("bwd").backward(q, k, v, q, dout[:, :, :8])
    with pytest.raises(ValueError, match="linear attention: it has no lse"):
        attn(q, k, v, return_lse=True)


@pytest.mark.parametrize("text, field, reason", [
    pytest.param("feature_map: identity\n", "feature_map", "can be negative", id="identity"),
    pytest.param("feature_map: elu\n", "feature_map", "negative", id="elu-without-plus-one"),
    pytest.param("feature_map: elu1\nmask: {band: 4}\n", "mask", "not allowed on kind: linear", id="mask"),
])
def test_refused_specs(text, field, reason):
    head = "name: lin\nkind: linear\nheads: {query: 2, kv: 1}\nhead_dim: 16\n"
    with pytest.raises(SpecError, match=reason) as info:
        spec_from_yaml(head + text)
    assert info.value.field == field


def test_float64_inputs_take_the_reference_path(torch_rng):
    # elu1: favor's stabilisers are detached constants, which finite differences do not see.
    spec = linear_spec("elu1", causal=True, heads=(2, 1), head_dim=4)
    q, k, v = (torch.randn(1, h, 6, 4, generator=torch_rng, dtype=torch.float64, requires_grad=True)
               for h in (2, 1, 1))
    assert torch.autograd.gradcheck(lambda *t: A.compile(spec)(*t), (q, k, v))


# -- lowering, generation, partitioning (no kernels run) ----------------------------------------
@pytest.mark.parametrize("kernel", ["fwd", "bwd"])
def test_lowering_is_verified_and_records_its_decisions(kernel):
    from attngen.analysis.lowering_linear import LINEAR_PASSES, lower_linear
    from attngen.ir.passes import reason

    spec = linear_spec({"name": "favor", "features": 24, "seed": 9}, causal=True)
    g = lower_linear(spec, kernel, check=True)
    assert all(reason(p) for p in LINEAR_PASSES)
    assert g.facts["passes"] == [p.__name__ for p in LINEAR_PASSES]
    assert g.facts["algorithm"] == "chunked_scan"
    assert g.node("phi_k").attrs["stabiliser"] == "prefix max over visible keys"
    assert (g.facts["block_f"], g.facts["block_d"]) == (32, 16)
    full = lower_linear(linear_spec({"name": "favor", "features": 24, "seed": 9}, causal=False), kernel, check=True)
    assert full.facts["algorithm"] == "reduce_then_apply"
    assert full.node("phi_k").attrs["stabiliser"] == "max over all keys"
    # The seed is part of the meaning: it changes the feature map's hash and everything after it.
    other = lower_linear(linear_spec({"name": "favor", "features": 24, "seed": 10}, causal=True), kernel, check=True)
    assert g.node_hashes()["load_q"] == other.node_hashes()["load_q"]
    assert g.node_hashes()["phi_q"] != other.node_hashes()["phi_q"]


def test_emit_prints_the_linear_kernels():
    fwd = A.emit("specs/linear_elu1.yaml")
    assert "def attngen_linear_fwd_linear_elu1(" in fwd and "def attngen_linear_states_linear_elu1(" in fwd
    assert "phi(x) = elu(x) + 1" in fwd and "CAUSAL = tl.constexpr(True)" in fwd
    bwd = A.emit("specs/linear_favor.yaml", kernel="bwd")
    for name in ("states", "dq", "reverse", "dkv"):
        assert f"def attngen_linear_{'bwd_states' if name == 'states' else name}_linear_favor(" in bwd
    from attngen.codegen.emit import generate

    with pytest.raises(ValueError, match="is for kind: linear"):
        generate("specs/mha.yaml", "linear_fwd")


@pytest.mark.parametrize("causal", [True, False])
def test_chunk_span_gives_every_row_exactly_one_tile(causal):
    from attngen.runtime.linear import chunk_span

    for nq, nk, chunk in ((37, 53, 32), (1, 100, 16), (70, 23, 16), (5, 5, 16)):
        for q_offset in (-80, -37, -5, 0, 3, 16, 40, 200):
            span = chunk_span(causal, nq, nk, q_offset, chunk)
            seen = list(range(span.zero_rows))
            for c in range(span.first_chunk, span.num_chunks):
                seen += [r for r in range(c * chunk - q_offset, (c + 1) * chunk - q_offset) if 0 <= r < nq]
            seen += list(range(span.tail_start, nq))
            assert sorted(seen) == list(range(nq)), (nq, nk, chunk, q_offset)
            # chunks hold every key a row can see; tail rows see every key
            last_visible = min(nk - 1, q_offset + nq - 1) if causal else nk - 1
            assert span.num_chunks * chunk > last_visible
            assert all(r + q_offset >= nk - 1 for r in range(span.tail_start, nq)) or not causal
