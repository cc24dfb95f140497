"""The float64 reference against a second, independent formulation written here.

The formulation below shares nothing with attngen's but the random draw (which *is* the definition
of the random mask): the mask is read from the YAML dict pair by pair, each row gets an explicit
max-subtracted softmax in a Python loop, kv heads are picked by index, and the ALiBi slopes come
from the paper's own code.
"""
from __future__ import annotations

import math

import pytest
import torch

from attngen import ShapeError, load_spec, reference
from attngen.spec import alibi_slopes, random_draw


# ---------------------------------------------------------------------------------------------
# The independent formulation
# ---------------------------------------------------------------------------------------------
def paper_alibi_slopes(n: int) -> list[float]:
    """Press et al., ALiBi, the authors' get_slopes (github.com/ofirpress/attention_with_linear_biases)."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** k for k in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + paper_alibi_slopes(2 * closest)[0::2][: n - closest]


def allowed(mask: dict, i: int, j: int, row: int, *, nk: int, seg_q, seg_k) -> bool:
    """SPEC.md's table, literally, for one (i, j): `row` is the query's index (for seg_q)."""
    (kind, arg), = mask.items()
    if kind == "causal":
        return j <= i
    if kind == "band":
        left, right = (arg, arg) if isinstance(arg, int) else (arg.get("left"), arg.get("right"))
        return (left is None or i - left <= j) and (right is None or j <= i + right)
    if kind == "stride":
        return (i - j) % arg["every"] == 0                 # Python's % is the floored modulo
    if kind == "columns":
        return j % arg["every"] >= arg["every"] - arg["width"]
    if kind == "global":
        members = set(range(arg["first"])) if "first" in arg else set(arg["tokens"])
        return i in members or j in members
    if kind == "blocks":
        return i // arg["size"] == j // arg["size"]
    if kind == "random":
        block = arg["block"]
        row_draw = random_draw.draw_key_blocks(seed=arg.get("seed", 0), per_row=arg["per_row"],
                                               block=block, nk=nk, first_query_block=i // block,
                                               num_query_blocks=1)[0]
        return j // block in row_draw.tolist()
    if kind == "segments":
        return int(seg_q[row]) == int(seg_k[j])
    parts = [allowed(p, i, j, row, nk=nk, seg_q=seg_q, seg_k=seg_k) for p in
             (arg if kind in ("any", "all") else [arg])]
    return {"any": any, "all": all, "not": lambda ps: not ps[0]}[kind](parts)


def naive_attention(data: dict, q, k, v, *, q_offset=None, seg_q=None, seg_k=None):
    """Row by row: (out, lse) in float64 for the spec given as a dict."""
    batch, hq, nq, dim = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    offset = nk - nq if q_offset is None else q_offset
    scale = data.get("scale", dim ** -0.5)
    slopes = paper_alibi_slopes(hq)
    out = torch.zeros(batch, hq, nq, dim, dtype=torch.float64)
    lse = torch.full((batch, hq, nq), float("-inf"), dtype=torch.float64)
    for b in range(batch):
        sq = None if seg_q is None else (seg_q[b] if seg_q.dim() == 2 else seg_q)
        sk = None if seg_k is None else (seg_k[b] if seg_k.dim() == 2 else seg_k)
        for h in range(hq):
            kv_head = h // (hq // hkv)
            for row in range(nq):
                i = row + offset
                keys = [j for j in range(nk)
                        if (not data.get("causal") or j <= i)
                        and ("mask" not in data or allowed(data["mask"], i, j, row, nk=nk, seg_q=sq, seg_k=sk))]
                if not keys:
                    continue
                scores = []
                for j in keys:
                    s = float(torch.dot(q[b, h, row].double(), k[b, kv_head, j].double())) * scale
                    if "softcap" in data:
                        s = data["softcap"] * math.tanh(s / data["softcap"])
                    if data.get("alibi"):
                        s -= slopes[h] * (i - j)
                    scores.append(s)
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for w, j in zip(weights, keys):
                    out[b, h, row] += (w / total) * v[b, kv_head, j].double()
                lse[b, h, row] = top + math.log(total)
    return out, lse


def spec_dict(mask=None, *, heads=(4, 2), dim=8, **extra) -> dict:
    data = {"name": "case", "heads": {"query": heads[0], "kv": heads[1]}, "head_dim": dim, **extra}
    if mask is not None:
        data["mask"] = mask
    return data


def qkv(data, batch, nq, nk, gen, dtype=torch.float32):
    hq, hkv, dim = data["heads"]["query"], data["heads"]["kv"], data["head_dim"]
    q = torch.randn(batch, hq, nq, dim, generator=gen, dtype=dtype) * 1.5
    k = torch.randn(batch, hkv, nk, dim, generator=gen, dtype=dtype) * 1.5
    v = torch.randn(batch, hkv, nk, dim, generator=gen, dtype=dtype)
    return q, k, v


def assert_matches(data, q, k, v, **call):
    out, lse = reference(load_spec(data), q, k, v, **call)
    want_out, want_lse = naive_attention(data, q, k, v, **call)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-12)
    return out, lse


# ---------------------------------------------------------------------------------------------
# Every predicate, combinations, alignments, groupings and modifiers
# ---------------------------------------------------------------------------------------------
SEGMENTS = {"segments": True}
CASES = [
    # id, spec dict, nq, nk, q_offset
    ("no-mask", spec_dict(), 7, 7, None),
    ("causal", spec_dict(causal=True), 7, 7, None),
    ("causal-decode-nq-below-nk", spec_dict(causal=True), 3, 11, None),
    ("causal-nq-above-nk-empty-rows", spec_dict(causal=True), 10, 6, None),
    ("causal-explicit-positive-offset", spec_dict(causal=True), 5, 9, 2),
    ("causal-explicit-negative-offset", spec_dict(causal=True), 6, 9, -3),
    ("band-both-sides", spec_dict({"band": 2}), 9, 9, None),
    ("band-left-only", spec_dict({"band": {"left": 3}}), 6, 10, None),
    ("band-right-only-offset", spec_dict({"band": {"right": 1}}), 6, 10, 1),
    ("stride", spec_dict({"stride": {"every": 3}}), 8, 11, None),
    ("stride-negative-positions", spec_dict({"stride": {"every": 4}}), 9, 7, -5),
    ("columns", spec_dict({"columns": {"every": 4, "width": 2}}), 7, 12, None),
    ("global-first", spec_dict({"global": {"first": 2}}), 8, 8, None),
    ("global-tokens", spec_dict({"global": {"tokens": [7, 3]}}), 8, 10, None),
    ("global-first-negative-positions", spec_dict({"global": {"first": 1}}), 9, 6, None),
    ("blocks", spec_dict({"blocks": {"size": 3}}), 8, 10, None),
    ("blocks-negative-positions", spec_dict({"blocks": {"size": 4}}), 10, 7, None),
    ("random", spec_dict({"random": {"per_row": 2, "block": 3, "seed": 11}}), 9, 12, None),
    ("random-negative-query-blocks", spec_dict({"random": {"per_row": 1, "block": 2}}), 10, 7, -4),
    ("not-band", spec_dict({"not": {"band": 1}}), 7, 9, None),
    ("longformer-like", spec_dict({"any": [{"band": 1}, {"global": {"first": 1}}]}), 9, 9, None),
    ("bigbird-like", spec_dict({"any": [{"band": 1}, {"global": {"first": 2}},
                                        {"random": {"per_row": 2, "block": 2, "seed": 3}}]}), 10, 10, None),
    ("sparse-strided", spec_dict({"any": [{"band": {"left": 3}}, {"stride": {"every": 3}}]},
                                 causal=True), 11, 11, None),
    ("sparse-fixed", spec_dict({"any": [{"blocks": {"size": 4}}, {"columns": {"every": 4, "width": 1}}]},
                               causal=True), 11, 11, None),
    ("all-and-not", spec_dict({"all": [{"band": 4}, {"not": {"stride": {"every": 2}}}]}), 8, 9, 1),
    ("nested-any-all-not", spec_dict({"any": [{"all": [{"blocks": {"size": 3}}, {"not": {"causal": True}}]},
                                              {"band": {"left": 1, "right": 0}}]}), 9, 10, None),
    ("mha", spec_dict(causal=True, heads=(3, 3)), 5, 6, None),
    ("mqa", spec_dict(causal=True, heads=(4, 1)), 5, 6, None),
    ("gqa-6-over-2", spec_dict({"band": 2}, heads=(6, 2)), 5, 6, None),
    ("explicit-scale", spec_dict(causal=True, scale=0.7), 6, 6, None),
    ("softcap", spec_dict(causal=True, softcap=2.0, scale=1.0), 6, 8, None),
    ("alibi-4-heads", spec_dict(causal=True, alibi=True, heads=(4, 4)), 6, 9, None),
    ("alibi-6-heads-non-causal", spec_dict(alibi=True, heads=(6, 3)), 6, 9, None),
    ("alibi-softcap-band", spec_dict({"band": {"left": 3}}, causal=True, alibi=True, softcap=3.0,
                                     heads=(12, 4)), 5, 7, -1),
]


@pytest.mark.parametrize("data, nq, nk, q_offset", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_reference_matches_the_naive_formulation(data, nq, nk, q_offset, torch_rng):
    q, k, v = qkv(data, 2, nq, nk, torch_rng)
    assert_matches(data, q, k, v, q_offset=q_offset)


@pytest.mark.parametrize("seg_q, seg_k, nq, nk", [
    pytest.param([0, 0, 1, 1, 1, 2], [0, 0, 0, 1, 1, 1, 2, 2], 6, 8, id="1d"),
    pytest.param([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]],
                 [[0, 0, 0, 1, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1, 1, 1]], 6, 8, id="batched"),
    pytest.param([5, 5, 9, 9], [[5, 5, 5, 9, 9], [5, 9, 9, 9, 9]], 4, 5, id="1d-queries-batched-keys"),
    pytest.param([0, 0, 1, 3, 3], [0, 0, 1, 1, 2, 2, 2], 5, 7, id="query-document-absent-from-keys"),
])
@pytest.mark.parametrize("data", [
    pytest.param(spec_dict(SEGMENTS, causal=True), id="causal"),
    pytest.param(spec_dict({"any": [SEGMENTS, {"global": {"first": 1}}]}), id="any-global"),
    pytest.param(spec_dict(SEGMENTS, causal=True, alibi=True, heads=(4, 4)), id="alibi"),
])
def test_segments(data, seg_q, seg_k, nq, nk, torch_rng):
    seg_q, seg_k = torch.tensor(seg_q), torch.tensor(seg_k)
    q, k, v = qkv(data, 2, nq, nk, torch_rng)
    out, lse = assert_matches(data, q, k, v, seg_q=seg_q, seg_k=seg_k)
    if seg_q.dim() == 2:                    # the batches really differ
        one = reference(load_spec(data), q, k, v, seg_q=seg_q[0], seg_k=seg_k[0])[0]
        assert torch.equal(out[0], one[0]) and not torch.equal(out[1], one[1])


def test_default_alignment_is_bottom_right(torch_rng):
    data = spec_dict(causal=True)
    q, k, v = qkv(data, 1, 3, 8, torch_rng)
    spec = load_spec(data)
    default = reference(spec, q, k, v)
    assert all(torch.equal(a, b) for a, b in zip(default, reference(spec, q, k, v, q_offset=5)))
    top_left = reference(spec, q, k, v, q_offset=0)[0]
    assert not torch.allclose(default[0], top_left)
    # The last query sees every key: it equals unmasked attention's last row.
    full = reference(load_spec(spec_dict()), q, k, v)[0]
    torch.testing.assert_close(default[0][:, :, -1], full[:, :, -1], rtol=0, atol=1e-14)


@pytest.mark.parametrize("heads", [pytest.param((6, 6), id="mha"), pytest.param((6, 3), id="gqa"),
                                   pytest.param((6, 2), id="gqa-3"), pytest.param((6, 1), id="mqa")])
def test_query_head_reads_kv_head_h_div_group(heads, torch_rng):
    """With v constant per kv head, every output row is that constant: it names the kv head read."""
    hq, hkv = heads
    data = spec_dict(causal=True, heads=heads)
    q, k, _ = qkv(data, 2, 5, 5, torch_rng)
    v = torch.arange(hkv, dtype=torch.float32).view(1, hkv, 1, 1).expand(2, hkv, 5, 8)
    out = reference(load_spec(data), q, k, v)[0]
    read = out[..., 0].round().long()                        # (B, Hq, Nq)
    for h in range(hq):
        assert (read[:, h] == h // (hq // hkv)).all(), (h, read[:, h])


def test_strided_views_give_the_same_result(torch_rng):
    """q, k, v as transposed views of (B, N, H, D) tensors, no copy."""
    data = spec_dict({"band": 2}, heads=(4, 2))
    q_bnhd = torch.randn(2, 7, 4, 8, generator=torch_rng)
    k_bnhd = torch.randn(2, 9, 2, 8, generator=torch_rng)
    v_bnhd = torch.randn(2, 9, 2, 8, generator=torch_rng)
    views = [t.transpose(1, 2) for t in (q_bnhd, k_bnhd, v_bnhd)]
    assert not views[0].is_contiguous()
    got = reference(load_spec(data), *views)
    want = reference(load_spec(data), *[t.contiguous() for t in views])
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("data, nq, nk, q_offset, empty_rows", [
    pytest.param(spec_dict(causal=True), 6, 4, None, [0, 1], id="causal-more-queries-than-keys"),
    pytest.param(spec_dict(causal=True, softcap=5.0, alibi=True, heads=(4, 4)), 5, 5, -2, [0, 1],
                 id="causal-softcap-alibi-negative-offset"),
    pytest.param(spec_dict({"band": {"left": 0, "right": 0}}), 4, 3, 1, [2, 3], id="diagonal-past-the-keys"),
    pytest.param(spec_dict({"all": [{"blocks": {"size": 2}}, {"not": {"band": 0}}]}, causal=True),
                 4, 4, None, [0, 2], id="block-first-rows-without-diagonal"),
])
def test_empty_rows_are_zero_with_lse_minus_inf(data, nq, nk, q_offset, empty_rows, torch_rng):
    q, k, v = qkv(data, 2, nq, nk, torch_rng, dtype=torch.float16)
    out, lse = assert_matches(data, q, k, v, q_offset=q_offset)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    empty = torch.zeros(nq, dtype=torch.bool)
    empty[empty_rows] = True
    assert (out[:, :, empty] == 0).all()
    assert torch.isneginf(lse[:, :, empty]).all()
    assert torch.isfinite(lse[:, :, ~empty]).all() and (out[:, :, ~empty] != 0).any()


def test_lse_merges_disjoint_key_sets(torch_rng):
    """What lse is for: attention over keys A and over keys B merge exactly into attention over A+B."""
    data = spec_dict()
    q, k, v = qkv(data, 1, 4, 10, torch_rng)
    spec = load_spec(data)
    full_out, full_lse = reference(spec, q, k, v, q_offset=9)
    (oa, la), (ob, lb) = (reference(spec, q, k[:, :, s], v[:, :, s], q_offset=0)
                          for s in (slice(0, 6), slice(6, 10)))
    lse = torch.logaddexp(la, lb)
    out = oa * torch.exp(la - lse)[..., None] + ob * torch.exp(lb - lse)[..., None]
    torch.testing.assert_close(lse, full_lse, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, full_out, rtol=0, atol=1e-12)


def test_merge_joins_sinks_once(torch_rng):
    """Parts computed without sinks, merged with `sink=`: the sink spec's whole-row attention
    (SPEC.md: the sink counted once); a row no part saw gives out 0 and lse = sink[h]."""
    from attngen import merge
    data = spec_dict(heads=(4, 4))
    q, k, v = qkv(data, 1, 4, 10, torch_rng)
    sink = torch.randn(4, dtype=torch.float64, generator=torch_rng)
    full_out, full_lse = reference(load_spec({**data, "sink": True}), q, k, v, q_offset=9, sink=sink)
    plain = load_spec(data)
    parts = [reference(plain, q, k[:, :, s], v[:, :, s], q_offset=0) for s in (slice(0, 6), slice(6, 10))]
    out, lse = merge([p[0] for p in parts], [p[1] for p in parts], sink=sink)
    torch.testing.assert_close(lse, full_lse, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, full_out, rtol=0, atol=1e-12)
    nothing = torch.full_like(lse, float("-inf"))
    out, lse = merge([torch.zeros_like(out)], [nothing], sink=sink)
    assert (out == 0).all() and torch.equal(lse, sink[None, :, None].expand_as(lse))
    with pytest.raises(ShapeError, match="sink has shape"):
        merge([out], [lse], sink=sink[:3])


# ---------------------------------------------------------------------------------------------
# ALiBi slopes
# ---------------------------------------------------------------------------------------------
def test_alibi_slopes_for_8_heads_are_the_papers():
    assert alibi_slopes(8).tolist() == [2.0 ** -k for k in range(1, 9)]


def test_alibi_slopes_for_16_heads_interleave_halves():
    torch.testing.assert_close(alibi_slopes(16), torch.tensor([2.0 ** (-k / 2) for k in range(1, 17)],
                                                              dtype=torch.float64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 12, 24, 40, 64, 71, 112])
def test_alibi_slopes_match_the_authors_code(n):
    torch.testing.assert_close(alibi_slopes(n), torch.tensor(paper_alibi_slopes(n), dtype=torch.float64),
                               rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------------------------
# Shapes: refused with a ShapeError naming the tensor
# ---------------------------------------------------------------------------------------------
GQA = spec_dict(heads=(4, 2))
SEG = spec_dict(SEGMENTS, heads=(4, 2))


def _t(*shape):
    return torch.zeros(*shape)


@pytest.mark.parametrize("data, tensors, extra, name", [
    pytest.param(GQA, (_t(2, 4, 5, 8)[0], _t(2, 2, 6, 8), _t(2, 2, 6, 8)), {}, "q", id="q-3d"),
    pytest.param(GQA, (_t(2, 2, 5, 8), _t(2, 2, 6, 8), _t(2, 2, 6, 8)), {}, "q", id="q-wrong-heads"),
    pytest.param(GQA, (_t(2, 4, 5, 16), _t(2, 2, 6, 8), _t(2, 2, 6, 8)), {}, "q", id="q-wrong-head-dim"),
    pytest.param(GQA, ([[0.0]], _t(2, 2, 6, 8), _t(2, 2, 6, 8)), {}, "q", id="q-not-a-tensor"),
    pytest.param(GQA, (_t(2, 4, 5, 8), _t(2, 4, 6, 8), _t(2, 2, 6, 8)), {}, "k", id="k-repeated-heads"),
    pytest.param(GQA, (_t(2, 4, 5, 8), _t(1, 2, 6, 8), _t(2, 2, 6, 8)), {}, "k", id="k-wrong-batch"),
    pytest.param(GQA, (_t(2, 4, 5, 8), _t(2, 2, 6, 4), _t(2, 2, 6, 4)), {}, "k", id="k-wrong-head-dim"),
    pytest.param(GQA, (_t(2, 4, 5, 8), _t(2, 2, 6, 8), _t(2, 2, 7, 8)), {}, "v", id="v-other-length"),
    pytest.param(GQA, (_t(2, 4, 5, 8), _t(2, 2, 6, 8), _t(2, 2, 6)), {}, "v", id="v-3d"),
    pytest.param(SEG, (_t(2, 4, 5, 8), _t(2, 2, 6, 8), _t(2, 2, 6, 8)),
                 {"seg_q": torch.zeros(4, dtype=torch.long), "seg_k": torch.zeros(6, dtype=torch.long)},
                 "seg_q", id="seg-q-wrong-length"),
    pytest.param(SEG, (_t(2, 4, 5, 8), _t(2, 2, 6, 8), _t(2, 2, 6, 8)),
                 {"seg_q": torch.zeros(5), "seg_k": torch.zeros(6, dtype=torch.long)}, "seg_q",
                 id="seg-q-float"),
    pytest.param(SEG, (_t(2, 4, 5, 8), _t(2, 2, 6, 8), _t(2, 2, 6, 8)),
                 {"seg_q": torch.zeros(5, dtype=torch.long), "seg_k": torch.zeros(1, 2, 6, dtype=torch.long)},
                 "seg_k", id="seg-k-3d"),
    pytest.param(SEG, (_t(2, 4, 5, 8), _t(2, 2, 6, 8), _t(2, 2, 6, 8)),
                 {"seg_q": torch.zeros(3, 5, dtype=torch.long), "seg_k": torch.zeros(6, dtype=torch.long)},
                 "seg_q", id="seg-q-wrong-batch"),
    pytest.param(SEG, (_t(2, 4, 5, 8), _t(2, 2, 6, 8), _t(2, 2, 6, 8)),
                 {"seg_q": torch.zeros(2, 5, dtype=torch.long), "seg_k": torch.zeros(1, 6, dtype=torch.long)},
                 "seg_k", id="seg-k-wrong-batch"),
    pytest.param(SEG, (_t(2, 4, 5, 8), _t(2, 2, 6, 8), _t(2, 2, 6, 8)), {}, "seg_q", id="segments-missing"),
    pytest.param(GQA, (_t(2, 4, 5, 8), _t(2, 2, 6, 8), _t(2, 2, 6, 8)),
                 {"seg_q": torch.zeros(5, dtype=torch.long), "seg_k": torch.zeros(6, dtype=torch.long)},
                 "seg_q", id="segments-given-without-a-segments-mask"),
])
def test_bad_shapes_raise_shape_error_naming_the_tensor(data, tensors, extra, name):
    with pytest.raises(ShapeError) as info:
        reference(load_spec(data), *tensors, **extra)
    message = str(info.value)
    assert name in message, message
