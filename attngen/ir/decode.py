"""The decode IR: the forward's score chain against a KV cache, split over keys, merged through lse.

    load_q (group × tokens packed) ─┐
    load_k (cache) ─────────────────┴ scores → scale → [softcap] → [alibi] → [mask] → online_softmax ─┐
    load_v (cache) ──────────────────────────────────────────────────────────── weighted ←─────────┤
                                                           merge(weighted, softmax) ←── (lse) ─────┘
                                                           ├ store_out
                                                           └ store_lse

The score chain is the forward's own nodes (same ops, same attributes), so the forward's IR passes
(`attngen.ir.softmax.IR_PASSES`) apply unchanged. What decoding adds: the query rows of one program
are the GROUP query heads of a kv head times the Nq new tokens (K/V read once per group), and the
keys of one sequence are split across programs whose partial (out, lse) pairs a second kernel
merges exactly (flash-decoding). Both are how the decode template is built; the split count is a
per-call decision of the launcher (`analysis.lowering_decode.choose_num_splits`).
"""
from __future__ import annotations

from ..errors import CompileError
from ..spec import Spec
from .graph import Graph
from .softmax import build_forward
from .verify import register_op

register_op("lse_merge", 2, ("over",))

# Forward nodes replaced: decoding stores through the merge of the key splits.
_REPLACED = ("store_out", "store_lse")


def build_decode(spec: Spec) -> Graph:
    """The decode computation of a softmax-kind spec, before any pass."""
    if spec.kind != "softmax":
        raise CompileError(f"decode kernels are for softmax specs; {spec.name!r} is {spec.kind}: linear "
                           "attention keeps a fixed-size state instead of a KV cache; call the compiled "
                           "attention on the cached keys (q_offset defaults to Nk - Nq)")
    if spec.uses_segments:
        raise CompileError(f"spec {spec.name!r} has a segments mask: segment ids are not meaningful "
                           "when decoding against a KV cache (the cache holds no per-key document "
                           "ids); run the forward kernel with seg_q/seg_k instead")
    fwd = build_forward(spec)
    g = Graph(f"{spec.name}.decode", facts={**fwd.facts, "kernel": "decode"})
    for node in fwd.nodes():
        if node.name not in _REPLACED:
            g.add(node.name, node.op, node.inputs, **node.attrs)
    g.add("merge", "lse_merge", ("weighted", "softmax"), over="key_splits")
    g.add("store_out", "store", ("merge",), tensor="out")
    g.add("store_lse", "store", ("merge",), tensor="lse")
    return g


