"""The softmax-attention IR: built from a spec, then rewritten by IR-only passes.

    load_q ─┐
    load_k ─┴ scores → scale → [softcap] → [alibi] → [score] → [mask] → online_softmax ─┬ store_lse
    load_v ──────────────────────────────────────────────────── weighted ←──┘→ store_out
"""
from __future__ import annotations

import math

from ..spec import Everything, Spec
from .graph import Graph
from .verify import register_op

register_op("load", 0, ("tensor", "heads"))
register_op("dot", 2, ("contract",))
register_op("scale", 1, ("value",))
register_op("softcap", 1, ("cap",))
register_op("alibi", 1, ("num_heads",))
register_op("score", 1, ("formula",))
register_op("mask", 1, ("predicate", "formula"))
register_op("online_softmax", 1, ("base",))
register_op("store", 1, ("tensor",))

LOG2E = 1.0 / math.log(2.0)


def build_forward(spec: Spec) -> Graph:
    """The forward computation of a softmax-kind spec, before any pass."""
    g = Graph(f"{spec.name}.fwd", facts={"spec_name": spec.name, "spec": spec.canonical(),
                                         "kernel": "fwd", "head_dim": spec.head_dim,
                                         "group": spec.group})
    g.add("load_q", "load", tensor="q", heads="query")
    g.add("load_k", "load", tensor="k", heads="kv")
    g.add("load_v", "load", tensor="v", heads="kv")
    g.add("scores", "dot", ("load_q", "load_k"), contract="head_dim")
    last = g.add("scale", "scale", ("scores",), value=spec.softmax_scale)
    if spec.softcap is not None:
        last = g.add("softcap", "softcap", (last,), cap=spec.softcap)
    if spec.alibi:
        last = g.add("alibi", "alibi", (last,), num_heads=spec.query_heads)
    if spec.score is not None:     # the spec's score formula, on the natural-units score
        last = g.add("score", "score", (last,), formula=spec.score.sympy_form)
    mask = spec.effective_mask
    predicate = None if isinstance(mask, Everything) else mask
    last = g.add("mask", "mask", (last,), predicate=predicate, formula=str(mask.expr()))
    g.add("softmax", "online_softmax", (last,), base="e")
    g.add("weighted", "dot", ("softmax", "load_v"), contract="key")
    g.add("store_out", "store", ("weighted",), tensor="out")
    g.add("store_lse", "store", ("softmax",), tensor="lse")
    return g


def drop_trivial_mask(g: Graph) -> Graph:
    """A mask that allows every pair does nothing: remove it."""
    if "mask" in g and g.node("mask").attrs["predicate"] is None:
        return g.without("mask")
    return g


def exp2_softmax(g: Graph) -> Graph:
    """exp2 is the hardware exponential: work in log2 units and fold log2(e) into one multiply."""
    g = g.with_attrs("softmax", base="2")
    if "softcap" in g:             # tanh is not linear: log2(e) goes after the cap
        g = g.with_attrs("softcap", out_scale=LOG2E)
        g = g.with_attrs("scale", folded_log2e=False)
    else:
        g = g.with_attrs("scale", value=g.node("scale").attrs["value"] * LOG2E, folded_log2e=True)
    if "alibi" in g:
        g = g.with_attrs("alibi", slope_scale=LOG2E)
    return g


# Full tiles never evaluate the mask, only partial tiles do: that is how the templates are built
# (separate masked and unmasked tile loops), not a decision a pass makes, so no pass records it.
IR_PASSES = (drop_trivial_mask, exp2_softmax)
