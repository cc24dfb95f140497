"""The linear-attention IR: built from a linear spec, then rewritten by IR-only passes.

Forward:

    load_q → feature_map(query) ──────────────────┐
    load_k → feature_map(key) ─┬ state_reduce (S, z) ┴ linear_apply → store_out
    load_v ────────────────────┘

Backward (`build_backward`): the same state, recomputed by a forward scan that also yields dq,
and a reverse state G = sum phi(q) dnum^T, g = sum phi(q) dden, reduced by a reverse scan that
yields dk and dv:

    row_grads (dnum = dout / den, dden = -dout·out / den) ← dout, out, phi(q), state
    query_grads (dphi_q) ← row_grads, state → feature_map_grad(query) → store_dq
    reverse_reduce (G, g) ← phi(q), row_grads ─┬ key_grads → feature_map_grad(key) → store_dk
                                                └ value_grads                      → store_dv

The templates apply a `feature_map` node where its input is loaded (phi(Q) and phi(K) are never
written to memory) and compute favor's logits in log2 units for exp2; both are how the templates
are built, so no pass records them.
"""
from __future__ import annotations

from ..spec import Spec
from .graph import Graph
from .verify import register_op

register_op("load", 0, ("tensor", "heads"))
register_op("store", 1, ("tensor",))
register_op("feature_map", 1, ("map", "role", "features"))
register_op("state_reduce", 2, ("over",))
register_op("linear_apply", 2, ("eps",))
register_op("row_grads", 4, ("eps",))
register_op("feature_map_grad", 2, ("map", "role"))
register_op("reverse_reduce", 2, ("over",))
register_op("query_grads", 3, ())
register_op("key_grads", 3, ())
register_op("value_grads", 2, ())


def _facts(spec: Spec, kernel: str) -> dict:
    return {"spec_name": spec.name, "spec": spec.canonical(), "kernel": kernel,
            "head_dim": spec.head_dim, "group": spec.group, "causal": spec.causal,
            "num_features": spec.num_features}


def _feature_maps(g: Graph, spec: Spec) -> None:
    fm = spec.feature_map
    common = dict(map=fm.name, features=spec.num_features,
                  seed=fm.seed if fm.name == "favor" else None)
    g.add("phi_q", "feature_map", ("load_q",), role="query", input_scale=spec.scale, **common)
    g.add("phi_k", "feature_map", ("load_k",), role="key", input_scale=None, **common)


def build_forward(spec: Spec) -> Graph:
    """The forward computation of a linear-kind spec, before any pass."""
    g = Graph(f"{spec.name}.linear_fwd", facts=_facts(spec, "linear_fwd"))
    g.add("load_q", "load", tensor="q", heads="query")
    g.add("load_k", "load", tensor="k", heads="kv")
    g.add("load_v", "load", tensor="v", heads="kv")
    _feature_maps(g, spec)
    g.add("state", "state_reduce", ("phi_k", "load_v"), over="prefix" if spec.causal else "all",
          carries=["S = sum phi(k) v^T", "z = sum phi(k)"])
    g.add("apply", "linear_apply", ("phi_q", "state"), eps=spec.eps)
    g.add("store_out", "store", ("apply",), tensor="out")
    return g


def build_backward(spec: Spec) -> Graph:
    """The backward computation (dq, dk, dv) of a linear-kind spec, before any pass."""
    g = Graph(f"{spec.name}.linear_bwd", facts=_facts(spec, "linear_bwd"))
    for name, tensor, heads in (("q", "q", "query"), ("k", "k", "kv"), ("v", "v", "kv"),
                                ("out", "out", "query"), ("dout", "dout", "query")):
        g.add(f"load_{name}", "load", tensor=tensor, heads=heads)
    _feature_maps(g, spec)
    over = "prefix" if spec.causal else "all"
    g.add("state", "state_reduce", ("phi_k", "load_v"), over=over,
          carries=["S = sum phi(k) v^T", "z = sum phi(k)"])
    g.add("row_grads", "row_grads", ("load_dout", "load_out", "phi_q", "state"), eps=spec.eps,
          yields=["dnum = dout / den", "dden = -(dout . out) / den"])
    g.add("dphi_q", "query_grads", ("row_grads", "state", "phi_k"))
    g.add("dq", "feature_map_grad", ("dphi_q", "load_q"), map=spec.feature_map.name, role="query")
    g.add("store_dq", "store", ("dq",), tensor="dq")
    g.add("reverse", "reverse_reduce", ("phi_q", "row_grads"), over="suffix" if spec.causal else "all",
          carries=["G = sum phi(q) dnum^T", "g = sum phi(q) dden"])
    g.add("dphi_k", "key_grads", ("reverse", "load_v", "phi_k"))
    g.add("dk", "feature_map_grad", ("dphi_k", "load_k"), map=spec.feature_map.name, role="key")
    g.add("store_dk", "store", ("dk",), tensor="dk")
    g.add("dv", "value_grads", ("reverse", "phi_k"))
    g.add("store_dv", "store", ("dv",), tensor="dv")
    return g


def choose_stabilisers(g: Graph) -> Graph:
    """favor subtracts maxima: per query row; over all keys, or causally a prefix maximum."""
    for node in g.of_op("feature_map"):
        if node.attrs["map"] != "favor":
            g = g.with_attrs(node.name, stabiliser=None)
        elif node.attrs["role"] == "query":
            g = g.with_attrs(node.name, stabiliser="row max over features")
        else:
            g = g.with_attrs(node.name, stabiliser="prefix max over visible keys" if g.facts["causal"]
                             else "max over all keys")
    return g


def choose_algorithm(g: Graph) -> Graph:
    """Causal: a chunked scan carrying the state; non-causal: reduce the state, then apply it."""
    return g.with_facts(algorithm="chunked_scan" if g.facts["causal"] else "reduce_then_apply")


IR_PASSES = (choose_stabilisers, choose_algorithm)
