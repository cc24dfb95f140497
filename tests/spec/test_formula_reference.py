"""Specs with formulas, inputs, sinks and Dv != Dqk: declarations, canonical forms, and the float64
reference against a row-by-row Python formulation written here (mask and score as lambdas)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import attngen as A
from attngen import ShapeError, SpecError, load_spec, reference

HEAD = "name: f\nheads: {query: 4, kv: 2}\nhead_dim: 8\n"
FORMULA_SPECS = sorted((Path(__file__).resolve().parents[2] / "specs" / "formulas").glob("*.yaml"))


def naive(q, k, v, *, scale, mask, score=None, sink=None, q_offset):
    """out, lse per (b, h, row): an explicit loop; mask(b, h, i, j) and score(s, b, h, i, j) are
    Python functions of scalars."""
    bsz, hq, nq, _ = q.shape
    group = hq // k.shape[1]
    out = torch.zeros(bsz, hq, nq, v.shape[-1], dtype=torch.float64)
    lse = torch.zeros(bsz, hq, nq, dtype=torch.float64)
    for b in range(bsz):
        for h in range(hq):
            for row in range(nq):
                i = row + q_offset
                logits = []
                for j in range(k.shape[2]):
                    s = float(q[b, h, row].double() @ k[b, h // group, j].double()) * scale
                    s = score(s, b, h, i, j) if score else s
                    if mask(b, h, i, j) and s != -math.inf:
                        logits.append((j, s))
                extra = [float(sink[h])] if sink is not None else []
                values = [s for _, s in logits] + extra
                top = max(values) if values else -math.inf
                total = sum(math.exp(x - top) for x in values) if values else 0.0
                lse[b, h, row] = top + math.log(total) if values else -math.inf
                for j, s in logits:
                    out[b, h, row] += math.exp(s - float(lse[b, h, row])) * v[b, h // group, j].double()
    return out, lse


def tensors(spec, nq, nk, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, spec.query_heads, nq, spec.head_dim, generator=g)
    k = torch.randn(batch, spec.kv_heads, nk, spec.head_dim, generator=g)
    v = torch.randn(batch, spec.kv_heads, nk, spec.v_head_dim, generator=g)
    return q, k, v


def check(spec, mask, score=None, *, nq=5, nk=9, q_offset=None, **inputs):
    q, k, v = tensors(spec, nq, nk)
    out, lse = reference(spec, q, k, v, q_offset=q_offset, **inputs)
    offset = nk - nq if q_offset is None else q_offset
    want_out, want_lse = naive(q, k, v, scale=spec.softmax_scale, mask=mask, score=score,
                               sink=inputs.get("sink"), q_offset=offset)
    assert out.shape == (2, spec.query_heads, nq, spec.v_head_dim)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-12)
    return out, lse


def test_prefix_lm_per_sequence():
    spec = load_spec(HEAD + "inputs:\n  prefix: {shape: [B], dtype: int32}\nmask: \"j <= i or j < prefix[b]\"\n")
    prefix = torch.tensor([3, 7], dtype=torch.int32)
    check(spec, lambda b, h, i, j: j <= i or j < int(prefix[b]), prefix=prefix)


def test_t5_bias_with_out_of_range_and_explicit_offset():
    spec = load_spec(HEAD + "inputs:\n  rel: {shape: [Hq, 5], dtype: float32, grad: true}\n"
                            "score: \"s + rel[h, i - j + 2]\"\ncausal: true\n")
    rel = torch.randn(4, 5)
    bias = lambda h, d: float(rel[h, d + 2]) if 0 <= d + 2 < 5 else 0.0     # noqa: E731  (reads 0)
    check(spec, lambda b, h, i, j: j <= i, lambda s, b, h, i, j: s + bias(h, i - j), q_offset=3, rel=rel)


def test_order_is_scale_softcap_alibi_score_then_mask():
    spec = A.Spec(name="o", query_heads=4, kv_heads=2, head_dim=8, softcap=2.0, alibi=True, scale=0.7,
                  score="where(s > 0.5, s * 2, -inf)", mask="j != 1")
    slopes = A.spec.alibi_slopes(4)
    score = lambda s, b, h, i, j: (lambda t: t * 2 if t > 0.5 else -math.inf)(    # noqa: E731
        2.0 * math.tanh(s / 2.0) - float(slopes[h]) * (i - j))
    check(spec, lambda b, h, i, j: j != 1, score)


def test_sinks_and_an_empty_row():
    spec = A.Spec(name="s", query_heads=4, kv_heads=2, head_dim=8, sink=True, causal=True,
                  mask=A.band(left=2))
    sink = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out, lse = check(spec, lambda b, h, i, j: i - 2 <= j <= i, sink=sink, nq=6, nk=6, q_offset=-1)
    assert torch.all(out[:, :, 0] == 0)                                    # row i = -1 has no key
    torch.testing.assert_close(lse[:, :, 0], sink.double().expand(2, 4))


def test_mla_value_head_dim():
    spec = load_spec("name: mla\nheads: {query: 4, kv: 2}\nhead_dim: {qk: 12, v: 6}\ncausal: true\n")
    assert spec.head_dim == 12 and spec.v_head_dim == 6 and spec.softmax_scale == 1 / math.sqrt(12)
    check(spec, lambda b, h, i, j: j <= i)
    same = load_spec("name: mla\nheads: {query: 4, kv: 2}\nhead_dim: {qk: 12, v: 12}\ncausal: true\n")
    assert same == load_spec("name: mla\nheads: {query: 4, kv: 2}\nhead_dim: 12\ncausal: true\n")


def test_score_by_head_with_gqa():
    spec = A.Spec(name="g", query_heads=4, kv_heads=2, head_dim=8,
                  score="where(hk == 0, s, s / 2) - abs(i - j) * 0.1")
    check(spec, lambda b, h, i, j: True, lambda s, b, h, i, j: (s if h // 2 == 0 else s / 2) - abs(i - j) * 0.1)


@pytest.mark.parametrize("inputs, phrase", [
    ({}, "missing input 'prefix'"),
    ({"prefix": torch.tensor([1, 2], dtype=torch.int32), "extra": torch.zeros(2)}, "unknown input 'extra'"),
    ({"prefix": torch.tensor([1, 2, 3], dtype=torch.int32)}, r"input 'prefix' has shape \(3,\), expected \(2,\)"),
    ({"prefix": torch.tensor([1, 2])}, "input 'prefix' has dtype torch.int64, expected torch.int32"),
    ({"prefix": [1, 2]}, "input 'prefix' must be a torch.Tensor"),
])
def test_bad_call_inputs_name_the_input(inputs, phrase):
    spec = load_spec(HEAD + "inputs:\n  prefix: {shape: [B], dtype: int32}\nmask: \"j < prefix[b]\"\n")
    q, k, v = tensors(spec, 3, 5)
    with pytest.raises(ShapeError, match=phrase):
        reference(spec, q, k, v, **inputs)


def test_missing_sink_and_wrong_v_shape():
    spec = A.Spec(name="s", query_heads=4, kv_heads=2, head_dim=8, sink=True)
    q, k, v = tensors(spec, 3, 5)
    with pytest.raises(ShapeError, match="missing input 'sink'"):
        reference(spec, q, k, v)
    mla = A.Spec(name="m", query_heads=4, kv_heads=2, head_dim={"qk": 8, "v": 4})
    with pytest.raises(ShapeError, match=r"v has shape .*Dv"):
        reference(mla, q, k, v)


@pytest.mark.parametrize("body, field, phrase", [
    ("inputs:\n  i: {shape: [B], dtype: int32}\n", "inputs.i", "clashes"),
    ("inputs:\n  q_offset: {shape: [B], dtype: int32}\n", "inputs.q_offset", "clashes"),
    ("inputs:\n  where: {shape: [B], dtype: int32}\n", "inputs.where", "clashes"),
    ("inputs:\n  x: {shape: [B], dtype: int16}\n", "inputs.x.dtype", "must be one of"),
    ("inputs:\n  x: {shape: [], dtype: int32}\n", "inputs.x.shape", "non-empty"),
    ("inputs:\n  x: {shape: [N], dtype: int32}\n", "inputs.x.shape[0]", "B, Hq, Hkv, Nq, Nk"),
    ("inputs:\n  x: {shape: [B], dtype: int32, grad: true}\n", "inputs.x.grad", "float32"),
    ("inputs:\n  x: {shape: [B], dtype: int32, size: 3}\n", "inputs.x.size", "unknown key"),
    ("sink: true\ninputs:\n  sink: {shape: [Hq], dtype: float32}\n", "inputs.sink", "declared by sink"),
    ("sink: 1\n", "sink", "true or false"),
    ("score: \"s + j < 3\"\n", "score", "must give a number"),
    ("kind: linear\nfeature_map: elu1\nscore: \"s\"\n", "score", "softmax only"),
], ids=lambda x: x if "\n" not in x else None)
def test_bad_declarations_are_refused_at_load(body, field, phrase):
    with pytest.raises(SpecError, match=phrase) as info:
        load_spec(HEAD.replace("head_dim: 8\n", "head_dim: 8\n") + body)
    assert info.value.field == field


def test_existing_specs_keep_their_canonical_form():
    for spec in A.load_specs(Path(__file__).resolve().parents[2] / "specs"):
        assert not {"inputs", "score", "sink", "value_head_dim"} & set(spec.canonical())
        assert isinstance(spec.to_dict()["head_dim"], int) and "inputs" not in spec.to_dict()


@pytest.mark.parametrize("path", FORMULA_SPECS, ids=lambda p: p.stem)
def test_formula_specs_load_round_trip_and_run_in_the_reference(path):
    spec = load_spec(path)
    assert load_spec(spec.to_dict()) == spec
    q, k, v = tensors(spec, 7, 11, seed=1)
    sizes = {"B": 2, "Hq": spec.query_heads, "Hkv": spec.kv_heads, "Nq": 7, "Nk": 11}
    g = torch.Generator().manual_seed(2)
    inputs = {}
    for d in spec.all_inputs:
        shape = d.sizes(sizes)
        if d.dtype == "float32":
            inputs[d.name] = torch.randn(shape, generator=g)
        elif d.dtype == "bool":
            inputs[d.name] = torch.rand(shape, generator=g) < 0.5
        else:
            inputs[d.name] = torch.randint(0, 8, shape, generator=g).to(getattr(torch, d.dtype))
    out, lse = reference(spec, q, k, v, **inputs)
    assert out.shape == (2, spec.query_heads, 7, spec.v_head_dim) and not out.isnan().any()
    assert not lse.isnan().any()
