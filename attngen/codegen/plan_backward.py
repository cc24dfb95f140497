"""From a lowered backward IR graph to the values templates/bwd.py.jinja is rendered with.

The score chain, the mask and the dQ kernel's key-tile walk are the forward's (`plan.forward_values`
on the same node names); added here: the three kernels' names, the natural-units scale of the
gradient, and the dK/dV kernel's query-row bounds from the transposed interval [Linv(j), Rinv(j)].
"""
from __future__ import annotations

import sympy

from ..ir.graph import Graph
from .plan import block_list_args, forward_values, random_args, random_tables, sink_args
from .plan_formula import FormulaCode, grad_signature_args, grad_values
from .plan_helpers import helper_flags
from .printer import print_triton
from .signature import KernelSignature, constexprs, sizes, strides, tensors

# The kernels of one backward source, by role: `{kernel_name}_{suffix}`, launched in this order.
KERNEL_SUFFIXES = ("preprocess", "dkdv", "dq")


def kernel_names(kernel_name: str) -> dict[str, str]:
    """{role: function name} of the three kernels generated under the prefix `kernel_name`."""
    return {role: f"{kernel_name}_{role}" for role in KERNEL_SUFFIXES}


def backward_signatures(g: Graph, kernel_name: str) -> dict[str, KernelSignature]:
    """{role: signature} of the three backward kernels, in launch order."""
    names = kernel_names(kernel_name)
    tile_walk = (tensors("alibi_slopes", dtype="fp32") + tensors("seg_q", "seg_k", dtype="i32"))
    saved = tensors("q", "k", "v", "dout") + tensors("lse2", "delta", dtype="fp32")
    inputs = strides("q") + strides("k") + strides("v") + strides("do")
    seg = strides("seg_q", "bn") + strides("seg_k", "bn")
    randoms = random_args(random_tables(g)) + FormulaCode.of_graph(g, "bwd").signature_args()
    return {
        # The preprocess reads the forward's lse and writes delta and lse2 (the lse the dK/dV and
        # dQ loops read, log2 units, +inf for rows with no allowed key); with sinks also each
        # program's share of d(sink) (`sink_partials`).
        "preprocess": KernelSignature(names["preprocess"], (
            tensors("out", "dout") + tensors("lse", "delta", "lse2", dtype="fp32")
            + (tensors("sink", "sink_partials", dtype="fp32") if sink_args(g) else ())
            + strides("o") + strides("do")
            + sizes("nq", "num_query_heads") + constexprs("BLOCK_M"))),
        "dkdv": KernelSignature(names["dkdv"], (
            saved + tensors("dk", "dv") + tile_walk + block_list_args(g, "by_key_") + randoms
            + inputs + strides("dk") + strides("dv") + seg
            + sizes("nq", "nk", "q_offset", "k_offset", "num_kv_heads")
            + constexprs("BLOCK_M", "BLOCK_N", "EVEN_M", "DOT_PRECISION", "UPCAST_DOT"))),
        "dq": KernelSignature(names["dq"], (
            saved + tensors("dq") + tile_walk + block_list_args(g) + randoms
            + grad_signature_args(FormulaCode.of_graph(g, "bwd"))
            + inputs + strides("dq") + seg + sizes("nq", "nk", "q_offset", "k_offset", "num_query_heads")
            + constexprs("BLOCK_M", "BLOCK_N", "EVEN_K", "DOT_PRECISION", "UPCAST_DOT"))),
    }


def _row_code(bound: sympy.Expr, key: str, *, clamp: str, limit: str) -> str:
    """A query position bound at the scalar key `key`, as a row (position - q_offset) clamped into
    [0, nq - 1]; ±oo become the limit."""
    if bound in (sympy.oo, -sympy.oo):
        return limit
    # Transposed bounds are expressions in j alone: a stray i would print as an undefined name.
    code = print_triton(bound, query="NO_QUERY_POSITION_HERE", key=key)
    return f"tl.{clamp}({code} - q_offset, {limit})"


def _key_major_values(g: Graph) -> dict:
    if g.facts["iteration"] != "ranges":
        return dict(key_major_note="per key tile, lists of partial and full query tiles (transposed "
                                   "block map)",
                    lower_inv_formula="", upper_inv_formula="", lo_row_code="", hi_row_code="",
                    full_lo_row_code="", full_hi_row_code="")
    lower, upper = g.facts["query_bounds"]
    return dict(
        key_major_note="closed-form query-tile ranges from the transposed interval (no index lists)",
        lower_inv_formula=str(lower), upper_inv_formula=str(upper),
        lo_row_code=_row_code(lower, "first_key", clamp="maximum", limit="0"),
        hi_row_code=_row_code(upper, "last_key", clamp="minimum", limit="nq - 1"),
        full_lo_row_code=_row_code(lower, "last_key", clamp="maximum", limit="0"),
        full_hi_row_code=_row_code(upper, "first_key", clamp="minimum", limit="nq - 1"),
    )


def backward_values(g: Graph, *, kernel_name: str) -> dict:
    """Template values for templates/bwd.py.jinja from a lowered backward graph."""
    values = forward_values(g, kernel_name=kernel_name)
    names = kernel_names(kernel_name)
    values.update(
        kernel_title="backward kernels", template_name="bwd.py.jinja", kernel_kind="bwd",
        iteration_note="dQ kernel: " + values["iteration_note"],
        preprocess_name=names["preprocess"], dkdv_name=names["dkdv"], dq_name=names["dq"],
        sm_scale=repr(g.node("scale_grad").attrs["value"]),
        signatures=backward_signatures(g, kernel_name),
        key_list_row="list_row" if values["list_set"] else "key_tile",
    )
    values.update(_key_major_values(g))
    values.update(grad_values(FormulaCode.of_graph(g, "bwd")))
    values.update(helper_flags(values))
    return values
