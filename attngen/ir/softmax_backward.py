"""The softmax-attention backward IR: the forward's score chain, then recompute and gradients.

    load_q ─┐
    load_k ─┴ scores → scale → [softcap] → [alibi] → [mask] → softmax ← load_lse   (p, recomputed)
    load_out, load_dout → delta = rowsum(dO * O) ─────────────────┐
    load_dout, load_v → dp ───────────────────── softmax_grad(softmax, dp, delta) → dscores
    dscores → [softcap_grad] → scale_grad ─┬ dq = dS K   (query-major: per query tile, over key tiles)
                                            └ dk = dS^T Q (key-major: per key tile, over query tiles)
    softmax, load_dout → dv = P^T dO                      (key-major)

The score chain is the forward's own nodes (same ops, same attributes), so the forward's IR passes
(`attngen.ir.softmax.IR_PASSES`) apply unchanged: the recomputed probabilities are named ``softmax``.
ALiBi adds a constant per (i, j) and the mask sets scores to -inf (p = 0): neither has a gradient
node. Two properties of the kernels are fixed by the template, not decided by a pass: a row with
no allowed key (lse = -inf) recomputes p = 0 (zero gradient, no NaN), and dK/dV of a kv head sum
its GROUP query heads inside one key-major program (no atomics, deterministic).
"""
from __future__ import annotations

from ..spec import Spec
from .graph import Graph
from .softmax import build_forward
from .verify import register_op

register_op("recompute_softmax", 2, ("base",))
register_op("row_dot", 2, ())
register_op("softmax_grad", 3, ())
register_op("softcap_grad", 2, ("cap",))
register_op("scale_grad", 1, ("value",))

# Forward nodes the backward does not reuse: it recomputes the probabilities from the saved lse.
_FORWARD_ONLY = ("softmax", "weighted", "store_out", "store_lse")


def build_backward(spec: Spec) -> Graph:
    """The backward computation of a softmax-kind spec, before any pass."""
    fwd = build_forward(spec)
    g = Graph(f"{spec.name}.bwd", facts={**fwd.facts, "kernel": "bwd"})
    for node in fwd.nodes():
        if node.name not in _FORWARD_ONLY:
            g.add(node.name, node.op, node.inputs, **node.attrs)
    g.add("load_lse", "load", tensor="lse", heads="query")
    g.add("load_out", "load", tensor="out", heads="query")
    g.add("load_dout", "load", tensor="dout", heads="query")
    g.add("softmax", "recompute_softmax", ("mask", "load_lse"), base="e")
    g.add("delta", "row_dot", ("load_dout", "load_out"))
    g.add("dp", "dot", ("load_dout", "load_v"), contract="head_dim")
    last = g.add("dscores", "softmax_grad", ("softmax", "dp", "delta"))
    if "softcap" in g:             # d/ds c*tanh(s/c) = 1 - tanh(s/c)^2
        last = g.add("softcap_grad", "softcap_grad", (last, "softcap"), cap=spec.softcap)
    last = g.add("scale_grad", "scale_grad", (last,), value=spec.softmax_scale)
    g.add("dq", "dot", (last, "load_k"), contract="key")
    g.add("dk", "dot", (last, "load_q"), contract="query")
    g.add("dv", "dot", ("softmax", "load_dout"), contract="query")
    for tensor in ("dq", "dk", "dv", "delta"):
        g.add(f"store_{tensor}", "store", (tensor,), tensor=tensor)
    return g


