"""The IR: building, passes, the verifier, content hashes."""
import pytest
import sympy

import attngen as A
from attngen.analysis.lowering import FORWARD_PASSES, lower_forward
from attngen.ir.graph import Graph
from attngen.ir.passes import reason
from attngen.ir.softmax import build_forward
from attngen.ir.verify import IRError, verify


def spec(**kw):
    base = dict(name="s", query_heads=4, kv_heads=2, head_dim=64)
    return A.Spec(**{**base, **kw})


def test_every_pass_has_a_reason_and_runs_verified():
    assert all(reason(p) for p in FORWARD_PASSES)
    g = lower_forward(spec(causal=True, softcap=20.0, alibi=True), check=True)
    assert g.facts["passes"] == [p.__name__ for p in FORWARD_PASSES]


def test_trivial_mask_is_dropped_and_interval_masks_iterate_by_ranges():
    assert "mask" not in lower_forward(spec(), check=True)
    g = lower_forward(spec(causal=True, mask=A.band(left=7)), check=True)
    assert g.facts["iteration"] == "ranges"
    lower, upper = g.facts["bounds"]
    i = sympy.Symbol("i", integer=True)
    assert lower == i - 7 and upper == i


def test_non_interval_masks_walk_lists():
    g = lower_forward(spec(mask=A.band(3) | A.global_tokens(2)), check=True)
    assert g.facts["iteration"] == "lists" and g.facts["bounds"] is None


def test_log2e_folds_into_scale_unless_softcap_comes_first():
    plain = lower_forward(spec(), check=True)
    assert plain.node("scale").attrs["folded_log2e"] is True
    assert plain.node("scale").attrs["value"] == pytest.approx(1.4426950408889634 / 8)
    capped = lower_forward(spec(softcap=30.0), check=True)
    assert capped.node("scale").attrs["folded_log2e"] is False
    assert capped.node("softcap").attrs["out_scale"] == pytest.approx(1.4426950408889634)


def test_content_hash_follows_meaning_not_name():
    a = lower_forward(spec(name="a", mask=A.band(3)), check=True)
    b = lower_forward(spec(name="b", mask=A.band(left=3, right=3)), check=True)
    c = lower_forward(spec(name="a", mask=A.band(4)), check=True)
    assert a.node_hashes()["mask"] == b.node_hashes()["mask"]
    assert a.node_hashes()["mask"] != c.node_hashes()["mask"]
    # Everything downstream of the mask changes with it; the loads do not.
    assert a.node_hashes()["load_q"] == c.node_hashes()["load_q"]
    assert a.node_hashes()["store_out"] != c.node_hashes()["store_out"]


def test_verifier_refuses_broken_graphs():
    g = build_forward(spec())
    verify(g)
    bad = Graph("bad")
    bad.add("x", "load", tensor="q", heads="query")
    with pytest.raises(IRError, match="stores nothing"):
        verify(bad)
    bad.add("y", "load", tensor="k", heads="kv")
    bad.add("s", "store", ("x",), tensor="out")
    with pytest.raises(IRError, match="nothing uses"):
        verify(bad)
    bad = Graph("bad")
    bad.add("x", "load", tensor="q")
    bad.add("s", "store", ("x",), tensor="out")
    with pytest.raises(IRError, match="lacks attributes"):
        verify(bad)
    bad = Graph("bad")
    bad.add("x", "no_such_op")
    with pytest.raises(IRError, match="unknown op"):
        verify(bad)
    with pytest.raises(ValueError, match="does not exist"):
        Graph("bad").add("s", "store", ("missing",), tensor="out")


def test_rewrites_return_new_graphs():
    g = build_forward(spec(softcap=5.0))
    h = g.without("softcap")
    assert "softcap" in g and "softcap" not in h
    verify(h)
    k = h.inserted_after("scale", "softcap", "softcap", cap=5.0)
    verify(k)
    assert k.node_hashes()["store_out"] == g.node_hashes()["store_out"]
